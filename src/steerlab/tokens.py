"""Prompt rendering (chat template or raw text) and tokenization into padded batches.

Every position steerlab talks about is a *real-token position*: the index of a token among the
non-padding tokens of its row (0 = the row's first real token). That makes positions the same
under left and right padding and across cached decoding steps.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from .errors import InputError

# Used for models without a chat template (e.g. base models such as Gemma 3 270M).
PLAIN_USER_PREFIX = "User: "
PLAIN_ASSISTANT_HEADER = "\nAssistant:"
PaddingSide = Literal["left", "right"]


@dataclass(frozen=True)
class Rendered:
    """A prompt as text, with character offsets of its parts.

    ``user_start``/``user_end``: span of the user's own text. ``assistant_start``: where the
    assistant turn begins (its header), or ``None`` for raw text, where the assistant turn is
    taken to begin at the prompt's last token.
    """

    text: str
    user_start: int
    user_end: int
    assistant_start: int | None


def render_prompt(tokenizer: Any, prompt: str, *, chat: bool = True, system: str | None = None,
                  assistant_prefix: str = "") -> Rendered:
    if not chat:
        text = prompt + assistant_prefix
        return Rendered(text, 0, len(prompt), None)
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        head = (system + "\n\n" if system else "") + PLAIN_USER_PREFIX
        start = len(head)
        text = head + prompt + PLAIN_ASSISTANT_HEADER
        assistant_start = start + len(prompt)
        return Rendered(text + (" " + assistant_prefix if assistant_prefix else ""), start,
                        start + len(prompt), assistant_start)
    # Render around a marker so the user's text is found exactly (even when empty or also present
    # in the system prompt), then put the text in its place.
    marker = "\u2063steerlab-user-text\u2063"
    while marker in prompt or (system and marker in system) or marker in assistant_prefix:
        marker += "\u2063"  # a text holding the marker itself must not confuse the search
    messages = ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": "user", "content": marker}
    ]
    without_header = tokenizer.apply_chat_template(messages, tokenize=False)
    with_header = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if with_header.count(marker) != 1:
        raise InputError(
            "The chat template does not place the user's text verbatim in the prompt; pass chat=False and "
            "render the prompt yourself."
        )
    user_start = with_header.index(marker)
    user_end = user_start + len(prompt)
    shift = len(prompt) - len(marker)
    assistant_start = len(without_header) + shift if with_header.startswith(without_header) else user_end
    return Rendered(with_header.replace(marker, prompt) + assistant_prefix, user_start, user_end, assistant_start)


def _adds_special_tokens(tokenizer: Any, text: str) -> bool:
    """Add BOS etc. unless the text already starts with the BOS string (chat templates write it)."""
    bos = getattr(tokenizer, "bos_token", None)
    return not (bos and text.startswith(bos))


def tokenize_with_offsets(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]] | None]:
    add = _adds_special_tokens(tokenizer, text)
    try:
        enc = tokenizer(text, add_special_tokens=add, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    except (NotImplementedError, TypeError, ValueError):
        return list(tokenizer(text, add_special_tokens=add)["input_ids"]), None


def char_to_token(tokenizer: Any, text: str, ids: list[int], offsets, char: int) -> int:
    """Index of the token that holds character ``char`` of ``text`` (``len(ids)`` past the end)."""
    if char >= len(text):
        return len(ids)
    if offsets is not None:
        for t, (start, end) in enumerate(offsets):
            if end > char and not (start == end == 0 and t > 0):
                return t
        return len(ids)
    # Slow tokenizers: count the tokens of the text before the character.
    prefix_ids, _ = tokenize_with_offsets(tokenizer, text[:char])
    return len(prefix_ids)


@dataclass(frozen=True)
class Answered:
    """A prompt rendered with an answer opening the assistant turn, tokenized once: the one place
    that locates an answer's tokens (CAA reads there; behaviour and fluency scoring score there)."""

    rendered: Rendered
    ids: list[int]
    offsets: list[tuple[int, int]] | None
    answer_char: int  # where the answer starts in rendered.text
    tokenizer: Any = field(repr=False, compare=False)

    def token_at(self, char: int) -> int:
        """Index of the token holding character ``char`` of the rendered text."""
        return char_to_token(self.tokenizer, self.rendered.text, self.ids, self.offsets, char)

    @property
    def answer_start(self) -> int:
        """First token of the answer."""
        return self.token_at(self.answer_char)

    @property
    def turn_start(self) -> int:
        """Last token before the reply in raw text (which has no turn header), else the first token of
        the assistant turn's header; never at or after the answer's first token."""
        if self.rendered.assistant_start is None:
            return self.answer_start - 1
        return min(self.token_at(self.rendered.assistant_start), self.answer_start - 1)


def render_answered(tokenizer: Any, prompt: str, answer: str, *, chat: bool = True,
                    system: str | None = None) -> Answered:
    """``prompt`` as a user turn (or raw text) with ``answer`` opening the reply, tokenized."""
    rendered = render_prompt(tokenizer, prompt, chat=chat, system=system, assistant_prefix=answer)
    ids, offsets = tokenize_with_offsets(tokenizer, rendered.text)
    return Answered(rendered, ids, offsets, len(rendered.text) - len(answer), tokenizer)


@dataclass
class PromptBatch:
    """A padded batch of prompts with per-row landmarks in real-token positions."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    lengths: torch.Tensor  # [B] real tokens per row
    user_start: torch.Tensor  # [B]
    user_end: torch.Tensor  # [B]
    assistant_start: torch.Tensor  # [B]
    padding_side: PaddingSide
    rendered: list[Rendered | TokenPrompt]

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}


def pad_ids(rows: Sequence[Sequence[int]], pad_id: int, side: PaddingSide = "left",
            device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    if side not in ("left", "right"):
        raise InputError(f"padding_side must be 'left' or 'right', not {side!r}")
    if any(len(r) == 0 for r in rows):
        raise InputError("Cannot encode an empty prompt: it has no tokens.")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(width - len(r), width) if side == "left" else slice(0, len(r))
        ids[i, sl] = torch.tensor(list(r), dtype=torch.long)
        mask[i, sl] = 1
    return ids.to(device), mask.to(device)


@dataclass(frozen=True)
class TokenPrompt:
    """A prompt given as token ids (as evaluation clients send them): it is taken as it is, with no
    special tokens added; the user's span is the whole prompt and the assistant turn begins at
    ``assistant_start`` (the last assistant header in it, see :func:`find_assistant_start`), or at
    the last token when there is none (the raw-text rule)."""

    ids: tuple[int, ...]
    assistant_start: int | None = None

    @classmethod
    def of(cls, tokenizer: Any, ids: Sequence[int]) -> TokenPrompt:
        ids = tuple(int(i) for i in ids)
        return cls(ids, find_assistant_start(ids, assistant_header_ids(tokenizer)))


def assistant_header_ids(tokenizer: Any) -> tuple[int, ...]:
    """The tokens a chat template puts at the start of the assistant turn (empty without a template)."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        return ()
    cached = getattr(tokenizer, "_steerlab_assistant_header", None)
    if cached is not None:
        return cached
    rendered = render_prompt(tokenizer, "x")
    header: tuple[int, ...] = ()
    if rendered.assistant_start is not None:
        header = tuple(tokenizer.encode(rendered.text[rendered.assistant_start:], add_special_tokens=False))
    with contextlib.suppress(AttributeError):  # a tokenizer that takes no new attributes: computed again next time
        tokenizer._steerlab_assistant_header = header
    return header


def user_header_ids(tokenizer: Any) -> tuple[int, ...]:
    """The tokens a chat template puts right before the user's own text (empty without a template).

    Found as the longest common end of the prompt up to the user's text rendered with two different
    system prompts (e.g. ChatML's ``<|im_end|>\n<|im_start|>user\n``); a template that writes the
    system prompt inside the user turn leaves too little in common, and then the prefix rendered with
    no system prompt (minus BOS) is the header."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        return ()
    cached = getattr(tokenizer, "_steerlab_user_header", None)
    if cached is not None:
        return cached

    def prefix(system: str | None) -> list[int]:
        r = render_prompt(tokenizer, "x", system=system)
        return list(tokenizer.encode(r.text[: r.user_start], add_special_tokens=False))

    plain = prefix(None)
    try:
        a, b = prefix("Alpha beta"), prefix("Gamma delta epsilon;")
    except Exception:  # noqa: BLE001 - a template that refuses a system message
        a = b = []
    common = 0
    while common < min(len(a), len(b)) and a[len(a) - 1 - common] == b[len(b) - 1 - common]:
        common += 1
    bos = getattr(tokenizer, "bos_token_id", None)
    header = tuple(a[len(a) - common:]) if common >= 2 else tuple(plain[1:] if plain[:1] == [bos] else plain)
    with contextlib.suppress(AttributeError):
        tokenizer._steerlab_user_header = header
    return header


def find_user_start(ids: Sequence[int], header: Sequence[int], before: int | None = None) -> int | None:
    """Where the user's text starts: just after the last ``header`` that ends before ``before``
    (the assistant turn's start; None: anywhere). None when there is no such header."""
    at = _last_occurrence(ids, header, before)
    return None if at is None else at + len(header)


def find_assistant_start(ids: Sequence[int], header: Sequence[int]) -> int | None:
    """Index of the last occurrence of ``header`` in ``ids`` (None: not found, or no header)."""
    return _last_occurrence(ids, header)


def _last_occurrence(ids: Sequence[int], header: Sequence[int], end: int | None = None) -> int | None:
    """Start of the last ``header`` in ``ids`` that ends by ``end`` (None: not found, or no header)."""
    h, ids = list(header), list(ids)
    if not h:
        return None
    for i in range((len(ids) if end is None else end) - len(h), -1, -1):
        if ids[i:i + len(h)] == h:
            return i
    return None


def encode_texts(tokenizer: Any, rendered: Sequence[Rendered | TokenPrompt], *, padding_side: PaddingSide = "left",
                 device: torch.device | str = "cpu") -> PromptBatch:
    """Tokenize rendered prompts (token-id prompts are taken as they are) into one padded batch."""
    rows, ustart, uend, astart = [], [], [], []
    for r in rendered:
        if isinstance(r, TokenPrompt):
            ids = list(r.ids)
            rows.append(ids)
            ustart.append(0)
            uend.append(len(ids))
            astart.append(len(ids) - 1 if r.assistant_start is None else min(r.assistant_start, len(ids) - 1))
            continue
        ids, offsets = tokenize_with_offsets(tokenizer, r.text)
        rows.append(ids)
        ustart.append(char_to_token(tokenizer, r.text, ids, offsets, r.user_start))
        uend.append(char_to_token(tokenizer, r.text, ids, offsets, r.user_end))
        if r.assistant_start is None:
            astart.append(len(ids) - 1)
        else:
            astart.append(min(char_to_token(tokenizer, r.text, ids, offsets, r.assistant_start), len(ids) - 1))
    padded, mask = pad_ids(rows, tokenizer.pad_token_id, padding_side, device)

    def as_tensor(xs: list[int]) -> torch.Tensor:
        return torch.tensor(xs, dtype=torch.long)

    return PromptBatch(padded, mask, as_tensor([len(r) for r in rows]), as_tensor(ustart), as_tensor(uend),
                       as_tensor(astart), padding_side, list(rendered))
