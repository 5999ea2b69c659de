"""The benchmark runner's list stays in step with the scripts it runs.

Every script that ``benchmarks/run_all.py`` runs must import (its shared helpers included) and accept
every option the runner passes it; a renamed option would otherwise fail only hours into a run.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
import run_all  # noqa: E402

SCRIPTS = sorted({b.argv[0] for b in run_all.BENCHMARKS if b.argv[0] != "steerlab"})


@pytest.mark.parametrize("script", SCRIPTS)
def test_runner_passes_only_options_the_script_accepts(script):
    out = subprocess.run([sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    passed = {a for b in run_all.BENCHMARKS if b.argv[0] == script for a in b.argv[1:] if a.startswith("--")}
    accepted = set(re.findall(r"--[a-z][a-z0-9-]*", out.stdout))
    assert passed <= accepted, f"{script} does not accept {sorted(passed - accepted)}"


def test_every_script_in_benchmarks_is_run_by_the_runner():
    helpers = {"common.py", "run_all.py"}
    assert {p.name for p in BENCH.glob("*.py")} - helpers == set(SCRIPTS)


def test_steerlab_commands_in_the_runner_exist():
    from steerlab.cli import build_parser

    parser = build_parser()
    for b in run_all.BENCHMARKS:
        if b.argv[0] == "steerlab":
            args = parser.parse_args(b.argv[1:])  # exits (a failure here) on an unknown option
            assert args.out


def test_library_never_imports_the_peers():
    """steering-vectors and repeng are for tests and benchmarks only: importing every steerlab module
    (server, PaCE, distributed included) must not pull them in."""
    code = ("import pkgutil, importlib, sys, steerlab\n"
            "for m in pkgutil.walk_packages(steerlab.__path__, 'steerlab.'):\n"
            "    importlib.import_module(m.name)\n"
            "print(sorted(k for k in sys.modules if k.split('.')[0] in ('steering_vectors', 'repeng')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
