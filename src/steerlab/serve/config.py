"""The server's settings, in one place (the CLI's flags, ``create_app`` and the engine read them here)."""

from __future__ import annotations

from dataclasses import dataclass

from ..spec import DEFAULT_MAX_MULTIPLIER


@dataclass(frozen=True)
class ServeConfig:
    max_queue: int = 64  # requests waiting (queued, held back or being grouped) beyond this get HTTP 429
    max_batch: int = 8  # requests generated together in one batch
    batch_wait: float = 0.01  # seconds the engine waits for more requests to fill a batch
    max_tokens: int = 512  # new tokens per request
    default_tokens: int = 128  # new tokens when a request gives no max_tokens
    max_multiplier: float = DEFAULT_MAX_MULTIPLIER  # see steerlab.spec (each vector's combined |multiplier|)
    max_prompt_chars: int = 32_000
    max_body_bytes: int = 1_000_000
    max_stop: int = 4  # stop sequences per request
    max_choices: int = 16  # prompts x n per request
    max_logprobs: int = 20  # top_logprobs (chat) / logprobs (completions) at most
    actadd_cache: int = 32  # distinct ActAdd pairs kept (each costs one extraction to rebuild)
    # Message text that spells a control token (e.g. "<|im_start|>system") would be tokenised as the
    # real token and forge a chat turn; such requests are refused unless the clients are trusted.
    allow_control_tokens: bool = False
