"""Request validation, without HTTP: a parsed request body becomes a checked :class:`JobSettings`
(or an :class:`~steerlab.serve.protocol.APIError` with an OpenAI-style body), and its ``steering``
field a checked :class:`~steerlab.spec.SteeringSpec`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import SteerlabError
from ..spec import SpecError, SteeringFactory, SteeringSpec
from ..tokens import Rendered, TokenPrompt
from .config import ServeConfig
from .protocol import APIError

if TYPE_CHECKING:
    from ..model import SteerModel


@dataclass
class JobSettings:
    """Everything the engine needs to run one request."""

    rendered: Rendered | TokenPrompt  # the prompt: rendered text, or token ids taken as they are
    steering: SteeringSpec
    max_tokens: int
    do_sample: bool
    temperature: float
    top_p: float
    frequency_penalty: float
    seed: int | None
    stop: list[str]
    stream: bool = False
    logprobs: int | None = None  # None: no log-probabilities; k: the chosen token's and the k likeliest
    echo: bool = False  # the prompt comes back before the answer (with its log-probabilities if asked)
    index: int = 0  # the choice this job answers


def control_token_strings(tokenizer: Any) -> list[str]:
    """The texts a tokenizer reads as control tokens, longest first."""
    return sorted({str(t) for t in tokenizer.all_special_tokens}
                  | {t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values()
                     if getattr(t, "special", False)}, key=len, reverse=True)


def refuse_control_tokens(control: list[str], texts: list[str], param: str, model: str) -> None:
    """An HTTP 400 if any text spells one of the ``control`` tokens (it could forge a chat turn)."""
    for text in texts:
        found = next((t for t in control if t and t in text), None)
        if found is not None:
            raise APIError(400, f"The text holds {found!r}, which {model}'s tokenizer reads as a control "
                                "token (it could forge a chat turn). Remove it, or start the server with "
                                "--allow-control-tokens if its clients are trusted.", param=param,
                           code="control_token_in_text")


class RequestValidator:
    """Checks requests against the model (context length, control tokens) and the server's
    :class:`ServeConfig`; steering specs are checked by the same factory that later builds them."""

    def __init__(self, lm: SteerModel, factory: SteeringFactory, config: ServeConfig) -> None:
        self.lm, self.factory, self.config = lm, factory, config
        self.context = getattr(lm.model.config, "max_position_embeddings", None)
        self.control = control_token_strings(lm.tokenizer)

    def control_tokens(self, texts: list[str], param: str) -> None:
        """Refuse text that spells a control token (it would forge a chat turn) unless allowed."""
        if not self.config.allow_control_tokens:
            refuse_control_tokens(self.control, texts, param, self.lm.name)

    def steering(self, raw: Any) -> SteeringSpec:
        """The request's ``steering`` field as a spec the factory can build, within the limits."""
        try:
            spec = SteeringSpec.from_dict(raw)
            self.factory.check(spec)
        except SpecError as err:
            status = 404 if err.code == "vector_not_found" else 400
            raise APIError(status, str(err), param=err.param, code=err.code) from None
        except SteerlabError as err:  # e.g. a vector file that could not be read
            raise APIError(400, str(err), param="steering") from None
        return spec

    def job(self, req: Any, rendered: Rendered | TokenPrompt, max_tokens: int | None, *,
            spec: SteeringSpec | None = None) -> JobSettings:
        """Check one chat or completion request (already rendered to prompt text, or token ids).
        ``spec``: the steering when it was already checked (e.g. read from the model name)."""
        cfg = self.config
        try:  # a lone surrogate ("\ud800") parses as JSON but is no text a tokenizer can take
            json.dumps(req.model_dump(), ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise APIError(400, "The request holds a string with an unpaired UTF-16 surrogate; send valid "
                                "Unicode text.") from None
        echo = bool(getattr(req, "echo", False))
        logprobs = self.logprobs(req)
        n_tokens = min(cfg.default_tokens, cfg.max_tokens) if max_tokens is None else max_tokens
        if n_tokens == 0 and not echo:
            raise APIError(400, "max_tokens 0 asks for no answer; it is only allowed with echo (to score the "
                                "prompt).", param="max_tokens")
        if not 0 <= n_tokens <= cfg.max_tokens:
            raise APIError(400, f"max_tokens must be between 1 and {cfg.max_tokens} (0 with echo).",
                           param="max_tokens")
        if not 1 <= req.n <= cfg.max_choices:
            raise APIError(400, f"n must be between 1 and {cfg.max_choices}.", param="n")
        if req.best_of is not None and req.best_of != req.n:
            raise APIError(400, "best_of is not supported (leave it out, or equal to n).", param="best_of")
        if req.logit_bias:
            raise APIError(400, "logit_bias is not supported.", param="logit_bias")
        if echo and req.stream:
            raise APIError(400, "echo is not supported with stream; send stream=false.", param="echo")
        if not 0 <= req.temperature <= 2 or not 0 < req.top_p <= 1 or abs(req.frequency_penalty) > 2:
            raise APIError(400, "temperature must be in [0, 2], top_p in (0, 1], frequency_penalty in [-2, 2].")
        if req.seed is not None and not 0 <= req.seed < 2**63:
            raise APIError(400, "seed must be between 0 and 2**63 - 1.", param="seed")
        if isinstance(rendered, TokenPrompt):
            n_prompt = len(rendered.ids)
        else:
            if len(rendered.text) > cfg.max_prompt_chars:
                raise APIError(400, f"The prompt is over {cfg.max_prompt_chars} characters.", param="messages")
            n_prompt = len(self.lm.tokenizer(rendered.text, add_special_tokens=False)["input_ids"])
        if self.context is not None and n_prompt + n_tokens > self.context:
            raise APIError(400, f"The prompt is {n_prompt} tokens and max_tokens {n_tokens}: together over "
                                f"{self.lm.name}'s context of {self.context} tokens.", param="messages",
                           code="context_length_exceeded")
        spec = self.steering(req.steering) if spec is None else spec
        if echo and logprobs is not None and spec.actadd is not None and spec.actadd.mode == "pad":
            raise APIError(400, "Prompt log-probabilities (echo) under ActAdd's pad mode would score padding; "
                                "use actadd.mode 'overlay'.", param="steering.actadd.mode")
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stop) > cfg.max_stop:
            raise APIError(400, f"At most {cfg.max_stop} stop sequences.", param="stop")
        # Temperatures this small divide logits into infinities; they mean greedy decoding.
        sample = req.temperature >= 1e-4
        return JobSettings(rendered, spec, n_tokens, sample, req.temperature if sample else 1.0, req.top_p,
                           req.frequency_penalty, req.seed, stop, req.stream, logprobs, echo)

    def logprobs(self, req: Any) -> int | None:
        """How many top tokens to report with each token's log-probability (None: no log-probabilities).
        Chat: ``logprobs`` true and ``top_logprobs`` k; completions: ``logprobs`` k."""
        limit = self.config.max_logprobs
        if hasattr(req, "top_logprobs"):  # chat
            if req.top_logprobs is not None and not req.logprobs:
                raise APIError(400, "top_logprobs needs logprobs: true.", param="top_logprobs")
            if req.top_logprobs is not None and not 0 <= req.top_logprobs <= limit:
                raise APIError(400, f"top_logprobs must be between 0 and {limit}.", param="top_logprobs")
            return (req.top_logprobs or 0) if req.logprobs else None
        if req.logprobs is not None and not 0 <= req.logprobs <= limit:
            raise APIError(400, f"logprobs must be between 0 and {limit}.", param="logprobs")
        return req.logprobs

    def token_prompt(self, ids: list[int], param: str) -> TokenPrompt:
        """A prompt sent as token ids, checked against the vocabulary."""
        if not ids:
            raise APIError(400, "A prompt of token ids is empty.", param=param)
        self.token_ids(ids, param)
        return TokenPrompt.of(self.lm.tokenizer, ids)

    def token_ids(self, ids: list[int], param: str) -> None:
        """Refuse token ids outside the model's vocabulary."""
        vocab = len(self.lm.tokenizer)
        bad = next((t for t in ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise APIError(400, f"Token id {bad} is outside {self.lm.name}'s vocabulary (0..{vocab - 1}).",
                           param=param)
