"""Reliability over 8 datasets in-process vs on a local Ray instance with 2 workers, side
by side in one run on the embedded model, through the same `steerlab reliability` code path.

In-process: one process, PyTorch using both cores. Ray: two workers, one core each, each loading the
model once; one task per dataset. On a 2-core machine this measures Ray's overhead (worker start-up,
model loads, one thread per worker), not a speed-up; on a cluster the same tasks spread over nodes.

Run: .venv/bin/python benchmarks/ray_reliability.py [--limit 12]
Writes benchmarks/results/ray-reliability.md and .json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import save_report

from steerlab.cli import main as cli

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DATASETS = ["caa/sycophancy_test.json", "mwe/xrisk/corrigible-neutral-HHH.jsonl", "mwe/xrisk/survival-instinct.jsonl",
            "mwe/xrisk/power-seeking-inclination.jsonl", "mwe/xrisk/coordinate-other-ais.jsonl",
            "mwe/xrisk/myopic-reward.jsonl", "mwe/persona/narcissism.jsonl", "mwe/persona/politically-liberal.jsonl"]


def run(out: Path, limit: int, ray: bool) -> float:
    args = ["reliability", "--layer", "12", "--scale", "4", "--limit", str(limit), "--out", str(out), "--data",
            *[str(SHARED / d) for d in DATASETS]]
    if ray:
        args += ["--ray", "--ray-workers", "2"]
    t0 = time.perf_counter()
    assert cli(args) == 0
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=12, help="train and test pairs per dataset")
    parser.add_argument("--out", default="/tmp/steerlab-ray-bench")
    args = parser.parse_args()
    local = run(Path(args.out) / "local", args.limit, ray=False)
    remote = run(Path(args.out) / "ray", args.limit, ray=True)
    diffs = []
    for d in DATASETS:
        a, b = (json.loads((Path(args.out) / side / f"reliability-{Path(d).stem}.json").read_text())["slopes"]
                for side in ("local", "ray"))
        diffs.extend(abs(x - y) for x, y in zip(a, b, strict=True))
    same = max(diffs)
    report = {"datasets": len(DATASETS), "limit": args.limit, "in_process_s": local, "ray_2_workers_s": remote,
              "ratio_ray_over_in_process": remote / local, "max_slope_difference": same}
    lines = ["# Reliability over 8 datasets: in-process vs local Ray (2 workers)", "",
             f"{len(DATASETS)} datasets, {args.limit} train and test pairs each, block 12, scale 4, one task per "
             "dataset.", "", "| in-process (s) | Ray, 2 workers (s) | Ray / in-process | largest slope difference |",
             "|---:|---:|---:|---:|", f"| {local:.0f} | {remote:.0f} | {remote / local:.2f} | {same:.1e} |"]
    save_report("ray-reliability", lines, report)

if __name__ == "__main__":
    main()
