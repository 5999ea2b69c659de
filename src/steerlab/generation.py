"""Batched (steered) generation with Hugging Face ``generate`` and the cached decoding it does."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch

from .intervene import Intervention, Window, apply_interventions
from .progress import progress_bar
from .steering import as_steering

if TYPE_CHECKING:
    from .model import SteerModel


class FrequencyPenalty:
    """OpenAI-style frequency penalty: ``logit -= penalty * count`` of each token generated so far."""

    def __init__(self, penalty: float, prompt_width: int) -> None:
        self.penalty = penalty
        self.prompt_width = prompt_width

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        generated = input_ids[:, self.prompt_width:]
        if generated.shape[1] == 0 or self.penalty == 0:
            return scores
        counts = torch.zeros_like(scores).scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
        return scores - self.penalty * counts


def _rows(value, sl: slice, n_total: int):
    if isinstance(value, (int, float, str)) or value is None:
        return value
    t = torch.as_tensor(value)
    return t[sl] if t.ndim == 1 and t.shape[0] == n_total else value


def _slice_intervention(iv: Intervention, sl: slice, n_total: int) -> Intervention:
    """The part of a per-row intervention that belongs to rows ``sl`` of the whole prompt list."""
    window = Window(_rows(iv.window.start, sl, n_total), _rows(iv.window.end, sl, n_total))
    return replace(iv, strength=_rows(iv.strength, sl, n_total), window=window)


@torch.no_grad()
def generate_ids(lm: SteerModel, batch, interventions: Sequence[Intervention], *, max_new_tokens: int,
                 do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, frequency_penalty: float = 0.0,
                 streamer=None, stopping_criteria: Sequence | None = None) -> torch.Tensor:
    """New token ids ``[B, new]`` for one prepared batch under ``interventions`` (already resolved for
    this batch). ``streamer``: a transformers streamer, given the new tokens of every row each step;
    ``stopping_criteria``: extra per-row criteria (rows they mark finished stop there)."""
    width = batch.input_ids.shape[1]
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=lm.tokenizer.pad_token_id)
    if do_sample:
        kwargs.update(temperature=temperature, top_p=top_p)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if frequency_penalty:
        from transformers import LogitsProcessorList

        kwargs["logits_processor"] = LogitsProcessorList([FrequencyPenalty(frequency_penalty, width)])
    if streamer is not None:
        kwargs["streamer"] = streamer
    if stopping_criteria:
        from transformers import StoppingCriteriaList

        kwargs["stopping_criteria"] = StoppingCriteriaList(stopping_criteria)
    model: Any = lm.model  # a causal LM class, which has generate() (PreTrainedModel alone does not)
    with apply_interventions(lm, interventions, batch=batch):
        out = model.generate(**batch.model_inputs(), **kwargs)
    return out[:, width:]


@torch.no_grad()
def generate(
    lm: SteerModel,
    prompts: str | Sequence[str],
    *,
    steering=None,
    max_new_tokens: int = 40,
    chat: bool = True,
    system: str | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    frequency_penalty: float = 0.0,
    seed: int | None = None,
    batch_size: int = 8,
    progress: bool | None = None,
) -> list[str]:
    """Complete each prompt, under ``steering`` if given (anything :func:`steerlab.steering.as_steering`
    takes). Per-row strengths given for the whole prompt list are split across internal batches.
    Returns the generated text only."""
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    steering = as_steering(steering)
    if seed is not None:
        torch.manual_seed(seed)
    outputs: list[str] = []
    starts = range(0, len(prompts), batch_size)
    for start in progress_bar(starts, "generate", progress=progress):
        sl = slice(start, start + batch_size)
        batch = lm.prepare(prompts[sl], chat=chat, system=system, padding_side="left")
        batch = steering.transform_batch(lm, batch)
        ivs = [_slice_intervention(iv, sl, len(prompts)) for iv in steering.for_batch(batch)]
        out = generate_ids(lm, batch, ivs, max_new_tokens=max_new_tokens, do_sample=do_sample,
                           temperature=temperature, top_p=top_p, frequency_penalty=frequency_penalty)
        outputs.extend(lm.tokenizer.decode(row, skip_special_tokens=True).strip() for row in out)
    return outputs
