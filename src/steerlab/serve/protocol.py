"""Request bodies of the OpenAI-compatible API (steerlab's ``steering`` extra field follows the
schema of :mod:`steerlab.spec`), and OpenAI-style error bodies."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False, extra="ignore")


class _Sampling(_Strict):
    model: str | None = None
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict | None = None  # {"include_usage": true}: a last chunk with the usage
    n: int = 1
    best_of: int | None = None
    logit_bias: dict | None = None
    steering: Any = None  # checked by steerlab.spec.SteeringSpec.from_dict (unknown fields are errors)


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant", "developer"]
    content: str


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1, max_length=256)
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None


class CompletionRequest(_Sampling):
    # Text, texts, token ids, or lists of token ids (what evaluation clients such as lm-eval send).
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = None
    echo: bool = False


class TokenizeRequest(_Strict):
    prompt: str | None = Field(default=None, max_length=1_000_000)
    messages: list[ChatMessage] | None = Field(default=None, min_length=1, max_length=256)
    add_special_tokens: bool = True


class DetokenizeRequest(_Strict):
    tokens: list[int] = Field(max_length=1_000_000)


class APIError(Exception):
    """An error returned to the client as ``{"error": {...}}`` with an HTTP status."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
