"""GGUF control vectors in the layout llama.cpp's ``--control-vector`` reads.

Layer numbering (checked against llama.cpp's loader and graph code): a file holds F32 1-D tensors
named ``direction.N``; llama.cpp rejects ``N = 0``, stores ``direction.N`` at offset ``N-1`` of
its buffer and adds it to the output of layer ``N`` (0-based) of the graph. So
``direction.N`` == steerlab's ``site="output"`` at block ``N``, and a vector at the output of
block 0 cannot be expressed. A ``site="input"`` vector at block L is written as
``direction.{L-1}`` (the input of block L is the output of block L-1). The file's scale is 1:
``--control-vector-scaled FILE S`` multiplies it by S, like steerlab's multiplier.
Note llama.cpp adds the vector at *every* position, i.e. ``apply="all"``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .safefile import atomic_write
from .vector import SteeringVector, VectorFileError


def export_control_vector(vector: SteeringVector, path: str | os.PathLike, model_hint: str | None = None) -> Path:
    import gguf

    path = Path(path)
    directions: dict[int, np.ndarray] = {}
    for layer, t in vector.layers.items():
        if t.ndim != 1:
            raise VectorFileError(
                f"Layer {layer} holds one vector per position ({tuple(t.shape)}); llama.cpp control vectors hold "
                "one vector per layer. ActAdd vectors cannot be exported; use a CAA-style vector."
            )
        index = layer if vector.site == "output" else layer - 1
        if index < 1:
            raise VectorFileError(
                f"llama.cpp cannot steer the output of block 0 (or the embeddings); this vector uses block {layer} "
                f"({vector.site}). Extract it at a later layer."
            )
        directions[index] = t.detach().to("cpu", torch.float32).numpy()

    def write(tmp: str) -> None:
        writer = gguf.GGUFWriter(tmp, "controlvector")
        writer.add_string("controlvector.model_hint", model_hint or vector.meta.get("model_type", vector.model_name))
        writer.add_uint32("controlvector.layer_count", len(directions))
        for index, array in sorted(directions.items()):
            writer.add_tensor(f"direction.{index}", np.ascontiguousarray(array))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    return atomic_write(path, write)


def load_control_vector(path: str | os.PathLike, model=None) -> SteeringVector:
    """Read a llama.cpp control vector as a ``site="output"``, ``apply="all"`` SteeringVector."""
    import gguf

    path = Path(path)
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as err:  # the reader raises several kinds on damaged files
        raise VectorFileError(f"{path} is not a readable GGUF file (corrupt or truncated?): {err}") from err
    layers: dict[int, torch.Tensor] = {}
    for tensor in reader.tensors:
        name = tensor.name
        prefix, _, index = name.partition(".")
        if prefix != "direction" or not index.isdigit() or int(index) == 0:
            raise VectorFileError(f"{path}: tensor {name!r} is not a control-vector direction (direction.N, N >= 1).")
        data = np.array(tensor.data, dtype=np.float32)
        if sum(int(n) > 1 for n in data.shape) > 1:  # llama.cpp adds one vector per layer, never a matrix
            raise VectorFileError(f"{path}: tensor {name!r} has shape {list(data.shape)}; a control-vector direction "
                                  "is one vector.")
        layers[int(index)] = torch.from_numpy(data.reshape(-1))
    if not layers:
        raise VectorFileError(f"{path} holds no direction tensors.")
    sizes = {t.shape[0] for t in layers.values()}
    if len(sizes) != 1:
        raise VectorFileError(f"{path}: direction tensors have different sizes {sorted(sizes)}.")
    hint = ""
    field = reader.fields.get("controlvector.model_hint")
    if field is not None:
        hint = bytes(field.parts[field.data[0]]).decode("utf-8", "replace")
    name = model.name if model is not None else (hint or "unknown")
    return SteeringVector(layers=layers, model_name=name, hidden_size=sizes.pop(), method="gguf-control-vector",
                          site="output", apply="all", meta={"model_hint": hint, "source": str(path)})
