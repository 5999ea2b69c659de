"""Load on the steered server: requests/s, p50/p95 latency and error rate at 1, 4 and 16
concurrent clients, unsteered vs steered, measured side by side in one run on loopback.

The app runs in this process as ``steerlab serve`` runs it: uvicorn on a background thread, the
engine (which owns the model) on the main thread; clients are threads using httpx. Every request: a
chat prompt, greedy, ``--tokens`` new tokens; steered requests carry a CAA sentiment vector (block
8, multiplier 4) in the ``steering`` field. The queue bound (64) is above the largest concurrency,
so the error rate must be 0.

Run: .venv/bin/python benchmarks/serve_load.py [--tokens 32] [--requests-per-client 4]
Writes benchmarks/results/serve-load.md and .json.
"""

from __future__ import annotations

import argparse
import threading

import httpx
from common import chat_load, save_report

import steerlab
from steerlab import datasets
from steerlab.methods import caa
from steerlab.serve import create_app
from steerlab.serve.background import BackgroundServer

PROMPTS = ["Tell me about your weekend.", "Describe the town where you live.", "What do you think about Mondays?",
           "Write a sentence about the weather today.", "How was the meeting this morning?"]


def run_load(url: str, clients: int, per_client: int, tokens: int, steered: bool) -> dict:
    body = {"messages": [], "max_tokens": tokens, "temperature": 0}
    if steered:
        body["steering"] = {"vectors": [{"name": "sentiment", "multiplier": 4}]}

    def body_of(i: int) -> dict:
        return dict(body, messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}])

    return {"steered": steered, **chat_load(url, body_of, clients, per_client)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--requests-per-client", type=int, default=4)
    args = parser.parse_args()
    lm = steerlab.load_model()
    vec = caa.extract(lm, datasets.to_open_answers(datasets.builtin("sentiment"))[:32], [8], progress=False)
    # As `steerlab serve` does: generation on the main thread, HTTP and the clients on other threads.
    app = create_app(lm, {"sentiment": vec}, max_queue=64, max_batch=16, batch_wait=0.02, engine_thread=False)
    rows: list[dict] = []
    health: dict = {}
    with BackgroundServer(app) as srv:
        def drive() -> None:
            try:
                run_load(srv.url, 1, 1, 4, False)  # warm-up
                for clients in (1, 4, 16):
                    per = max(1, args.requests_per_client * (2 if clients == 1 else 1))
                    for steered in (False, True):
                        row = run_load(srv.url, clients, per, args.tokens, steered)
                        rows.append(row)
                        print(f"{clients:>2} clients, {'steered  ' if steered else 'unsteered'}: "
                              f"{row['requests_per_s']:.2f} req/s, {row['tokens_per_s']:.1f} tok/s, "
                              f"p50 {row['p50_s']:.2f} s, p95 {row['p95_s']:.2f} s, errors {row['error_rate']:.0%}")
                health.update(httpx.get(srv.url + "/health").json())
            finally:
                app.state.engine.close()

        driver = threading.Thread(target=drive)
        driver.start()
        app.state.engine.run_forever()
        driver.join()
    lines = [f"# Load on the steered server ({lm.name})", "",
             f"Greedy chat requests of {args.tokens} new tokens on loopback; steered = CAA sentiment vector at "
             f"block 8, multiplier 4. Largest batch formed: {health['max_batch_seen']}.", "",
             "| clients | steering | req/s | tok/s | p50 (s) | p95 (s) | errors |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['clients']} | {'steered' if r['steered'] else 'unsteered'} | {r['requests_per_s']:.2f} | "
              f"{r['tokens_per_s']:.1f} | {r['p50_s']:.2f} | {r['p95_s']:.2f} | {r['error_rate']:.0%} |" for r in rows]
    save_report("serve-load", lines, {"tokens": args.tokens, "rows": rows, "server": health})

if __name__ == "__main__":
    main()
