"""Prefix sharing vs the straightforward loop for multiplier sweeps.

Scores N held-out A/B items at 7 multipliers (Tan et al.'s grid) on the embedded model two ways,
side by side in one run: (a) prefix sharing, each item's prompt prefix run once, its KV cache shared
by all 7 x 2 (multiplier, answer) rows; (b) one full forward pass per multiplier over every item and
both answers. Reports medians, the speed-up, and the largest difference between the two results.

Run: .venv/bin/python benchmarks/scoring_speed.py [--items 24] [--repeats 3]
Writes benchmarks/results/scoring-speed.md and .json.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from common import save_report

import steerlab
from steerlab import datasets
from steerlab.evaluate import Variant, answer_logprobs
from steerlab.evaluate.reliability import MULTIPLIERS
from steerlab.methods import caa


def loop(lm, pairs, vec, layer, scale):
    """The straightforward way: for each multiplier, score every item and answer in full."""
    out = []
    for m in MULTIPLIERS:
        out.append(answer_logprobs(lm, pairs, vec, [Variant(m * scale, layer)], share_prefix=False, progress=False))
    return torch.cat(out, 0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    args = parser.parse_args()
    lm = steerlab.load_model()
    pairs = datasets.load(Path(args.shared) / "caa" / "sycophancy_test.json")
    train, test = datasets.split(pairs, n_train=32, n_test=args.items)
    layer, scale = 12, 4.0
    vec = caa.extract(lm, train, layer, progress=False)
    variants = [Variant(m * scale, layer) for m in MULTIPLIERS]
    shared_t, loop_t = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        a = answer_logprobs(lm, test, vec, variants, progress=False)
        shared_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        b = loop(lm, test, vec, layer, scale)
        loop_t.append(time.perf_counter() - t)
    result = {"items": len(test), "multipliers": len(MULTIPLIERS), "repeats": args.repeats,
              "prefix_sharing_s": statistics.median(shared_t), "loop_s": statistics.median(loop_t),
              "speedup": statistics.median(loop_t) / statistics.median(shared_t),
              "max_abs_logprob_difference": float((a - b).abs().max())}
    lines = [f"# Prefix sharing vs the plain loop ({lm.name})", "",
             f"{len(test)} sycophancy test items x {len(MULTIPLIERS)} multipliers x 2 answers, block {layer}; "
             f"median of {args.repeats}.", "",
             "| prefix sharing (s) | loop (s) | speed-up | largest log-prob difference |",
             "|---:|---:|---:|---:|", f"| {result['prefix_sharing_s']:.1f} | {result['loop_s']:.1f} | "
             f"{result['speedup']:.1f}x | {result['max_abs_logprob_difference']:.1e} |"]
    save_report("scoring-speed", lines, result)


if __name__ == "__main__":
    main()
