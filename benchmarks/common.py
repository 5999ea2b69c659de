"""What every benchmark script shares: timing, the machine stamp, and writing its report.

A report is ``benchmarks/results/<stem>.md`` (what a person reads, ending with the command that
produced it) and, when there are numbers to keep, ``<stem>.json`` (what ``run_all.py`` and later
comparisons read). Both carry the machine, the library versions and the git commit.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PACKAGES = ("torch", "transformers", "steerlab", "steering-vectors", "repeng", "scikit-learn", "ray",
            "llama_cpp_python")


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t = time.perf_counter()
    value = fn()
    return time.perf_counter() - t, value


def paired_change(ours: list[float], theirs: list[float]) -> tuple[float, float, float]:
    """Median, min and max over repeats of ``ours[i] / theirs[i] - 1`` (times taken in the same repeat)."""
    ratios = [a / b - 1 for a, b in zip(ours, theirs, strict=True)]
    return statistics.median(ratios), min(ratios), max(ratios)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return out + ("+changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict:
    """CPU, cores, memory, OS, Python, package versions, torch threads and GPU (if any)."""
    versions = {}
    for name in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    info = {"cpu": _cpu_model(), "logical_cores": os.cpu_count(), "memory_gib": _memory_gib(),
            "platform": platform.platform(), "python": platform.python_version(), "versions": versions,
            "commit": _commit(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return info


def command_line() -> str:
    """The command that is running, as a reader would retype it from the repository root."""
    def shown(path: Path) -> str:
        try:
            return str(path.relative_to(ROOT))
        except ValueError:
            return str(path)

    # The interpreter as invoked (not resolved: a venv's python is a link to the system one).
    python = shown(Path(sys.executable).absolute())
    return " ".join([python, shown(Path(sys.argv[0]).resolve()), *map(shlex.quote, sys.argv[1:])])


def machine_line(info: dict) -> str:
    v = info["versions"]
    gpu = f", GPU {info['gpu']}" if info.get("gpu") else ", no GPU"
    return (f"{info['cpu']} ({info['logical_cores']} logical cores, torch threads {info.get('torch_threads')}, "
            f"{info['memory_gib']} GiB{gpu}); Python {info['python']}, torch {v.get('torch')}, transformers "
            f"{v.get('transformers')}; commit {info['commit']}; {info['date']}.")


def save_report(stem: str, lines: list[str], data: dict | None = None, out_dir: Path | str = RESULTS) -> Path:
    """Write ``<out_dir>/<stem>.md`` (``lines`` + machine and command) and ``<stem>.json`` when given."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    info = machine()
    cmd = command_line()
    text = "\n".join([*lines, "", f"Command: `{cmd}`", "", f"Machine: {machine_line(info)}", ""])
    path = out_dir / f"{stem}.md"
    path.write_text(text)
    if data is not None:
        (out_dir / f"{stem}.json").write_text(json.dumps({"command": cmd, "machine": info, **data}, indent=2) + "\n")
    print(text)
    return path


def chat_load(url: str, body_of: Callable[[int], dict], clients: int, per_client: int) -> dict:
    """``clients`` threads each sending ``per_client`` chat requests back to back to the OpenAI-style
    server at ``url`` (request ``i`` is ``body_of(i)``); wall time, generated tokens/s, p50/p95 latency,
    errors (any status but 200)."""
    import httpx

    def one(i: int) -> tuple[float, int, int]:
        t0 = time.perf_counter()
        r = httpx.post(url + "/v1/chat/completions", json=body_of(i), timeout=600)
        done = r.json().get("usage", {}).get("completion_tokens", 0) if r.status_code == 200 else 0
        return time.perf_counter() - t0, r.status_code, done

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(clients * per_client)))
    wall = time.perf_counter() - t0
    lat = sorted(x[0] for x in results)
    errors = sum(code != 200 for _, code, _ in results)
    return {"clients": clients, "requests": len(results), "wall_s": wall, "requests_per_s": len(results) / wall,
            "tokens_per_s": sum(x[2] for x in results) / wall, "p50_s": statistics.median(lat),
            "p95_s": lat[min(len(lat) - 1, int(0.95 * len(lat)))], "errors": errors,
            "error_rate": errors / len(results)}
