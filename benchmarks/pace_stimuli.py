"""Template vs model-written concept stimuli: which dictionary puts related concepts next to each other?

160 probe words in 20 groups of 8 (animals, colours, weekdays, months, countries, ...). Two dictionaries
on the same model and block, one atom per word: one from the six project templates, one from sentences
written by a local instruct model (``steerlab.pace.stimuli.model_stimuli``, cached and resumable). The
score is neighbour purity: the share of each word's 5 nearest atoms (cosine, among the 160) that
belong to its own group; chance is 7/159 = 0.044. Reported with a 95% bootstrap interval over words
and the paired difference.

Run: .venv/bin/python benchmarks/pace_stimuli.py [--model smollm2-135m] [--writer qwen2.5-coder-0.5b]
Writes benchmarks/results/pace-stimuli.md and .json (pace-stimuli-<model>-<writer> for other ones).
"""

from __future__ import annotations

import argparse
import time

import torch
from common import save_report

import steerlab
from steerlab.evaluate.stats import bootstrap_ci
from steerlab.pace import build_dictionary
from steerlab.pace.stimuli import model_stimuli

MODEL, WRITER = "smollm2-135m", "qwen2.5-coder-0.5b"
GROUPS = {
    "animals": "dog cat horse cow sheep lion tiger rabbit",
    "colours": "red blue green yellow purple orange pink brown",
    "feelings": "happy sad angry afraid proud jealous nervous lonely",
    "countries": "france germany italy spain japan china india brazil",
    "weekdays": "monday tuesday wednesday thursday friday saturday sunday weekend",
    "months": "january february march april june july august september",
    "fruit": "apple banana cherry grape lemon mango peach pear",
    "vehicles": "car truck bus bicycle train airplane boat motorcycle",
    "jobs": "doctor teacher lawyer nurse engineer farmer pilot chef",
    "body": "hand foot head heart knee shoulder elbow finger",
    "weather": "rain snow wind storm thunder fog sunshine hail",
    "furniture": "chair table sofa bed desk shelf cabinet stool",
    "instruments": "piano guitar violin drum flute trumpet cello harp",
    "numbers": "two three four five six seven eight nine",
    "sports": "football tennis basketball golf hockey baseball cricket rugby",
    "clothes": "shirt trousers jacket dress skirt hat sock coat",
    "tableware": "knife fork spoon plate bowl cup pan kettle",
    "family": "mother father sister brother uncle aunt cousin grandmother",
    "materials": "gold silver iron copper steel wood glass plastic",
    "buildings": "house church school hospital castle tower bridge barn",
}


def purity(atoms: torch.Tensor, group: torch.Tensor, k: int = 5) -> torch.Tensor:
    """Per word: share of its k nearest atoms (cosine, itself excluded) in its own group."""
    sims = atoms @ atoms.T
    sims.fill_diagonal_(-2.0)
    near = sims.topk(k, dim=1).indices
    return (group[near] == group[:, None]).float().mean(1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--writer", default=WRITER)
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--per-concept", type=int, default=8)
    args = parser.parse_args()

    words = [w for ws in GROUPS.values() for w in ws.split()]
    group = torch.tensor([i for i, ws in enumerate(GROUPS.values()) for _ in ws.split()])
    writer = steerlab.load_model(args.writer)
    t0 = time.perf_counter()
    sentences = model_stimuli(writer, words, per_concept=args.per_concept, batch_size=16, shard=32)
    write_s = time.perf_counter() - t0
    del writer
    counts = torch.tensor([len(sentences[w]) for w in words], dtype=torch.float)
    lm = steerlab.load_model(args.model)
    built = {"templates": build_dictionary(lm, words, [args.layer]),
             "model-written": build_dictionary(lm, words, [args.layer], sentences=sentences)}
    scores = {name: purity(d.atoms[args.layer].float(), group) for name, d in built.items()}
    diff = scores["model-written"] - scores["templates"]
    # The same on only the words the writer produced usable sentences for (the rest fall back to
    # the templates in the written dictionary), neighbours searched among those words.
    have = counts > 0
    subset = {name: purity(d.atoms[args.layer].float()[have], group[have]) for name, d in built.items()}
    sub_diff = subset["model-written"] - subset["templates"]
    report = {
        "model": lm.name, "writer": args.writer, "layer": args.layer, "words": len(words), "chance": 7 / 159,
        "writing_seconds": write_s, "sentences_per_word": {"mean": float(counts.mean()), "min": int(counts.min())},
        "words_on_templates": len(words) - built["model-written"].meta["concepts_with_written_stimuli"],
        "purity": {name: {"mean": float(s.mean()), "ci95": bootstrap_ci(s)} for name, s in scores.items()},
        "difference": {"mean": float(diff.mean()), "ci95": bootstrap_ci(diff)},
        "written_words_only": {
            "words": int(have.sum()),
            **{name: {"mean": float(s.mean()), "ci95": bootstrap_ci(s)} for name, s in subset.items()},
            "difference": {"mean": float(sub_diff.mean()), "ci95": bootstrap_ci(sub_diff)}},
        "per_group": {name: {g: float(s[group == i].mean()) for i, g in enumerate(GROUPS)}
                      for name, s in scores.items()},
        "examples": {w: sentences[w][:3] for w in ("dog", "friday", "france", "sad")},
    }
    lines = [f"# Concept stimuli: templates vs written by {args.writer} ({lm.name}, block {args.layer})", "",
             f"{len(words)} probe words in {len(GROUPS)} groups of 8; neighbour purity = share of a word's 5 nearest "
             f"atoms in its own group (chance {7 / 159:.3f}); 95% bootstrap intervals over words.", "",
             "| stimuli | neighbour purity@5 [95% CI] |", "|---|---|"]
    for name, r in report["purity"].items():
        lines.append(f"| {name} | {r['mean']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] |")
    w = report["written_words_only"]
    lines += ["", f"On the {w['words']} words with usable written sentences only: templates "
              f"{w['templates']['mean']:.3f} [{w['templates']['ci95'][0]:.3f}, {w['templates']['ci95'][1]:.3f}], "
              f"model-written {w['model-written']['mean']:.3f} [{w['model-written']['ci95'][0]:.3f}, "
              f"{w['model-written']['ci95'][1]:.3f}]; difference {w['difference']['mean']:+.3f} "
              f"[{w['difference']['ci95'][0]:+.3f}, {w['difference']['ci95'][1]:+.3f}]."]
    d = report["difference"]
    lines += ["", f"Model-written minus templates: {d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]. "
              f"Writing took {write_s:.0f} s ({counts.mean():.1f} usable sentences per word, fewest "
              f"{int(counts.min())}; "
              "0 s when read back from the cache).", "",
              "| group | templates | model-written |", "|---|---:|---:|"]
    lines += [f"| {g} | {report['per_group']['templates'][g]:.2f} | {report['per_group']['model-written'][g]:.2f} |"
              for g in GROUPS]
    lines += ["", "Examples of written sentences:", ""]
    lines += [f"- {w}: " + " / ".join(s) for w, s in report["examples"].items()]
    # Another model or writer gets its own report beside the default one.
    save_report("-".join(["pace-stimuli"] + [name for name, default in ((lm.name, MODEL), (args.writer, WRITER))
                                             if name != default]), lines, report)


if __name__ == "__main__":
    main()
