"""Steering cost inside vLLM: generation throughput with no request steered, every request steered
(each with other vectors and strengths) and half of them steered, at 1/4/16/32 concurrent requests,
measured side by side in one engine (interleaved rounds; ratios are per round, then the median).

Runs in the vLLM environment (``make setup-vllm``)::

    .venv-vllm/bin/python benchmarks/vllm_steering.py [--rounds 3] [--tokens 32] [--dtype bfloat16]

Offline ``LLM.generate`` (the engine alone, no HTTP); every request generates exactly ``--tokens``.
The plugin's own time is profiled in the same runs: the host side (``WorkerSteering.prepare``, once per
forward pass) and the hooks (``WorkerSteering._steer``, once per steered site per pass), so the gap
between steered and unsteered time per pass can be set against what the plugin itself spends.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import paired_change, save_report  # noqa: E402

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine core in this process, as measured
PROMPTS = ["Tell me about your weekend.", "What should I cook tonight?", "Describe the sea in winter.",
           "How do I learn to play chess?", "Write a note to a neighbour.", "What is a good book to read?"]


def make_vectors(folder: Path) -> list[str]:
    import torch

    from steerlab import datasets, load_model
    from steerlab.methods import actadd, caa
    from steerlab.vector import SteeringVector

    lm = load_model("smollm2-135m")
    train, _ = datasets.split(datasets.to_open_answers(datasets.builtin("sentiment")))
    caa.extract(lm, train[:24], [10, 12]).save(folder / "sentiment.safetensors")
    actadd.extract(lm, "Love", "Hate", 6, coeff=5).save(folder / "lovehate.safetensors")
    g = torch.Generator().manual_seed(0)
    for i, layer in enumerate((8, 10, 12, 14)):
        d = torch.randn(lm.hidden_size, generator=g)
        SteeringVector({layer: d * (4 / d.norm())}, model_name=lm.name, hidden_size=lm.hidden_size,
                       apply="all").save(folder / f"random{i}.safetensors")
    return ["sentiment", "lovehate", "random0", "random1", "random2", "random3"]


def spec(names: list[str], i: int) -> dict:
    entry = {"name": names[i % len(names)], "multiplier": 1 + (i % 5)}
    if i % 3 == 0:
        return {"vectors": [entry, {"name": "sentiment", "op": "project_out", "window": "all"}]}
    return {"vectors": [entry]}


class Profile:
    """Wall time spent in the plugin's host side and hooks (the engine core runs in this process)."""

    def __init__(self) -> None:
        from steerlab.vllm.worker import WorkerSteering

        self.seconds = {"prepare": 0.0, "hooks": 0.0}
        self.passes = 0
        for name, key in (("prepare", "prepare"), ("_steer", "hooks")):
            original = getattr(WorkerSteering, name)
            setattr(WorkerSteering, name, self._timed(original, key))

    def _timed(self, fn, key: str):
        def wrapped(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[key] += time.perf_counter() - t
                self.passes += key == "prepare"

        return wrapped

    def take(self) -> dict:
        out = {"passes": self.passes, **self.seconds}
        self.seconds = {"prepare": 0.0, "hooks": 0.0}
        self.passes = 0
        return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--concurrency", default="1,4,16,32")
    args = ap.parse_args()
    from vllm import LLM, SamplingParams

    from steerlab.model import builtin_model_dir
    from steerlab.vllm import engine_config

    profile = Profile()
    folder = Path(tempfile.mkdtemp(prefix="steerlab-vllm-bench-"))
    names = make_vectors(folder)
    started = time.perf_counter()
    llm = LLM(model=str(builtin_model_dir("smollm2-135m")), dtype=args.dtype,
              max_model_len=512, enforce_eager=True, seed=0, max_num_seqs=32,
              additional_config=engine_config(str(folder)))
    start_s = time.perf_counter() - started

    def params(steering):
        return SamplingParams(max_tokens=args.tokens, temperature=0, ignore_eos=True,
                              extra_args=None if steering is None else {"steering": steering})

    conditions = {
        "unsteered": lambda i: None,
        "all steered": lambda i: spec(names, i),
        "half steered": lambda i: spec(names, i) if i % 2 else None,
    }
    llm.generate(PROMPTS, params(None), use_tqdm=False)  # warm-up
    profile.take()
    rows, data, prof_rows = [], {"start_s": start_s, "results": {}}, []
    for c in [int(x) for x in args.concurrency.split(",")]:
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(c)]
        times: dict[str, list[float]] = {k: [] for k in conditions}
        spent: dict[str, list[dict]] = {k: [] for k in conditions}
        for _ in range(args.rounds):
            for name, make in conditions.items():
                t = time.perf_counter()
                outs = llm.generate(prompts, [params(make(i)) for i in range(c)], use_tqdm=False)
                times[name].append(time.perf_counter() - t)
                spent[name].append(profile.take())
                assert all(len(o.outputs[0].token_ids) == args.tokens for o in outs)

        def per_pass(name: str, key: str, spent=spent) -> float:  # ms per forward pass, median over rounds
            return 1e3 * statistics.median(x[key] / max(1, x["passes"]) for x in spent[name])

        wall = {k: 1e3 * statistics.median(t / max(1, x["passes"]) for t, x in zip(times[k], spent[k], strict=True))
                for k in conditions}
        prof_rows.append(f"| {c} | {wall['unsteered']:.2f} | {wall['all steered']:.2f} | "
                         f"{wall['all steered'] - wall['unsteered']:+.2f} | {per_pass('all steered', 'hooks'):.2f} | "
                         f"{per_pass('all steered', 'prepare'):.3f} | {per_pass('unsteered', 'prepare'):.3f} |")
        tps = {k: c * args.tokens / statistics.median(v) for k, v in times.items()}
        # Throughput ratio = inverse time ratio, paired within each round.
        ratio = {k: paired_change(times["unsteered"], times[k]) for k in ("all steered", "half steered")}
        data["results"][c] = {"tok_s": tps, "times_s": times, "plugin_s": spent, "ms_per_pass": wall,
                              "ratio_vs_unsteered": {k: 1 + v[0] for k, v in ratio.items()}}
        rows.append(f"| {c} | {tps['unsteered']:.1f} | {tps['all steered']:.1f} | {tps['half steered']:.1f} | "
                    f"{1 + ratio['all steered'][0]:.3f} ({1 + ratio['all steered'][1]:.3f}-"
                    f"{1 + ratio['all steered'][2]:.3f}) | {1 + ratio['half steered'][0]:.3f} |")
        print(rows[-1], flush=True)
    lines = ["# Steering inside vLLM: throughput against unsteered vLLM", "",
             f"SmolLM2-135M in vLLM ({args.dtype}, eager mode, CPU build), {args.tokens} new tokens per request, "
             f"{args.rounds} interleaved rounds; engine start {start_s:.0f} s. Steered requests use one of six "
             "vectors (CAA, a saved ActAdd vector, four random directions) at strengths 1-5, every third also "
             "projecting a direction out; throughput ratio = unsteered time / steered time in the same round "
             "(median, range).", "",
             "| concurrent requests | unsteered tok/s | all steered tok/s | half steered tok/s | "
             "all steered / unsteered | half / unsteered |", "|---:|---:|---:|---:|---:|---:|", *rows, "",
             "Where the time goes, per forward pass (ms, median over rounds): the wall time of a pass with no "
             "request steered and with all steered, their difference, and what the plugin itself spent in "
             "that pass (hooks, host side; the host side also runs when nothing is steered).", "",
             "| concurrent requests | unsteered | all steered | difference | hooks | host side | "
             "host side, unsteered |", "|---:|---:|---:|---:|---:|---:|---:|", *prof_rows]
    save_report("vllm-steering", lines, data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
