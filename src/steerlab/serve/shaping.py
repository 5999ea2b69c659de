"""Response shaping, without HTTP: the OpenAI wire format's response and stream-chunk bodies."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field


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

    def _envelope(self, obj: str, choice: dict) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": [choice]}

    def answer(self, text: str, finish_reason: str, usage: dict) -> dict:
        """The whole (non-streamed) answer."""
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}
            return {**self._envelope("chat.completion", choice), "usage": usage}
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        return {**self._envelope("text_completion", choice), "usage": usage}

    def chunk(self, text: str | None = None, finish_reason: str | None = None, *, role: bool = False) -> str:
        """One server-sent event of a stream: new text, the opening role (chat) or the finish reason."""
        if self.chat:
            delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text is not None else {})
            body = self._envelope("chat.completion.chunk", {"index": 0, "delta": delta, "finish_reason": finish_reason})
        else:
            body = self._envelope("text_completion", {"index": 0, "text": text or "", "logprobs": None,
                                                      "finish_reason": finish_reason})
        return sse(body)


def sse(body: dict | str) -> str:
    """A server-sent event carrying ``body`` (JSON) or a literal such as ``[DONE]``."""
    return f"data: {body if isinstance(body, str) else json.dumps(body)}\n\n"
