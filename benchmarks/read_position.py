"""Where to read a CAA vector from text answers: the same training pairs read at four token
positions, and p(matching) on held-out items at small multipliers, paired against multiplier 0.

Readings (output of block L, mean difference positive - negative over the training pairs):
``last`` answer token (steerlab's rule for text pairs), ``first`` answer token, ``mean`` over the
answer's tokens, and ``divergence``: the first token where the two answers differ (for A/B items
that is the letter). A vector that steers its own way raises p(matching) at x>0 on most items and
lowers it at x<0.

Run: .venv/bin/python benchmarks/read_position.py [--model smollm2-135m] [--layer 8] [--data sentiment]
Writes benchmarks/results/read-position-<model>-<data>.md/.json.
"""

from __future__ import annotations

import argparse

import torch
from common import save_report

import steerlab
from steerlab import datasets
from steerlab.evaluate.behaviour import answer_logprobs, p_matching
from steerlab.vector import SteeringVector


def divergence_chars(pair: datasets.ContrastivePair) -> tuple[int, int]:
    """First character where the answers differ (the shorter one's last when one extends the other)."""
    pos, neg = pair.positive, pair.negative
    k = next((i for i, (a, b) in enumerate(zip(pos, neg, strict=False)) if a != b), min(len(pos), len(neg)))
    return min(k, len(pos.rstrip()) - 1), min(k, len(neg.rstrip()) - 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--layer", type=int, default=8)
    parser.add_argument("--data", default="sentiment", help="a built-in A/B set, read as option texts")
    parser.add_argument("--test", type=int, default=48, help="held-out items scored")
    parser.add_argument("--multipliers", default="-2,-1,1,2")
    args = parser.parse_args()

    lm = steerlab.load_model(args.model)
    layer = args.layer
    train, test = datasets.split(datasets.to_open_answers(datasets.builtin(args.data)))
    test = test[: args.test]

    @torch.no_grad()
    def hidden(pair: datasets.ContrastivePair, answer: str, char: int):
        a = lm.render_answer(pair.prompt, answer)
        out = lm.model(input_ids=torch.tensor([a.ids], device=lm.device), output_hidden_states=True)
        h = out.hidden_states[layer + 1][0].float().cpu()  # hidden_states[0] is the embedding output
        start, end = a.answer_start, a.token_at(a.answer_char + len(answer.rstrip()) - 1)
        return {"last": h[end], "first": h[start], "mean": h[start:end + 1].mean(0),
                "divergence": h[a.token_at(a.answer_char + char)]}

    diffs: dict[str, list[torch.Tensor]] = {"last": [], "first": [], "mean": [], "divergence": []}
    for pair in train:
        cp, cn = divergence_chars(pair)
        hp, hn = hidden(pair, pair.positive, cp), hidden(pair, pair.negative, cn)
        for k in diffs:
            diffs[k].append(hp[k] - hn[k])

    mults = [float(x) for x in args.multipliers.split(",")]
    variants = [0.0, *mults]
    head = " | ".join(f"x{m:+g}" for m in mults)
    lines = [f"# Read position for text-pair CAA: {lm.name}, block {layer}, {args.data} (option texts)", "",
             f"{len(train)} training pairs, {len(test)} held-out items; mean change of p(matching) from x0 "
             "(paired, ± s.e.) and the number of items that went up.", "",
             f"| read at | norm | {head} |", "|---|---:|" + "---|" * len(mults)]
    data = {"model": lm.name, "layer": layer, "data": args.data, "train": len(train), "test": len(test), "rows": {}}
    for name, rows in diffs.items():
        v = torch.stack(rows).mean(0)
        vec = SteeringVector({layer: v}, lm.name, v.shape[0])
        p = p_matching(answer_logprobs(lm, test, vec, variants, progress=False))  # [V, N]
        change = p[1:] - p[0]
        se = change.std(1) / len(test) ** 0.5
        cells = [f"{float(c.mean()):+.3f} ± {float(s):.3f} ({int((c > 0).sum())}/{len(test)})"
                 for c, s in zip(change, se, strict=True)]
        lines.append(f"| {name} | {float(v.norm()):.1f} | " + " | ".join(cells) + " |")
        data["rows"][name] = {"norm": float(v.norm()), "mean_change": change.mean(1).tolist(),
                              "se": se.tolist(), "up": (change > 0).sum(1).tolist()}
    save_report(f"read-position-{args.model}-{args.data}", lines, data)


if __name__ == "__main__":
    main()
