"""Declarative steering: one schema for what a request, a command line or a file asks for, and one
factory that turns it into steering objects (:mod:`steerlab.steering`).

The schema (JSON, as the server's ``steering`` field and the vLLM plugin's ``extra_args`` take it)::

    {"vectors": [{"name": "sentiment", "multiplier": 4,          # several allowed, summed per row
                  "layers": [12],                                # default: every layer of the vector
                  "op": "add" | "project_out" | "clamp",         # default "add"
                  "value": 0.0,                                  # clamp: target projection
                  "window": "own" | "all" | "assistant" | "generated" | "user"
                            | {"start": 0, "end": 8}}],          # default "own": the vector's own
     "actadd": {"positive": "Love", "negative": "Hate", "layer": 6, "coeff": 5, "mode": "pad"},
     "pace": {"task": "detox", "layers": [15], "strength": 1, "sign": "both"}}

A key that the schema does not have, a value of the wrong type or an unknown name is an error that
names it; nothing is ignored. The CLI's ``FILE[:MULT]`` is a vector entry whose name is a path.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

from .errors import InputError, UnknownNameError
from .intervene import Intervention, Window, clamp, project_out
from .steering import Combined, Fixed, Scaled, Steering
from .vector import SteeringVector

Op = Literal["add", "project_out", "clamp"]
WindowName = Literal["own", "all", "assistant", "generated", "user"]
ActAddMode = Literal["overlay", "pad"]
PaceSign = Literal["both", "positive"]
MAX_VECTOR_ENTRIES = 16
# The servers' default strength limit for untrusted clients (steerlab serve's --max-multiplier, the vLLM
# plugin's max_multiplier): each vector's combined |multiplier|, |ActAdd coeff|, |PaCE strength|.
DEFAULT_MAX_MULTIPLIER = 50.0


class SpecError(InputError):
    """A steering spec that cannot be used; ``param`` is the dotted path of the offending field and
    ``code`` says what kind of failure it is where that matters to a client (``"vector_not_found"``)."""

    def __init__(self, message: str, param: str, code: str | None = None) -> None:
        super().__init__(message)
        self.param, self.code = param, code


@dataclass(frozen=True)
class VectorEntry:
    name: str
    multiplier: float = 1.0
    layers: tuple[int, ...] | None = None
    op: Op = "add"
    value: float = 0.0
    window: WindowName | tuple[int, int | None] = "own"

    def group(self) -> tuple:
        """What must match for two entries to share one intervention with per-row strengths."""
        return self.name, self.layers, self.op, self.value, self.window


@dataclass(frozen=True)
class ActAddEntry:
    positive: str
    negative: str
    layer: int
    coeff: float = 5.0
    mode: ActAddMode = "pad"


@dataclass(frozen=True)
class PaceEntry:
    task: str
    layers: tuple[int, ...] | None = None
    strength: float = 1.0
    sign: PaceSign = "both"


@dataclass(frozen=True)
class SteeringSpec:
    vectors: tuple[VectorEntry, ...] = ()
    actadd: ActAddEntry | None = None
    pace: PaceEntry | None = None

    def __bool__(self) -> bool:
        return bool(self.vectors) or self.actadd is not None or self.pace is not None

    # ------------------------------------------------------------------ reading
    @classmethod
    def from_dict(cls, data: Any, *, param: str = "steering") -> SteeringSpec:
        """Parse the JSON form strictly (see the module docstring); ``None`` is no steering."""
        if data is None:
            return cls()
        obj = _object(data, param, {"vectors", "actadd", "pace"})
        vectors = obj.get("vectors") or []
        if not isinstance(vectors, list):
            raise SpecError(f"{param}.vectors must be a list of objects.", f"{param}.vectors")
        if len(vectors) > MAX_VECTOR_ENTRIES:
            raise SpecError(f"{param}.vectors has {len(vectors)} entries; at most {MAX_VECTOR_ENTRIES}.",
                            f"{param}.vectors")
        return cls(tuple(_vector_entry(v, f"{param}.vectors[{i}]") for i, v in enumerate(vectors)),
                   _actadd_entry(obj["actadd"], f"{param}.actadd") if obj.get("actadd") is not None else None,
                   _pace_entry(obj["pace"], f"{param}.pace") if obj.get("pace") is not None else None)

    @classmethod
    def from_cli(cls, items: Sequence[str | tuple[str, float]]) -> SteeringSpec:
        """``FILE[:MULTIPLIER]`` arguments (or ``(file, multiplier)`` pairs) as vector entries."""
        return cls(tuple(VectorEntry(*_file_multiplier(x) if isinstance(x, str) else x) for x in items))

    @classmethod
    def from_model_name(cls, model: str | None) -> SteeringSpec | None:
        """Steering written into an OpenAI ``model`` name, for clients that can send nothing else
        (lm-eval's ``local-completions``): ``MODEL+VECTOR[*MULTIPLIER][@WINDOW]`` with one
        ``+...`` per vector, e.g. ``smollm2-135m+sentiment*4@all``. None when the name has no ``+``."""
        if not model or "+" not in model:
            return None
        entries = []
        for i, part in enumerate(model.split("+")[1:]):
            param = f"model (vector {i + 1})"
            part, _, window = part.partition("@")
            name, star, mult = part.partition("*")
            if not name or (star and not _is_number(mult)):
                raise SpecError(f"{param}: {part!r} is not VECTOR[*MULTIPLIER][@WINDOW] (e.g. sentiment*4@all).",
                                "model")
            entries.append(_vector_entry({"name": name, "multiplier": float(mult) if star else 1.0,
                                          "window": window or "own"}, param))
        if len(entries) > MAX_VECTOR_ENTRIES:
            raise SpecError(f"The model name asks for {len(entries)} vectors; at most {MAX_VECTOR_ENTRIES}.", "model")
        return cls(tuple(entries))

    def to_dict(self) -> dict:
        """The JSON form (``from_dict(to_dict())`` gives the same spec)."""
        out: dict[str, Any] = {}
        if self.vectors:
            out["vectors"] = [_entry_json(e) for e in self.vectors]
        if self.actadd is not None:
            out["actadd"] = _entry_json(self.actadd)
        if self.pace is not None:
            out["pace"] = _entry_json(self.pace)
        return out

    def fingerprint(self) -> str:
        """A short hash of the spec: equal for equal steering (used to keep caches apart)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def batch_key(self) -> str | None:
        """Requests with the same key can share a batch (vector entries vary per row; ActAdd and PaCE
        settings cannot); None when there is nothing but vector entries."""
        if self.actadd is None and self.pace is None:
            return None
        return json.dumps([_entry_json(self.actadd) if self.actadd else None,
                           _entry_json(self.pace) if self.pace else None], sort_keys=True)


def _entry_json(entry: VectorEntry | ActAddEntry | PaceEntry) -> dict:
    """An entry as JSON: layer tuples as lists, a ``(start, end)`` window as ``{"start", "end"}``."""
    out = asdict(entry)
    for key, value in out.items():
        if isinstance(value, tuple):
            out[key] = {"start": value[0], "end": value[1]} if key == "window" else list(value)
    return out


def _file_multiplier(text: str) -> tuple[str, float]:
    path, sep, mult = text.rpartition(":")
    if not sep or not _is_number(mult):
        return text, 1.0
    return path, float(mult)


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _object(data: Any, param: str, keys: set[str], required: Sequence[str] = ()) -> dict:
    if not isinstance(data, Mapping):
        raise SpecError(f"{param} must be an object, not {type(data).__name__}.", param)
    unknown = sorted(set(data) - keys)
    if unknown:
        raise SpecError(f"{param} has unknown field {unknown[0]!r}; its fields are {sorted(keys)}.",
                        f"{param}.{unknown[0]}")
    missing = [k for k in required if data.get(k) is None]
    if missing:
        raise SpecError(f"{param}.{missing[0]} is required.", f"{param}.{missing[0]}")
    return dict(data)


def _number(data: dict, key: str, param: str, default: float) -> float:
    value = data.get(key, default)
    try:  # JSON integers are unbounded: one too large for a float is as unusable as inf
        number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        shown = repr(value) if len(repr(value)) <= 40 else f"{repr(value)[:20]}..."
        raise SpecError(f"{param}.{key} must be a finite number, not {shown}.", f"{param}.{key}")
    return number


def _integer(value: Any, param: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{param} must be an integer, not {value!r}.", param)
    return value


def _text(data: dict, key: str, param: str, max_length: int = 500) -> str:
    value = data[key]
    if not isinstance(value, str) or not value or len(value) > max_length:
        raise SpecError(f"{param}.{key} must be a non-empty string of at most {max_length} characters.",
                        f"{param}.{key}")
    return value


def _choice(data: dict, key: str, param: str, kind: Any, default: str) -> Any:
    value = data.get(key, default)
    options = get_args(kind)
    if value not in options:
        raise SpecError(f"{param}.{key} must be one of {list(options)}, not {value!r}.", f"{param}.{key}")
    return value


def _layers(value: Any, param: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value or len(value) > 256:
        raise SpecError(f"{param} must be a non-empty list of layer numbers.", param)
    return tuple(sorted({_integer(x, param) for x in value}))


def _window(value: Any, param: str) -> WindowName | tuple[int, int | None]:
    if isinstance(value, str):
        if value not in get_args(WindowName):
            raise SpecError(f"{param} must be one of {list(get_args(WindowName))} or {{'start': i, 'end': j}}, "
                            f"not {value!r}.", param)
        return value  # type: ignore[return-value]
    obj = _object(value, param, {"start", "end"}, required=("start",))
    start = _integer(obj["start"], f"{param}.start")
    end = obj.get("end")
    end = None if end is None else _integer(end, f"{param}.end")
    if start < 0 or (end is not None and end <= start):
        raise SpecError(f"{param} needs 0 <= start < end, not start={start}, end={end}.", param)
    return start, end


def _vector_entry(data: Any, param: str) -> VectorEntry:
    obj = _object(data, param, {"name", "multiplier", "layers", "op", "value", "window"}, required=("name",))
    return VectorEntry(_text(obj, "name", param), _number(obj, "multiplier", param, 1.0),
                       _layers(obj.get("layers"), f"{param}.layers"), _choice(obj, "op", param, Op, "add"),
                       _number(obj, "value", param, 0.0), _window(obj.get("window", "own"), f"{param}.window"))


def _actadd_entry(data: Any, param: str) -> ActAddEntry:
    obj = _object(data, param, {"positive", "negative", "layer", "coeff", "mode"},
                  required=("positive", "negative", "layer"))
    return ActAddEntry(_text(obj, "positive", param), _text(obj, "negative", param),
                       _integer(obj["layer"], f"{param}.layer"), _number(obj, "coeff", param, 5.0),
                       _choice(obj, "mode", param, ActAddMode, "pad"))


def _pace_entry(data: Any, param: str) -> PaceEntry:
    obj = _object(data, param, {"task", "layers", "strength", "sign"}, required=("task",))
    return PaceEntry(_text(obj, "task", param, 100), _layers(obj.get("layers"), f"{param}.layers"),
                     _number(obj, "strength", param, 1.0), _choice(obj, "sign", param, PaceSign, "both"))


# ---------------------------------------------------------------------- building steering
def _window_of(entry: VectorEntry, vector: SteeringVector) -> Window:
    if isinstance(entry.window, tuple):
        return Window(*entry.window)
    return {"own": vector.window, "all": Window.all, "assistant": Window.assistant,
            "generated": Window.generated, "user": lambda: Window.onward("user")}[entry.window]()


@dataclass
class SteeringFactory:
    """Builds steering from specs for one model.

    ``vectors``: named vectors (the server's ``--vectors`` folder), or None to treat names as file
    paths (the CLI), loaded and checked against the model on first use. ``dictionary`` and
    ``partition``: a PaCE concept dictionary, and a function ``task -> Partition`` (default: the
    embedding partitioner). ``actadd_mode``: apply named ActAdd vectors through
    :class:`~steerlab.methods.actadd.ActAddSteering` in that mode instead of as plain front-window adds.
    """

    # A SteerModel; the vLLM plugin passes its ModelFacts (name, hidden_size, num_layers), which is
    # all that checking and compiling vector specs reads (ActAdd pairs and PaCE need the model).
    lm: Any
    vectors: Mapping[str, SteeringVector] | None = None
    dictionary: Any = None
    partition: Callable[[str], Any] | None = None
    actadd_mode: ActAddMode | None = None
    allow_other_model: bool = False
    chat: bool = True  # ActAdd pairs are read as chat user turns (False: raw text)
    actadd_cache_size: int = 32
    # Strength limits for specs from untrusted clients (the servers set them; None: no limit). The
    # multiplier limit holds for each vector's combined strength: listing one vector many times adds up.
    max_multiplier: float | None = None
    max_clamp: float = 1e4
    _actadd: OrderedDict = field(default_factory=OrderedDict, repr=False)
    _partitions: dict = field(default_factory=dict, repr=False)
    _files: dict = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ checks
    def vector(self, name: str) -> SteeringVector:
        """The named vector (or the vector file at that path)."""
        if self.vectors is not None:
            if name not in self.vectors:
                raise UnknownNameError(f"Unknown vector {name!r}; known: {sorted(self.vectors)}.")
            return self.vectors[name]
        if name not in self._files:
            self._files[name] = SteeringVector.load(name, self.lm, allow_other_model=self.allow_other_model)
        return self._files[name]

    def check(self, spec: SteeringSpec) -> None:
        """Raise a :class:`SpecError` naming the field if ``spec`` cannot be built on this model (unknown
        vector, layer out of range, no dictionary, unknown task); nothing is extracted or loaded twice."""
        n = self.lm.num_layers
        for i, e in enumerate(spec.vectors):
            param = f"steering.vectors[{i}]"
            try:
                vec = self.vector(e.name)
            except UnknownNameError as err:
                raise SpecError(str(err), f"{param}.name", "vector_not_found") from None
            missing = [k for k in e.layers or () if k not in vec.layers]
            if missing:
                raise SpecError(f"Vector {e.name!r} has layers {sorted(vec.layers)}, not {missing}.", f"{param}.layers")
            if e.op != "add" and any(vec.layers[k].ndim != 1 for k in e.layers or vec.layers):
                raise SpecError(f"{e.op} needs a one-direction vector; {e.name!r} holds one vector per position "
                                "(ActAdd).", f"{param}.op")
        if spec.actadd is not None and not 0 <= spec.actadd.layer < n:
            raise SpecError(f"actadd.layer {spec.actadd.layer} is outside 0..{n - 1}.", "steering.actadd.layer")
        if spec.pace is not None:
            if self.dictionary is None:
                raise SpecError("There is no concept dictionary for PaCE (the server takes one with --dictionary).",
                                "steering.pace")
            from .pace.partition import TASKS

            if self.partition is None and spec.pace.task not in TASKS:
                raise SpecError(f"Unknown PaCE task {spec.pace.task!r}; tasks: {sorted(TASKS)}.",
                                "steering.pace.task")
            bad = [k for k in spec.pace.layers or () if k not in self.dictionary.layers]
            if bad:
                raise SpecError(f"The dictionary has layers {self.dictionary.layers}, not {bad}.",
                                "steering.pace.layers")
        if self.max_multiplier is not None:
            self._check_strengths(spec, self.max_multiplier)

    def _check_strengths(self, spec: SteeringSpec, limit: float) -> None:
        total: dict[str, float] = {}
        for i, v in enumerate(spec.vectors):
            total[v.name] = total.get(v.name, 0.0) + abs(v.multiplier)
            if total[v.name] > limit:
                raise SpecError(f"multiplier {v.multiplier} of {v.name!r} brings its total |multiplier| in this "
                                f"request to {total[v.name]:g}, outside +-{limit}.",
                                f"steering.vectors[{i}].multiplier")
            if v.op == "clamp" and abs(v.value) > self.max_clamp:
                raise SpecError(f"clamp value {v.value} is outside +-{self.max_clamp:g}.",
                                f"steering.vectors[{i}].value")
        if spec.actadd is not None and abs(spec.actadd.coeff) > limit:
            raise SpecError(f"actadd.coeff {spec.actadd.coeff} is outside +-{limit}.", "steering.actadd.coeff")
        if spec.pace is not None and abs(spec.pace.strength) > limit:
            raise SpecError(f"pace.strength {spec.pace.strength} is outside +-{limit}.", "steering.pace.strength")

    # ------------------------------------------------------------------ building
    def build(self, spec: SteeringSpec | Mapping | None) -> Combined:
        """The steering one spec asks for."""
        return self.build_rows([spec])

    def build_rows(self, specs: Sequence[SteeringSpec | Mapping | None]) -> Combined:
        """Steering for a batch whose row ``i`` asks for ``specs[i]``: each distinct vector entry becomes
        one set of interventions with per-row strengths (0 in rows that did not ask for it), so every row
        gets exactly its own steering in one forward pass. ActAdd and PaCE settings must be the same in
        every row (:meth:`SteeringSpec.batch_key`)."""
        parsed = [s if isinstance(s, SteeringSpec) else SteeringSpec.from_dict(s) for s in specs]
        if len({s.batch_key() for s in parsed}) > 1:
            raise InputError("Rows with different ActAdd or PaCE settings cannot share a batch.")
        for s in parsed:
            self.check(s)
        rows = len(parsed)
        parts: list[Steering] = []
        groups: dict[tuple, list[float]] = {}
        for r, s in enumerate(parsed):
            for e in s.vectors:
                groups.setdefault(e.group(), [0.0] * rows)[r] += e.multiplier
        for (name, layers, op, value, window), strengths in groups.items():
            entry = VectorEntry(name, 1.0, layers, op, value, window)
            strength: float | list[float] = strengths[0] if rows == 1 else strengths
            parts.append(self._vector_steering(entry, strength))
        first = parsed[0] if parsed else SteeringSpec()
        if first.actadd is not None:
            parts.append(self._actadd_steering(first.actadd))
        if first.pace is not None:
            parts.append(self._pace_steering(first.pace))
        return Combined(parts)

    def _vector_steering(self, entry: VectorEntry, strength: float | list[float]) -> Steering:
        vec = self.vector(entry.name)
        if entry.layers is not None:
            vec = vec.select(entry.layers)
        if vec.method == "actadd" and self.actadd_mode is not None and entry.op == "add" and entry.window == "own":
            from .methods.actadd import ActAddSteering

            if not isinstance(strength, float):
                raise InputError("ActAdd steering takes one multiplier for the whole batch.")
            return ActAddSteering(vec, strength, self.actadd_mode)
        window = _window_of(entry, vec)
        if entry.op == "add":
            return Scaled(vec, strength, window)
        make: Callable[..., Intervention] = project_out if entry.op == "project_out" else (
            lambda layer, d, **kw: clamp(layer, d, entry.value, **kw))
        return Fixed([make(k, t, strength=strength, window=window, site=vec.site) for k, t in vec.layers.items()])

    def _actadd_steering(self, a: ActAddEntry) -> Steering:
        from .methods.actadd import ActAddSteering, extract

        key = (a.positive, a.negative, a.layer, a.coeff)
        if key not in self._actadd:
            self._actadd[key] = extract(self.lm, a.positive, a.negative, a.layer, coeff=a.coeff, chat=self.chat)
            while len(self._actadd) > self.actadd_cache_size:  # bounded: the least recently used pair goes
                self._actadd.popitem(last=False)
        self._actadd.move_to_end(key)
        return ActAddSteering(self._actadd[key], mode=a.mode)

    def _pace_steering(self, p: PaceEntry) -> Steering:
        from .pace import PaCE

        if p.task not in self._partitions:
            if self.partition is not None:
                self._partitions[p.task] = self.partition(p.task)
            else:
                from .pace import EmbeddingPartitioner

                self._partitions[p.task] = EmbeddingPartitioner().partition(self.dictionary, p.task)
        layers = list(p.layers) if p.layers is not None else None
        return PaCE(self.dictionary, self._partitions[p.task], layers, strength=p.strength, sign=p.sign)
