"""The front-end side of the vLLM plugin: every request is checked where it enters the engine.

For a request that carries ``steering`` the front end parses and compiles its spec (an unusable
spec is a ``ValueError``, which vLLM answers with HTTP 400 before anything is scheduled), finds the
start of the assistant turn and of the user's text in its prompt tokens (for "assistant" and "user"
windows), and adds the spec's
fingerprint to the request's ``cache_salt``: vLLM keys prefix-cache blocks by that salt, so KV
computed under one steering is never reused by a request with other steering, or with none.
A request without steering is passed on untouched.
"""

from __future__ import annotations

from typing import Any

from ..spec import SpecError
from ..tokens import assistant_header_ids, find_assistant_start, find_user_start, user_header_ids
from .program import EXTRA_KEY, LANDMARK_KEY, PAIR_KEY, Compiler, ModelFacts, PluginConfig


class FrontEnd:
    def __init__(self, vllm_config: Any, tokenizer: Any) -> None:
        model_config = vllm_config.model_config
        self.config = PluginConfig.from_additional(vllm_config.additional_config)
        facts = ModelFacts(str(model_config.model), model_config.get_hidden_size(),
                           model_config.hf_text_config.num_hidden_layers)
        self.compiler = Compiler.from_config(self.config, facts) if self.config else None
        self.max_model_len = model_config.max_model_len
        self.pairs = None
        if self.config is not None and self.config.actadd_layers:
            from .pairs import PairExtractor

            self.pairs = PairExtractor(str(model_config.model))
        self.header = assistant_header_ids(tokenizer)
        self.user_header = user_header_ids(tokenizer)

    def assistant_start(self, ids: list[int]) -> int | None:
        """Index of the last assistant-turn header in ``ids`` (None: not found, the raw-text rule)."""
        return find_assistant_start(ids, self.header)

    def admit(self, request: Any) -> Any:
        params = request.sampling_params
        extra = getattr(params, "extra_args", None)
        if not extra or (EXTRA_KEY not in extra and LANDMARK_KEY not in extra):
            return request
        # only the front end writes landmarks and pair tensors
        extra = {k: v for k, v in extra.items() if k not in (LANDMARK_KEY, PAIR_KEY)}
        if self.compiler is None:
            raise SpecError('This vLLM engine was started without steerlab vectors (additional_config='
                            '{"steerlab": {"vectors": FOLDER}}), so it cannot steer.', "steering")
        spec = self.compiler.spec_of(extra)
        ids = list(request.prompt_token_ids or ())
        pair = None
        if spec.actadd is not None:
            self.compiler.check(spec)
            if request.prompt_token_ids is None:
                raise SpecError("ActAdd pairs need a prompt of token ids, not embeddings.", "steering.actadd")
            assert self.pairs is not None  # the layer check passes only on an engine with actadd_layers
            padded, pair = self.pairs.apply(spec.actadd, ids)
            if padded != ids:
                from .pairs import lengthen

                lengthen(request, padded, self.max_model_len)
                ids = padded
        start = self.assistant_start(ids)
        user = find_user_start(ids, self.user_header, start)
        self.compiler.compile(spec, len(ids), start, user, pair)
        if spec:
            extra[EXTRA_KEY] = spec.to_dict()
            extra[LANDMARK_KEY] = {"assistant": start, "user": user}
            if pair is not None:
                extra[PAIR_KEY] = pair.to_extra()
            request.cache_salt = f"{request.cache_salt or ''}|steerlab:{spec.fingerprint()}"
        else:
            extra.pop(EXTRA_KEY, None)
        params.extra_args = extra
        return request

