"""lm-evaluation-harness on a steered model, the two routes side by side in one run: the in-process
``steerlab`` model type against lm-eval's ``local-completions`` client pointed at ``steerlab serve``
(steering in the model name), on the same offline task, unsteered and steered. Reports wall time per
route, the ratio, and that both give the same accuracy.

The server route sends one HTTP request per (document, choice) with ``echo`` and ``max_tokens: 0``
(lm-eval batches nothing for local-completions unless asked: ``--concurrent`` sets its
``num_concurrent``, so the server can batch requests that arrive together).

Run: .venv/bin/python benchmarks/lm_eval_routes.py [--task steerlab_facts_mc] [--limit 40] [--concurrent 1]
Writes benchmarks/results/lm-eval-routes.md and .json.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import lm_eval
from common import save_report

import steerlab
from steerlab import datasets
from steerlab.evaluate.harness import SteerlabLM, task_manager
from steerlab.methods import caa
from steerlab.serve import create_app
from steerlab.serve.background import BackgroundServer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", default="steerlab_facts_mc")
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--concurrent", type=int, default=1, help="lm-eval's num_concurrent for the server route")
    parser.add_argument("--multiplier", type=float, default=8.0)
    args = parser.parse_args()
    lm = steerlab.load_model()
    vec = caa.extract(lm, datasets.to_open_answers(datasets.builtin("sentiment"))[:32], [8], progress=False)
    folder = tempfile.mkdtemp(prefix="steerlab-tasks-")
    vec_path = f"{folder}/sentiment.safetensors"
    vec.save(vec_path)
    tasks = task_manager(folder)
    common = dict(tasks=[args.task], task_manager=tasks, limit=args.limit, log_samples=False)
    app = create_app(lm, {"sentiment": vec}, max_queue=64, max_batch=16, batch_wait=0.0)
    rows = []
    with BackgroundServer(app) as srv:
        for mult in (0.0, args.multiplier):
            steering = {"vectors": [{"name": vec_path, "multiplier": mult, "window": "all"}]}
            t0 = time.perf_counter()
            inproc = lm_eval.simple_evaluate(model=SteerlabLM(lm=lm, steering=steering), **common)
            t_in = time.perf_counter() - t0
            t0 = time.perf_counter()
            served = lm_eval.simple_evaluate(
                model="local-completions", **common,
                model_args=f"model=smollm2-135m+sentiment*{mult:g}@all,base_url={srv.url}/v1/completions,"
                           f"max_retries=1,num_concurrent={args.concurrent}")
            t_srv = time.perf_counter() - t0
            acc_in, acc_srv = (r["results"][args.task]["acc,none"] for r in (inproc, served))
            rows.append({"multiplier": mult, "in_process_s": t_in, "server_s": t_srv, "ratio": t_srv / t_in,
                         "acc_in_process": acc_in, "acc_server": acc_srv})
            print(rows[-1], flush=True)
    lines = [f"# lm-eval routes on {lm.name}: in-process vs local-completions -> steerlab serve", "",
             f"Task `{args.task}`, {args.limit} documents; steered = CAA sentiment vector at block 8, window all; "
             f"server route with num_concurrent={args.concurrent}. Wall time of `lm_eval.simple_evaluate`.", "",
             "| multiplier | in-process (s) | server (s) | server / in-process | accuracy in-process "
             "| accuracy server |",
             "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['multiplier']:g} | {r['in_process_s']:.1f} | {r['server_s']:.1f} | {r['ratio']:.2f}x | "
              f"{r['acc_in_process']:.3f} | {r['acc_server']:.3f} |" for r in rows]
    save_report("lm-eval-routes", lines, {"task": args.task, "limit": args.limit, "concurrent": args.concurrent,
                                          "rows": rows})


if __name__ == "__main__":
    main()
