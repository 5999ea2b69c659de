"""The one mechanism that writes activations: interventions installed by a context manager.

An :class:`Intervention` is *where* (block ``layer``, its ``"output"`` or ``"input"``), *what*
(add a vector or one vector per position, project a direction out, clamp a projection, or call
a function), *which positions* (a :class:`Window` in real-token positions, see
:mod:`steerlab.tokens`) and *how strongly* (a scalar or one strength per batch row).

Positions are tracked across cached decoding: a pre-hook on the module that owns the blocks reads
each forward call's attention mask (or the cache length) and works out the absolute real-token
position of every token in the call, so a window "from the assistant turn onward" covers every
generated token, and a window ``0..n-1`` touches the prompt pass only.

Hooks only act in the thread that entered the context, and are removed on exit, even on error.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal, get_args

import torch
from torch import nn

from .blocks import input_hidden, output_hidden, replace_input_hidden, replace_output_hidden
from .errors import InputError

if TYPE_CHECKING:
    from .model import SteerModel

Rows = int | float | Sequence[int] | Sequence[float] | torch.Tensor
Site = Literal["output", "input"]  # a block's output (residual stream after it) or its input
Kind = Literal["add", "project_out", "clamp", "function"]
SITES: tuple[Site, ...] = get_args(Site)
KINDS: tuple[Kind, ...] = get_args(Kind)
SYMBOLIC_STARTS = ("assistant", "generated", "user")


@dataclass(frozen=True)
class Window:
    """Which real-token positions an intervention touches: ``start <= pos < end``.

    ``start`` is an int, one int per row, or a landmark: ``"assistant"`` (the start of each
    row's assistant turn; needs the prompt batch), ``"user"`` (start of the user text) or
    ``"generated"`` (the first token after each row's prompt: taken from the prompt batch when
    given, else from the first forward pass without a cache). ``end=None`` means
    no end, so every generated token is included.
    """

    start: int | str | Sequence[int] | torch.Tensor = 0
    end: int | Sequence[int] | torch.Tensor | None = None

    @classmethod
    def all(cls) -> Window:
        return cls(0, None)

    @classmethod
    def span(cls, start: int, end: int) -> Window:
        """Prompt positions ``start..end-1``."""
        return cls(start, end)

    @classmethod
    def onward(cls, start: int | str | Sequence[int] | torch.Tensor) -> Window:
        return cls(start, None)

    @classmethod
    def assistant(cls) -> Window:
        return cls("assistant", None)

    @classmethod
    def generated(cls) -> Window:
        return cls("generated", None)


@dataclass
class HookContext:
    """What a ``function`` intervention is given besides the hidden states."""

    layer: int
    positions: torch.Tensor  # [B, T] real-token positions of the tokens in this call
    mask: torch.Tensor  # [B, T] bool: inside the window and not padding
    strength: torch.Tensor  # [B] per-row strength


@dataclass
class Intervention:
    layer: int
    kind: Kind = "add"
    vector: torch.Tensor | None = None  # [d], or [n, d] for one vector per position (add only)
    site: Site = "output"
    window: Window = field(default_factory=Window.all)
    strength: Rows = 1.0
    value: float = 0.0  # clamp target for the projection
    fn: Callable[[torch.Tensor, HookContext], torch.Tensor] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"Unknown intervention kind {self.kind!r}; expected one of {KINDS}.")
        if self.site not in SITES:
            raise InputError(f"site must be 'output' or 'input', not {self.site!r}.")
        if self.kind == "function":
            if not callable(self.fn):
                raise InputError("A 'function' intervention needs fn=callable(hidden, ctx) -> hidden.")
            return
        if not isinstance(self.vector, torch.Tensor):
            raise TypeError(f"A {self.kind!r} intervention needs vector= a torch.Tensor.")
        if self.vector.ndim not in (1, 2) or (self.vector.ndim == 2 and self.kind != "add"):
            raise InputError(
                f"vector has shape {tuple(self.vector.shape)}: expected [hidden] (or [positions, hidden] "
                "for a per-position add)."
            )
        if not torch.isfinite(self.vector).all():
            raise InputError("vector holds NaN or infinite values.")
        if self.kind in ("project_out", "clamp"):
            norm = self.vector.float().norm()
            if norm == 0:
                raise InputError("Cannot project onto a zero direction.")
            self.vector = self.vector / norm

    def scaled(self, factor: float) -> Intervention:
        return replace(self, strength=_scale_rows(self.strength, factor))


def _scale_rows(strength: Rows, factor: float) -> Rows:
    if isinstance(strength, (int, float)):
        return strength * factor
    return torch.as_tensor(strength, dtype=torch.float32) * factor


def add(layer: int, vector: torch.Tensor, *, strength: Rows = 1.0, window: Window | None = None,
        site: Site = "output") -> Intervention:
    """``h += strength * vector`` (``vector`` [d], or [n, d]: row ``i`` goes to window position ``start+i``)."""
    return Intervention(layer, "add", vector, site, window or Window.all(), strength)


def project_out(layer: int, direction: torch.Tensor, *, strength: Rows = 1.0, window: Window | None = None,
                site: Site = "output") -> Intervention:
    """``h -= strength * (h . u) u`` for the unit direction ``u`` (strength 1 = full ablation)."""
    return Intervention(layer, "project_out", direction, site, window or Window.all(), strength)


def clamp(layer: int, direction: torch.Tensor, value: float, *, strength: Rows = 1.0,
          window: Window | None = None, site: Site = "output") -> Intervention:
    """Set the projection on unit ``u`` to ``value``: ``h += strength * (value - h . u) u``."""
    return Intervention(layer, "clamp", direction, site, window or Window.all(), strength, value)


def apply_fn(layer: int, fn: Callable[[torch.Tensor, HookContext], torch.Tensor], *, strength: Rows = 1.0,
             window: Window | None = None, site: Site = "output") -> Intervention:
    """Call ``fn(hidden [B,T,d], ctx) -> hidden``; only positions inside the window are replaced."""
    return Intervention(layer, "function", None, site, window or Window.all(), strength, fn=fn)


# ---------------------------------------------------------------------------- positions
def positions_from_mask(mask: torch.Tensor, cur_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Real-token positions and validity of the last ``cur_len`` columns of a 2-D attention mask."""
    mask = mask.to(torch.long)
    pos = mask.cumsum(-1) - 1
    return pos[:, -cur_len:], mask[:, -cur_len:].bool()


def _past_length(cache, cache_position) -> int:
    if cache_position is not None:
        return int(cache_position.reshape(-1)[0])
    if cache is None:
        return 0
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    try:  # legacy tuple cache: ((k, v), ...) with k [B, heads, T, dh]
        return int(cache[0][0].shape[-2])
    except (TypeError, IndexError, AttributeError):
        return 0


def _per_row(value: Rows, batch: int, device, dtype) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=dtype, device=device)
    if t.ndim == 0:
        return t.expand(batch)
    if t.shape[0] == batch:
        return t
    if batch % t.shape[0] == 0:  # generate() expands rows with repeat_interleave
        return t.repeat_interleave(batch // t.shape[0])
    raise InputError(f"Per-row value has {t.shape[0]} rows but the batch has {batch}.")


class _ForwardState:
    """Positions of the tokens in the forward call now running (one per steering context)."""

    def __init__(self) -> None:
        self.positions: torch.Tensor | None = None
        self.valid: torch.Tensor | None = None
        self.prompt_lengths: torch.Tensor | None = None


def _root_module(model: nn.Module, blocks_path: str) -> nn.Module:
    """The module whose forward owns the blocks (sees input ids, mask and cache)."""
    parent = blocks_path.rsplit(".", 1)[0] if "." in blocks_path else ""
    module = model
    for part in filter(None, parent.split(".")):
        module = getattr(module, part)
    return module


def install_position_tracker(model: nn.Module, blocks_path: str, state: _ForwardState,
                             owner: int) -> torch.utils.hooks.RemovableHandle:
    root = _root_module(model, blocks_path)
    signature = inspect.signature(root.forward)

    def pre_hook(module, args, kwargs):
        if threading.get_ident() != owner:
            return
        bound = signature.bind_partial(*args, **kwargs).arguments
        ids = bound.get("input_ids")
        embeds = bound.get("inputs_embeds")
        ref = ids if ids is not None else embeds
        if ref is None:
            raise RuntimeError("steerlab: the model was called without input_ids or inputs_embeds.")
        batch, cur = ref.shape[0], ref.shape[1]
        mask = bound.get("attention_mask")
        # transformers 5.24 renamed the model's cache argument from past_key_values to cache (and dropped
        # cache_position): without it every decoding step looked like a fresh prompt.
        cache = bound.get("past_key_values")
        past = _past_length(bound.get("cache") if cache is None else cache, bound.get("cache_position"))
        if isinstance(mask, torch.Tensor) and mask.ndim == 2 and mask.shape[1] >= cur:
            state.positions, state.valid = positions_from_mask(mask, cur)
        else:
            state.positions = (past + torch.arange(cur, device=ref.device)).expand(batch, cur)
            state.valid = torch.ones(batch, cur, dtype=torch.bool, device=ref.device)
        if past == 0:
            state.prompt_lengths = state.valid.sum(-1)
        return

    return root.register_forward_pre_hook(pre_hook, with_kwargs=True)


# ---------------------------------------------------------------------------- applying
class _Resolved:
    """An intervention with its landmarks resolved and its tensors cached per device/dtype."""

    def __init__(self, iv: Intervention, layer: int, batch) -> None:
        self.iv = iv
        self.layer = layer
        self._vec_cache: dict = {}
        start = iv.window.start
        if isinstance(start, str):
            if start not in SYMBOLIC_STARTS:
                raise InputError(f"Unknown window start {start!r}; expected an int or one of {SYMBOLIC_STARTS}.")
            if start in ("assistant", "user"):
                if batch is None:
                    raise InputError(
                        f"Window start {start!r} needs the prompt batch: use steer(..., batch=lm.prepare(prompts)) "
                        "or lm.generate(), which passes it."
                    )
                start = batch.assistant_start if start == "assistant" else batch.user_start
            elif batch is not None:  # "generated": after each row's prompt
                start = batch.lengths
        self.start = start
        self.end = iv.window.end

    def vector(self, like: torch.Tensor) -> torch.Tensor:
        key = (like.device, like.dtype)
        if key not in self._vec_cache:
            assert self.iv.vector is not None  # only "function" interventions have none, and they never ask
            self._vec_cache[key] = self.iv.vector.to(device=like.device, dtype=like.dtype)
        return self._vec_cache[key]

    def apply(self, h: torch.Tensor, state: _ForwardState) -> torch.Tensor:
        if state.positions is None:
            raise RuntimeError("steerlab: a block ran before the position tracker; call the model, not a block.")
        assert state.valid is not None  # set together with positions
        batch, cur = h.shape[0], h.shape[1]
        pos, valid = state.positions.to(h.device), state.valid.to(h.device)
        if pos.shape != (batch, cur):
            raise RuntimeError(
                f"steerlab: hidden states {tuple(h.shape[:2])} do not match positions {tuple(pos.shape)}.")
        if isinstance(self.start, str):  # "generated"
            assert state.prompt_lengths is not None  # set on the first (prompt) pass of a generation
            start = state.prompt_lengths.to(h.device)
        else:
            start = _per_row(self.start, batch, h.device, torch.long)
        sel = valid & (pos >= start[:, None])
        if self.end is not None:
            sel &= pos < _per_row(self.end, batch, h.device, torch.long)[:, None]
        iv = self.iv
        strength = _per_row(iv.strength, batch, h.device, h.dtype)
        if iv.kind == "function":
            assert iv.fn is not None  # Intervention checks that a "function" intervention has one
            out = iv.fn(h, HookContext(self.layer, pos, sel, strength))
            return torch.where(sel[..., None], out, h)
        vec = self.vector(h)
        if iv.kind == "add" and vec.ndim == 2:
            offset = pos - start[:, None]
            sel &= offset < vec.shape[0]
            delta = vec[offset.clamp(0, vec.shape[0] - 1)]
        elif iv.kind == "add":
            delta = vec
        else:
            proj = h @ vec
            target = -proj if iv.kind == "project_out" else iv.value - proj
            delta = target[..., None] * vec
        weight = (strength[:, None] * sel.to(h.dtype))[..., None]
        return h + weight * delta


@contextmanager
def apply_interventions(lm: SteerModel, interventions: Sequence[Intervention],
                        batch=None) -> Iterator[list[Intervention]]:
    """Hook ``interventions`` into every forward pass of ``lm`` inside the ``with`` block (removed on
    exit). This is the one mechanism underneath; callers normally use :func:`steerlab.steer`, which
    also takes vectors, ActAdd, PaCE and lists. ``batch``: the
    :class:`~steerlab.tokens.PromptBatch` being run, needed for landmark windows (``"assistant"``)
    and so per-row strengths line up with its rows.
    """
    flat = list(interventions)
    for iv in flat:
        if not isinstance(iv, Intervention):
            raise TypeError(f"apply_interventions takes Intervention objects, not {type(iv).__name__}; "
                            "steerlab.steer takes vectors, ActAdd, PaCE and lists.")
    if batch is not None:
        rows = batch.input_ids.shape[0]
        for iv in flat:
            strength = torch.as_tensor(iv.strength)
            if strength.ndim == 1 and len(strength) != rows:
                raise InputError(f"Intervention at layer {iv.layer} has {len(strength)} per-row strengths but the "
                                 f"batch has {rows} prompts; give one strength per prompt (or one number for all).")
    owner = threading.get_ident()
    state = _ForwardState()
    handles = []
    try:
        by_site: dict[tuple[int, Site], list[_Resolved]] = {}
        for iv in flat:
            layer = lm.check_layer(iv.layer)
            if iv.vector is not None and iv.vector.shape[-1] != lm.hidden_size:
                raise InputError(
                    f"Intervention at layer {layer} has hidden size {iv.vector.shape[-1]}, but {lm.name} has "
                    f"{lm.hidden_size}: this vector was made for another model."
                )
            by_site.setdefault((layer, iv.site), []).append(_Resolved(iv, layer, batch))
        if by_site:
            assert lm.blocks_path is not None  # found when the SteerModel was made
            handles.append(install_position_tracker(lm.model, lm.blocks_path, state, owner))
        for (layer, site), resolved in by_site.items():
            handles.append(_install_block_hook(lm.blocks[layer], site, resolved, state, owner))
        yield flat
    finally:
        for handle in handles:
            handle.remove()


def _install_block_hook(block: nn.Module, site: Site, resolved: list[_Resolved], state: _ForwardState,
                        owner: int):
    def run(h):
        for r in resolved:
            h = r.apply(h, state)
        return h

    if site == "output":
        def hook(module, args, output):
            if threading.get_ident() != owner:
                return None
            return replace_output_hidden(output, run(output_hidden(output)))

        return block.register_forward_hook(hook)

    def pre_hook(module, args, kwargs):
        if threading.get_ident() != owner:
            return None
        return replace_input_hidden(args, kwargs, run(input_hidden(args, kwargs)))

    return block.register_forward_pre_hook(pre_hook, with_kwargs=True)
