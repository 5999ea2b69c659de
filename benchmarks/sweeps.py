"""Layer sweeps of p(matching) on the embedded model, for docs/RESULTS.md.

For each dataset, a CAA vector per layer from the first 64 training pairs, scored on the first 40
test pairs at multipliers -8, -2, +2, +8, once on the answer letters "(A)"/"(B)" (CAA's format) and
once on the option texts (datasets.to_open_answers). Writes benchmarks/results/sweeps.md and one
.md/.json/.png per sweep.

Run: .venv/bin/python benchmarks/sweeps.py [--model NAME] [--shared ../shared/data]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import save_report

import steerlab
from steerlab import datasets
from steerlab.evaluate.sweep import layer_sweep


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None)
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--train", type=int, default=64)
    parser.add_argument("--test", type=int, default=40)
    args = parser.parse_args()
    lm = steerlab.load_model(args.model)
    sources = {"caa/sycophancy": Path(args.shared) / "caa" / "sycophancy_generate.json",
               "builtin/sentiment": "sentiment", "builtin/refusal": "refusal"}
    layers = list(range(2, lm.num_layers - 1, 3))
    out = Path(args.out)
    lines = [f"# Layer sweeps on {lm.name}", "",
             f"CAA mean-difference vectors from {args.train} training pairs, p(matching) on {args.test} held-out "
             "pairs (whole-answer log-probabilities), multipliers -8/-2/+2/+8. Both parts balanced by the matching "
             "letter; A/B vectors counterbalanced; each layer against a random direction of its norm.", ""]
    for label, source in sources.items():
        for form in ("letters", "open"):
            pairs = datasets.load(source)
            if form == "open":
                pairs = datasets.to_open_answers(pairs)
            train, test = datasets.split(pairs, n_train=args.train, n_test=args.test)  # balanced by letter
            t = time.time()
            result = layer_sweep(lm, train, test, layers, [-8, -2, 2, 8],
                                 dataset=f"{label} ({form})", progress=False)
            name = f"sweep-{label.replace('/', '-')}-{form}"
            result.save(out, name)
            lines += [f"## {label}, answers as {form} ({time.time() - t:.0f} s)", "",
                      f"Unsteered p(matching) = {result.baseline:.3f}. Recommended layer {result.recommended_layer}: "
                      f"{result.how_chosen}.", "", result.table(), "", f"![{name}]({name}.png)", ""]
            print("\n".join(lines[-7:]), flush=True)
    save_report("sweeps" if args.model is None else f"sweeps-{lm.name}", lines, out_dir=out)


if __name__ == "__main__":
    main()
