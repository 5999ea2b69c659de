"""What steering keeps: perplexity on held-out text by topic relevance (ActAdd's off-target test),
next-token accuracy P@K on fact completions, and A/B accuracy on a general-knowledge set.
The fact and quiz sets are written by this project (``scripts/make_capability_sets.py``);
user files in the same formats work too."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..datasets import ContrastivePair, load_ab
from ..errors import InputError
from ..steering import as_steering, steer
from ..tokens import Rendered, encode_texts
from .behaviour import Variant, answer_logprobs, p_matching

if TYPE_CHECKING:
    from ..model import SteerModel

WEDDING_KEYWORDS = frozenset(
    "wedding weddings bride brides groom grooms married marry marriage vows vow ring rings bridesmaid bridesmaids "
    "honeymoon ceremony reception bouquet engagement engaged newlyweds officiant proposal bridal elope eloped "
    "tuxedo veil aisle groomsmen".split())


def _data(name: str) -> Path:
    return Path(str(resources.files("steerlab.evaluate").joinpath("data", name)))


def load_facts(path: str | Path | None = None) -> list[tuple[str, str]]:
    """``{"prompt", "answer"}`` JSONL; the answer's first token is the target."""
    with Path(path or _data("facts.jsonl")).open() as fh:
        return [(d["prompt"], d["answer"]) for d in map(json.loads, filter(str.strip, fh))]


def load_general_knowledge(path: str | Path | None = None) -> list[ContrastivePair]:
    return load_ab(path or _data("general_knowledge.jsonl"))


def relevance(text: str, keywords: frozenset[str] = WEDDING_KEYWORDS) -> float:
    """Share of the text's words that are topic keywords."""
    words = re.findall(r"[a-z']+", text.lower())
    return sum(w in keywords for w in words) / max(len(words), 1)


def _batch(lm: SteerModel, texts: Sequence[str], user_prompt: str | None):
    """Texts as raw text, or (``user_prompt`` given) as the start of the assistant's reply to it;
    returns the batch and, per row, the first token of the text itself."""
    if user_prompt is None:
        rendered = [Rendered(t, 0, len(t), None) for t in texts]
        starts = [0] * len(texts)
    else:
        answered = [lm.render_answer(user_prompt, t) for t in texts]
        rendered = [a.rendered for a in answered]
        starts = [a.answer_start for a in answered]
    batch = encode_texts(lm.tokenizer, rendered, padding_side="right", device=lm.device)
    return batch, starts


@torch.no_grad()
def token_nll(lm: SteerModel, texts: Sequence[str], steering=None, *, skip_first: int = 0,
              user_prompt: str | None = None, batch_size: int = 8) -> list[float]:
    """Mean negative log-likelihood per text of its tokens, leaving out the first ``skip_first``
    positions of the sequence (and, with ``user_prompt``, the chat frame before the text)."""
    out = []
    steering = as_steering(steering)
    pads = any(getattr(s, "mode", None) == "pad" for s in steering.parts)
    for i in range(0, len(texts), batch_size):
        batch, starts = _batch(lm, texts[i: i + batch_size], user_prompt)
        if pads:
            raise InputError("token_nll compares steered and unsteered scores of the same tokens; use overlay mode.")
        batch = steering.transform_batch(lm, batch)
        with steer(lm, steering, batch=batch):
            logits = lm.model(**lm.forward_inputs(batch.input_ids, batch.attention_mask)).logits.float()
        logp = logits[:, :-1].log_softmax(-1).gather(-1, batch.input_ids[:, 1:, None])[..., 0]
        for r in range(len(batch)):
            n = int(batch.lengths[r])
            start = max(skip_first, starts[r], 1)
            if start >= n:
                raise InputError(f"Text {i + r} has {n} tokens, none left after skipping the first {start}.")
            out.append(float(-logp[r, start - 1: n - 1].mean()))
    return out


@dataclass
class PerplexityByRelevance:
    bins: list[tuple[float, float]]
    ratio: list[float | None]  # mean steered/unsteered perplexity ratio per bin
    count: list[int]
    per_text: list[tuple[float, float]]  # (relevance, ratio)


def perplexity_ratio_by_relevance(lm: SteerModel, texts: Sequence[str], steering, *, skip_first: int = 0,
                                  user_prompt: str | None = None, keywords: frozenset[str] = WEDDING_KEYWORDS,
                                  bins: Sequence[float] = (0.0, 0.01, 0.05, 0.1, 0.2, 1.01)) -> PerplexityByRelevance:
    """ActAdd's off-target test: perplexity ratio (steered / unsteered) per relevance bin; the
    first ``skip_first`` positions (where ActAdd injects) are left out of both scores."""
    base = token_nll(lm, texts, None, skip_first=skip_first, user_prompt=user_prompt)
    steered = token_nll(lm, texts, steering, skip_first=skip_first, user_prompt=user_prompt)
    per_text = [(relevance(t, keywords), float(torch.tensor(s - b).exp()))
                for t, s, b in zip(texts, steered, base, strict=True)]
    edges = list(bins)
    ratio, count = [], []
    for lo, hi in zip(edges[:-1], edges[1:], strict=False):
        vals = [r for rel, r in per_text if lo <= rel < hi]
        count.append(len(vals))
        ratio.append(sum(vals) / len(vals) if vals else None)
    return PerplexityByRelevance(list(zip(edges[:-1], edges[1:], strict=False)), ratio, count, per_text)


@torch.no_grad()
def next_token_accuracy(lm: SteerModel, facts: Sequence[tuple[str, str]] | None = None, steering=None, *,
                        ks: Sequence[int] = (1, 5), user_prompt: str | None = None,
                        batch_size: int = 16) -> dict[int, float]:
    """P@K: share of fact prompts whose answer's first token is among the top K next tokens
    (with ``user_prompt``, each fact prompt opens the assistant's reply to it)."""
    facts = list(facts or load_facts())
    hits = {k: 0 for k in ks}
    steering = as_steering(steering)
    for i in range(0, len(facts), batch_size):
        chunk = facts[i: i + batch_size]
        batch, _ = _batch(lm, [p for p, _ in chunk], user_prompt)
        batch = steering.transform_batch(lm, batch)
        with steer(lm, steering, batch=batch):
            logits = lm.model(**lm.forward_inputs(batch.input_ids, batch.attention_mask)).logits
        last = logits[torch.arange(len(chunk)), batch.lengths.to(logits.device) - 1]
        top = last.topk(max(ks), -1).indices.cpu()
        for r, (_, answer) in enumerate(chunk):
            target = lm.tokenizer(answer, add_special_tokens=False)["input_ids"][0]
            for k in ks:
                hits[k] += int(target in top[r, :k].tolist())
    return {k: hits[k] / len(facts) for k in ks}


def ab_accuracy(lm: SteerModel, items: Sequence[ContrastivePair] | None = None, vector=None,
                multipliers: Sequence[float] = (0.0,), layer: int | None = None) -> dict[float, float]:
    """Share of A/B items whose right answer (the 'matching' one) is the likelier, per multiplier."""
    items = list(items or load_general_knowledge())
    lp = answer_logprobs(lm, items, vector, [Variant(m, layer) for m in multipliers])
    correct = (p_matching(lp) > 0.5).float().mean(1)
    return {float(m): float(c) for m, c in zip(multipliers, correct, strict=True)}
