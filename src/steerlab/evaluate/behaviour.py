"""Behaviour scores for A/B (or any two-answer) items under steering.

Each answer is scored by the log-probability of its *whole string* given the prompt (``"(A)"``,
``" Yes"``, ...), summed over its tokens, so tokenizers that merge ``"(A"`` into one token are
handled. From the two log-probabilities:

- ``p_matching = p(pos) / (p(pos) + p(neg))`` (CAA's behaviour score);
- ``propensity = logp(pos) - logp(neg)`` (Tan et al.: the logit difference for single-token
  answers, the summed log-probability difference for multi-token ones).

Steering starts at the assistant turn, so everything before it is the same for every answer,
multiplier and layer. With ``share_prefix=True`` (default) each item's prefix is run once and its
KV cache is shared by all variants, which are then one batched forward over the short suffixes.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..datasets import ContrastivePair
from ..errors import InputError
from ..intervene import Window, add, apply_interventions
from ..progress import progress_bar
from ..tokens import pad_ids
from ..vector import SteeringVector

if TYPE_CHECKING:
    from ..model import SteerModel


@dataclass
class _Item:
    ids: list[list[int]]  # per answer: full token ids
    answer_start: list[int]  # per answer: first token of the answer
    prefix: int  # tokens before the assistant turn (shared by both answers)


def _prepare(lm: SteerModel, pair: ContrastivePair, chat: bool, system: str | None) -> _Item:
    ids, starts, prefixes = [], [], []
    for answer in (pair.positive, pair.negative):
        answered = lm.render_answer(pair.prompt, answer, chat=chat, system=system)
        ids.append(answered.ids)
        starts.append(answered.answer_start)
        prefixes.append(answered.turn_start)
    prefix = min(prefixes)
    if ids[0][:prefix] != ids[1][:prefix]:
        raise InputError("The two answers change the tokens before the assistant turn; cannot score them.")
    return _Item(ids, starts, max(prefix, 1))


@dataclass
class Variant:
    """One steering condition: ``multiplier`` times ``vector`` (default: the call's vector) at
    ``layer`` (default: every layer of the vector)."""

    multiplier: float
    layer: int | None = None
    vector: SteeringVector | None = None


def _interventions(default: SteeringVector | None, variants: Sequence[Variant], n_answers: int, start):
    """Per-row strengths: rows are (variant, answer) in variant-major order."""
    vectors: list[SteeringVector] = []
    for v in variants:
        vec = v.vector or default
        if vec is not None and v.multiplier != 0 and all(vec is not w for w in vectors):
            vectors.append(vec)
    ivs = []
    for vec in vectors:
        for layer, tensor in vec.layers.items():
            strength = torch.tensor([v.multiplier if (v.vector or default) is vec and v.layer in (None, layer) else 0.0
                                     for v in variants for _ in range(n_answers)])
            if strength.abs().sum() > 0:
                ivs.append(add(layer, tensor, strength=strength, window=Window(start), site=vec.site))
    return ivs


def _answer_logprob(logits: torch.Tensor, rows: list[list[int]], starts: list[int], offset: int) -> torch.Tensor:
    """Sum of log p(answer tokens); ``logits[:, j]`` is at token ``offset + j`` and predicts the next."""
    logp = logits.float().log_softmax(-1)
    out = []
    for r, (ids, start) in enumerate(zip(rows, starts, strict=True)):
        targets = torch.tensor(ids[start:], device=logp.device)
        cols = torch.arange(start - 1, len(ids) - 1, device=logp.device) - offset
        out.append(logp[r, cols, targets].sum())
    return torch.stack(out)


@contextmanager
def float32_logits(lm: SteerModel):
    """Within the block, the model's output layer computes its logits in float32 (a no-op for float32
    models and for output layers whose weights are offloaded)."""
    head = lm.model.get_output_embeddings()
    weight = getattr(head, "weight", None)
    if weight is None or weight.dtype == torch.float32 or weight.device.type == "meta":
        yield
        return
    w = weight.float()
    bias = head.bias.float() if getattr(head, "bias", None) is not None else None

    def hook(module, args, output):
        return torch.nn.functional.linear(args[0].float(), w, bias)

    handle = head.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def answer_logprobs(lm: SteerModel, pairs: Sequence[ContrastivePair], vector: SteeringVector | None = None,
                    variants: Sequence[Variant | float] = (0.0,), *, chat: bool = True, system: str | None = None,
                    share_prefix: bool = True, progress: bool | None = None) -> torch.Tensor:
    """Log-probabilities ``[V, N, 2]`` of (positive, negative) answer for each variant and item."""
    resolved = [v if isinstance(v, Variant) else Variant(float(v)) for v in variants]
    out = torch.empty(len(resolved), len(pairs), 2)
    with float32_logits(lm):
        for n, pair in enumerate(progress_bar(pairs, "score", progress=progress)):
            out[:, n] = _score_item(lm, pair, vector, resolved, chat, system, share_prefix)
    return out


def _score_item(lm: SteerModel, pair: ContrastivePair, vector: SteeringVector | None, variants: list[Variant],
                chat: bool, system: str | None, share_prefix: bool) -> torch.Tensor:
    """``[V, 2]`` log-probabilities of one item's two answers under every variant."""
    item = _prepare(lm, pair, chat, system)
    rows = [ids for _ in variants for ids in item.ids]
    starts = [s for _ in variants for s in item.answer_start]
    ivs = _interventions(vector, variants, 2, item.prefix)
    if share_prefix:
        prefix = torch.tensor([item.ids[0][: item.prefix]], device=lm.device)
        cache = lm.returned_cache(lm.model(input_ids=prefix, use_cache=True))
        cache.batch_repeat_interleave(len(rows))
        suffix, mask = pad_ids([r[item.prefix:] for r in rows], lm.tokenizer.pad_token_id, "right", lm.device)
        past = torch.ones(len(rows), item.prefix, dtype=mask.dtype, device=mask.device)
        with apply_interventions(lm, ivs):
            logits = lm.model(**lm.continuation_inputs(suffix, mask, past, cache)).logits
        offset = item.prefix  # answers start after the prefix, so its own logits are never needed
    else:
        ids, mask = pad_ids(rows, lm.tokenizer.pad_token_id, "right", lm.device)
        with apply_interventions(lm, ivs):
            logits = lm.model(**lm.forward_inputs(ids, mask)).logits
        offset = 0
    return _answer_logprob(logits, rows, starts, offset).view(len(variants), 2).cpu()


def p_matching(logprobs: torch.Tensor) -> torch.Tensor:
    """``p(pos) / (p(pos) + p(neg))`` from ``[..., 2]`` log-probabilities."""
    return torch.sigmoid(logprobs[..., 0] - logprobs[..., 1])


def propensity(logprobs: torch.Tensor) -> torch.Tensor:
    return logprobs[..., 0] - logprobs[..., 1]
