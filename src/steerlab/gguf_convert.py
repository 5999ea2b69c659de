"""Turning a GGUF file into a plain Hugging Face model folder (config, tokenizer, safetensors shards)
one tensor at a time, so the conversion's memory stays near the size of one shard instead of holding
the whole dequantised state dict and a model built from it at once (17 GB for a 1.5B model).

Names, per-architecture fix-ups (e.g. Llama's rotary permutation of the query and key weights) and
the config come from transformers' own GGUF support, so the result is the model that
``from_pretrained(..., gguf_file=...)`` builds; :func:`convert_gguf` returns False where that support
does not offer the pieces (then the caller falls back to loading the whole model).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from .errors import InputError

SHARD_BYTES = 512 * 2**20


def convert_gguf(path: Path, out: Path, *, shard_bytes: int = SHARD_BYTES) -> bool:
    """Write ``out/config.json``, the tokenizer and ``model-0000i.safetensors`` shards with an index."""
    try:
        import numpy as np
        from gguf import GGUFReader, dequantize
        from safetensors.torch import save_file
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
        from transformers.modeling_gguf_pytorch_utils import (
            TENSOR_PROCESSORS,
            TensorProcessor,
            get_gguf_hf_weights_map,
            load_gguf_checkpoint,
            read_field,
        )
    except ImportError:
        return False
    parsed = load_gguf_checkpoint(str(path), return_tensors=False)  # config and tokenizer fields only
    config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    expected = set(skeleton.state_dict())
    reader = GGUFReader(str(path))
    architecture = read_field(reader, "general.architecture")[0]
    processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=parsed["config"])
    names = get_gguf_hf_weights_map(skeleton, processor)
    out.mkdir(parents=True, exist_ok=True)
    shard: dict[str, torch.Tensor] = {}
    weight_map: dict[str, str] = {}
    files: list[str] = []

    def flush() -> None:
        if shard:
            name = f"model-{len(files) + 1:05d}.safetensors"
            save_file(shard, str(out / name), metadata={"format": "pt"})
            files.append(name)
            weight_map.update(dict.fromkeys(shard, name))
            shard.clear()

    size = 0
    for tensor in reader.tensors:
        result = processor.process(weights=dequantize(tensor.data, tensor.tensor_type), name=tensor.name,
                                   tensor_key_mapping=names, parsed_parameters=parsed)
        if result.name not in names:
            continue
        with warnings.catch_warnings():
            # A float32 tensor comes back as a read-only view of the memory-mapped file; it is only
            # written out to safetensors, never modified, so torch's warning about it does not apply.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            value = torch.from_numpy(np.ascontiguousarray(result.weights, dtype=np.float32))
        shard[names[result.name]] = value
        size += value.numel() * 4
        if size >= shard_bytes:
            flush()
            size = 0
    flush()
    missing = expected - set(weight_map)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if missing - tied:
        raise InputError(f"{path.name}: the conversion found no tensors for {sorted(missing - tied)[:5]}")
    index = {"metadata": {"total_size": sum((out / f).stat().st_size for f in files)}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config.dtype = torch.float32
    config.architectures = [type(skeleton).__name__]
    config.save_pretrained(out)
    skeleton.generation_config.save_pretrained(out)
    AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name).save_pretrained(out)
    return True
