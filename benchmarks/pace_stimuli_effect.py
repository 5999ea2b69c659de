"""Template vs model-written stimuli, downstream: does PaCE remove a topic better with a dictionary read
from sentences a language model wrote?

``benchmarks/pace_stimuli.py`` compares the two recipes by neighbour quality; this one compares what
PaCE does with each. One concept list, two dictionaries on the same model and blocks: one from the six
project templates, one from sentences written by a local instruct model (``model_stimuli``: cached and
resumable, so a second run reads them back). The list is the task's undesirable words among the
10,000 most frequent (labelled by the embedding partitioner on the words alone, so both dictionaries
get the same labels) filled up with the most frequent other words, so the undesirable part of the
activation is covered by atoms in both dictionaries at a size this machine can write for (~4.7 s per word
on 2 cores). Both run the task's 48 prompts greedily; the unsteered outputs are shared, so every PaCE
row pairs with the other dictionary's row of the same prompt. Reported: the task's table for each
dictionary, the paired written-minus-template differences with 95% bootstrap intervals, and how much of
each activation the edit removes.

With ``--match-edit`` the dictionary whose PaCE edit is smaller (the share of the prompts' activations
it removes) also runs scaled up to the other's, per variant, and is compared at that matched edit size.

Run: .venv/bin/python benchmarks/pace_stimuli_effect.py [--model smollm2-135m] [--writer qwen2.5-coder-0.5b]
     [--size 1000] [--layers 10,15,20] [--task no-food] [--match-edit]
Writes benchmarks/results/pace-stimuli-effect-<model>-<task>.md and .json.
"""

from __future__ import annotations

import argparse
import time
from statistics import fmean

from common import save_report

import steerlab
from steerlab.capture import capture
from steerlab.pace import EmbeddingPartitioner, build_dictionary, concept_words
from steerlab.pace.evaluation import PROMPTS, evaluate_removal, paired_ci
from steerlab.pace.partition import get_task
from steerlab.pace.removal import PaCE
from steerlab.pace.stimuli import model_stimuli


def concept_list(task: str, size: int, pool: int = 10000) -> tuple[list[str], int]:
    """The task's undesirable words among the ``pool`` most frequent, then the most frequent others,
    ``size`` in all, in frequency order; and how many are undesirable."""
    words = concept_words(pool)
    emb = EmbeddingPartitioner()
    bad = emb.decide(*emb.scores(words, get_task(task))).tolist()
    n_bad = sum(bad)
    keep = set(w for w, b in zip(words, bad, strict=True) if b)
    keep |= set([w for w, b in zip(words, bad, strict=True) if not b][: max(0, size - n_bad)])
    return [w for w in words if w in keep], n_bad


def edit_size(steering: PaCE, acts: dict, layers: list[int]) -> tuple[float, float]:
    """Over the prompts' positions ``acts`` (per block) at every block: the mean share of an activation's
    norm PaCE removes, and the mean number of non-zero coefficients per position."""
    for layer in layers:
        steering.edit(acts[layer].float(), layer)
    stats = steering.stats
    return stats["removed_norm"] / stats["tokens"], stats["nonzeros"] / stats["tokens"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--writer", default="qwen2.5-coder-0.5b")
    parser.add_argument("--task", default="no-food", choices=["no-food", "positive-sentiment", "detox"])
    parser.add_argument("--size", type=int, default=1000, help="concepts in each dictionary")
    parser.add_argument("--layers", default="10,15,20")
    parser.add_argument("--per-concept", type=int, default=8, help="sentences asked of the writer per concept")
    parser.add_argument("--writer-batch", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--match-edit", action="store_true",
                        help="also run the dictionary with the smaller edit scaled up to the other's edit size")
    args = parser.parse_args()
    layers = [int(x) for x in args.layers.split(",")]

    concepts, n_bad = concept_list(args.task, args.size)
    writer = steerlab.load_model(args.writer)
    t0 = time.perf_counter()
    sentences = model_stimuli(writer, concepts, per_concept=args.per_concept, batch_size=args.writer_batch,
                              shard=64, progress=True)
    write_s = time.perf_counter() - t0
    del writer
    usable = [len(sentences[c]) for c in concepts]
    lm = steerlab.load_model(args.model)
    t0 = time.perf_counter()
    built = {"templates": build_dictionary(lm, concepts, layers, batch_size=64),
             "model-written": build_dictionary(lm, concepts, layers, batch_size=64, sentences=sentences)}
    build_s = time.perf_counter() - t0
    partitions = {name: EmbeddingPartitioner().partition(d, args.task) for name, d in built.items()}
    labels = [p.undesirable_concepts for p in partitions.values()]
    assert labels[0] == labels[1], "the two dictionaries must share their labels"
    prompts = PROMPTS[args.task][: args.prompts]
    acts = capture(lm, prompts, layers, positions="all", chat=True)  # the same activations for both dictionaries

    def sizes_for(sign: str) -> dict[str, tuple[float, float]]:
        return {name: edit_size(PaCE(d, partitions[name], layers, sign=sign), acts, layers)
                for name, d in built.items()}

    sizes = sizes_for("both")
    # --match-edit: the dictionary whose edit is smaller also runs with its edit scaled up (``strength``) to
    # remove as much of the prompts' activations as the other's, per variant, so that a difference between
    # the dictionaries is not just a difference in how much they remove.
    matched: dict[str, dict] = {name: {} for name in built}
    variant: dict[str, str] = {}  # each matched row's label -> the variant it scales
    if args.match_edit:
        for sign, method in (("both", "pace"), ("positive", "pace-positive")):
            share = {name: s[0] for name, s in (sizes if sign == "both" else sizes_for(sign)).items()}
            small, big = sorted(share, key=share.get)
            strength = share[big] / share[small]
            label = f"{method} x{strength:.2f}"
            matched[small][label] = PaCE(built[small], partitions[small], layers, sign=sign, strength=strength)
            variant[label] = method
    evals = {name: evaluate_removal(lm, d, partitions[name], layers, task=args.task, prompts=prompts,
                                    methods=["unsteered", "pace", "pace-positive"],
                                    max_new_tokens=args.max_new_tokens, steerings=matched[name])
             for name, d in built.items()}

    def by_method(name: str) -> dict:
        return {r.method: r for r in evals[name].results}

    tmpl, written = by_method("templates"), by_method("model-written")
    # Each written row against the template row of the same variant; a matched row against the other
    # dictionary's unscaled row of its variant.
    pairs = [(m, written[m], tmpl[m]) for m in ("pace", "pace-positive")]
    for name, rows in matched.items():
        for label in rows:
            m = variant[label]
            a, b = (written[label], tmpl[m]) if name == "model-written" else (written[m], tmpl[label])
            pairs.append((f"{m}, {name} at matched edit ({label})", a, b))
    diffs = []
    for method, a, b in pairs:
        for what, x, y in (("topic score" if args.task == "no-food" else "task score", a.task_scores, b.task_scores),
                           ("undesirable-word rate", a.lexicon_rates, b.lexicon_rates),
                           ("repeated 2-grams", a.repetitions, b.repetitions)):
            diffs.append((method, what, fmean(x) - fmean(y), *paired_ci(x, y)))
    lines = [f"# Template vs model-written stimuli downstream: PaCE on {lm.name}, task {args.task}", "",
             f"{len(concepts)} concepts ({n_bad} labelled undesirable for {args.task} by the embedding partitioner "
             f"among the 10,000 most frequent words, the rest the most frequent others), blocks {args.layers}; "
             f"{len(prompts)} prompts, greedy, {args.max_new_tokens} new tokens.", "",
             f"Writer {args.writer}: {args.per_concept} sentences asked per concept, {sum(usable) / len(usable):.1f} "
             f"usable on average, {sum(1 for u in usable if u == 0)} concepts with none (they fall back to the "
             f"templates); writing {write_s:.0f} s (0 when read back from the cache); both dictionaries built "
             f"in {build_s:.0f} s.", ""]
    for name, ev in evals.items():
        removed, nonzeros = sizes[name]
        lines += [f"## Dictionary from {name}", "",
                  f"On the prompts' positions PaCE removes {100 * removed:.1f}% of an activation's norm on average, "
                  f"with {nonzeros:.0f} non-zero coefficients per position.", "",
                  ev.table(), ""]
    lines += ["## Model-written minus templates, paired by prompt (95% bootstrap)", "",
              "| PaCE variant | measure | difference | 95% CI |", "|---|---|---:|---|"]
    lines += [f"| {m} | {w} | {d:+.4f} | [{lo:+.4f}, {hi:+.4f}] |" for m, w, d, lo, hi in diffs]
    lines += ["", "Example outputs (first prompt):", ""]
    lines += [f"- **{name} / {r.method}**: {r.texts[0][:200]!r}" for name, ev in evals.items() for r in ev.results]
    save_report(f"pace-stimuli-effect-{args.model}-{args.task}", lines,
                {"model": lm.name, "writer": args.writer, "task": args.task, "layers": layers,
                 "concepts": concepts, "undesirable": labels[0], "per_concept": args.per_concept,
                 "usable": usable, "write_seconds": write_s, "build_seconds": build_s,
                 "edit_size": sizes, "differences": diffs,
                 "results": {name: [dict(vars(r)) for r in ev.results]
                             for name, ev in evals.items()}})


if __name__ == "__main__":
    main()
