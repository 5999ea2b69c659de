"""PaCE speed: the batched elastic-net solver against scikit-learn per token, and PaCE
generation time per token against unsteered generation, side by side in one run.

Solver: N distinct real token activations (block ``--layer`` of the embedded model, on the PaCE
prompt sets) scaled to unit norm, coded against the whole dictionary. steerlab solves all N at once
(``sparse_code``); scikit-learn's ``ElasticNet`` (coordinate descent, same objective: its alpha is
divided by d because it averages the squared error over the d "samples") is fitted once per token on
the first ``--sk-tokens`` of them. Reports tokens/s for both, the ratio, and the largest relative
objective gap on the tokens both solved.

Run: .venv/bin/python benchmarks/pace_speed.py --dictionary DICT.safetensors [--layer 15]
On a GPU: ``--model FILE.gguf --labels LABELS.tsv`` (a machine without the model packages; labels
from ``steerlab pace label --out``) and ``--report pace-speed-cuda``; timings synchronise the device.
Writes benchmarks/results/<report>.md and .json.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import save_report

import steerlab
from steerlab.capture import capture
from steerlab.pace import ConceptDictionary, ElasticNet, EmbeddingPartitioner, PaCE, Partition, objective, sparse_code
from steerlab.pace.evaluation import PROMPTS
from steerlab.pace.solver import correlations, kkt_violation

BATCHES = (1, 8)
SYNC_FREE = ElasticNet(sync_free=True)
TORCH_KERNELS = ElasticNet(kernel="torch")
TORCH_COLD = "cold, torch kernels"
UNSHARED = "pace, equal rows solved again"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dictionary", required=True)
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--sk-tokens", type=int, default=24)
    parser.add_argument("--gen-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default=None, help="default: the embedded model")
    parser.add_argument("--labels", default=None, help="labels TSV instead of the embedding partitioner")
    parser.add_argument("--report", default="pace-speed")
    args = parser.parse_args()
    from sklearn.linear_model import ElasticNet as SkElasticNet

    torch.set_num_threads(max(1, torch.get_num_threads()))
    lm = steerlab.load_model(args.model)
    cuda = lm.device.type == "cuda"

    def clock() -> float:  # wall time with the device's queued work finished
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    d = ConceptDictionary.load(args.dictionary, lm)
    # [d, K] as a view of contiguous atom rows, the layout PaCE holds (sparse_code gathers atom rows).
    D = d.atoms[args.layer].float().contiguous().to(lm.device).T
    texts = PROMPTS["detox"] + PROMPTS["positive-sentiment"]
    Z = capture(lm, texts, [args.layer], positions="all", chat=True, progress=False)[args.layer]
    Z = Z.float().to(lm.device)
    Z_seq = Z / Z.norm(dim=1, keepdim=True)  # in text order
    # Distinct rows only: the chat template's positions repeat across prompts, and sparse_code solves
    # equal rows once, which scikit-learn (one fit per row) would not get credit for.
    Z = torch.unique(Z, dim=0)
    Z = Z[torch.randperm(Z.shape[0], generator=torch.Generator().manual_seed(0))[: args.tokens].to(lm.device)]
    Z = Z / Z.norm(dim=1, keepdim=True)
    cfg = ElasticNet()

    n_sk = min(args.sk_tokens, Z.shape[0])
    Dn = D.double().cpu().numpy()
    # Accuracy of each solver against a near-exact float64 solution.
    exact = objective(D, Z[:n_sk], sparse_code(D.double(), Z[:n_sk].double(), ElasticNet(tol=1e-5)), cfg)
    # The default, a tighter tol for comparing at scikit-learn's accuracy, and the sync-free path
    # (fixed shapes, no host syncs; meant for GPUs).
    configs = {f"tol {cfg.tol}": cfg, "tol 0.001": ElasticNet(tol=1e-3), "sync-free": SYNC_FREE}
    if not cuda:  # the same method with every step in torch: what the compiled CPU kernels replace
        configs[f"tol {cfg.tol}, torch kernels"] = TORCH_KERNELS
    ours = {}
    for label, conf in configs.items():
        sparse_code(D, Z, conf)  # untimed: numba compiles a kernel at its first call in a process (seconds)
        times = []
        for _ in range(args.repeats):
            t0 = clock()
            C_tol = sparse_code(D, Z, conf)
            times.append(clock() - t0)
        gap = float(((objective(D, Z[:n_sk], C_tol[:n_sk], cfg) - exact) / exact).max())
        ours[label] = {"tokens_per_s": Z.shape[0] / statistics.median(times), "vs_exact": gap,
                       "kkt_max": float(kkt_violation(D, Z, C_tol, cfg).max())}
        if conf is cfg:
            C = C_tol
    ours_rate = next(iter(ours.values()))["tokens_per_s"]
    ours_err = next(iter(ours.values()))["vs_exact"]
    ours_obj = objective(D, Z[:n_sk], C[:n_sk], cfg)

    # One row at a time, as in decoding at batch 1: the solve against the bare D'z product it needs,
    # cold and warm-started from the previous row's solution (consecutive tokens of one text).
    seq = Z_seq[:64]
    single: dict[str, float] = {}
    labels = ("product only", "cold", "warm", "cold sync-free") + (() if cuda else (TORCH_COLD,))
    solved: list[torch.Tensor] = []  # each token's support, cold
    for label in labels:
        t0 = clock()
        prev = None
        conf = {"cold sync-free": SYNC_FREE, TORCH_COLD: TORCH_KERNELS}.get(label, cfg)
        for i in range(seq.shape[0]):
            if label == "product only":
                correlations(seq[i: i + 1], D.T, cfg)
            else:
                prev = sparse_code(D, seq[i: i + 1], conf, init=prev if label == "warm" else None)
                if label == "cold":
                    solved.append(prev[0] != 0)
        single[label] = 1000 * (clock() - t0) / seq.shape[0]
    # Share of each token's support that the previous token's support already holds.
    single["support_overlap"] = statistics.mean(
        float((a & b).sum() / max(int(b.sum()), 1)) for a, b in zip(solved, solved[1:], strict=False))
    sklearn = {}
    for sk_tol in (1e-4, 1e-2):  # scikit-learn's default, and a looser one nearer steerlab's accuracy
        coef = []
        t0 = time.perf_counter()
        for i in range(n_sk):
            sk = SkElasticNet(alpha=cfg.alpha / D.shape[0], l1_ratio=cfg.tau, fit_intercept=False, max_iter=10000,
                              tol=sk_tol)
            sk.fit(Dn, Z[i].double().cpu().numpy())
            coef.append(torch.from_numpy(sk.coef_).to(lm.device))
        rate = n_sk / (time.perf_counter() - t0)
        sk_obj = objective(D, Z[:n_sk], torch.stack(coef), cfg)
        sklearn[str(sk_tol)] = {"tokens_per_s": rate, "speedup": ours_rate / rate,
                                "vs_exact": float(((sk_obj - exact) / exact).max()),
                                "steerlab_minus_sklearn": float(((ours_obj - sk_obj) / sk_obj).max())}

    # Generation: greedy, batch 1 and 8, unsteered vs PaCE at the same layer (positive-sentiment labels).
    part = (Partition.load(args.labels, d, "positive-sentiment") if args.labels
            else EmbeddingPartitioner().partition(d, "positive-sentiment"))
    pace = PaCE(d, part, [args.layer])
    prompts = PROMPTS["positive-sentiment"][:8]
    lm.generate(prompts[:1], max_new_tokens=2)
    runs: list[tuple[str, PaCE | None]] = [("unsteered", None), ("pace", pace),
                                           ("pace sync-free", PaCE(d, part, [args.layer], solver=SYNC_FREE))]
    runs.append((UNSHARED, PaCE(d, part, [args.layer], solver=ElasticNet(share_equal_rows=False))))
    if not cuda:
        runs.append(("pace torch kernels", PaCE(d, part, [args.layer], solver=TORCH_KERNELS)))
    gen = {}
    for batch in BATCHES:
        for name, steering in runs:
            lm.generate(prompts[:batch], steering=steering, max_new_tokens=2, batch_size=batch)  # untimed warm-up
            times = []
            for _ in range(args.repeats):
                t0 = clock()
                out = lm.generate(prompts[:batch], steering=steering, max_new_tokens=args.gen_tokens,
                                  batch_size=batch)
                times.append(clock() - t0)
            n = sum(len(lm.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in out)
            gen[f"{name} batch {batch}"] = 1000 * statistics.median(times) / max(n, 1)
    report = {
        "device": torch.cuda.get_device_name() if cuda else "cpu", "dtype": str(lm.dtype),
        "dictionary": {"concepts": len(d), "layer": args.layer, "hidden": d.hidden_size},
        "solver": {"tokens": int(Z.shape[0]), "steerlab_tokens_per_s": ours_rate, "tol": cfg.tol, "steerlab": ours,
                   "steerlab_vs_exact": ours_err, "sklearn_tokens": n_sk, "sklearn": sklearn,
                   "mean_nonzeros": float((C != 0).sum(1).float().mean())},
        "batch1_solver_ms_per_token": single,
        "generation_ms_per_token": gen,
        "pace_vs_unsteered": {b: gen[f"pace batch {b}"] / gen[f"unsteered batch {b}"] for b in BATCHES},
        "other_vs_unsteered": {name: {b: gen[f"{name} batch {b}"] / gen[f"unsteered batch {b}"] for b in BATCHES}
                               for name, _ in runs[2:]},
    }
    s = report["solver"]
    lines = [f"# PaCE speed ({lm.name}, {len(d)} concepts, block {args.layer}; {report['device']}, {lm.dtype})", "",
             f"## Elastic net on {s['tokens']} unit-norm token activations (tol {cfg.tol}; scikit-learn per token on "
             f"the first {n_sk}; objective gap to a float64 solution)", "",
             "| solver | tokens/s | objective above exact | largest KKT violation / (alpha tau) | steerlab speed-up |",
             "|---|---:|---:|---:|---:|",
             ]
    lines += [f"| steerlab (batched), {label} | {r['tokens_per_s']:.1f} | {r['vs_exact']:.1e} | "
              f"{r['kkt_max']:.3f} | - |" for label, r in ours.items()]
    lines += [f"| scikit-learn ElasticNet, tol {tol} | {r['tokens_per_s']:.2f} | {r['vs_exact']:.1e} | - | "
              f"{r['speedup']:.1f}x |" for tol, r in sklearn.items()]
    tight, sk_default = ours["tol 0.001"], sklearn["0.0001"]
    report["solver"]["tol_0.001_vs_sklearn_1e-4"] = tight["tokens_per_s"] / sk_default["tokens_per_s"]
    lines += ["", f"At the same accuracy or better: steerlab at tol 0.001 ({tight['vs_exact']:.1e} above exact) "
              f"against scikit-learn at tol 1e-4 ({sk_default['vs_exact']:.1e}): "
              f"{report['solver']['tol_0.001_vs_sklearn_1e-4']:.1f}x.",
              "", f"Mean non-zero coefficients per token: {s['mean_nonzeros']:.1f}.", "",
              "One token at a time (64 consecutive tokens, as in decoding at batch 1), ms per token: "
              f"the D'z product alone {single['product only']:.2f}; solve cold {single['cold']:.2f}; "
              f"warm-started from the previous token {single['warm']:.2f} (a token's support shares "
              f"{single['support_overlap']:.0%} with the previous token's)"
              f"; the sync-free path {single['cold sync-free']:.2f}"
              + (f"; every step in torch {single[TORCH_COLD]:.2f}" if TORCH_COLD in single else "")
              + ".", "",
              f"## Greedy generation, {args.gen_tokens} new tokens, PaCE (positive-sentiment labels) vs unsteered "
              f"(median of {args.repeats})", "", "| batch | unsteered ms/token | PaCE ms/token | ratio |",
              "|---:|---:|---:|---:|"]
    lines += [f"| {b} | {gen[f'unsteered batch {b}']:.1f} | {gen[f'pace batch {b}']:.1f} | "
              f"{report['pace_vs_unsteered'][b]:.2f} |" for b in BATCHES]
    what = {"pace sync-free": "PaCE with the sync-free solver",
            UNSHARED: "PaCE solving bit-for-bit equal rows (the prompts' shared chat-template positions) again, "
                      "as before they were shared",
            "pace torch kernels": "PaCE with every solver step in torch (no compiled CPU kernels)"}
    for name, ratios in report["other_vs_unsteered"].items():
        lines += ["", f"{what[name]}, same run: " + "; ".join(
            f"batch {b}: {gen[f'{name} batch {b}']:.1f} ms/token ({ratios[b]:.2f}x)" for b in BATCHES) + "."]
    save_report(args.report, lines, report)

if __name__ == "__main__":
    main()
