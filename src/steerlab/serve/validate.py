"""Request validation, without HTTP: a parsed request body becomes a checked :class:`JobSettings`
(or an :class:`~steerlab.serve.protocol.APIError` with an OpenAI-style body), and its ``steering``
field a checked :class:`~steerlab.spec.SteeringSpec`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..errors import SteerlabError
from ..spec import SpecError, SteeringFactory, SteeringSpec
from ..tokens import Rendered
from .config import ServeConfig
from .protocol import APIError


@dataclass
class JobSettings:
    """Everything the engine needs to run one request."""

    rendered: Rendered
    steering: SteeringSpec
    max_tokens: int
    do_sample: bool
    temperature: float
    top_p: float
    frequency_penalty: float
    seed: int | None
    stop: list[str]
    stream: bool = False


class RequestValidator:
    """Checks requests against the model (context length, control tokens) and the server's
    :class:`ServeConfig`; steering specs are checked by the same factory that later builds them."""

    def __init__(self, lm: Any, factory: SteeringFactory, config: ServeConfig) -> None:
        self.lm, self.factory, self.config = lm, factory, config
        self.context = getattr(lm.model.config, "max_position_embeddings", None)
        tok = lm.tokenizer
        self.control = sorted({str(t) for t in tok.all_special_tokens}
                              | {t.content for t in getattr(tok, "added_tokens_decoder", {}).values()
                                 if getattr(t, "special", False)}, key=len, reverse=True)

    def control_tokens(self, texts: list[str], param: str) -> None:
        """Refuse text that spells a control token (it would forge a chat turn) unless allowed."""
        if self.config.allow_control_tokens:
            return
        for text in texts:
            found = next((t for t in self.control if t and t in text), None)
            if found is not None:
                raise APIError(400, f"The text holds {found!r}, which {self.lm.name}'s tokenizer reads as a control "
                                    "token (it could forge a chat turn). Remove it, or start the server with "
                                    "--allow-control-tokens if its clients are trusted.", param=param,
                               code="control_token_in_text")

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
        limit = self.config.max_multiplier
        total: dict[str, float] = {}
        for i, v in enumerate(spec.vectors):
            # The limit holds for each vector's combined strength: listing one vector many times adds up.
            total[v.name] = total.get(v.name, 0.0) + abs(v.multiplier)
            if total[v.name] > limit:
                raise APIError(400, f"multiplier {v.multiplier} of {v.name!r} brings its total |multiplier| in this "
                                    f"request to {total[v.name]:g}, outside +-{limit}.",
                               param=f"steering.vectors[{i}].multiplier")
            if v.op == "clamp" and abs(v.value) > 1e4:
                raise APIError(400, f"clamp value {v.value} is outside +-1e4.", param=f"steering.vectors[{i}].value")
        if spec.actadd is not None and abs(spec.actadd.coeff) > limit:
            raise APIError(400, f"actadd.coeff {spec.actadd.coeff} is outside +-{limit}.",
                           param="steering.actadd.coeff")
        if spec.pace is not None and abs(spec.pace.strength) > limit:
            raise APIError(400, f"pace.strength {spec.pace.strength} is outside +-{limit}.",
                           param="steering.pace.strength")
        return spec

    def job(self, req: Any, rendered: Rendered, max_tokens: int | None) -> JobSettings:
        """Check one chat or completion request (already rendered to prompt text)."""
        cfg = self.config
        if req.n != 1:
            raise APIError(400, "Only n=1 is supported.", param="n")
        try:  # a lone surrogate ("\ud800") parses as JSON but is no text a tokenizer can take
            json.dumps(req.model_dump(), ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise APIError(400, "The request holds a string with an unpaired UTF-16 surrogate; send valid "
                                "Unicode text.") from None
        n_tokens = min(cfg.default_tokens, cfg.max_tokens) if max_tokens is None else max_tokens
        if not 1 <= n_tokens <= cfg.max_tokens:
            raise APIError(400, f"max_tokens must be between 1 and {cfg.max_tokens}.", param="max_tokens")
        if not 0 <= req.temperature <= 2 or not 0 < req.top_p <= 1 or abs(req.frequency_penalty) > 2:
            raise APIError(400, "temperature must be in [0, 2], top_p in (0, 1], frequency_penalty in [-2, 2].")
        if req.seed is not None and not 0 <= req.seed < 2**63:
            raise APIError(400, "seed must be between 0 and 2**63 - 1.", param="seed")
        if len(rendered.text) > cfg.max_prompt_chars:
            raise APIError(400, f"The prompt is over {cfg.max_prompt_chars} characters.", param="messages")
        if self.context is not None:
            n_prompt = len(self.lm.tokenizer(rendered.text, add_special_tokens=False)["input_ids"])
            if n_prompt + n_tokens > self.context:
                raise APIError(400, f"The prompt is {n_prompt} tokens and max_tokens {n_tokens}: together over "
                                    f"{self.lm.name}'s context of {self.context} tokens.", param="messages",
                               code="context_length_exceeded")
        spec = self.steering(req.steering)
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stop) > cfg.max_stop:
            raise APIError(400, f"At most {cfg.max_stop} stop sequences.", param="stop")
        # Temperatures this small divide logits into infinities; they mean greedy decoding.
        sample = req.temperature >= 1e-4
        return JobSettings(rendered, spec, n_tokens, sample, req.temperature if sample else 1.0, req.top_p,
                           req.frequency_penalty, req.seed, stop, req.stream)
