"""Response shaping, without HTTP: the OpenAI wire format's response and stream-chunk bodies, with
log-probabilities in the two shapes the reference client parses (chat: ``logprobs.content``, a list
of ``{token, logprob, bytes, top_logprobs}``; completions: the legacy parallel lists ``tokens``,
``token_logprobs``, ``top_logprobs``, ``text_offset``)."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..logprobs import TokenLogprob, token_bytes, token_string


class Vocab:
    """Token strings and bytes for the wire format, computed once per token id."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._strings: dict[int, str] = {}

    def string(self, token: int) -> str:
        if token not in self._strings:
            self._strings[token] = token_string(self.tokenizer, token)
        return self._strings[token]

    def bytes(self, token: int) -> list[int]:
        return list(token_bytes(self.tokenizer, token))

    def chat(self, logprobs: list[TokenLogprob], top_k: int) -> list[dict]:
        """Chat form: one object per token."""
        return [{"token": self.string(e.token), "logprob": e.logprob, "bytes": self.bytes(e.token),
                 "top_logprobs": [{"token": self.string(t), "logprob": v, "bytes": self.bytes(t)}
                                  for t, v in e.top[:top_k]]} for e in logprobs]

    def completion(self, tokens: list[int], logprobs: list[TokenLogprob | None], top_k: int,
                   offset: int = 0) -> dict:
        """Completions form: parallel lists over ``tokens``; a ``None`` entry (the first prompt token
        under ``echo``) has no log-probability. ``offset``: where the first token's text begins in
        the choice's text."""
        strings: list[str] = []
        values: list[float | None] = []
        tops: list[dict[str, float] | None] = []
        offsets: list[int] = []
        pos = offset
        for token, e in zip(tokens, logprobs, strict=True):
            text = self.string(token)
            strings.append(text)
            offsets.append(pos)
            pos += len(text)
            values.append(None if e is None else e.logprob)
            if e is None:
                tops.append(None)
                continue
            top: dict[str, float] = {}
            for t, v in e.top[:top_k]:  # two ids with the same text: the likelier one is kept
                top.setdefault(self.string(t), v)
            tops.append(top)
        return {"tokens": strings, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


def merge_completion_logprobs(*parts: dict) -> dict:
    """Concatenate completions-form log-probabilities (the echoed prompt's, then the answer's)."""
    return {k: [x for p in parts for x in p[k]] for k in ("tokens", "token_logprobs", "top_logprobs", "text_offset")}


@dataclass(frozen=True)
class Shaper:
    """Builds the bodies of one response: ``chat`` (``chat.completion``) or text completion."""

    chat: bool
    model: str
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        if not self.id:
            object.__setattr__(self, "id", ("chatcmpl-" if self.chat else "cmpl-") + uuid.uuid4().hex[:24])

    def _envelope(self, obj: str, choices: list[dict]) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": choices}

    def choice(self, index: int, text: str, finish_reason: str, logprobs: Any = None) -> dict:
        """One choice of a whole answer; ``logprobs`` already in this endpoint's wire form."""
        if self.chat:
            return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
                    "finish_reason": finish_reason}
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}

    def answer(self, choices: list[dict], usage: dict) -> dict:
        """The whole (non-streamed) answer."""
        return {**self._envelope("chat.completion" if self.chat else "text_completion", choices), "usage": usage}

    def chunk(self, text: str | None = None, finish_reason: str | None = None, *, role: bool = False,
              index: int = 0, logprobs: Any = None) -> str:
        """One server-sent event of a stream: new text, the opening role (chat) or the finish reason."""
        if self.chat:
            delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text is not None else {})
            choice = {"index": index, "delta": delta, "finish_reason": finish_reason}
            if logprobs is not None:
                choice["logprobs"] = logprobs
            body = self._envelope("chat.completion.chunk", [choice])
        else:
            body = self._envelope("text_completion", [{"index": index, "text": text or "", "logprobs": logprobs,
                                                       "finish_reason": finish_reason}])
        return sse(body)


def sse(body: dict | str) -> str:
    """A server-sent event carrying ``body`` (JSON) or a literal such as ``[DONE]``."""
    return f"data: {body if isinstance(body, str) else json.dumps(body)}\n\n"
