"""ActAdd (Turner et al., 2023): a per-position steering tensor from one prompt pair.

Recipe (docs/methods.md, "ActAdd"): tokenize ``p+`` and ``p-`` (BOS included where the model adds one),
right-pad the shorter with the token of ``" "`` to the same length ``n``, read the residual
stream at the *input* of block ``L`` for every position, and keep ``S = c * (A+ - A-)`` of shape
``[n, d]``. The input of block L is the output of block L-1 (``hook_resid_pre`` in
TransformerLens terms); for ``L = 0`` it is the token embedding. On a user prompt, ``S`` is added
at positions ``0..n-1`` of the prompt pass only; decoding steps are not touched.

With ``chat=True`` both prompts are rendered as user turns and cut at the end of the user's
text, so the shared template prefix gives ``S = 0`` there and the steering lands on the user's
first tokens, exactly as in raw mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from ..capture import capture
from ..errors import InputError
from ..intervene import Intervention
from ..tokens import PromptBatch, char_to_token, encode_texts, pad_ids, tokenize_with_offsets
from ..vector import SteeringVector

if TYPE_CHECKING:
    from ..model import SteerModel
    from ..spec import ActAddMode

MODES = ("overlay", "pad")


def _prompt_tokens(lm: SteerModel, text: str, chat: bool, system: str | None) -> tuple[list[int], int]:
    """Token ids of the prompt up to the end of the user's text, and how many come before that
    text (BOS, chat header): the prefix every prompt rendered the same way shares."""
    rendered = lm.render(text, chat=chat, system=system)
    head = rendered.text[: rendered.user_end]
    ids, offsets = tokenize_with_offsets(lm.tokenizer, head)
    return ids, char_to_token(lm.tokenizer, head, ids, offsets, rendered.user_start)


def space_token_id(tokenizer) -> int:
    ids = tokenizer(" ", add_special_tokens=False)["input_ids"]
    if not ids:
        raise InputError("The tokenizer encodes ' ' as nothing; ActAdd needs a space token for padding.")
    return ids[-1]


@torch.no_grad()
def extract(lm: SteerModel, positive: str, negative: str, layer: int, *, coeff: float = 1.0, chat: bool = False,
            system: str | None = None) -> SteeringVector:
    """The ActAdd steering tensor ``coeff * (A+ - A-)`` at the input of block ``layer``."""
    layer = lm.check_layer(layer)
    pos_ids, shared = _prompt_tokens(lm, positive, chat, system)
    neg_ids, _ = _prompt_tokens(lm, negative, chat, system)
    n = max(len(pos_ids), len(neg_ids))
    space = space_token_id(lm.tokenizer)
    pos_ids = pos_ids + [space] * (n - len(pos_ids))
    neg_ids = neg_ids + [space] * (n - len(neg_ids))
    acts = capture(lm, [pos_ids, neg_ids], layer, positions="all", site="input")[layer]
    steering = (acts[:n] - acts[n:]) * coeff
    # Over the prompts' common token prefix a causal model's activations are equal, so the difference is
    # zero there; set it exactly, since a batched matrix product may round two equal rows differently
    # (seen in vLLM's front-end process: the pair then seemed to differ from its first token).
    common = next((i for i, (a, b) in enumerate(zip(pos_ids, neg_ids, strict=True)) if a != b), n)
    steering[:common] = 0.0
    return SteeringVector(
        {layer: steering}, model_name=lm.name, hidden_size=lm.hidden_size, method="actadd", site="input",
        apply="front",
        meta={"positive": positive, "negative": negative, "coeff": coeff, "chat": chat, "system": system,
              "n_positions": n, "shared_prefix": shared, "positive_ids": pos_ids, "negative_ids": neg_ids,
              "read": "input of block L (= output of block L-1), every position"},
    )


@dataclass
class ActAddSteering:
    """Applies an ActAdd vector to a prompt batch: ``overlay`` adds ``S`` onto the prompt's first
    ``n`` tokens (the prompt must have at least ``n``); ``pad`` first inserts space tokens after the
    shared prefix (BOS / chat header) so ``S`` lands on spaces and the user's text follows it."""

    vector: SteeringVector
    multiplier: float = 1.0
    mode: ActAddMode = "overlay"
    needs_batch: ClassVar[bool] = True  # the overlay check and the pad reshape read the batch (not a dataclass field)

    def __post_init__(self) -> None:
        if self.vector.method != "actadd" or len(self.vector.layers) != 1:
            raise InputError("ActAddSteering needs a vector from steerlab.methods.actadd.extract().")
        if self.mode not in MODES:
            raise InputError(f"mode must be one of {MODES}, not {self.mode!r}.")

    @property
    def n(self) -> int:
        return int(self.vector.meta["n_positions"])

    def transform_batch(self, lm: SteerModel, batch: PromptBatch) -> PromptBatch:
        if self.mode == "overlay":
            short = [i for i, length in enumerate(batch.lengths.tolist()) if length < self.n]
            if short:
                raise InputError(
                    f"ActAdd overlay mode needs prompts of at least {self.n} tokens (the steering pair's length), "
                    f"but prompt(s) {short} are shorter. Use a longer prompt or mode='pad'."
                )
            return batch
        space = space_token_id(lm.tokenizer)
        rows = [self.pad_prompt(batch.input_ids[i][batch.attention_mask[i].bool()].tolist(), space)
                for i in range(len(batch))]
        padded, mask = pad_ids(rows, lm.tokenizer.pad_token_id, batch.padding_side, batch.input_ids.device)
        extra = self.n - int(self.vector.meta["shared_prefix"])
        return PromptBatch(padded, mask, batch.lengths + extra, batch.user_start + extra, batch.user_end + extra,
                           batch.assistant_start + extra, batch.padding_side, batch.rendered)

    def pad_prompt(self, ids: list[int], space: int) -> list[int]:
        """One prompt's token ids in pad mode: ``n - shared`` space tokens inserted after the shared prefix
        (BOS / chat header), so ``S`` lands on them and the user's text follows."""
        shared = int(self.vector.meta["shared_prefix"])
        if ids[:shared] != self.vector.meta["positive_ids"][:shared]:
            raise InputError("pad mode: the prompt does not start with the steering pair's shared prefix "
                             "(render both the same way: chat or raw).")
        return ids[:shared] + [space] * (self.n - shared) + ids[shared:]

    def for_batch(self, batch: PromptBatch | None) -> list[Intervention]:
        return self.vector.interventions(self.multiplier)  # S over positions 0..n-1, prompt pass only


def prepare(lm: SteerModel, prompts, steering: ActAddSteering, *, chat: bool = False,
            system: str | None = None) -> PromptBatch:
    """Tokenize prompts the way ``steering`` needs them (pad mode inserts its spaces)."""
    rendered = [lm.render(p, chat=chat, system=system) for p in prompts]
    return steering.transform_batch(lm, encode_texts(lm.tokenizer, rendered, device=lm.device))
