"""Run every benchmark and write ``benchmarks/RESULTS.md``: machine, versions, headline medians and
ratios, a table of runs (command, wall time, status, commit), then every benchmark's own report.

Each benchmark is its own script run in a fresh process (so one's memory or threads never touch
another's timings), one after the other, never two at once. A failing benchmark is reported and the
rest still run; the exit status is non-zero if any failed. ``benchmarks/results/runs.json`` keeps the
last run of each benchmark, so ``--only NAME`` re-runs one and the page is rebuilt with the others'
last results, and ``--collect`` rebuilds the page without running anything.

Run (from the repository root, after `make setup`):
    .venv/bin/python benchmarks/run_all.py            # everything: about 3 hours on 2 CPU cores
    .venv/bin/python benchmarks/run_all.py --list     # names and rough times
    .venv/bin/python benchmarks/run_all.py --only peers-smollm2 peers-gemma
    .venv/bin/python benchmarks/run_all.py --collect
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import RESULTS, ROOT, machine, machine_line, paired_change

PAGE = ROOT / "benchmarks" / "RESULTS.md"
RUNS = RESULTS / "runs.json"
DICTIONARY = ROOT / "steerlab-out" / "bench" / "smollm2-10k.safetensors"
NO_FOOD_3 = ROOT / "steerlab-out" / "bench" / "smollm2-135m-10000-L10-15-20.safetensors"  # pace_effect.py's own build
QWEN_3 = ROOT / "steerlab-out" / "bench" / "qwen2.5-coder-1.5b-10000-L9-14-19.safetensors"  # the same, on the 1.5B
STEERLAB = str(Path(sys.executable).with_name("steerlab"))


@dataclass
class Bench:
    name: str
    argv: list[str]  # a script under benchmarks/ and its arguments, or ["steerlab", ...]
    reports: list[str]  # report stems under benchmarks/results/ (or a sub-folder) shown on the page
    minutes: float  # rough wall time on the project's 2-core machine
    what: str
    requires: list[str] = field(default_factory=list)  # paths that must exist first (else: skipped)
    python: str = ".venv/bin/python"  # the environment a script runs in, relative to the repository root

    def command(self) -> list[str]:
        if self.argv[0] == "steerlab":
            return [STEERLAB, *self.argv[1:]]
        python = sys.executable if self.python == ".venv/bin/python" else str(ROOT / self.python)
        return [python, str(ROOT / "benchmarks" / self.argv[0]), *self.argv[1:]]

    def shown(self) -> str:
        head = "steerlab" if self.argv[0] == "steerlab" else f"{self.python} benchmarks/{self.argv[0]}"
        return " ".join([head, *self.argv[1:]])


EVAL_METHODS = ["unsteered", "pace", "pace-positive", "orthogonal", "subtraction"]


def _judged_1_5b(task: str) -> Bench:
    """PaCE on the 1.5B three-block dictionary with the 1.5B judge's labels for ``task`` (600-concept shortlist)."""
    out = f"pace-{task}-llm-partition-1.5b"
    return Bench(f"pace-eval-{task}-llm-1.5b",
                 ["steerlab", "pace", "eval", "--model", "qwen2.5-coder-1.5b", "--dictionary",
                  str(QWEN_3.relative_to(ROOT)), "--task", task, "--partitioner", "llm", "--judge",
                  "qwen2.5-coder-1.5b", "--shortlist", "600", "--layers", "9,14,19", "--methods", "unsteered",
                  "pace", "--max-new-tokens", "32", "--out", f"benchmarks/results/{out}"],
                 [f"{out}/pace-{task}"], 10,
                 f"PaCE on the 1.5B {task} prompts with the 1.5B judge's labels (needs pace-effect-no-food-1.5b's "
                 "dictionary)", [str(QWEN_3)])


LLAMA_PYTHON = os.environ.get("LLAMA_PYTHON", "/tmp/llvenv/bin/python")
BENCHMARKS = [
    Bench("foundation", ["foundation.py", "--repeats", "5"], ["foundation"], 4,
          "steered vs unsteered generation; early-exit capture vs a full pass"),
    Bench("peers-smollm2", ["peers.py", "--pairs", "208", "--repeats", "1", "--gen-repeats", "9"],
          ["peers-smollm2-135m"], 16, "CAA/PCA extraction and steered generation vs steering-vectors and repeng"),
    Bench("peers-gemma", ["peers.py", "--model", "gemma3-270m", "--pairs", "208", "--repeats", "1",
                          "--gen-repeats", "9"], ["peers-gemma3-270m"], 22, "the same on Gemma 3 270M"),
    Bench("scoring-speed", ["scoring_speed.py"], ["scoring-speed"], 3,
          "prefix-shared multiplier sweeps vs the plain loop"),
    Bench("sweeps", ["sweeps.py"], ["sweeps"], 8, "CAA layer sweeps, letters vs option texts"),
    Bench("reliability-smollm2", ["reliability_runs.py"], ["reliability-smollm2-135m"], 30,
          "steerability with intervals and a null, letter shares, spurious factors, ID/OOD over 10 datasets"),
    Bench("reliability-qwen0.5b", ["reliability_runs.py", "--model", "qwen2.5-coder-0.5b", "--no-generalisation",
                                   "--train", "48", "--test", "32"],
          ["reliability-qwen2.5-coder-0.5b"], 35, "the same on Qwen2.5-Coder-0.5B (no generalisation)"),
    Bench("capability", ["capability_kept.py"], ["capability"], 10,
          "ActAdd topic steering, perplexity by relevance, P@K, A/B accuracy"),
    Bench("pace-dictionary", ["steerlab", "pace", "build", "--concepts", "10000", "--layers", "10,15,20", "--out",
                              str(DICTIONARY.relative_to(ROOT))], [], 12,
          "10,000-concept dictionary (skipped when the file exists)"),
    Bench("dictionary-build", ["dictionary_build.py", "--model", "smollm2-135m", "--concepts", "2000",
                               "--layers", "15"],
          ["dictionary-build-smollm2-135m"], 4,
          "dictionary build: template words read once per batch (shared prefix) vs every sentence whole"),
    Bench("pace-speed", ["pace_speed.py", "--dictionary", str(DICTIONARY.relative_to(ROOT)), "--layer", "15",
                         "--repeats", "3", "--sk-tokens", "24", "--tokens", "512"], ["pace-speed"], 6,
          "batched elastic net vs scikit-learn; PaCE generation cost", [str(DICTIONARY)]),
    Bench("pace-stimuli", ["pace_stimuli.py"], ["pace-stimuli"], 15,
          "template vs model-written concept stimuli: neighbour purity on 160 grouped probe words"),
    Bench("pace-stimuli-effect", ["pace_stimuli_effect.py", "--match-edit"],
          ["pace-stimuli-effect-smollm2-135m-no-food"], 80,
          "template vs model-written stimuli downstream: PaCE removing food with each 1,000-concept dictionary, "
          "also at matched edit size"),
    Bench("pace-effect", ["pace_effect.py"], ["pace-effect-qwen2.5-coder-1.5b"], 40,
          "PaCE vs projection, subtraction and CAA removing negative sentiment on Qwen2.5-Coder-1.5B, with intervals"),
    Bench("pace-effect-no-food", ["pace_effect.py", "--model", "smollm2-135m", "--concepts", "10000", "--task",
                                  "no-food", "--max-new-tokens", "32", "--methods", *EVAL_METHODS,
                                  "--subtraction-scales", "0.05,0.03"],
          ["pace-effect-smollm2-135m-no-food"], 25,
          "concept removal measured directly: food prompts, food concepts removed, topic score and word rate"),
    Bench("pace-effect-no-food-3-blocks", ["pace_effect.py", "--model", "smollm2-135m", "--concepts", "10000",
                                           "--layers", "10,15,20", "--task", "no-food", "--max-new-tokens", "32",
                                           "--methods", "unsteered", "pace", "pace-positive", "subtraction",
                                           "--subtraction-scales", "0.05"],
          ["pace-effect-smollm2-135m-no-food-L10-15-20"], 16,
          "the same with every method at blocks 10, 15 and 20 (builds that dictionary once, ~12 min)"),
    Bench("pace-effect-no-food-1.5b", ["pace_effect.py", "--model", "qwen2.5-coder-1.5b", "--concepts", "10000",
                                       "--layers", "9,14,19", "--task", "no-food", "--max-new-tokens", "32",
                                       "--methods", *EVAL_METHODS, "--subtraction-scales", "0.05"],
          ["pace-effect-qwen2.5-coder-1.5b-no-food-L9-14-19"], 35,
          "the no-food task on Qwen2.5-Coder-1.5B at three blocks (10k dictionary built first, ~15 min)"),
    Bench("pace-effect-sentiment-1.5b", ["pace_effect.py", "--model", "qwen2.5-coder-1.5b", "--concepts", "10000",
                                         "--layers", "9,14,19", "--max-new-tokens", "32", "--caa", "2,4",
                                         "--methods", *EVAL_METHODS],
          ["pace-effect-qwen2.5-coder-1.5b-L9-14-19"], 25,
          "the sentiment prompts on the same 1.5B three-block dictionary, with CAA x2 and x4"),
    _judged_1_5b("no-food"),
    Bench("pace-effect-detox-1.5b", ["pace_effect.py", "--model", "qwen2.5-coder-1.5b", "--concepts", "10000",
                                     "--layers", "9,14,19", "--task", "detox", "--max-new-tokens", "32",
                                     "--methods", "unsteered", "pace", "orthogonal", "subtraction",
                                     "--subtraction-scales", "0.05", "--generated-only"],
          ["pace-effect-qwen2.5-coder-1.5b-detox-L9-14-19"], 25,
          "the 48 detox prompts on the same 1.5B dictionary, with PaCE on the generated tokens only",
          [str(QWEN_3)]),
    _judged_1_5b("detox"),
    Bench("pace-eval-no-food-llm", ["steerlab", "pace", "eval", "--dictionary", str(NO_FOOD_3.relative_to(ROOT)),
                                    "--task", "no-food", "--partitioner", "llm", "--judge", "qwen2.5-coder-1.5b",
                                    "--shortlist", "600", "--layers", "10,15,20", "--methods", "unsteered", "pace",
                                    "pace-positive", "--max-new-tokens", "32", "--out",
                                    "benchmarks/results/pace-no-food-llm-partition"],
          ["pace-no-food-llm-partition/pace-no-food"], 8,
          "the 3-block no-food run with the language-model partitioner (1.5B judge, 600-concept shortlist)",
          [str(NO_FOOD_3)]),
    Bench("read-position", ["read_position.py"], ["read-position-smollm2-135m-sentiment"], 10,
          "text-pair CAA read at the last, first, mean or first differing answer token; held-out p(matching)"),
    Bench("pace-eval-detox", ["steerlab", "pace", "eval", "--dictionary", str(DICTIONARY.relative_to(ROOT)),
                              "--task", "detox", "--layers", "15", "--methods", *EVAL_METHODS, "--out",
                              "benchmarks/results/pace"],
          ["pace/pace-detox"], 5, "PaCE (all / positive components) vs projection and subtraction, detox",
          [str(DICTIONARY)]),
    Bench("pace-eval-sentiment", ["steerlab", "pace", "eval", "--dictionary", str(DICTIONARY.relative_to(ROOT)),
                                  "--task", "positive-sentiment", "--layers", "15", "--methods", *EVAL_METHODS,
                                  "--out", "benchmarks/results/pace"],
          ["pace/pace-positive-sentiment"], 5, "the same, positive sentiment", [str(DICTIONARY)]),
    Bench("serve-load", ["serve_load.py"], ["serve-load"], 5, "server throughput and latency at 1/4/16 clients"),
    Bench("lm-eval-routes", ["lm_eval_routes.py", "--concurrent", "4"], ["lm-eval-routes"], 4,
          "lm-eval in-process vs local-completions through steerlab serve, same task and steering"),
    Bench("vllm-steering", ["vllm_steering.py"], ["vllm-steering"], 3,
          "steered vs unsteered throughput inside vLLM at 1/4/16/32 requests (needs make setup-vllm)",
          [str(ROOT / ".venv-vllm" / "bin" / "python")], python=".venv-vllm/bin/python"),
    Bench("vllm-http", ["vllm_http.py"], ["vllm-http"], 10,
          "steered vLLM server vs unsteered vs steerlab serve over HTTP at 1/4/16/32 clients (needs make setup-vllm)",
          [str(ROOT / ".venv-vllm" / "bin" / "python")], python=".venv-vllm/bin/python"),
    Bench("ray-reliability", ["ray_reliability.py"], ["ray-reliability"], 3,
          "reliability in-process vs on local Ray"),
    Bench("llamacpp-interop", ["llamacpp_interop.py"], ["llamacpp-interop"], 2,
          "exported control vector in real llama.cpp vs steerlab (needs LLAMA_PYTHON)", [LLAMA_PYTHON]),
]


def _load_runs() -> dict:
    try:
        return json.loads(RUNS.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def run(bench: Bench, runs: dict) -> bool:
    missing = [p for p in bench.requires if not Path(p).exists()]
    if bench.name == "pace-dictionary" and DICTIONARY.exists():
        missing = [f"nothing: {DICTIONARY.relative_to(ROOT)} exists"]
    if missing:
        print(f"[run_all] {bench.name}: skipped (needs {', '.join(missing)})", flush=True)
        runs.setdefault(bench.name, {})["last_attempt"] = f"skipped: needs {', '.join(missing)}"
        return True
    if bench.name == "pace-dictionary":
        DICTIONARY.parent.mkdir(parents=True, exist_ok=True)
    print(f"[run_all] {bench.name}: {bench.shown()}", flush=True)
    t0 = time.perf_counter()
    rc = subprocess.run(bench.command(), cwd=ROOT).returncode
    seconds = time.perf_counter() - t0
    info = machine()
    runs[bench.name] = {"command": bench.shown(), "rc": rc, "seconds": round(seconds, 1), "date": info["date"],
                        "commit": info["commit"]}
    print(f"[run_all] {bench.name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {seconds / 60:.1f} min",
          flush=True)
    return rc == 0


def _json(stem: str) -> dict | None:
    try:
        return json.loads((RESULTS / f"{stem}.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def headlines() -> list[str]:
    """One table row per headline ratio, read from the benchmarks' JSON files."""
    out = []
    for model in ("smollm2-135m", "gemma3-270m"):
        p = _json(f"peers-{model}")
        if not p:
            continue
        for r in p.get("extraction", []):
            out.append(_row(f"CAA extraction, {p['pairs']} pairs, blocks {r['layers']} ({model})", "steering-vectors",
                            f"{r['steerlab_s']:.1f} s vs {r['steering_vectors_s']:.1f} s",
                            f"**{r['speedup']:.1f}x** faster; cosine {r['cosine']:.5f}"))
        if "pca" in p:
            r = p["pca"]
            out.append(_row(f"PCA extraction, block {r['layer']} ({model})", "repeng",
                            f"{r['steerlab_s']:.1f} s vs {r['repeng_s']:.1f} s",
                            f"**{r['speedup']:.1f}x** faster; abs cosine {r['abs_cosine']:.4f}"))
        for g in p.get("generation", []):
            t, times = g["tok_per_s"], g["times_s"]
            peers = ("unsteered", "steering-vectors", "repeng")
            paired = " / ".join("{:+.1%} [{:+.1%}, {:+.1%}]".format(*paired_change(times["steerlab"], times[peer]))
                                for peer in peers)
            out.append(_row(f"steered generation, batch {g['batch']} ({model}; {g['repeats']} interleaved repeats)",
                            " / ".join(peers), f"{t['steerlab']:.1f} vs " + " / ".join(f"{t[k]:.1f}" for k in peers)
                            + " tok/s", f"time {paired}"))
    for g in (_json("foundation") or {}).get("generation", []):
        out.append(_row(f"steered generation, batch {g['batch']}, assistant window (smollm2-135m)", "unsteered",
                        f"{g['steered_tok_per_s']:.1f} vs {g['unsteered_tok_per_s']:.1f} tok/s",
                        f"time {g['premium']:+.1%}"))
    s = _json("scoring-speed")
    if s:
        out.append(_row(f"multiplier sweep scoring ({s['items']} items x {s['multipliers']})", "plain loop",
                        f"{s['prefix_sharing_s']:.1f} s vs {s['loop_s']:.1f} s", f"**{s['speedup']:.1f}x** faster"))
    pace = _json("pace-speed")
    for tol, r in (pace or {}).get("solver", {}).get("sklearn", {}).items():
        out.append(_row(f"elastic net per token ({pace['dictionary']['concepts']} atoms)", f"scikit-learn tol {tol}",
                        f"{pace['solver']['steerlab_tokens_per_s']:.0f} vs {r['tokens_per_s']:.1f} tok/s",
                        f"**{r['speedup']:.1f}x** faster"))
    ray = _json("ray-reliability")
    if ray:
        out.append(_row(f"reliability, {ray['datasets']} datasets", "in-process",
                        f"Ray 2 workers {ray['ray_2_workers_s']:.0f} s vs {ray['in_process_s']:.0f} s",
                        f"time x{ray['ratio_ray_over_in_process']:.2f}"))
    if out:
        out = [_row("measurement", "against", "figures", "steerlab"), "|---|---|---|---|", *out, "",
               "'time' cells: steerlab's time over the other's, minus 1 (negative = steerlab faster); for the peers "
               "paired within each repeat, median [min, max]. Extraction rows: one timed call per library after an "
               "untimed warm-up."]
    return out


def _demote(text: str) -> str:
    return "\n".join("#" + line if line.startswith("#") else line for line in text.splitlines())


def write_page(argv: list[str]) -> None:
    runs = _load_runs()
    info = machine()
    lines = ["# steerlab benchmark results", "",
             f"Page written by `.venv/bin/python benchmarks/run_all.py{' ' + ' '.join(argv) if argv else ''}` on "
             f"{info['date']}. This machine: {machine_line(info)}", "",
             "Each figure below is a median of runs measured side by side in one process (see each report's "
             "own command and machine line). Re-run one benchmark with `--only NAME`; the others keep their last "
             "results.", ""]
    head = headlines()
    if head:
        lines += ["## Headline ratios", "", *head, ""]
    lines += ["## Runs", "", "| benchmark | what | command | wall time | status | when (commit) |",
              "|---|---|---|---:|---|---|"]
    for b in BENCHMARKS:
        r = runs.get(b.name, {})
        if "rc" in r:
            status = "ok" if r["rc"] == 0 else f"failed (exit {r['rc']})"
            wall, when = f"{r['seconds'] / 60:.1f} min", f"{r['date']} ({r['commit']})"
        else:
            status, wall, when = r.get("last_attempt", "not run by run_all"), "-", "-"
        lines.append(f"| {b.name} | {b.what} | `{b.shown()}` | {wall} | {status} | {when} |")
    for b in BENCHMARKS:
        for stem in b.reports:
            path = RESULTS / f"{stem}.md"
            if path.exists():
                lines += ["", _demote(path.read_text().strip()), ""]
                if "Machine:" not in path.read_text():
                    lines += [f"(Report from before `run_all.py`; no machine line. Re-run: `--only {b.name}`.)", ""]
    PAGE.write_text("\n".join(lines).rstrip() + "\n")
    print(f"[run_all] wrote {PAGE.relative_to(ROOT)}")


def main() -> int:
    names = [b.name for b in BENCHMARKS]
    parser = argparse.ArgumentParser(description="Run every benchmark and write benchmarks/RESULTS.md.")
    parser.add_argument("--only", nargs="+", choices=names, metavar="NAME", help="run only these")
    parser.add_argument("--skip", nargs="+", choices=names, metavar="NAME", default=[], help="run all but these")
    parser.add_argument("--collect", action="store_true", help="run nothing; rebuild RESULTS.md")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args()
    if args.list:
        for b in BENCHMARKS:
            print(f"{b.name:<22} ~{b.minutes:>3.0f} min  {b.what}\n{'':<30}{b.shown()}")
        print(f"{'total':<22} ~{sum(b.minutes for b in BENCHMARKS):>3.0f} min")
        return 0
    ok = True
    if not args.collect:
        chosen = [b for b in BENCHMARKS if (args.only is None or b.name in args.only) and b.name not in args.skip]
        runs = _load_runs()
        for bench in chosen:
            ok &= run(bench, runs)
            RESULTS.mkdir(parents=True, exist_ok=True)
            RUNS.write_text(json.dumps(runs, indent=2) + "\n")
    write_page(sys.argv[1:])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
