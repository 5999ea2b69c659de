"""ActAdd pairs on vLLM, extracted per request in the front-end process.

An ActAdd pair (``"actadd": {"positive": ..., "negative": ..., "layer": L}`` in a request's spec)
needs the served model's activations on the two prompts, and vLLM has no way to read hidden states
from a request. So the front end keeps a reference copy of the model (steerlab's own Hugging Face
engine, on the CPU in float32, loaded when the engine starts with ``actadd_layers``) and extracts the
pair with :func:`steerlab.methods.actadd.extract`, exactly as ``steerlab serve`` does; the tensor
then travels to the workers in the request's ``extra_args``. Extractions are cached per pair.
In ``pad`` mode the prompt's token ids are rewritten here (spaces after the shared prefix), so the
engine schedules, caches and reports the padded prompt, as steerlab's own engine does.
"""

from __future__ import annotations

from typing import Any

from ..methods.actadd import ActAddSteering, space_token_id
from ..spec import ActAddEntry, SpecError, SteeringFactory, SteeringSpec
from .program import Pair


class PairExtractor:
    def __init__(self, model: str, cache_size: int = 32) -> None:
        from ..model import load_model

        self.lm = load_model(model, device="cpu", dtype="float32")
        self.factory = SteeringFactory(self.lm, {}, actadd_cache_size=cache_size)  # chat=True: as steerlab serve
        self.space = space_token_id(self.lm.tokenizer)

    def apply(self, entry: ActAddEntry, ids: list[int]) -> tuple[list[int], Pair]:
        """The prompt's token ids as the engine should run them, and the pair's tensor (coefficient
        included) to add at positions ``0..n-1`` of the input of block ``entry.layer``, less its leading
        rows that are exactly zero (the shared chat prefix, where both prompts are the same)."""
        steering = self.factory.build(SteeringSpec(actadd=entry)).parts[0]
        assert isinstance(steering, ActAddSteering)
        if entry.mode == "pad":
            ids = steering.pad_prompt(ids, self.space)
        elif len(ids) < steering.n:
            raise SpecError(f"actadd.mode 'overlay' needs a prompt of at least {steering.n} tokens (the pair's "
                            f"length); this one has {len(ids)}. Use a longer prompt or mode 'pad'.",
                            "steering.actadd.mode")
        return ids, Pair.of(steering.vector.layers[entry.layer].float() * steering.multiplier)


def lengthen(request: Any, ids: list[int], max_model_len: int) -> None:
    """Give ``request`` the padded prompt ``ids``, keeping vLLM's limits: the prompt within the model's
    length, ``max_tokens`` within what is left, and no prompt log-probabilities (they would score the
    inserted spaces; steerlab serve refuses that combination too)."""
    params = request.sampling_params
    if len(ids) > max_model_len:
        raise SpecError(f"With the pair's padding the prompt is {len(ids)} tokens, over the engine's max_model_len "
                        f"{max_model_len}; use a shorter prompt or actadd.mode 'overlay'.", "steering.actadd.mode")
    if params.prompt_logprobs is not None:
        raise SpecError("Prompt log-probabilities with actadd.mode 'pad' would score the inserted spaces; use "
                        "actadd.mode 'overlay'.", "steering.actadd.mode")
    request.prompt_token_ids = ids
    if params.max_tokens is not None:
        params.max_tokens = max(1, min(params.max_tokens, max_model_len - len(ids)))
