"""Foundation benchmarks on the embedded model, measured side by side in one run:

1. steered vs unsteered greedy generation time per token (one CAA-style vector from the
   assistant turn onward), interleaved repeats, medians and the premium ``t_steered / t_base - 1``;
2. early-exit capture at layer L of N vs a full forward pass (ratio, expected about L/N).

Run: .venv/bin/python benchmarks/foundation.py [--repeats 7]
Writes benchmarks/results/foundation.md and .json.
"""

from __future__ import annotations

import argparse
import statistics
import threading

import torch
from common import save_report, timed

import steerlab
from steerlab import capture, intervene


def bench_generation(lm, repeats: int, batch: int, new_tokens: int) -> dict:
    prompts = ["Tell me about your weekend.", "Describe the town where you live.", "What is a good breakfast?",
               "Write a sentence about the sea."] * 4
    prompts = prompts[:batch]
    vec = steerlab.SteeringVector({12: torch.randn(lm.hidden_size) * 4}, model_name=lm.name,
                                  hidden_size=lm.hidden_size)
    opts = dict(max_new_tokens=new_tokens, progress=False)

    def plain():
        lm.generate(prompts, **opts)

    def steered():
        lm.generate(prompts, steering=vec.interventions(2.0), **opts)

    plain()
    steered()  # warm-up
    base, steer = [], []
    for _ in range(repeats):  # interleaved so drift hits both equally
        base.append(timed(plain)[0])
        steer.append(timed(steered)[0])
    mb, ms = statistics.median(base), statistics.median(steer)
    tokens = new_tokens * len(prompts)
    return {"batch": len(prompts), "new_tokens": new_tokens, "repeats": repeats,
            "unsteered_s": mb, "steered_s": ms, "unsteered_tok_per_s": tokens / mb, "steered_tok_per_s": tokens / ms,
            "premium": ms / mb - 1}


def bench_hook_cost(lm, batch: int, calls: int = 2000) -> dict:
    """Time of steerlab's own per-forward work during one decode step: the position tracker (a
    pre-hook on the module owning the blocks) and one add-intervention hook, called directly on
    decode-step-shaped inputs (one new token per row after a 40-token prompt)."""
    state = intervene._ForwardState()
    handle = intervene.install_position_tracker(lm.model, lm.blocks_path, state, threading.get_ident())
    try:
        root = intervene._root_module(lm.model, lm.blocks_path)
        tracker = root._forward_pre_hooks[handle.id]
        kwargs = {"input_ids": torch.zeros(batch, 1, dtype=torch.long),
                  "attention_mask": torch.ones(batch, 41, dtype=torch.long), "cache_position": torch.tensor([40])}
        t_tracker = statistics.median(timed(lambda: tracker(root, (), kwargs))[0] for _ in range(calls))
    finally:
        handle.remove()
    iv = steerlab.add(12, torch.randn(lm.hidden_size), strength=4.0)
    resolved = intervene._Resolved(iv, 12, None)
    h = torch.randn(batch, 1, lm.hidden_size)
    t_add = statistics.median(timed(lambda: resolved.apply(h, state))[0] for _ in range(calls))
    return {"batch": batch, "tracker_us": 1e6 * t_tracker, "add_hook_us": 1e6 * t_add}


def bench_early_exit(lm, repeats: int) -> list[dict]:
    texts = [f"Sentence number {i} talks about the weather, the sea and a small town." * 3 for i in range(16)]
    rows = []
    for layer in (5, 15, 25):
        fast, full = [], []
        capture(lm, texts, layer, batch_size=16)
        for _ in range(repeats):
            fast.append(timed(lambda layer=layer: capture(lm, texts, layer, batch_size=16))[0])
            full.append(timed(lambda layer=layer: capture(lm, texts, layer, batch_size=16, early_exit=False))[0])
        mf, mu = statistics.median(fast), statistics.median(full)
        rows.append({"layer": layer, "of": lm.num_layers, "early_exit_s": mf, "full_s": mu, "ratio": mf / mu,
                     "expected_about": (layer + 1) / lm.num_layers})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.manual_seed(0)
    lm = steerlab.load_model()
    gen = [bench_generation(lm, args.repeats, b, 48) for b in (1, 8)]
    early = bench_early_exit(lm, args.repeats)
    hooks = [bench_hook_cost(lm, g["batch"]) for g in gen]
    lines = [f"# Steering overhead and early exit on {lm.name}", "",
             f"## Greedy generation, 48 new tokens, one vector at block 12 from the assistant turn onward "
             f"({args.repeats} interleaved repeats, medians)", "",
             "| batch | unsteered tok/s | steered tok/s | premium |", "|---:|---:|---:|---:|"]
    lines += [f"| {g['batch']} | {g['unsteered_tok_per_s']:.1f} | {g['steered_tok_per_s']:.1f} | {g['premium']:+.1%} |"
              for g in gen]
    lines += ["", "## steerlab's own work per decode step (position tracker + one add hook, called directly; "
              "median of 2000 calls)", "", "| batch | tracker (us) | add hook (us) | share of an unsteered step |",
              "|---:|---:|---:|---:|"]
    for g, k in zip(gen, hooks, strict=True):
        step = g["unsteered_s"] / g["new_tokens"]
        lines.append(f"| {k['batch']} | {k['tracker_us']:.0f} | {k['add_hook_us']:.0f} | "
                     f"{(k['tracker_us'] + k['add_hook_us']) * 1e-6 / step:.2%} |")
    lines += ["", f"## Capture at block L of {lm.num_layers}: early exit vs the full pass (16 texts of ~50 tokens)", "",
              "| L | early exit (s) | full pass (s) | ratio | (L+1)/N |", "|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['layer']} | {r['early_exit_s']:.3f} | {r['full_s']:.3f} | {r['ratio']:.2f} | "
              f"{r['expected_about']:.2f} |" for r in early]
    save_report("foundation", lines, {"generation": gen, "hook_cost": hooks, "early_exit": early})


if __name__ == "__main__":
    main()
