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
"""

from ..spec import DEFAULT_MAX_MULTIPLIER
from .program import EXTRA_KEY, Compiler, ModelFacts, PluginConfig

__all__ = ["EXTRA_KEY", "Compiler", "ModelFacts", "PluginConfig", "engine_config"]


def engine_config(vectors: str, *, model_name: str | None = None, max_ops: int = 4,
                  max_multiplier: float = DEFAULT_MAX_MULTIPLIER) -> dict:
    """The ``additional_config`` that turns the plugin on for an engine (options: :class:`PluginConfig`)."""
    out: dict = {"vectors": str(vectors), "max_ops": max_ops, "max_multiplier": max_multiplier}
    if model_name is not None:
        out["model_name"] = model_name
    return {"steerlab": out}
