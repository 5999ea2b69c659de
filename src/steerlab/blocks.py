"""Finding the decoder blocks (the residual-stream layers) of a causal language model.

Order of discovery: an explicit dotted path given by the user, then a registry of known
layouts, then a heuristic (the longest ``ModuleList`` whose length equals the configured
number of layers).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .errors import InputError

# Dotted attribute paths, tried in order. Each entry covers several families.
KNOWN_BLOCK_PATHS: tuple[str, ...] = (
    "model.layers",  # Llama, Mistral, Qwen2/3, Gemma/Gemma2/Gemma3 (text), Phi-3, SmolLM
    "model.language_model.layers",  # Gemma3ForConditionalGeneration and other multimodal wrappers
    "model.decoder.layers",  # OPT
    "transformer.h",  # GPT-2, GPT-J, Falcon (old), BLOOM
    "gpt_neox.layers",  # GPT-NeoX, Pythia
    "transformer.blocks",  # MPT
    "model.transformer.h",
    "layers",  # a bare base model (LlamaModel, ...)
    "h",  # a bare GPT2Model
    "decoder.layers",  # a bare OPTModel
)


def _get_path(root: nn.Module, path: str):
    obj = root
    for part in path.split("."):
        if not hasattr(obj, part):
            return None
        obj = getattr(obj, part)
    return obj


def _configured_layer_count(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    if config is None:
        return None
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


def find_blocks(model: nn.Module, path: str | None = None) -> tuple[nn.ModuleList, str]:
    """Return ``(blocks, dotted_path)`` for ``model``.

    ``path`` overrides discovery, e.g. ``path="backbone.layers"`` for an unusual layout.
    """
    if path is not None:
        blocks = _get_path(model, path)
        if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
            raise InputError(
                f"blocks_path={path!r} does not name a non-empty nn.ModuleList on "
                f"{type(model).__name__}. Print the model to see its module names and pass the "
                "dotted path of its list of decoder layers."
            )
        return blocks, path
    expected = _configured_layer_count(model)
    for candidate in KNOWN_BLOCK_PATHS:
        blocks = _get_path(model, candidate)
        if isinstance(blocks, nn.ModuleList) and len(blocks) > 0 and expected in (None, len(blocks)):
            return blocks, candidate
    # Heuristic: the longest ModuleList, preferring one whose length matches the config.
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            score = len(module) + (10_000 if expected is not None and len(module) == expected else 0)
            if best is None or score > best[0]:
                best = (score, name, module)
    if best is None:
        raise InputError(
            f"Could not find the decoder blocks of {type(model).__name__}: no nn.ModuleList found. "
            "Pass blocks_path='dotted.path.to.layers' to load_model()."
        )
    return best[2], best[1]


# ----------------------------------------------------------------- reading and replacing block I/O
# Decoder blocks return either the hidden states alone or a tuple (hidden, extras...) depending on
# the family and the transformers version; their input arrives positionally or as ``hidden_states=``.
# Every hook in the package reads and writes block I/O through these four functions.

def output_hidden(output: Any) -> torch.Tensor:
    """The hidden states in a block's output."""
    return output if isinstance(output, torch.Tensor) else output[0]


def replace_output_hidden(output: Any, hidden: torch.Tensor) -> Any:
    """``output`` with its hidden states replaced, in the same container type."""
    if isinstance(output, torch.Tensor):
        return hidden
    rest = tuple(output[1:])
    return (hidden, *rest) if isinstance(output, tuple) else type(output)((hidden, *rest))


def input_hidden(args: tuple, kwargs: dict) -> torch.Tensor:
    """The hidden states a block was called with (pre-hook ``with_kwargs=True`` arguments)."""
    return args[0] if args else kwargs["hidden_states"]


def replace_input_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    """Pre-hook arguments with the block's input hidden states replaced."""
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}
