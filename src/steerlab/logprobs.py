"""Token log-probabilities under steering: of a prompt's own tokens (one forward pass: what an
OpenAI ``echo`` request and lm-eval's log-likelihood requests ask for) and of generated tokens (a
tap on the output layer during cached decoding). The server and the in-process lm-eval model both
score through this module, so the two routes give the same numbers.

Values are natural-log probabilities of the model's own next-token distribution, in float32,
before temperature, top-p and penalties (what vLLM reports by default).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import torch

from .intervene import Intervention, apply_interventions
from .tokens import PromptBatch

if TYPE_CHECKING:
    from .model import SteerModel


@dataclass(frozen=True)
class TokenLogprob:
    """One token's log-probability, and the ``top`` likeliest tokens at its position (best first)."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


def entries(logp: torch.Tensor, tokens: torch.Tensor, top_k: int) -> list[TokenLogprob]:
    """``logp`` [T, V] log-probabilities (float32) and the ``tokens`` [T] chosen at those positions."""
    chosen = logp.gather(-1, tokens[:, None].to(logp.device))[:, 0].tolist()
    if top_k > 0:
        values, ids = logp.topk(min(top_k, logp.shape[-1]), -1)
        tops = [tuple(zip(i, v, strict=True)) for i, v in zip(ids.tolist(), values.tolist(), strict=True)]
    else:
        tops = [()] * len(chosen)
    return [TokenLogprob(int(t), float(c), top) for t, c, top in zip(tokens.tolist(), chosen, tops, strict=True)]


def real_columns(batch: PromptBatch, row: int) -> slice:
    """Columns of ``row``'s real (non-padding) tokens in the padded batch."""
    n, width = int(batch.lengths[row]), batch.input_ids.shape[1]
    return slice(width - n, width) if batch.padding_side == "left" else slice(0, n)


@torch.no_grad()
def prompt_logprobs(lm: SteerModel, batch: PromptBatch, interventions: Sequence[Intervention] = (),
                    top_k: int = 0) -> list[list[TokenLogprob | None]]:
    """Per row: ``None`` for its first token (nothing predicts it), then each next token's
    log-probability given the tokens before it, with ``interventions`` applied (resolved for this
    batch, as :func:`steerlab.generation.generate_ids` takes them)."""
    with apply_interventions(lm, list(interventions), batch=batch):
        logits = lm.model(**lm.forward_inputs(batch.input_ids, batch.attention_mask)).logits
    out: list[list[TokenLogprob | None]] = []
    for r in range(len(batch)):
        cols = real_columns(batch, r)
        logp = logits[r, cols][:-1].float().log_softmax(-1)
        out.append([None, *entries(logp, batch.input_ids[r, cols][1:], top_k)])
    return out


class LogitTap:
    """Records the output layer's last-position logits at each forward pass inside ``with``: during
    cached decoding that is the distribution each new token was drawn from."""

    def __init__(self, lm: SteerModel) -> None:
        self.head = lm.model.get_output_embeddings()
        self.last: torch.Tensor | None = None
        self._handle = None

    def _hook(self, module: Any, args: Any, output: torch.Tensor) -> None:
        self.last = output[:, -1]

    def __enter__(self) -> LogitTap:
        self._handle = self.head.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def logprobs(self) -> torch.Tensor:
        """Log-softmax (float32) of the last recorded logits, ``[B, V]``."""
        if self.last is None:
            raise RuntimeError("LogitTap saw no forward pass.")
        return self.last.float().log_softmax(-1)


# ---------------------------------------------------------------------- token strings
@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """Byte-level BPE vocabularies (GPT-2, Llama 3, Qwen, SmolLM) spell each byte as one printable
    character: printable Latin-1 bytes as themselves, the other 68 as code points 256 onward."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return {c: b for b, c in chars.items()}


_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def token_bytes(tokenizer: Any, token_id: int) -> bytes:
    """The bytes a token stands for (a token may hold part of one UTF-8 character)."""
    piece = tokenizer.convert_ids_to_tokens(int(token_id))
    if isinstance(piece, str) and piece:
        byte_piece = _BYTE_PIECE.fullmatch(piece)
        if byte_piece:  # SentencePiece byte fallback
            return bytes([int(byte_piece.group(1), 16)])
        if "\u2581" in piece:  # SentencePiece: the word-boundary mark is a space
            return piece.replace("\u2581", " ").encode("utf-8")
        decoder = _byte_decoder()
        if _byte_level(tokenizer) and all(c in decoder for c in piece):
            return bytes(decoder[c] for c in piece)
    return tokenizer.decode([int(token_id)]).encode("utf-8")


def _byte_level(tokenizer: Any) -> bool:
    """Whether the vocabulary spells bytes (a space is "\u0120", as in GPT-2) rather than Unicode text."""
    known = getattr(tokenizer, "_steerlab_byte_level", None)
    if known is None:
        pieces = tokenizer.convert_ids_to_tokens(tokenizer.encode(" the", add_special_tokens=False))
        known = any("\u0120" in str(p) for p in pieces)
        with contextlib.suppress(AttributeError):  # a tokenizer that takes no new attributes
            tokenizer._steerlab_byte_level = known
    return known


def token_string(tokenizer: Any, token_id: int) -> str:
    """A token as text; a token that is not whole UTF-8 is written ``bytes:\\xe2\\x80`` (OpenAI's form)."""
    raw = token_bytes(tokenizer, token_id)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)
