"""Steering specs compiled into rows of small tables, the form the vLLM hooks read.

vLLM runs every scheduled request's tokens as one flat batch, so the hooks cannot loop over
requests. Instead each request's steering becomes a *program*: for every hooked site (a block's
output or input) a short list of operations, each one row of numbers::

    (table_row, a, b, strength, start, end, per_position)

and every op, whatever its kind, is the same update of the residual stream ``h`` with a table
vector ``u``::

    h <- h + strength * [start <= pos < end] * (a + b * (h . u)) * u

``add`` is ``a=1, b=0`` (``u`` the vector as saved); ``project_out`` is ``a=0, b=-1`` and ``clamp``
is ``a=value, b=-1`` (``u`` the unit direction). A per-position vector (ActAdd) occupies
consecutive table rows and reads row ``table_row + pos - start``; an ActAdd pair extracted for one
request has ``table_row = PAIR_ROW``, which the worker maps to the rows it keeps for that request's
slot. The programs come from the
same :class:`~steerlab.spec.SteeringFactory` that builds steering for Hugging Face models, so a
spec means one thing on both engines. Nothing here imports vLLM.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch

from ..errors import InputError
from ..intervene import Intervention
from ..spec import DEFAULT_MAX_MULTIPLIER, SpecError, SteeringFactory, SteeringSpec
from ..vector import SteeringVector, load_vector_folder

NO_END = 2**62  # "no end" as a position no sequence reaches
EXTRA_KEY = "steering"  # where a request's spec lives in SamplingParams.extra_args / vllm_xargs
LANDMARK_KEY = "steerlab_landmarks"  # written by the front end: {"assistant": int | None, "user": int | None}
PAIR_KEY = "steerlab_actadd"  # written by the front end: the request's Pair as {"start": int, "rows": lists}
PAIR_ROW = -1  # Op.row of a request's own ActAdd rows (the worker maps it to its slot's block of table rows)


@dataclass(frozen=True)
class ModelFacts:
    """What compiling needs to know about the served model (in place of a loaded SteerModel)."""

    name: str
    hidden_size: int
    num_layers: int


@dataclass(frozen=True)
class PluginConfig:
    """``additional_config={"steerlab": {...}}`` of the vLLM engine.

    ``vectors``: folder of ``.safetensors`` / ``.gguf`` steering vectors, served by file stem.
    ``model_name``: the steerlab name the vectors were made for (default: accept any vector of the
    right hidden size). ``max_ops``: operations one request may put on one site (table width).
    ``max_multiplier``: each vector's combined |multiplier| in one request (as ``steerlab serve``'s
    ``--max-multiplier``; clamp values within the factory's ``max_clamp``).
    ``actadd_layers``: blocks at whose input requests may put ActAdd pairs (``"actadd"`` in the spec),
    extracted per request by a reference copy of the model in the front-end process; empty: pairs are
    refused. ``actadd_max_tokens``: the longest pair, in tokens (table rows kept per request slot).
    """

    vectors: str | None
    model_name: str | None = None
    max_ops: int = 4
    max_multiplier: float = DEFAULT_MAX_MULTIPLIER
    actadd_layers: tuple[int, ...] = ()
    actadd_max_tokens: int = 16

    @classmethod
    def from_additional(cls, additional: Any) -> PluginConfig | None:
        raw = additional.get("steerlab") if isinstance(additional, Mapping) else None
        if raw is None:
            return None
        if not isinstance(raw, Mapping) or not isinstance(raw.get("vectors", ""), str) \
                or ("vectors" not in raw and "actadd_layers" not in raw):
            raise InputError('additional_config["steerlab"] must be {"vectors": FOLDER, ...} and/or '
                             '{"actadd_layers": [LAYER, ...], ...}.')
        unknown = set(raw) - {"vectors", "model_name", "max_ops", "max_multiplier", "actadd_layers",
                              "actadd_max_tokens"}
        if unknown:
            raise InputError(f'additional_config["steerlab"] has unknown keys {sorted(unknown)}.')
        max_ops = raw.get("max_ops", 4)
        if not isinstance(max_ops, int) or not 1 <= max_ops <= 64:
            raise InputError('additional_config["steerlab"]["max_ops"] must be an integer in 1..64.')
        max_multiplier = raw.get("max_multiplier", DEFAULT_MAX_MULTIPLIER)
        if isinstance(max_multiplier, bool) or not isinstance(max_multiplier, (int, float)) \
                or not 0 < max_multiplier < float("inf"):
            raise InputError('additional_config["steerlab"]["max_multiplier"] must be a positive number.')
        layers = raw.get("actadd_layers", [])
        if not isinstance(layers, list) or not all(type(k) is int and k >= 0 for k in layers):
            raise InputError('additional_config["steerlab"]["actadd_layers"] must be a list of block indices.')
        max_tokens = raw.get("actadd_max_tokens", 16)
        if type(max_tokens) is not int or not 1 <= max_tokens <= 256:
            raise InputError('additional_config["steerlab"]["actadd_max_tokens"] must be an integer in 1..256.')
        return cls(raw.get("vectors"), raw.get("model_name"), max_ops, float(max_multiplier),
                   tuple(sorted(set(layers))), max_tokens)


class Pair(NamedTuple):
    """One request's ActAdd tensor: ``rows`` ``[m, hidden]`` added at positions ``start..start+m-1``
    (the pair's leading rows that are exactly zero, its shared chat prefix, are left out)."""

    start: int
    rows: torch.Tensor

    @classmethod
    def of(cls, tensor: torch.Tensor) -> Pair:
        nonzero = tensor.ne(0).any(dim=1).nonzero()
        start = int(nonzero[0]) if len(nonzero) else tensor.shape[0] - 1
        return cls(start, tensor[start:])

    def to_extra(self) -> dict:
        return {"start": self.start, "rows": self.rows.tolist()}

    @classmethod
    def from_extra(cls, raw: Mapping) -> Pair:
        return cls(int(raw["start"]), torch.tensor(raw["rows"], dtype=torch.float32))


class Op(NamedTuple):
    row: int
    a: float
    b: float
    strength: float
    start: int
    end: int
    per_position: int


Site = tuple[int, str]  # (layer, "output" | "input")
Program = dict[Site, list[Op]]


def content_key(t: torch.Tensor) -> str:
    t = t.detach().to("cpu").contiguous()
    return hashlib.sha1(f"{t.dtype}{tuple(t.shape)}".encode() + t.numpy().tobytes()).hexdigest()


class VectorTable:
    """Every direction the named vectors can contribute, as rows of one ``[rows, hidden]`` tensor:
    each layer's vector as saved (one row, or one row per position) and, for one-direction vectors,
    its unit direction (what ``project_out`` and ``clamp`` use). Rows are found by content."""

    def __init__(self, vectors: Mapping[str, SteeringVector], hidden_size: int) -> None:
        rows: list[torch.Tensor] = [torch.zeros(1, hidden_size)]  # row 0: a zero vector for idle slots
        self.index: dict[str, int] = {}
        self.sites: set[Site] = set()
        for name in sorted(vectors):
            vec = vectors[name]
            for layer, t in sorted(vec.layers.items()):
                self.sites.add((layer, vec.site))
                unit = t.ndim == 1 and bool(t.float().norm() > 0)
                forms = [t]
                if unit:  # the unit direction that project_out and clamp read
                    unit_form = Intervention(layer, "project_out", t).vector
                    assert unit_form is not None
                    forms.append(unit_form)
                for form in forms:
                    key = content_key(form)
                    if key not in self.index:
                        self.index[key] = sum(len(r) for r in rows)
                        rows.append(form.reshape(-1, hidden_size).float())
        self.weights = torch.cat(rows)

    def row(self, t: torch.Tensor) -> int:
        try:
            return self.index[content_key(t)]
        except KeyError:
            raise InputError("A steering direction is not one of the served vectors.") from None


@dataclass
class Compiler:
    """Turns request specs into programs for one model and one folder of vectors."""

    facts: ModelFacts
    vectors: dict[str, SteeringVector]
    max_ops: int = 4
    max_multiplier: float | None = DEFAULT_MAX_MULTIPLIER
    actadd_layers: tuple[int, ...] = ()
    actadd_max_tokens: int = 16

    def __post_init__(self) -> None:
        bad = [k for k in self.actadd_layers if k >= self.facts.num_layers]
        if bad:
            raise InputError(f"steerlab vLLM plugin: actadd_layers {bad} do not exist "
                             f"({self.facts.num_layers} blocks).")
        self.table = VectorTable(self.vectors, self.facts.hidden_size)
        self.factory = SteeringFactory(self.facts, self.vectors, max_multiplier=self.max_multiplier)

    @classmethod
    def from_config(cls, config: PluginConfig, facts: ModelFacts) -> Compiler:
        vectors: dict[str, SteeringVector] = {}
        if config.vectors is not None:
            folder = Path(config.vectors)
            if not folder.is_dir():
                raise InputError(f"steerlab vLLM plugin: the vectors folder {folder} does not exist.")
            check = facts if config.model_name is None else ModelFacts(config.model_name, facts.hidden_size,
                                                                         facts.num_layers)
            vectors = load_vector_folder(folder, check, allow_other_model=config.model_name is None)
        return cls(facts, vectors, config.max_ops, config.max_multiplier, config.actadd_layers,
                   config.actadd_max_tokens)

    def spec_of(self, extra_args: Mapping[str, Any] | None) -> SteeringSpec:
        """The request's spec: a JSON object in ``extra_args["steering"]``, or that object as a JSON
        string (HTTP clients pass it so through ``vllm_xargs``, whose values must be flat)."""
        raw = (extra_args or {}).get(EXTRA_KEY)
        if isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except ValueError as err:
                raise SpecError(f"steering is not valid JSON: {err}.", "steering") from None
        return SteeringSpec.from_dict(raw)

    def check(self, spec: SteeringSpec) -> None:
        """Raise a :class:`SpecError` if this engine cannot run ``spec`` (before anything is extracted)."""
        if spec.pace is not None:
            raise SpecError("PaCE is not available on the vLLM engine yet; use steerlab serve.", "steering.pace")
        self.factory.check(spec)  # vectors, layers, strength limits (the ActAdd coefficient's too)
        if spec.actadd is not None and spec.actadd.layer not in self.actadd_layers:
            where = (f"at blocks {list(self.actadd_layers)}" if self.actadd_layers else
                     'only when started with additional_config={"steerlab": {"actadd_layers": [...]}}')
            raise SpecError(f"This vLLM engine takes ActAdd pairs {where}, not at block {spec.actadd.layer}. Or "
                            "save the pair as a vector (steerlab extract --method actadd) into the vectors folder "
                            "and name it.", "steering.actadd.layer")

    def compile(self, spec: SteeringSpec, prompt_len: int, assistant_start: int | None = None,
                user_start: int | None = None, pair: Pair | None = None) -> Program:
        """The program for one request (empty for no steering). Raises :class:`SpecError` for what
        this engine cannot do, so the front end can refuse the request before it is scheduled.
        ``pair``: the request's ActAdd tensor (the front end extracts it), applied at the input of block
        ``spec.actadd.layer`` from the rows the worker keeps for the request's slot."""
        self.check(spec)
        program: Program = {}
        for iv in self.factory.build(replace(spec, actadd=None)).for_batch(None):
            program.setdefault((iv.layer, iv.site), []).append(self._op(iv, prompt_len, assistant_start, user_start))
        if spec.actadd is not None:  # after the vectors, as Combined orders the parts on steerlab's engine
            if pair is None or pair.rows.ndim != 2 or pair.rows.shape[1] != self.facts.hidden_size \
                    or not 0 < pair.rows.shape[0] <= self.actadd_max_tokens \
                    or not bool(torch.isfinite(pair.rows).all()):
                raise SpecError(f"The ActAdd pair's differing part must be 1..{self.actadd_max_tokens} tokens long "
                                "(the engine's actadd_max_tokens) with finite activations.", "steering.actadd")
            program.setdefault((spec.actadd.layer, "input"), []).append(
                Op(PAIR_ROW, 1.0, 0.0, 1.0, pair.start, pair.start + int(pair.rows.shape[0]), 1))
        for (layer, site), ops in program.items():
            if len(ops) > self.max_ops:
                raise SpecError(f"This request puts {len(ops)} operations on layer {layer} ({site}); the engine was "
                                f"started with max_ops={self.max_ops}.", "steering.vectors")
        return program

    def _op(self, iv: Intervention, prompt_len: int, assistant_start: int | None, user_start: int | None) -> Op:
        start = iv.window.start
        if start == "generated":
            start = prompt_len
        elif start == "assistant":  # the raw-text rule when no chat header was found: the last prompt token
            start = assistant_start if assistant_start is not None else prompt_len - 1
        elif start == "user":  # no user header found (raw text): the whole prompt, as for token prompts
            start = user_start if user_start is not None else 0
        end = NO_END if iv.window.end is None else iv.window.end
        if not isinstance(start, int) or not isinstance(end, int) or not isinstance(iv.strength, (int, float)):
            raise InputError("Per-row windows and strengths are built per request on vLLM; give one value.")
        vector = iv.vector
        assert vector is not None  # "function" interventions are refused when the spec is compiled
        per_position = int(vector.ndim == 2)
        if per_position:
            end = min(end, start + vector.shape[0])
        a, b = {"add": (1.0, 0.0), "project_out": (0.0, -1.0), "clamp": (float(iv.value), -1.0)}[iv.kind]
        return Op(self.table.row(vector), a, b, float(iv.strength), int(start), int(end), per_position)
