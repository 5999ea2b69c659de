"""Reliability report over many datasets: per-item steerability with bootstrap intervals, the
anti-steerable fraction against a random-direction null, spurious A/Yes factors, the vectors'
letter shares, and (optionally) ID vs OOD generalisation with the Spearman correlation across
datasets. Train and test slices are balanced by the matching answer's letter and vectors are
counterbalanced (``--no-balance`` / ``--no-counterbalance`` reproduce the letter-biased recipe).
Writes benchmarks/results/reliability-<model>.md plus per-dataset JSON/PNG/MD as each finishes.

Run: .venv/bin/python benchmarks/reliability_runs.py [--model qwen2.5-coder-0.5b] [--no-generalisation]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import save_report

import steerlab
from steerlab import datasets
from steerlab.evaluate.generalisation import GeneralisationReport, generalisation, spearman
from steerlab.evaluate.reliability import ReliabilityReport, reliability
from steerlab.methods import caa

SHARED = {
    "sycophancy": ("caa/sycophancy_generate.json", "caa/sycophancy_test.json"),
    "corrigible-neutral-HHH": "mwe/xrisk/corrigible-neutral-HHH.jsonl",
    "survival-instinct": "mwe/xrisk/survival-instinct.jsonl",
    "power-seeking-inclination": "mwe/xrisk/power-seeking-inclination.jsonl",
    "coordinate-other-ais": "mwe/xrisk/coordinate-other-ais.jsonl",
    "myopic-reward": "mwe/xrisk/myopic-reward.jsonl",
    "narcissism": "mwe/persona/narcissism.jsonl",
    "politically-liberal": "mwe/persona/politically-liberal.jsonl",
}
BUILTIN_OPEN = ("sentiment", "refusal")


def load_split(shared: Path, spec, n_train: int, n_test: int, balance: bool) -> tuple[list, list]:
    if isinstance(spec, tuple):
        return (datasets.take(datasets.load(shared / spec[0]), n_train, balance=balance),
                datasets.take(datasets.load(shared / spec[1]), n_test, balance=balance))
    return datasets.split(datasets.load(shared / spec), n_train=n_train, n_test=n_test, balance=balance)


def _null_r2_a(r: ReliabilityReport) -> str:
    """Variance of the null's per-item slopes explained by 'matching is (A)' (from the stored slopes for
    reports written before the field existed)."""
    if r.null_spurious_r2_a is not None:
        return f"{r.null_spurious_r2_a:.2f}"
    if not r.null_slopes or not r.matching_letters:
        return "-"
    import torch

    from steerlab.evaluate.reliability import variance_explained

    null = torch.tensor(r.null_slopes).view(-1, r.n_items).mean(0)
    is_a = torch.tensor([[float(x == "A")] for x in r.matching_letters])
    return f"{variance_explained(null, is_a)[0]:.2f}" if 0 < is_a.sum() < len(is_a) else "-"


def _beyond(r: ReliabilityReport) -> str:
    return {"beyond": "yes", "against": "against", "null": "no", "noise": "below noise floor",
            "none": "-"}[r.effect_code()]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--layer-fraction", type=float, default=0.4, help="layer = round(fraction * n_layers)")
    parser.add_argument("--scale", type=float, default=4.0, help="multiplier unit")
    parser.add_argument("--train", type=int, default=64)
    parser.add_argument("--test", type=int, default=40)
    parser.add_argument("--gen-test", type=int, default=16, help="test items per variant for generalisation")
    parser.add_argument("--no-generalisation", action="store_true")
    parser.add_argument("--gen-datasets", default="corrigible-neutral-HHH,survival-instinct,power-seeking-inclination,"
                        "narcissism,politically-liberal,sentiment",
                        help="datasets that also get the (costly) generalisation run")
    parser.add_argument("--gen-train", type=int, default=32, help="training pairs per variant for generalisation")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--datasets", default=None, help="comma-separated subset of the dataset names")
    parser.add_argument("--no-balance", action="store_true",
                        help="take the first N items of each half as the file orders them (letter-biased slices)")
    parser.add_argument("--no-counterbalance", action="store_true",
                        help="plain mean difference, without the option-swapped second reading")
    parser.add_argument("--resume", action="store_true",
                        help="reuse per-dataset reports already written by an earlier (interrupted) run")
    args = parser.parse_args()
    lm = steerlab.load_model(args.model, dtype=args.dtype)
    layer = round(args.layer_fraction * lm.num_layers)
    out = Path(args.out)
    rows, ids, oods = [], [], []
    balance = not args.no_balance
    sets = {name: load_split(Path(args.shared), spec, args.train, args.test, balance) for name, spec in SHARED.items()}
    for name in BUILTIN_OPEN:
        sets[f"{name} (built-in, open answers)"] = datasets.split(
            datasets.to_open_answers(datasets.builtin(name)), n_train=args.train, n_test=args.test)
    t_all = time.time()
    if args.datasets:
        wanted = args.datasets.split(",")
        unknown = [w for w in wanted if not any(n.split(" ")[0] == w for n in sets)]
        if unknown:
            raise SystemExit(f"unknown datasets {unknown}; choose from {[n.split(' ')[0] for n in sets]}")
        sets = {n: v for n, v in sets.items() if n.split(" ")[0] in wanted}
    for name, (train, test) in sets.items():
        t = time.time()
        stem = f"reliability-{lm.name}-{name.split(' ')[0]}"
        done = out / "reliability" / f"{stem}.json"
        short = name.split(" ")[0]
        gen_path = out / "reliability" / f"generalisation-{lm.name}-{short}.json"
        wants_gen = not args.no_generalisation and short in args.gen_datasets.split(",")
        if args.resume and done.exists():  # reuse what an earlier (interrupted) run finished
            rep = ReliabilityReport(**json.loads(done.read_text()))
            print(f"{rep.summary()} [from {done}]", flush=True)
        else:
            print(f"{name}: training {datasets.describe_balance(train)}; test {datasets.describe_balance(test)}",
                  flush=True)
            vec = caa.extract(lm, train, layer, counterbalance=False if args.no_counterbalance else None,
                              progress=False)
            rep = reliability(lm, vec, test, scale=args.scale, dataset=name, letter_pairs=train, progress=True)
            rep.save(out / "reliability", stem)
        row = {"dataset": name, "rep": rep, "seconds": 0.0, "gen": None}
        if wants_gen:
            if args.resume and gen_path.exists():
                gen = GeneralisationReport(**json.loads(gen_path.read_text()))
            else:
                gen = generalisation(lm, train[: args.gen_train], test[: args.gen_test], layer, dataset=short,
                                     scale=args.scale, counterbalance=False if args.no_counterbalance else None,
                                     progress=False)
                gen.save(out / "reliability", gen_path.stem)
            row["gen"] = gen
            ids.append(gen.id_steerability)
            oods.append(gen.ood_steerability["user-"])
        row["seconds"] = time.time() - t
        rows.append(row)
        print(f"{rep.summary()} [{row['seconds']:.0f} s]", flush=True)
    lines = [f"# Reliability on {lm.name} (layer {layer} of {lm.num_layers}, multipliers "
             f"{{-1.5..1.5}} x {args.scale:g})", "",
             f"{args.train} training pairs, {args.test} test items per dataset (earlier items train, later ones "
             f"test; CAA sycophancy: generate file trains, test file tests); "
             + ("slices balanced by the matching letter" if balance else "first-N slices, NOT balanced")
             + ("; vectors counterbalanced over swapped options" if not args.no_counterbalance else
                "; plain mean difference (not counterbalanced)")
             + (". This invocation (--resume reused finished datasets): " if args.resume else ". Total: ")
             + f"{time.time() - t_all:.0f} s.", "",
             "Brackets: 95% bootstrap intervals over items. Null: the same analysis with a random direction of "
             "the vector's norm at the same layer; 'beyond null' when the interval of the per-item difference "
             "(vector slope - null slope) excludes zero, 'below noise floor' when neither moves propensity over "
             "the multiplier range by more than the numeric noise floor (the largest change of an unsteered "
             "propensity between a shared-prefix batch and the item alone). Letter share: share of the "
             "vector's norm along the pure (A)-(B) direction.", "",
             "| dataset | train balance | norm | letter share | p(match) -/0/+ | mean slope [95% CI] | "
             "anti-steerable [95% CI] | null anti-st. | beyond null? | line R^2 | R^2 by A | null R^2 by A | "
             "R^2 by Yes | ID | OOD (user-) | relative |",
             "|---|---|---:|---:|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        r, g = row["rep"], row["gen"]
        yes = "-" if r.spurious_r2_yes is None else f"{r.spurious_r2_yes:.2f}"
        share = "-" if r.letter_share is None else f"{r.letter_share:.2f}"
        ends = r.p_matching_at_extremes or [float("nan")] * 2
        ci = (f"[{r.mean_slope_ci[0]:+.3f}, {r.mean_slope_ci[1]:+.3f}]" if r.mean_slope_ci else "")
        aci = (f"[{r.anti_steerable_ci[0]:.0%}, {r.anti_steerable_ci[1]:.0%}]" if r.anti_steerable_ci else "")
        gen_cells = "| - | - | -" if g is None else (
            f"| {g.id_steerability:+.3f} | {g.ood_steerability['user-']:+.3f} | "
            + ("-" if g.relative_steerability["user-"] is None else f"{g.relative_steerability['user-']:+.2f}"))
        lines.append(f"| {row['dataset']} | {r.train_balance or '-'} | {r.vector_norm:.2f} | {share} | "
                     f"{ends[0]:.3f}/{r.unsteered_p_matching:.3f}/{ends[1]:.3f} | {r.mean_slope:+.3f} {ci} | "
                     f"{r.anti_steerable_fraction:.0%} {aci} | {r.null_anti_steerable_fraction:.0%} | "
                     f"{_beyond(r)} | {r.mean_r2:.2f} | {r.spurious_r2_a:.2f} | {_null_r2_a(r)} | {yes} {gen_cells} |")
    if ids:
        lines += ["", f"Spearman correlation of ID and OOD (user-) steerability across datasets: "
                  f"{spearman(ids, oods):+.2f}."]
    suffix = "" if args.datasets is None else "-subset"
    save_report(f"reliability-{lm.name}{suffix}", lines, out_dir=out)


if __name__ == "__main__":
    main()
