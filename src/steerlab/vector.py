"""``SteeringVector``: per-layer tensors plus the metadata that says where they came from and
how to apply them; safetensors files (never pickle), written atomically."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from . import __version__
from .errors import InputError
from .intervene import SITES, Intervention, Rows, Site, Window, add
from .safefile import atomic_save

if TYPE_CHECKING:
    from .model import SteerModel

FORMAT = "steerlab.steering_vector"
FORMAT_VERSION = 1
# How a vector is applied by default: CAA from the assistant turn onward, ActAdd at the front.
APPLY_MODES = ("assistant", "front", "all", "generated")


class VectorFileError(InputError):
    """A vector file is missing, corrupt, or made for another model."""


@dataclass
class SteeringVector:
    """Steering directions, one tensor per block: ``[d]`` or ``[n, d]`` (one per position).

    ``site``: ``"output"`` (added to what block L returns, ``h_L``) or ``"input"`` (added to what
    block L receives). ``apply``: the default window, one of ``APPLY_MODES``.
    """

    layers: dict[int, torch.Tensor]
    model_name: str
    hidden_size: int
    method: str = "custom"
    site: Site = "output"
    apply: str = "assistant"
    meta: dict[str, Any] = field(default_factory=dict)
    version: str = __version__

    def __post_init__(self) -> None:
        if not self.layers:
            raise InputError("A SteeringVector needs at least one layer.")
        if self.apply not in APPLY_MODES:
            raise InputError(f"apply={self.apply!r}; expected one of {APPLY_MODES}.")
        if self.site not in SITES:
            raise InputError(f"site={self.site!r}; expected one of {SITES}.")
        if any(int(k) < 0 for k in self.layers):
            raise InputError(f"Layers are block indices from 0; got {sorted(int(k) for k in self.layers)}.")
        self.layers = {int(k): v.detach() for k, v in sorted(self.layers.items())}
        for layer, t in self.layers.items():
            if t.shape[-1] != self.hidden_size or t.ndim not in (1, 2):
                raise InputError(f"Layer {layer} has shape {tuple(t.shape)}; expected [{self.hidden_size}] "
                                 f"or [positions, {self.hidden_size}].")

    # ------------------------------------------------------------------ arithmetic
    def _with(self, layers: dict[int, torch.Tensor], **meta) -> SteeringVector:
        return replace(self, layers=layers, meta={**self.meta, **meta})

    def __mul__(self, factor: float) -> SteeringVector:
        return self._with({k: v * float(factor) for k, v in self.layers.items()})

    __rmul__ = __mul__

    def __truediv__(self, factor: float) -> SteeringVector:
        return self * (1.0 / float(factor))

    def __neg__(self) -> SteeringVector:
        return self * -1.0

    def _check_compatible(self, other: SteeringVector) -> None:
        if not isinstance(other, SteeringVector):
            raise TypeError(f"Cannot combine a SteeringVector with {type(other).__name__}.")
        if other.hidden_size != self.hidden_size or other.site != self.site:
            raise InputError(
                f"Cannot combine vectors for hidden size {self.hidden_size} ({self.site}) and "
                f"{other.hidden_size} ({other.site})."
            )

    def __add__(self, other: SteeringVector) -> SteeringVector:
        self._check_compatible(other)
        layers = dict(self.layers)
        for k, v in other.layers.items():
            if k in layers and layers[k].shape != v.shape:
                raise InputError(f"Layer {k}: shapes {tuple(layers[k].shape)} and {tuple(v.shape)} differ.")
            layers[k] = layers[k] + v if k in layers else v
        method = self.method if other.method == self.method else f"{self.method}+{other.method}"
        return replace(self, layers=layers, method=method)

    def __sub__(self, other: SteeringVector) -> SteeringVector:
        return self + (-other)

    def select(self, layers: Sequence[int]) -> SteeringVector:
        """The same vector at ``layers`` only (each must be one of its layers)."""
        missing = [k for k in layers if k not in self.layers]
        if missing:
            raise InputError(f"This vector has layers {sorted(self.layers)}, not {missing}.")
        return self._with({k: self.layers[k] for k in layers})

    def norms(self) -> dict[int, float]:
        return {k: float(v.float().norm()) for k, v in self.layers.items()}

    def normalised(self, norm: float = 1.0) -> SteeringVector:
        """Each layer's tensor rescaled to ``norm`` (Frobenius norm for per-position tensors)."""
        return self._with({k: v * (norm / v.float().norm().clamp_min(1e-12)) for k, v in self.layers.items()})

    # ------------------------------------------------------------------ applying
    def window(self) -> Window:
        return {
            "assistant": Window.assistant(),
            "front": Window.span(0, max(int(v.shape[0]) if v.ndim == 2 else 1 for v in self.layers.values())),
            "all": Window.all(),
            "generated": Window.generated(),
        }[self.apply]

    def interventions(self, multiplier: Rows = 1.0, window: Window | None = None) -> list[Intervention]:
        """One ``add`` intervention per layer; ``multiplier`` may hold one value per batch row."""
        w = window or self.window()
        return [add(layer, t, strength=multiplier, window=w, site=self.site) for layer, t in self.layers.items()]

    def check_model(self, lm: SteerModel, allow_other_model: bool = False) -> None:
        if self.hidden_size != lm.hidden_size:
            raise VectorFileError(
                f"This vector has hidden size {self.hidden_size} (made for {self.model_name!r}), but {lm.name!r} has "
                f"{lm.hidden_size}. Extract a vector on this model instead."
            )
        if self.model_name != lm.name and not allow_other_model:
            raise VectorFileError(
                f"This vector was made for {self.model_name!r}, not {lm.name!r}. The hidden sizes match, but the "
                "directions mean nothing in another model; pass allow_other_model=True if you are sure."
            )
        bad = [k for k in self.layers if k >= lm.num_layers]
        if bad:
            raise VectorFileError(f"Layers {bad} do not exist in {lm.name!r} ({lm.num_layers} blocks).")

    # ------------------------------------------------------------------ files
    def header(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "model_name": self.model_name,
            "hidden_size": self.hidden_size, "method": self.method, "site": self.site, "apply": self.apply,
            "layers": sorted(self.layers), "meta": self.meta, "library_version": self.version,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write a ``.safetensors`` file atomically (a crash never leaves a half-written file)."""
        tensors = {f"layer.{k}": v.detach().to("cpu", torch.float32) for k, v in self.layers.items()}
        return atomic_save(tensors, path, {"steerlab": json.dumps(self.header())})

    @classmethod
    def load(cls, path: str | os.PathLike, model=None, *, allow_other_model: bool = False) -> SteeringVector:
        """Read a vector file; with ``model=`` also check it was made for that model."""
        path = Path(path)
        if not path.exists():
            raise VectorFileError(f"No vector file at {path}.")
        if not path.is_file():  # a FIFO or a device would block the reader
            raise VectorFileError(f"{path} is not a regular file.")
        if path.suffix == ".gguf":
            from .gguf_io import load_control_vector

            vec = load_control_vector(path, model)
        else:
            vec = _read_safetensors(path)
        bad = vec.nonfinite_layers()
        if bad:
            raise VectorFileError(f"{path}: layer {bad[0]} holds NaN or infinite values; such a vector would break "
                                  "every generation it touches. Re-create the file.")
        if model is not None:
            vec.check_model(model, allow_other_model)
        return vec

    def nonfinite_layers(self) -> list[int]:
        """Layers holding NaN or infinite values (such a vector breaks every generation it touches)."""
        return [k for k, t in self.layers.items() if not bool(torch.isfinite(t).all())]

    def to(self, device=None, dtype=None) -> SteeringVector:
        return self._with({k: v.to(device=device, dtype=dtype) for k, v in self.layers.items()})

    def __repr__(self) -> str:
        shapes = {k: tuple(v.shape) for k, v in self.layers.items()}
        return f"SteeringVector(method={self.method!r}, model={self.model_name!r}, site={self.site!r}, layers={shapes})"


def _read_safetensors(path: Path) -> SteeringVector:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get("steerlab")
            tensors = {name: fh.get_tensor(name) for name in fh.keys()}  # noqa: SIM118 (a safetensors handle, not a dict)
    except (SafetensorError, OSError, ValueError) as err:
        raise VectorFileError(
            f"{path} is not a readable safetensors file (corrupt or truncated?): {err}. Re-create it with "
            "`steerlab extract` or restore it from a backup."
        ) from err
    if raw is None:
        raise VectorFileError(f"{path} is a safetensors file but not a steerlab vector (no 'steerlab' metadata).")
    try:
        header = json.loads(raw)
        if not isinstance(header, dict) or not isinstance(header.get("meta", {}), dict):
            raise InputError("the header and its 'meta' must be JSON objects")
        if header.get("format") != FORMAT:
            raise InputError("wrong format tag")
        layers = {int(name.split(".", 1)[1]): t for name, t in tensors.items() if name.startswith("layer.")}
        if sorted(layers) != sorted(header["layers"]):
            raise InputError(f"header lists layers {header['layers']} but the file holds {sorted(layers)}")
        return SteeringVector(
            layers=layers, model_name=header["model_name"], hidden_size=int(header["hidden_size"]),
            method=header.get("method", "custom"), site=header.get("site", "output"),
            apply=header.get("apply", "assistant"), meta=header.get("meta", {}),
            version=header.get("library_version", "unknown"),
        )
    except (ValueError, KeyError, TypeError, OverflowError) as err:
        raise VectorFileError(f"{path} has a damaged steerlab header: {err}.") from err


def load_vector_folder(folder: str | os.PathLike, lm, *, allow_other_model: bool = False) -> dict[str, SteeringVector]:
    """Every ``.safetensors`` / ``.gguf`` vector in ``folder``, by file stem, checked against ``lm``
    (anything with ``name``, ``hidden_size`` and ``num_layers``)."""
    out = {}
    for path in sorted(Path(folder).glob("*")):
        if path.suffix in (".safetensors", ".gguf"):
            out[path.stem] = SteeringVector.load(path, lm, allow_other_model=allow_other_model)
    return out
