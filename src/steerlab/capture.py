"""Reading the residual stream: batched, padding-aware, stopping after the deepest layer needed,
and keeping only the selected positions (never every position of every layer)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from transformers import DynamicCache

from .blocks import input_hidden, output_hidden
from .errors import InputError, OutOfRangeError
from .intervene import Site
from .progress import progress_bar
from .tokens import PaddingSide, PromptBatch, Rendered, pad_ids, tokenize_with_offsets

if TYPE_CHECKING:
    from .model import SteerModel

PositionSpec = str | int | Sequence[int] | torch.Tensor | Sequence[Sequence[bool]]


class _StopForward(Exception):
    """Raised by the deepest capture hook to end the forward pass early."""


def _select(spec: PositionSpec, lengths: torch.Tensor, rows: torch.Tensor) -> list[list[int]]:
    """Real-token positions to keep for each row of a chunk (``rows``: indices into the full input)."""
    out = []
    for r, n in zip(rows.tolist(), lengths.tolist(), strict=True):
        if isinstance(spec, str):
            if spec == "last":
                out.append([n - 1])
            elif spec == "all":
                out.append(list(range(n)))
            else:
                raise InputError(f"positions={spec!r}: use 'last', 'all', an int, per-row ints or a bool mask.")
        elif isinstance(spec, int):
            p = spec if spec >= 0 else n + spec
            if not 0 <= p < n:
                raise OutOfRangeError(f"Position {spec} is outside row {r}, which has {n} tokens.")
            out.append([p])
        else:
            item: Any = spec[r]
            if isinstance(item, torch.Tensor):
                item = item.tolist()
            if isinstance(item, (list, tuple)):  # a boolean mask over the row's positions
                picked = [p for p, keep in enumerate(item) if keep and p < n]
                if any(keep for p, keep in enumerate(item) if p >= n):
                    raise OutOfRangeError(f"The mask for row {r} selects positions past its {n} tokens.")
                out.append(picked)
            else:
                p = int(item) if int(item) >= 0 else n + int(item)
                if not 0 <= p < n:
                    raise OutOfRangeError(f"Position {item} is outside row {r}, which has {n} tokens.")
                out.append([p])
    return out


def _token_rows(lm: SteerModel, inputs, chat: bool) -> list[list[int]]:
    """Each input's real (unpadded) token ids."""
    if isinstance(inputs, PromptBatch):
        return [inputs.input_ids[i][inputs.attention_mask[i].bool()].tolist() for i in range(len(inputs))]
    if isinstance(inputs, str):
        inputs = [inputs]
    if len(inputs) == 0:
        raise InputError("capture() was given no inputs.")
    if isinstance(inputs[0], (list, tuple, torch.Tensor)):
        return [list(map(int, r)) for r in inputs]
    rendered = [r if isinstance(r, Rendered) else lm.render(r, chat=chat) for r in inputs]
    return [tokenize_with_offsets(lm.tokenizer, r.text)[0] for r in rendered]


def _forward_reading(lm: SteerModel, layers: list[int], site: Site, model_inputs: dict, rows: torch.Tensor,
                     cols: torch.Tensor, early_exit: bool, out_dtype: torch.dtype) -> dict[int, torch.Tensor]:
    """One forward pass of ``lm.model(**model_inputs)``; returns ``{layer: hidden[rows, cols]}`` on
    the CPU, ending the pass after the deepest layer when ``early_exit``."""
    deepest = max(layers)
    picked: dict[int, torch.Tensor] = {}

    def grab(layer: int, hidden: torch.Tensor) -> None:
        picked[layer] = hidden[rows.to(hidden.device), cols.to(hidden.device)].to("cpu", out_dtype)
        if early_exit and layer == deepest:
            raise _StopForward

    handles = []
    for layer in layers:
        block = lm.blocks[layer]
        if site == "output":
            handles.append(block.register_forward_hook(
                lambda m, a, o, layer=layer: grab(layer, output_hidden(o))))
        else:
            handles.append(block.register_forward_pre_hook(
                lambda m, a, k, layer=layer: grab(layer, input_hidden(a, k)), with_kwargs=True))
    try:
        lm.model(**model_inputs)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    return picked


def _file_rows(results: dict[int, list[tuple[int, torch.Tensor]]], picked: dict[int, torch.Tensor],
               chunk: Sequence[int], keep: Sequence[Sequence[int]]) -> None:
    """Split one batch's read rows (``picked``: ``{layer: [selected, d]}``, batch row 0's first) back into
    its inputs: ``results[layer]`` gets ``(input index, [its selected, d])`` for each input in ``chunk``."""
    for layer, values in picked.items():
        for i, part in zip(chunk, values.split([len(ps) for ps in keep]), strict=True):
            results[layer].append((i, part))


@torch.no_grad()
def capture(
    lm,
    inputs,
    layers: int | Sequence[int],
    *,
    positions: PositionSpec = "last",
    site: Site = "output",
    batch_size: int = 16,
    padding_side: PaddingSide = "left",
    chat: bool = False,
    early_exit: bool = True,
    sort_by_length: bool = True,
    out_dtype: torch.dtype = torch.float32,
    progress: bool | None = None,
) -> dict[int, torch.Tensor]:
    """Residual-stream activations at ``layers`` for the selected ``positions``.

    ``inputs``: strings (raw text; ``chat=True`` renders them as user turns), rendered prompts,
    token-id lists, or a :class:`PromptBatch`. ``site="output"`` reads what block L returns
    (``h_L``); ``"input"`` reads what it receives (= output of block L-1).

    ``positions`` are real-token positions: ``"last"``, an int (negative counts from the end),
    one int per input, ``"all"``, or one boolean mask per input. Returns ``{layer: tensor}``;
    ``[N, d]`` with one row per input for a single position per input, else the selected positions
    of input 0, then of input 1, ... concatenated (``[sum of selected, d]``).

    Runs inside any active :func:`~steerlab.intervene.steer` context, so it can read steered states.
    """
    layer_list = lm.check_layers(layers)
    if site not in ("output", "input"):
        raise InputError(f"site must be 'output' or 'input', not {site!r}.")
    rows = _token_rows(lm, inputs, chat)
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i])) if sort_by_length else list(range(len(rows)))
    results: dict[int, list[tuple[int, torch.Tensor]]] = {layer: [] for layer in layer_list}
    chunks = [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
    for chunk in progress_bar(chunks, "capture", progress=progress):
        ids, mask = pad_ids([rows[i] for i in chunk], lm.tokenizer.pad_token_id, padding_side, lm.device)
        lengths = mask.sum(-1).cpu()
        keep = _select(positions, lengths, torch.tensor(chunk))
        width = ids.shape[1]
        row_idx = torch.tensor([b for b, ps in enumerate(keep) for _ in ps], dtype=torch.long)
        col_idx = torch.tensor(
            [(width - int(lengths[b]) if padding_side == "left" else 0) + p for b, ps in enumerate(keep) for p in ps],
            dtype=torch.long,
        )

        picked = _forward_reading(lm, layer_list, site, lm.forward_inputs(ids, mask), row_idx, col_idx, early_exit,
                                  out_dtype)
        _file_rows(results, picked, chunk, keep)
    out = {}
    single = all(len(t) == 1 for _, t in results[layer_list[0]]) and not (
        isinstance(positions, str) and positions == "all")
    for layer, parts in results.items():
        parts.sort(key=lambda x: x[0])
        tensors = [t for _, t in parts]
        out[layer] = torch.cat(tensors, 0) if tensors else torch.empty(0, lm.hidden_size)
        if single:
            out[layer] = out[layer].reshape(len(rows), -1)
    return out


def shared_prefix_length(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    """How many leading tokens ``a`` and ``b`` share, at most ``limit``."""
    n = 0
    while n < limit and a[n] == b[n]:
        n += 1
    return n


@torch.no_grad()
def capture_contrast(lm: SteerModel, first: Sequence[Sequence[int]], second: Sequence[Sequence[int]],
                     read_first: Sequence[int], read_second: Sequence[int], layers: int | Sequence[int], *,
                     batch_size: int = 16,
                     out_dtype: torch.dtype = torch.float32, progress: bool | None = None
                     ) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Block outputs at one position of each of two token sequences per item, ``({layer: [N, d]}, ...)``.

    The two sequences of a contrastive item (e.g. a question answered "(A" and answered "(B") share
    everything before the answer. Here each item's shared prefix (the common leading tokens before
    either read position) runs once, ``batch_size`` items at a time, and its KV cache is reused by
    both continuations, which run together as 2 x ``batch_size`` short rows; both passes stop after
    the deepest layer. The result equals :func:`capture` on the full sequences (to float rounding)
    at about half the work when the prefixes are long. Items whose sequences share no token run
    through :func:`capture` unchanged.
    """
    layer_list = lm.check_layers(layers)
    n = len(first)
    if not (len(second) == len(read_first) == len(read_second) == n) or n == 0:
        raise InputError("capture_contrast needs the same positive number of sequences and of read positions "
                         "on each side.")
    for side, rows, reads in (("first", first, read_first), ("second", second, read_second)):
        for i, (row, r) in enumerate(zip(rows, reads, strict=True)):
            if not 0 <= r < len(row):
                raise OutOfRangeError(f"Read position {r} is outside {side} sequence {i}, which has {len(row)} tokens.")
    # shared[i]: leading tokens the two sequences of item i have in common, stopping before the
    # earlier read position (a read token must be computed in its own continuation).
    shared = [shared_prefix_length(a, b, min(ra, rb))
              for a, b, ra, rb in zip(first, second, read_first, read_second, strict=True)]

    def empty() -> dict[int, torch.Tensor]:
        return {k: torch.empty(n, lm.hidden_size, dtype=out_dtype) for k in layer_list}

    out = (empty(), empty())
    alone = [i for i in range(n) if shared[i] == 0]
    if alone:
        acts = capture(lm, [first[i] for i in alone] + [second[i] for i in alone], layer_list,
                       positions=[read_first[i] for i in alone] + [read_second[i] for i in alone],
                       batch_size=batch_size, out_dtype=out_dtype, progress=False)
        for k, v in acts.items():
            out[0][k][alone], out[1][k][alone] = v[: len(alone)], v[len(alone):]
    # Longest prefixes first, so the items batched together need little left padding.
    order = sorted((i for i in range(n) if shared[i] > 0), key=lambda i: -shared[i])
    chunks = [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
    pad = lm.tokenizer.pad_token_id
    for chunk in progress_bar(chunks, "capture", progress=progress):
        # Pass 1: the shared prefixes, left-padded (so every prefix ends at the last column), reading
        # nothing; it stops after the deepest layer read, so the cache holds layers 0..deepest only,
        # which is all pass 2 needs, since it stops there too.
        ids, mask = pad_ids([first[i][: shared[i]] for i in chunk], pad, "left", lm.device)
        cache = DynamicCache(config=lm.model.config)
        inputs = lm.forward_inputs(ids, mask)
        _forward_reading(lm, layer_list, "output", {**inputs, "use_cache": True, lm.cache_argument: cache},
                         torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), True, out_dtype)
        # Pass 2: each cached prefix row is repeated twice, [p0, p0, p1, p1, ...], to line up with the
        # rows [first_0 suffix, second_0 suffix, first_1 suffix, ...]; the suffixes are right-padded and
        # read at their own read position less the prefix length.
        cache.batch_repeat_interleave(2)
        rows = [seq[shared[i]:] for i in chunk for seq in (first[i], second[i])]
        reads = [r - shared[i] for i in chunk for r in (read_first[i], read_second[i])]
        suffix, suffix_mask = pad_ids(rows, pad, "right", lm.device)
        step = lm.continuation_inputs(suffix, suffix_mask, mask.repeat_interleave(2, 0), cache)
        picked = _forward_reading(lm, layer_list, "output", step, torch.arange(len(rows)), torch.tensor(reads), True,
                                  out_dtype)
        index = torch.tensor(chunk)
        for k, v in picked.items():  # even rows: first sequences; odd rows: second sequences
            out[0][k][index], out[1][k][index] = v[0::2], v[1::2]
    return out


@torch.no_grad()
def capture_after_prefix(lm: SteerModel, prefix: Sequence[int], suffixes: Sequence[Sequence[int]],
                         positions: Sequence[Sequence[bool]], layers: int | Sequence[int], *, batch_size: int = 128,
                         out_dtype: torch.dtype = torch.float32) -> dict[int, torch.Tensor]:
    """Block outputs at the selected positions of many sequences that all start with ``prefix``:
    ``prefix + suffixes[i]``, read where ``positions[i]`` (a boolean mask over ``suffixes[i]``) is true.

    The prefix runs once, at batch size 1, and a copy of its KV cache is repeated for each batch's
    suffixes, so the work is the suffix tokens plus the prefix once (a concept dictionary's
    stimuli: thousands of words after the same few template words). Both passes stop after the
    deepest layer. Returns ``{layer: [sum of selected, d]}``, sequence 0's positions first, as
    :func:`capture` does with boolean masks; equal to :func:`capture` on the full sequences to float
    rounding."""
    layer_list = lm.check_layers(layers)
    if not prefix:
        raise InputError("capture_after_prefix needs a prefix of at least one token; use capture().")
    if len(suffixes) != len(positions) or any(len(s) != len(p) or not s for s, p in zip(suffixes, positions,
                                                                                         strict=True)):
        raise InputError("capture_after_prefix needs one non-empty suffix per mask, each as long as its mask.")
    pad = lm.tokenizer.pad_token_id
    head = torch.tensor([list(prefix)], device=lm.device)
    head_mask = torch.ones_like(head)
    # Longest suffixes first, so a batch needs little right padding.
    order = sorted(range(len(suffixes)), key=lambda i: -len(suffixes[i]))
    parts: dict[int, list[tuple[int, torch.Tensor]]] = {k: [] for k in layer_list}
    head_cache = DynamicCache(config=lm.model.config)
    _forward_reading(lm, layer_list, "output", {**lm.forward_inputs(head, head_mask), "use_cache": True,
                                                lm.cache_argument: head_cache},
                     torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), True, out_dtype)
    for s in range(0, len(order), batch_size):
        chunk = order[s: s + batch_size]
        cache = copy.deepcopy(head_cache)  # the continuation appends to the cache it is given
        cache.batch_repeat_interleave(len(chunk))
        ids, mask = pad_ids([list(suffixes[i]) for i in chunk], pad, "right", lm.device)
        keep = [[p for p, on in enumerate(positions[i]) if on] for i in chunk]
        rows = torch.tensor([b for b, ps in enumerate(keep) for _ in ps], dtype=torch.long)
        cols = torch.tensor([p for ps in keep for p in ps], dtype=torch.long)
        step = lm.continuation_inputs(ids, mask, head_mask.expand(len(chunk), -1), cache)
        picked = _forward_reading(lm, layer_list, "output", step, rows, cols, True, out_dtype)
        _file_rows(parts, picked, chunk, keep)
    out = {}
    for k, got in parts.items():
        got.sort(key=lambda x: x[0])
        out[k] = torch.cat([t for _, t in got]) if got else torch.empty(0, lm.hidden_size, dtype=out_dtype)
    return out
