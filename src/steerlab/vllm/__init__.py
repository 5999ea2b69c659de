"""Per-request steering inside stock vLLM (the ``vllm`` extra).

Install ``steerlab[vllm]`` and vLLM loads the plugin by itself (entry point
``vllm.general_plugins``); start the engine with the folder of vectors it may serve::

    llm = LLM(model=DIR, additional_config={"steerlab": {"vectors": "vectors/"}})
    params = SamplingParams(max_tokens=32, extra_args={"steering": {"vectors": [
        {"name": "sentiment", "multiplier": 4}]}})

or over HTTP: ``python -m vllm.entrypoints.openai.api_server --model DIR --additional-config
'{"steerlab": {"vectors": "vectors/"}}'`` and ``"vllm_xargs": {"steering": "<the spec as JSON>"}`` in
the request body. The spec is the one :mod:`steerlab.spec` defines (the ``steering`` field of
``steerlab serve``). How it works: :mod:`.program` (specs as table rows), :mod:`.frontend`
(checks, prefix-cache salt), :mod:`.worker` (the hooks), :mod:`.plugin` (where they attach).
ActAdd pairs per request (``{"actadd": {"positive": "Love", "negative": "Hate", "layer": 6}}``)
need ``engine_config(..., actadd_layers=[6])``: see :mod:`.pairs`.
"""

from collections.abc import Sequence

from ..spec import DEFAULT_MAX_MULTIPLIER
from .program import EXTRA_KEY, Compiler, ModelFacts, PluginConfig

__all__ = ["EXTRA_KEY", "Compiler", "ModelFacts", "PluginConfig", "engine_config"]


def engine_config(vectors: str | None = None, *, model_name: str | None = None, max_ops: int = 4,
                  max_multiplier: float = DEFAULT_MAX_MULTIPLIER, actadd_layers: Sequence[int] = (),
                  actadd_max_tokens: int = 16) -> dict:
    """The ``additional_config`` that turns the plugin on for an engine (options: :class:`PluginConfig`):
    a folder of named vectors, and/or the blocks at which requests may bring their own ActAdd pairs."""
    out: dict = {"max_ops": max_ops, "max_multiplier": max_multiplier}
    if vectors is not None:
        out["vectors"] = str(vectors)
    if model_name is not None:
        out["model_name"] = model_name
    if actadd_layers:
        out |= {"actadd_layers": list(actadd_layers), "actadd_max_tokens": actadd_max_tokens}
    return {"steerlab": out}
