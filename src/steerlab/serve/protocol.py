"""Request bodies of the OpenAI-compatible API, plus steerlab's ``steering`` extra field, and
OpenAI-style error bodies."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False, extra="ignore")


class VectorSpec(_Strict):
    name: str
    multiplier: float = 1.0


class ActAddSpec(_Strict):
    positive: str = Field(max_length=500)
    negative: str = Field(max_length=500)
    layer: int
    coeff: float = 5.0


class PaceSpec(_Strict):
    task: str
    layers: list[int] | None = None
    strength: float = 1.0
    sign: Literal["both", "positive"] = "both"  # "positive": remove only components leaning towards a concept


class Steering(_Strict):
    """``{"vectors": [{"name": ..., "multiplier": ...}], "actadd": {...}, "pace": {...}}``."""

    vectors: list[VectorSpec] = Field(default_factory=list, max_length=16)
    actadd: ActAddSpec | None = None
    pace: PaceSpec | None = None


class _Sampling(_Strict):
    model: str | None = None
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    n: int = 1
    steering: Steering | None = None


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant", "developer"]
    content: str


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1, max_length=256)
    max_completion_tokens: int | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str]


class APIError(Exception):
    """An error returned to the client as ``{"error": {...}}`` with an HTTP status."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
