"""Reading the residual stream: batched, padding-aware, stopping after the deepest layer needed,
and keeping only the selected positions (never every position of every layer)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import torch
from tqdm.auto import tqdm

from .tokens import PromptBatch, Rendered, pad_ids, tokenize_with_offsets

PositionSpec = Union[str, int, Sequence[int], torch.Tensor, Sequence[Sequence[bool]]]


class _StopForward(Exception):
    """Raised by the deepest capture hook to end the forward pass early."""


def _select(spec: PositionSpec, lengths: torch.Tensor, rows: torch.Tensor) -> list[list[int]]:
    """Real-token positions to keep for each row of a chunk (``rows``: indices into the full input)."""
    out = []
    for r, n in zip(rows.tolist(), lengths.tolist()):
        if isinstance(spec, str):
            if spec == "last":
                out.append([n - 1])
            elif spec == "all":
                out.append(list(range(n)))
            else:
                raise ValueError(f"positions={spec!r}: use 'last', 'all', an int, per-row ints or a bool mask.")
        elif isinstance(spec, int):
            p = spec if spec >= 0 else n + spec
            if not 0 <= p < n:
                raise IndexError(f"Position {spec} is outside row {r}, which has {n} tokens.")
            out.append([p])
        else:
            item = spec[r]
            if isinstance(item, torch.Tensor):
                item = item.tolist()
            if isinstance(item, (list, tuple)):  # a boolean mask over the row's positions
                picked = [p for p, keep in enumerate(item) if keep and p < n]
                if any(keep for p, keep in enumerate(item) if p >= n):
                    raise IndexError(f"The mask for row {r} selects positions past its {n} tokens.")
                out.append(picked)
            else:
                p = int(item) if item >= 0 else n + int(item)
                if not 0 <= p < n:
                    raise IndexError(f"Position {item} is outside row {r}, which has {n} tokens.")
                out.append([p])
    return out


def _token_rows(lm, inputs, chat: bool) -> list[list[int]]:
    """Each input's real (unpadded) token ids."""
    if isinstance(inputs, PromptBatch):
        return [inputs.input_ids[i][inputs.attention_mask[i].bool()].tolist() for i in range(len(inputs))]
    if isinstance(inputs, str):
        inputs = [inputs]
    if len(inputs) == 0:
        raise ValueError("capture() was given no inputs.")
    if isinstance(inputs[0], (list, tuple)) or isinstance(inputs[0], torch.Tensor):
        return [list(map(int, r)) for r in inputs]
    rendered = [r if isinstance(r, Rendered) else lm.render(r, chat=chat) for r in inputs]
    return [tokenize_with_offsets(lm.tokenizer, r.text)[0] for r in rendered]


@torch.no_grad()
def capture(
    lm,
    inputs,
    layers: int | Sequence[int],
    *,
    positions: PositionSpec = "last",
    site: str = "output",
    batch_size: int = 16,
    padding_side: str = "left",
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
    layer_list = sorted({lm.check_layer(layer) for layer in ([layers] if isinstance(layers, int) else layers)})
    if site not in ("output", "input"):
        raise ValueError(f"site must be 'output' or 'input', not {site!r}.")
    rows = _token_rows(lm, inputs, chat)
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i])) if sort_by_length else list(range(len(rows)))
    deepest = layer_list[-1]
    results: dict[int, list[tuple[int, torch.Tensor]]] = {layer: [] for layer in layer_list}
    chunks = [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
    show = progress if progress is not None else len(chunks) > 4
    for chunk in tqdm(chunks, desc="capture", disable=not show, leave=False):
        ids, mask = pad_ids([rows[i] for i in chunk], lm.tokenizer.pad_token_id, padding_side, lm.device)
        lengths = mask.sum(-1).cpu()
        keep = _select(positions, lengths, torch.tensor(chunk))
        width = ids.shape[1]
        row_idx = torch.tensor([b for b, ps in enumerate(keep) for _ in ps], dtype=torch.long)
        col_idx = torch.tensor(
            [(width - int(lengths[b]) if padding_side == "left" else 0) + p for b, ps in enumerate(keep) for p in ps],
            dtype=torch.long,
        )

        def grab(layer: int, hidden: torch.Tensor) -> None:
            picked = hidden[row_idx.to(hidden.device), col_idx.to(hidden.device)].to("cpu", out_dtype)
            start = 0
            for b, ps in enumerate(keep):
                results[layer].append((chunk[b], picked[start: start + len(ps)]))
                start += len(ps)
            if early_exit and layer == deepest:
                raise _StopForward

        handles = []
        for layer in layer_list:
            block = lm.blocks[layer]
            if site == "output":
                handles.append(block.register_forward_hook(
                    lambda m, a, o, layer=layer: grab(layer, o if isinstance(o, torch.Tensor) else o[0])))
            else:
                handles.append(block.register_forward_pre_hook(
                    lambda m, a, k, layer=layer: grab(layer, a[0] if a else k["hidden_states"]), with_kwargs=True))
        try:
            lm.model(**lm.forward_inputs(ids, mask))
        except _StopForward:
            pass
        finally:
            for h in handles:
                h.remove()
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
