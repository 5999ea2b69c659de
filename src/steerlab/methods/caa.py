"""CAA (Rimsky / Panickssery et al., 2024): the mean activation difference over A/B pairs.

Recipe (docs/methods.md, "CAA"): render each item twice through the model's chat format, user turn =
question, assistant turn = the matching (positive) or non-matching (negative) answer; read the
output of block L at the token of the answer letter (found from character offsets, so ``"(A"``
merged into one token, as in Qwen2's tokenizer, is handled); the vector is the mean of
``h_pos - h_neg``. Applied with multiplier ``m`` at every position from the start of the
assistant turn onward, including every generated token.

Alternative extractors behind the same call: ``method="pca"`` (first principal direction of the
differences) and ``method="probe"`` (logistic-regression direction separating positive from
negative activations). Both are scaled so their mean projection of the differences equals that of
the mean difference, which keeps multipliers comparable across methods.

Answer letters. In A/B data an item's difference ``h(matching) - h(non-matching)`` also holds the
difference between the two letters (``"(A)"`` vs ``"(B)"``), and on real models that letter part is
most of it. A training set with more matching ``(A)`` than ``(B)`` then leaves a letter direction in
the mean. ``counterbalance`` (the default wherever every item's options can be swapped) renders
each item a second time with its option texts exchanged and its letters flipped, so each item
contributes its behaviour twice and each letter once on each side: the letter terms cancel in the
mean. The same four readings give the pure letter direction (``(A)`` minus ``(B)`` with the
behaviour held fixed), and the vector's ``letter_share`` (the share of its norm along that
direction) is written into its metadata for every A/B vector.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, get_args

import torch

from ..capture import capture, capture_contrast
from ..datasets import ContrastivePair, answer_letter, counterbalanced, describe_balance, fingerprint, read_char
from ..errors import InputError
from ..tokens import Rendered
from ..vector import SteeringVector

if TYPE_CHECKING:
    from ..model import SteerModel

Method = Literal["mean", "pca", "probe"]  # mean difference (the paper), first PC, logistic-probe weights
METHODS: tuple[Method, ...] = get_args(Method)


def _render_tokens(lm: SteerModel, pair: ContrastivePair, answer: str, chat: bool, system: str | None
                   ) -> tuple[Rendered, list[int], int]:
    answered = lm.render_answer(pair.prompt, answer, chat=chat, system=system)
    return answered.rendered, answered.ids, answered.token_at(answered.answer_char + read_char(answer))


def render_answer(lm: SteerModel, pair: ContrastivePair, answer: str, *, chat: bool,
                  system: str | None) -> tuple[Rendered, int]:
    """The item rendered with ``answer`` opening the assistant turn, and the token index to read."""
    rendered, _, index = _render_tokens(lm, pair, answer, chat, system)
    return rendered, index


def differences(lm: SteerModel, pairs: Sequence[ContrastivePair], layers: Sequence[int], *, chat: bool = True,
                system: str | None = None, batch_size: int = 16, share_prefix: bool = True,
                progress: bool | None = None) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Positive and negative activations ``{layer: [N, d]}`` at the answer token.

    With ``share_prefix`` (default) each item's question runs once and both answers continue from
    its KV cache (:func:`~steerlab.capture.capture_contrast`); otherwise all 2N renderings run in
    full, batched. Both stop after the deepest layer and agree to float rounding.
    """
    if not pairs:
        raise InputError("CAA needs at least one contrastive pair.")
    ids, positions = [], []
    for answer_of in (lambda p: p.positive, lambda p: p.negative):
        for pair in pairs:
            _, row, idx = _render_tokens(lm, pair, answer_of(pair), chat, system)
            ids.append(row)
            positions.append(idx)
    n = len(pairs)
    if share_prefix:
        return capture_contrast(lm, ids[:n], ids[n:], positions[:n], positions[n:], layers, batch_size=batch_size,
                                progress=progress)
    acts = capture(lm, ids, layers, positions=positions, batch_size=batch_size, progress=progress)
    return {k: v[:n] for k, v in acts.items()}, {k: v[n:] for k, v in acts.items()}


def _pca_direction(diff: torch.Tensor) -> torch.Tensor:
    centred = diff - diff.mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(centred.double(), full_matrices=False)
    return vh[0].float()


def _probe_direction(pos: torch.Tensor, neg: torch.Tensor, l2: float = 1e-3, steps: int = 200) -> torch.Tensor:
    x = torch.cat([pos, neg]).double()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    y = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))]).double()
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, y) + l2 * (w @ w)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return (w.detach() / std).float()  # back to the unstandardised activation space


def direction(pos: torch.Tensor, neg: torch.Tensor, method: Method = "mean") -> torch.Tensor:
    """One layer's steering direction from positive and negative activations ``[N, d]``."""
    diff = pos.float() - neg.float()
    mean_diff = diff.mean(0)
    if method == "mean":
        return mean_diff
    if method == "pca":
        d = _pca_direction(diff)
    elif method == "probe":
        d = _probe_direction(pos.float(), neg.float())
    else:
        raise InputError(f"Unknown CAA method {method!r}; expected one of {METHODS}.")
    d = d / d.norm().clamp_min(1e-12)
    projection = (diff @ d).mean()
    if projection < 0:
        d, projection = -d, -projection
    return d * projection


def letter_signs(pairs: Sequence[ContrastivePair]) -> torch.Tensor:
    """+1 where the matching answer's letter comes first in the alphabet (``(A)`` vs ``(B)``), else -1."""
    signs = []
    for p in pairs:
        a, b = answer_letter(p.positive), answer_letter(p.negative)
        if a is None or b is None:
            raise InputError("Letter directions need A/B items.")
        signs.append(1.0 if a < b else -1.0)
    return torch.tensor(signs)


def _letter_direction(pairs: Sequence[ContrastivePair], pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Mean of ``h(A answer) - h(B answer)`` over items read as given and swapped (behaviour cancels)."""
    return (letter_signs(pairs)[:, None] * (pos.float() - neg.float())).mean(0)


def letter_share(vector: torch.Tensor, letter: torch.Tensor) -> float:
    """Share of ``vector``'s norm that lies along ``letter``: ``|v . u| / |v|`` with ``u`` the unit
    letter direction (0 = none of it, 1 = all of it)."""
    v, u = vector.double().flatten(), letter.double().flatten()
    if float(v.norm()) == 0 or float(u.norm()) == 0:
        return 0.0
    return float((v @ u).abs() / (v.norm() * u.norm()))


def letter_directions(lm: SteerModel, pairs: Sequence[ContrastivePair], layers: int | Sequence[int], *,
                      chat: bool = True, system: str | None = None, batch_size: int = 16, progress: bool | None = None
                      ) -> dict[int, torch.Tensor]:
    """The pure answer-letter direction ``h("(A)") - h("(B)")`` at each layer, behaviour held fixed:
    every item is read as given and with its options swapped, so each letter carries the matching
    and the non-matching answer equally often."""
    layer_list = lm.check_layers(layers)
    both = counterbalanced(pairs)
    if both is None:
        raise InputError("Letter directions need A/B items whose two options can be swapped.")
    pos, neg = differences(lm, both, layer_list, chat=chat, system=system, batch_size=batch_size, progress=progress)
    return {k: _letter_direction(both, pos[k], neg[k]) for k in layer_list}


@torch.no_grad()
def extract(lm: SteerModel, pairs: Sequence[ContrastivePair], layers: int | Sequence[int], *, method: Method = "mean",
            chat: bool = True, system: str | None = None, batch_size: int = 16, share_prefix: bool = True,
            counterbalance: bool | None = None, measure_letter: bool | None = None,
            progress: bool | None = None) -> SteeringVector:
    """A CAA steering vector at each of ``layers`` (block outputs), from contrastive pairs.

    ``counterbalance``: also read every A/B item with its options swapped so the answer-letter
    direction cancels (None: wherever every item can be swapped). ``measure_letter``: record each
    layer's ``letter_share`` in the metadata (None: wherever the items can be swapped; free when
    counterbalancing, one more reading of the swapped items otherwise).
    """
    layer_list = lm.check_layers(layers)
    if method not in METHODS:
        raise InputError(f"Unknown CAA method {method!r}; expected one of {METHODS}.")
    if not pairs:
        raise InputError("CAA needs at least one contrastive pair.")
    both = counterbalanced(pairs)
    if counterbalance and both is None:
        raise InputError("counterbalance=True needs A/B items whose two options can be swapped "
                         "(datasets.swap_options returned None for some item).")
    counterbalance = both is not None if counterbalance is None else counterbalance
    measure_letter = both is not None if measure_letter is None else (measure_letter and both is not None)
    read = both if both is not None and (counterbalance or measure_letter) else list(pairs)
    pos, neg = differences(lm, read, layer_list, chat=chat, system=system, batch_size=batch_size,
                           share_prefix=share_prefix, progress=progress)
    used = slice(None) if counterbalance else slice(0, len(pairs))
    vectors = {k: direction(pos[k][used], neg[k][used], method) for k in layer_list}
    meta = {"n_pairs": len(pairs), "dataset_sha256": fingerprint(pairs), "chat": chat, "system": system,
            "read": "output of block L at the answer-letter token (last answer token for text pairs)",
            "balance": describe_balance(pairs), "counterbalanced": bool(counterbalance)}
    if measure_letter:
        meta["letter_share"] = {str(k): round(letter_share(vectors[k], _letter_direction(read, pos[k], neg[k])), 4)
                                for k in layer_list}
    return SteeringVector(vectors, model_name=lm.name, hidden_size=lm.hidden_size, method=f"caa-{method}",
                          site="output", apply="assistant", meta=meta)


def normalise_to_mean_norm(vectors: Sequence[SteeringVector]) -> list[SteeringVector]:
    """Rescale several behaviours' vectors so, at each layer, all have the mean of their norms."""
    layers = set.intersection(*(set(v.layers) for v in vectors))
    out = []
    for v in vectors:
        scaled = dict(v.layers)
        for k in layers:
            target = sum(float(w.layers[k].norm()) for w in vectors) / len(vectors)
            scaled[k] = v.layers[k] * (target / float(v.layers[k].norm()))
        out.append(SteeringVector(scaled, v.model_name, v.hidden_size, v.method, v.site, v.apply,
                                  {**v.meta, "normalised_to_mean_norm": True}))
    return out
