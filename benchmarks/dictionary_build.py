"""How fast a concept dictionary is built: the shared-prefix read against reading every stimulus whole.

A template stimulus is "<template words> <concept>": thousands of concepts after the same few words.
``steerlab.pace.dictionary`` reads the concept tokens after one pass over each template's words (the
prefix's KV cache repeated for a batch of concepts) and ends each row at its last concept token; the
baseline is what it did before, :func:`steerlab.capture.capture` over every stimulus sentence whole.
Both run in this process on the same concepts, alternating, ``--repeats`` times; the report gives
each one's concepts per second, the ratio per repeat, and how far apart the two dictionaries' atoms
are (they should agree to float rounding).

Run: .venv/bin/python benchmarks/dictionary_build.py [--model smollm2-135m] [--concepts 2000] [--layers 15]
Writes benchmarks/results/dictionary-build-<model>.md and .json.
"""

from __future__ import annotations

import argparse
import statistics
import time
from unittest import mock

import torch
from common import save_report

import steerlab
from steerlab.capture import capture
from steerlab.pace import dictionary as dictionary_module
from steerlab.pace.concepts import concept_words


def _whole_rows(lm, ids_rows, masks, layers, batch_size):
    """The baseline: every stimulus sentence read whole (the build before the shared-prefix read)."""
    return capture(lm, ids_rows, layers, positions=masks, batch_size=batch_size, progress=False)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--concepts", type=int, default=2000)
    parser.add_argument("--layers", default="15")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    lm = steerlab.load_model(args.model)
    layers = [int(x) for x in args.layers.split(",")]
    words = concept_words(args.concepts)
    ids_rows, masks, _ = dictionary_module._stimulus_rows(lm, words, dictionary_module.TEMPLATES)
    whole_tokens = sum(len(r) for r in ids_rows)

    def build(baseline: bool) -> tuple[float, steerlab.pace.ConceptDictionary]:
        patch = (mock.patch.object(dictionary_module, "_read_concept_tokens", _whole_rows) if baseline
                 else mock.patch.object(dictionary_module, "_read_concept_tokens",
                                        dictionary_module._read_concept_tokens))
        with patch:
            t = time.perf_counter()
            d = dictionary_module.build_dictionary(lm, words, layers, batch_size=args.batch_size, progress=False)
            return time.perf_counter() - t, d

    build(False)  # warm-up: first calls allocate and pick kernels
    times: dict[str, list[float]] = {"shared": [], "whole": []}
    dicts = {}
    for _ in range(args.repeats):
        for name in ("whole", "shared"):
            seconds, dicts[name] = build(name == "whole")
            times[name].append(seconds)
    gap = max(float((dicts["shared"].atoms[k].float() - dicts["whole"].atoms[k].float()).abs().max()) for k in layers)
    cos = min(float(torch.nn.functional.cosine_similarity(dicts["shared"].atoms[k].float(),
                                                          dicts["whole"].atoms[k].float(), dim=1).min())
              for k in layers)
    ratios = [w / s for w, s in zip(times["whole"], times["shared"], strict=True)]
    med = {k: statistics.median(v) for k, v in times.items()}
    lines = [
        f"# Dictionary build: shared-prefix read vs whole sentences ({lm.name}, {len(words)} concepts, "
        f"blocks {args.layers}, {len(ids_rows)} stimulus sentences)",
        "",
        "| read | median s | concepts/s | repeats (s) |",
        "|---|---:|---:|---|",
        f"| whole sentences (before) | {med['whole']:.2f} | {len(words) / med['whole']:.0f} | "
        f"{', '.join(f'{x:.2f}' for x in times['whole'])} |",
        f"| shared prefix, rows end at the concept | {med['shared']:.2f} | {len(words) / med['shared']:.0f} | "
        f"{', '.join(f'{x:.2f}' for x in times['shared'])} |",
        "",
        f"Speed-up per repeat (whole / shared, same repeat): median {statistics.median(ratios):.2f}x "
        f"(min {min(ratios):.2f}x, max {max(ratios):.2f}x). Tokens through the model: {whole_tokens} whole.",
        f"The two dictionaries' atoms differ by at most {gap:.2e} (unit-norm atoms; lowest cosine {cos:.6f}).",
    ]
    save_report(f"dictionary-build-{lm.name}", lines,
                {"model": lm.name, "concepts": len(words), "layers": layers, "seconds": times,
                 "speedup": ratios, "max_atom_difference": gap, "min_atom_cosine": cos})


if __name__ == "__main__":
    main()
