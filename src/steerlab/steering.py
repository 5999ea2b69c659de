"""The steering protocol: the one definition of "what to steer with" that every entry point takes
(``lm.steer``, ``lm.generate``, the evaluators, the CLI, the server, the vLLM plugin).

A *steering object* turns one prompt batch into interventions::

    class Steering(Protocol):
        needs_batch: bool                                         # for_batch must see the batch
        def transform_batch(self, lm: SteerModel, batch) -> PromptBatch: ...  # may reshape it (ActAdd pad mode)
        def for_batch(self, batch) -> list[Intervention]: ...

:func:`as_steering` normalises anything steerable into one such object: an
:class:`~steerlab.intervene.Intervention`, a :class:`~steerlab.vector.SteeringVector` (applied with
multiplier 1 over its own window), a :class:`Scaled` vector, ActAdd or PaCE steering, any object
following the protocol, and (nested) lists of these. Declarative specs (the server's JSON, the
CLI's ``FILE:MULT``) become steering through :mod:`steerlab.spec`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from .errors import InputError
from .intervene import Intervention, Rows, Window, apply_interventions
from .vector import SteeringVector

if TYPE_CHECKING:
    from .model import SteerModel
    from .tokens import PromptBatch

__all__ = ["Combined", "Fixed", "Scaled", "Steering", "SteeringBase", "as_steering", "interventions_for", "steer"]


@runtime_checkable
class Steering(Protocol):
    """Anything that turns a prompt batch into interventions (see the module docstring)."""

    @property
    def needs_batch(self) -> bool: ...

    def transform_batch(self, lm: SteerModel, batch: PromptBatch) -> PromptBatch: ...

    def for_batch(self, batch: PromptBatch | None) -> list[Intervention]: ...


class SteeringBase:
    """Defaults for steering objects: the batch is left as it is, and interventions can be made
    without seeing it."""

    needs_batch = False

    def transform_batch(self, lm: SteerModel, batch: PromptBatch) -> PromptBatch:
        return batch


@dataclass
class Scaled(SteeringBase):
    """A steering vector at ``multiplier`` (one number, or one per prompt row) over ``window``
    (default: the vector's own, e.g. from the assistant turn onward for CAA)."""

    vector: SteeringVector
    multiplier: Rows = 1.0
    window: Window | None = None

    def for_batch(self, batch: PromptBatch | None = None) -> list[Intervention]:
        return self.vector.interventions(self.multiplier, self.window)


@dataclass
class Fixed(SteeringBase):
    """Interventions given as they are."""

    interventions: list[Intervention]

    def for_batch(self, batch: PromptBatch | None = None) -> list[Intervention]:
        return list(self.interventions)


@dataclass
class Combined:
    """Several steering objects applied together: reshapes chain in order, interventions add up."""

    parts: list[Steering] = field(default_factory=list)

    @property
    def needs_batch(self) -> bool:
        return any(p.needs_batch for p in self.parts)

    def transform_batch(self, lm: SteerModel, batch: PromptBatch) -> PromptBatch:
        for part in self.parts:
            batch = part.transform_batch(lm, batch)
        return batch

    def for_batch(self, batch: PromptBatch | None = None) -> list[Intervention]:
        if batch is None and self.needs_batch:
            names = ", ".join(type(p).__name__ for p in self.parts if p.needs_batch)
            raise InputError(f"{names} needs the prompt batch it steers: pass batch=lm.prepare(...) (prepared with "
                            "the same steering if it reshapes prompts, e.g. actadd.prepare).")
        return [iv for part in self.parts for iv in part.for_batch(batch)]

    def __bool__(self) -> bool:
        return bool(self.parts)


def _parts(item: object) -> Iterator[Steering]:
    if item is None:
        return
    if isinstance(item, Combined):
        yield from item.parts
    elif isinstance(item, Intervention):
        yield Fixed([item])
    elif isinstance(item, SteeringVector):
        yield Scaled(item)
    elif isinstance(item, Steering):
        yield item
    elif isinstance(item, (list, tuple)):
        for sub in item:
            yield from _parts(sub)
    else:
        raise TypeError(f"Cannot steer with {type(item).__name__}; expected an Intervention, a SteeringVector, "
                        "Scaled(vector, multiplier), ActAdd or PaCE steering, or a list of them.")


def as_steering(steering: object) -> Combined:
    """Anything steerable (see the module docstring), as one :class:`Combined` steering object;
    consecutive raw interventions are kept together."""
    parts: list[Steering] = []
    for part in _parts(steering):
        if isinstance(part, Fixed) and parts and isinstance(parts[-1], Fixed):
            parts[-1] = Fixed(parts[-1].interventions + part.interventions)
        else:
            parts.append(part)
    return Combined(parts)


def interventions_for(steering: object, batch: PromptBatch | None = None) -> list[Intervention]:
    """The interventions ``steering`` makes for ``batch`` (already reshaped by it, if it reshapes)."""
    return as_steering(steering).for_batch(batch)


@contextmanager
def steer(lm: SteerModel, *steering: object, batch: PromptBatch | None = None) -> Iterator[list[Intervention]]:
    """Apply ``steering`` (anything :func:`as_steering` takes) to every forward pass of ``lm`` inside
    the ``with`` block; the hooks are removed on exit. ``batch``: the
    :class:`~steerlab.tokens.PromptBatch` being run, needed for landmark windows (``"assistant"``),
    for per-row strengths and for steering that reads the batch (ActAdd)."""
    with apply_interventions(lm, interventions_for(list(steering), batch), batch=batch) as applied:
        yield applied
