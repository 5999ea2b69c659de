"""ActAdd's quantitative checks on the embedded model, in one run:

- topic steering: share of sampled completions of a neutral prompt that mention weddings,
  unsteered vs ActAdd " weddings" - "" at several layers;
- off-target perplexity: steered / unsteered perplexity on held-out documents binned by wedding
  relevance (first n positions left out);
- knowledge kept: P@1 / P@5 on fact completions, steered vs unsteered;
- A/B accuracy on the general-knowledge quiz under a CAA sentiment vector at multipliers -4..4.

Run: .venv/bin/python benchmarks/capability_kept.py [--samples 30]   (writes benchmarks/results/capability.md)
"""

from __future__ import annotations

import argparse
import random
import time

from common import save_report

import steerlab
from steerlab import datasets
from steerlab.evaluate import capability
from steerlab.methods import actadd, caa

PROMPT = "I went up to my friend and said"
# SmolLM2 adds no BOS, so in raw text ActAdd's position 0 is the user's first token (an attention
# sink with a huge norm): injecting there breaks the model. Every measurement here therefore uses the
# chat frame, where the shared template prefix gives S = 0 and the injection lands on the user turn.
USER = "Write a few sentences."
SAMPLING = dict(do_sample=True, temperature=1.0, top_p=0.3, frequency_penalty=1.0, max_new_tokens=40)


def documents(seed: int = 0) -> list[str]:
    """Held-out documents of five sentences, 0..5 of them about weddings (built-in test half)."""
    _, test = datasets.split(datasets.builtin("weddings"))
    rng = random.Random(seed)
    docs = []
    for k in range(6):
        for _ in range(6):
            picks = rng.sample(test, 5)
            sentences = [p.positive if i < k else p.negative for i, p in enumerate(picks)]
            rng.shuffle(sentences)
            docs.append(" ".join(sentences))
    return docs


def main() -> None:
    parser = argparse.ArgumentParser(description="ActAdd's capability checks on the embedded model.")
    parser.add_argument("--samples", type=int, default=30, help="sampled completions per condition")
    args = parser.parse_args()
    t0 = time.time()
    lm = steerlab.load_model()
    lines = [f"# Capability kept on {lm.name}", ""]
    n = args.samples
    base = lm.generate([PROMPT] * n, seed=0, **SAMPLING)
    share = lambda texts: sum(capability.relevance(t) > 0 for t in texts) / len(texts)  # noqa: E731
    lines += ["## Topic steering: share of completions mentioning weddings", "",
              f'Prompt "{PROMPT}" as a user turn, {n} samples each (temperature 1, top-p 0.3, frequency penalty 1).',
              "",
              "| condition | share |", "|---|---:|", f"| unsteered | {share(base):.2f} |"]
    best = None
    for layer in (4, 8, 12, 16, 20):
        vec = actadd.extract(lm, "weddings", "", layer, coeff=4.0, chat=True)
        texts = lm.generate([PROMPT] * n, seed=0, steering=actadd.ActAddSteering(vec), **SAMPLING)
        s = share(texts)
        lines.append(f"| ActAdd 'weddings' - '' at block {layer}, c=4 | {s:.2f} |")
        if best is None or s > best[0]:
            best = (s, layer, vec)
    s, layer, vec = best
    steering = actadd.ActAddSteering(vec)
    docs = documents()
    res = capability.perplexity_ratio_by_relevance(lm, docs, steering, skip_first=vec.meta["n_positions"],
                                                   user_prompt=USER)
    lines += ["", f"## Off-target perplexity (ActAdd at block {layer})", "",
              f"{len(docs)} documents of 5 sentences with 0-5 about weddings, each scored as the assistant's reply "
              f"to \"{USER}\"; the first {vec.meta['n_positions']} positions (the steered ones) are left out.", "",
              "| relevance bin | documents | perplexity ratio steered/unsteered |",
              "|---|---:|---:|"]
    for (lo, hi), r, c in zip(res.bins, res.ratio, res.count, strict=True):
        lines.append(f"| [{lo:.2f}, {min(hi, 1):.2f}) | {c} | {'-' if r is None else f'{r:.3f}'} |")
    plain = capability.next_token_accuracy(lm, user_prompt=USER)
    steered = capability.next_token_accuracy(lm, steering=steering, user_prompt=USER)
    lines += ["", "## Knowledge kept: next-token accuracy on 40 fact completions (each opens the assistant's reply)",
              "",
              "| condition | P@1 | P@5 |", "|---|---:|---:|",
              f"| unsteered | {plain[1]:.2f} | {plain[5]:.2f} |",
              f"| ActAdd weddings (block {layer}) | {steered[1]:.2f} | {steered[5]:.2f} |"]
    train, _ = datasets.split(datasets.to_open_answers(datasets.builtin("sentiment")))
    sv = caa.extract(lm, train, 8, progress=False)
    acc = capability.ab_accuracy(lm, None, sv, [-4.0, -2.0, 0.0, 2.0, 4.0], 8)
    lines += ["", "## General-knowledge A/B accuracy (40 items) under the CAA sentiment vector, block 8", "",
              "| multiplier | accuracy |", "|---:|---:|"] + [f"| {m:+g} | {a:.2f} |" for m, a in acc.items()]
    lines += ["", f"Total {time.time() - t0:.0f} s."]
    save_report("capability", lines)


if __name__ == "__main__":
    main()
