"""Steered vLLM against steerlab's own server, both over HTTP on loopback, side by side in one run.

Throughput (generated tokens/s) and p50/p95 latency at 1, 4, 16 and 32 concurrent clients for:
vLLM's OpenAI server with the steerlab plugin with no request steered, every request steered (each
with other vectors and strengths, via ``vllm_xargs``) and half of them steered; and ``steerlab serve``
(Hugging Face generate) unsteered and steered. Both servers get the same ``steering`` body field.
vLLM's three conditions run in ``--rounds`` interleaved rounds and its ratios are paired per round
(median and range); steerlab's server runs once. Every request: one chat turn, greedy, ``--tokens``
new tokens. Each engine runs in its default CPU precision (vLLM bf16, steerlab fp32) unless
``--dtype`` is given, which sets vLLM's.

Runs in the vLLM environment (``make setup-vllm``)::

    .venv-vllm/bin/python benchmarks/vllm_http.py [--tokens 32] [--requests-per-client 2] [--rounds 5]

Writes benchmarks/results/vllm-http.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import chat_load, save_report  # noqa: E402
from vllm_steering import PROMPTS, make_vectors, spec  # noqa: E402

from steerlab.serve.background import free_port

CLIENTS = (1, 4, 16, 32)


def start(cmd: list[str], url: str, log: Path, env: dict | None = None, timeout: float = 600) -> subprocess.Popen:
    import httpx

    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(1)
    proc.kill()
    raise RuntimeError(f"server did not start in {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def load(url: str, model: str, clients: int, per_client: int, tokens: int, steering_of) -> dict:
    """``clients`` threads each sending ``per_client`` requests back to back; ``steering_of(i)`` gives
    request i's extra body fields (empty: unsteered)."""
    def body_of(i: int) -> dict:
        return {"model": model, "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                "max_tokens": tokens, "temperature": 0, **steering_of(i)}

    return chat_load(url, body_of, clients, per_client)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--requests-per-client", type=int, default=2)
    ap.add_argument("--dtype", default="bfloat16", help="vLLM's dtype (its CPU default)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds of vLLM's three conditions")
    args = ap.parse_args()
    from steerlab.model import builtin_model_dir

    folder = Path(tempfile.mkdtemp(prefix="steerlab-vllm-http-"))
    names = make_vectors(folder)
    model_dir = str(builtin_model_dir("smollm2-135m"))
    rows: list[dict] = []

    def run(engine: str, url: str, model: str, modes: dict, rounds: int) -> None:
        load(url, model, 1, 2, 4, lambda i: {})  # warm-up
        for clients in CLIENTS:
            per = args.requests_per_client * (2 if clients == 1 else 1)
            for r in range(rounds):
                for mode, steering_of in modes.items():
                    row = {"engine": engine, "mode": mode, "round": r,
                           **load(url, model, clients, per, args.tokens, steering_of)}
                    rows.append(row)
                    print(f"{engine:>8} {mode:<12} {clients:>2} clients, round {r}: {row['tokens_per_s']:6.1f} tok/s, "
                          f"p50 {row['p50_s']:.2f} s, p95 {row['p95_s']:.2f} s, errors {row['errors']}", flush=True)

    def steered(i: int) -> dict:  # the same body field on both servers
        return {"steering": spec(names, i)}

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    vllm = start([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir, "--port",
                  str(port), "--dtype", args.dtype, "--max-model-len", "512", "--enforce-eager", "--max-num-seqs",
                  "32", "--served-model-name", "smol", "--additional-config",
                  json.dumps({"steerlab": {"vectors": str(folder)}})], url, folder / "vllm.log",
                 {"VLLM_CPU_KVCACHE_SPACE": "2"})
    try:
        run("vllm", url, "smol", {"unsteered": lambda i: {}, "all steered": steered,
                                  "half steered": lambda i: steered(i) if i % 2 else {}}, args.rounds)
    finally:
        vllm.terminate()
        vllm.wait(timeout=60)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    ours = start([sys.executable, "-m", "steerlab.cli", "serve", "--port", str(port), "--vectors", str(folder),
                  "--max-queue", "128", "--max-batch", "16"], url, folder / "steerlab.log", {"STEERLAB_API_KEY": ""})
    try:
        run("steerlab", url, "smollm2-135m", {"unsteered": lambda i: {}, "all steered": steered}, 1)
    finally:
        ours.terminate()
        ours.wait(timeout=60)

    def runs(engine: str, mode: str, clients: int) -> list[float]:
        return [r["tokens_per_s"] for r in rows if r["engine"] == engine and r["mode"] == mode
                and r["clients"] == clients]

    def tps(engine: str, mode: str, clients: int) -> float:
        return statistics.median(runs(engine, mode, clients))

    def paired(mode: str, clients: int) -> tuple[float, float, float]:  # per-round ratios to unsteered
        ratios = [a / b for a, b in zip(runs("vllm", mode, clients), runs("vllm", "unsteered", clients), strict=True)]
        return statistics.median(ratios), min(ratios), max(ratios)

    lines = ["# Steered vLLM vs steerlab serve over HTTP", "",
             f"SmolLM2-135M, one chat turn per request, greedy, up to {args.tokens} new tokens, loopback. vLLM "
             f"({args.dtype}, eager, CPU build) with the steerlab plugin; steerlab serve (HF generate, fp32). "
             "Steered requests use 6 vectors with different strengths, a third of them also projecting one out.",
             f"vLLM: {args.rounds} interleaved rounds (tok/s, p50 and p95: medians over rounds); steerlab serve: one "
             "round.",
             "", "| engine | steering | clients | tok/s | p50 (s) | p95 (s) | errors |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for engine, mode in (("vllm", "unsteered"), ("vllm", "all steered"), ("vllm", "half steered"),
                         ("steerlab", "unsteered"), ("steerlab", "all steered")):
        for c in CLIENTS:
            sel = [r for r in rows if r["engine"] == engine and r["mode"] == mode and r["clients"] == c]
            lines.append(f"| {engine} | {mode} | {c} | {tps(engine, mode, c):.1f} | "
                         f"{statistics.median(r['p50_s'] for r in sel):.2f} | "
                         f"{statistics.median(r['p95_s'] for r in sel):.2f} | {sum(r['errors'] for r in sel)} |")
    lines += ["", "| clients | vLLM steered / unsteered (per round: median, range) | vLLM half / unsteered | "
              "vLLM steered / steerlab steered |", "|---:|---:|---:|---:|"]
    ratios = []
    for c in CLIENTS:
        r = {"clients": c, "steered_vs_unsteered": paired("all steered", c),
             "half_vs_unsteered": paired("half steered", c),
             "vllm_vs_steerlab_steered": tps("vllm", "all steered", c) / tps("steerlab", "all steered", c)}
        ratios.append(r)
        (s_med, s_lo, s_hi), (h_med, h_lo, h_hi) = r["steered_vs_unsteered"], r["half_vs_unsteered"]
        lines.append(f"| {c} | {s_med:.3f} ({s_lo:.3f}-{s_hi:.3f}) | {h_med:.3f} ({h_lo:.3f}-{h_hi:.3f}) | "
                     f"{r['vllm_vs_steerlab_steered']:.2f}x |")
    save_report("vllm-http", lines, {"tokens": args.tokens, "dtype": args.dtype, "rows": rows, "ratios": ratios})
    return 0


if __name__ == "__main__":
    sys.exit(main())
