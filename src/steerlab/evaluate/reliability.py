"""Reliability of steering vectors (Tan, Chanin et al., 2024), per item and per dataset.

- propensity of an item under multiplier ``m``: ``logp(matching) - logp(non-matching)``, in float32;
- per-item steerability: the least-squares slope of propensity against ``m`` over
  ``{-1.5, -1, -0.5, 0, 0.5, 1, 1.5}`` (times ``scale``, the multiplier unit), with its standard error;
- per dataset: mean / median / variance of the slopes, the anti-steerable fraction (slope <= 0),
  and how well lines fit (per-item R^2); 95% bootstrap intervals (items resampled) for the mean
  slope and the anti-steerable fraction;
- a null reference on the same items: a random direction of the vector's norm at the same layer,
  put through the same analysis. The vector steers beyond the null when the interval of the mean
  per-item difference (vector slope minus null slope) excludes zero;
- the numeric noise floor: the largest change of an unsteered propensity between two ways of
  computing it (a shared-prefix batch and the item alone);
- the vector's letter share (the share of its norm along the pure answer-letter direction);
- spurious factors: least-squares regression of the slopes on "matching answer is (A)" and
  "matching answer is Yes", with the share of variance they explain.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import torch

from ..datasets import ContrastivePair, answer_letter, describe_balance, matching_is_a, matching_is_yes
from ..errors import InputError
from ..vector import SteeringVector
from .behaviour import Variant, answer_logprobs, propensity
from .files import Report, pyplot
from .stats import bootstrap_ci, fraction_at_most_zero, null_vector, slope_standard_errors

if TYPE_CHECKING:
    from ..model import SteerModel

MULTIPLIERS = (-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5)
__all__ = ["MULTIPLIERS", "ReliabilityReport", "fit_lines", "matching_is_a", "matching_is_yes", "reliability",
           "variance_explained"]


def fit_lines(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Least-squares ``y[:, i] ~ a_i + b_i x`` for every column: returns (slopes, intercepts, R^2)."""
    x = x.double()
    y = y.double()
    xc = x - x.mean()
    slopes = (xc[:, None] * (y - y.mean(0))).sum(0) / (xc @ xc)
    intercepts = y.mean(0) - slopes * x.mean()
    resid = y - (intercepts + slopes * x[:, None])
    total = ((y - y.mean(0)) ** 2).sum(0)
    r2 = torch.where(total > 0, 1 - (resid ** 2).sum(0) / total.clamp_min(1e-30), torch.ones_like(total))
    return slopes, intercepts, r2


def variance_explained(target: torch.Tensor, factors: torch.Tensor) -> tuple[float, list[float]]:
    """R^2 of an ordinary least-squares regression of ``target`` on ``factors`` (plus intercept)."""
    target = target.double()
    design = torch.cat([torch.ones(len(target), 1, dtype=torch.float64), factors.double()], 1)
    coef = torch.linalg.lstsq(design, target[:, None]).solution[:, 0]
    resid = target - design @ coef
    total = ((target - target.mean()) ** 2).sum()
    r2 = float(1 - (resid ** 2).sum() / total) if total > 0 else 0.0
    return r2, [float(c) for c in coef]


def _pct(interval: Sequence[float]) -> str:
    return f"[{interval[0]:.0%}, {interval[1]:.0%}]"


def _ci(interval: Sequence[float]) -> str:
    return f"[{interval[0]:+.3f}, {interval[1]:+.3f}]"


@dataclass
class ReliabilityReport(Report):
    default_stem = "reliability"  # files: reliability-<dataset file stem>.md/.json/.png

    model: str
    dataset: str
    layer: int
    scale: float
    multipliers: list[float]
    n_items: int
    mean_slope: float
    median_slope: float
    slope_variance: float
    anti_steerable_fraction: float
    mean_r2: float
    unsteered_p_matching: float
    spurious_r2_a: float
    spurious_r2_yes: float | None
    spurious_r2_both: float | None
    slopes: list[float]
    r2: list[float]
    propensities: list[list[float]]  # [multiplier][item]
    # Added with the uncertainty and null analysis; defaults keep older report files readable.
    vector_norm: float = float("nan")
    letter_share: float | None = None
    counterbalanced: bool | None = None
    train_balance: str | None = None
    test_balance: str = ""
    matching_letters: list[str] = field(default_factory=list)
    slope_se: list[float] = field(default_factory=list)
    mean_slope_ci: list[float] = field(default_factory=list)
    anti_steerable_ci: list[float] = field(default_factory=list)
    p_matching_at_extremes: list[float] = field(default_factory=list)  # at min and max multiplier
    null_slopes: list[float] = field(default_factory=list)
    null_mean_slope: float = float("nan")
    null_mean_slope_ci: list[float] = field(default_factory=list)
    null_slope_sd: float = float("nan")
    null_spurious_r2_a: float | None = None  # the same regression on the null's slopes
    null_directions: int = 1  # random directions scored; null_slopes holds all of them, direction-major
    null_anti_steerable_fraction: float = float("nan")
    null_anti_steerable_ci: list[float] = field(default_factory=list)
    beyond_null_ci: list[float] = field(default_factory=list)  # mean of (slope - null slope) per item
    noise_floor: float | None = None  # largest |change| of an unsteered propensity between two computations
    dtype: str = ""

    @property
    def has_null(self) -> bool:
        return bool(self.beyond_null_ci)

    def effect_code(self) -> str:
        """``"beyond"`` / ``"against"`` (the interval of vector minus null slopes excludes zero),
        ``"null"`` (it does not), ``"noise"`` (neither the vector nor the null moves propensity over the
        whole multiplier range by more than the numeric noise floor, so nothing can be resolved), or
        ``"none"`` (no null was run)."""
        if not self.has_null:
            return "none"
        span = max(self.multipliers) - min(self.multipliers)
        largest = max(abs(self.mean_slope), abs(self.null_mean_slope)) * span
        if self.noise_floor is not None and largest < self.noise_floor:
            return "noise"
        lo, hi = self.beyond_null_ci
        return "beyond" if lo > 0 else "against" if hi < 0 else "null"

    def verdict(self) -> str:
        """Whether the vector moves propensities beyond a random direction of its norm, in words."""
        return {"none": "no null reference",
                "noise": "below the numeric noise floor: no effect can be resolved",
                "beyond": "steers beyond the null",
                "against": "steers against the behaviour, beyond the null",
                "null": "indistinguishable from a random direction of the same norm"}[self.effect_code()]

    def summary(self) -> str:
        yes = "n/a" if self.spurious_r2_yes is None else f"{self.spurious_r2_yes:.2f}"
        text = (f"{self.dataset}: mean steerability {self.mean_slope:+.3f}"
                + (f" {_ci(self.mean_slope_ci)}" if self.mean_slope_ci else "")
                + f" (median {self.median_slope:+.3f}, variance {self.slope_variance:.3f}), "
                f"anti-steerable {self.anti_steerable_fraction:.0%}"
                + (f" {_pct(self.anti_steerable_ci)}" if self.anti_steerable_ci else "")
                + f", line fit R^2 {self.mean_r2:.2f}, variance explained by A {self.spurious_r2_a:.2f} / Yes {yes}")
        if self.has_null:
            text += (f"; null (random direction, norm {self.vector_norm:.2f}): mean {self.null_mean_slope:+.3f}, "
                     f"anti-steerable {self.null_anti_steerable_fraction:.0%}; {self.verdict()}")
        if self.letter_share is not None:
            text += f"; letter share {self.letter_share:.2f}"
        return text

    def details(self) -> str:
        """The numbers behind the summary, as Markdown lines."""
        rows = [f"- vector norm at layer {self.layer}: {self.vector_norm:.3f}; letter share: "
                + ("n/a" if self.letter_share is None else f"{self.letter_share:.3f}")
                + f"; counterbalanced: {self.counterbalanced}",
                f"- balance: training {self.train_balance or 'n/a'}; test {self.test_balance}",
                f"- multipliers {self.multipliers} x {self.scale:g}; {self.n_items} held-out items; dtype {self.dtype}"]
        if self.p_matching_at_extremes:
            lo, hi = self.p_matching_at_extremes
            m_lo, m_hi = min(self.multipliers) * self.scale, max(self.multipliers) * self.scale
            rows.append(f"- p(matching): {lo:.3f} at {m_lo:+g}, {self.unsteered_p_matching:.3f} unsteered, "
                        f"{hi:.3f} at {m_hi:+g}")
        if self.has_null:
            rows += [f"- mean slope {self.mean_slope:+.4f} {_ci(self.mean_slope_ci)}; null {self.null_mean_slope:+.4f} "
                     f"{_ci(self.null_mean_slope_ci)} (null slope s.d. {self.null_slope_sd:.4f}); "
                     f"vector minus null {_ci(self.beyond_null_ci)}: {self.verdict()}",
                     f"- anti-steerable {self.anti_steerable_fraction:.1%} {_pct(self.anti_steerable_ci)}; null "
                     f"{self.null_anti_steerable_fraction:.1%} {_pct(self.null_anti_steerable_ci)}",
                     f"- variance of the slopes explained by 'matching is (A)': {self.spurious_r2_a:.2f}; of the "
                     "null's slopes: " + ("n/a" if self.null_spurious_r2_a is None
                                          else f"{self.null_spurious_r2_a:.2f}")]
        if self.slope_se:
            se = torch.tensor(self.slope_se)
            rows.append(f"- per-item slope standard error: median {float(se.median()):.4f}")
        if self.noise_floor is not None:
            span = (max(self.multipliers) - min(self.multipliers))
            rows.append(f"- numeric noise floor: {self.noise_floor:.2e} nats of propensity (the mean |slope| moves "
                        f"propensity by {abs(self.mean_slope) * span:.3f} over the multiplier range)")
        return "\n".join(rows)

    def title(self) -> str:
        return f"Reliability: {self.dataset} on {self.model}, layer {self.layer}"

    def intro(self) -> str:
        return self.summary()

    def table(self) -> str:
        return self.details()

    def plot(self, path: str | Path | BinaryIO) -> None:
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(7, 3.9))
        slopes = torch.tensor(self.slopes, dtype=torch.float64)
        spread = [float(slopes.min()), float(slopes.max())]
        if self.has_null:
            band = (self.null_mean_slope - 2 * self.null_slope_sd, self.null_mean_slope + 2 * self.null_slope_sd)
            spread += list(band)
            ax.axvspan(*band, color="grey", alpha=0.25, label=f"null ({self.null_directions} random direction"
                       + ("s" if self.null_directions > 1 else "") + "), mean ± 2 s.d.")
        if self.noise_floor:
            # A slope this small changes propensity over the whole multiplier range by less than rounding does.
            noise = self.noise_floor / (max(self.multipliers) - min(self.multipliers))
            spread += [-noise, noise]
            ax.axvspan(-noise, noise, facecolor="none", edgecolor="#7570b3", hatch="//", lw=0,
                       label="numeric noise floor")
        lo, hi = min(spread), max(spread)
        pad = 0.05 * (hi - lo) or 1e-3
        bins = torch.linspace(lo - pad, hi + pad, 31).tolist()
        letters = self.matching_letters or ["?"] * len(self.slopes)
        groups = sorted(set(letters))
        colours = {"A": "#1b9e77", "B": "#d95f02"}
        by_letter = [[s for s, g in zip(self.slopes, letters, strict=True) if g == key] for key in groups]
        ax.hist(by_letter, bins=bins, stacked=True,
                color=[colours.get(g, "#7570b3") for g in groups], label=[f"matching ({g})" for g in groups])
        ax.axvline(0, color="black", lw=0.8)
        ax.axvline(self.mean_slope, color="#e7298a", ls="--", lw=1.2, label=f"mean {self.mean_slope:+.3f}")
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_xlabel("per-item steerability (slope of propensity vs multiplier)")
        ax.set_ylabel("items")
        extremes = ""
        if self.p_matching_at_extremes:
            extremes = (f", p(match) {self.p_matching_at_extremes[0]:.2f} -> {self.p_matching_at_extremes[1]:.2f}"
                        f" over x{min(self.multipliers) * self.scale:+g}..{max(self.multipliers) * self.scale:+g}")
        ax.set_title(f"{Path(self.dataset).stem} (layer {self.layer}, |v| {self.vector_norm:.2f}{extremes})\n"
                     f"{self.anti_steerable_fraction:.0%} anti-steerable"
                     + (f" (null {self.null_anti_steerable_fraction:.0%}); {self.verdict()}" if self.has_null else ""),
                     fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


def _noise_floor(lm: SteerModel, test: Sequence[ContrastivePair], unsteered: torch.Tensor, chat: bool,
                 system: str | None, items: int) -> float | None:
    """Largest |difference| of the unsteered propensity computed alone (full sequence) and as scored."""
    if items <= 0 or not len(test):
        return None
    alone = propensity(answer_logprobs(lm, test[:items], None, [0.0], chat=chat, system=system, share_prefix=False,
                                       progress=False))[0]
    return float((alone - unsteered[: len(alone)]).abs().max())


@torch.no_grad()
def reliability(lm: SteerModel, vector: SteeringVector, test: Sequence[ContrastivePair], *, layer: int | None = None,
                scale: float = 1.0, multipliers: Sequence[float] = MULTIPLIERS, dataset: str = "data",
                chat: bool = True, system: str | None = None, null: bool = True, null_directions: int = 1,
                n_boot: int = 2000,
                seed: int = 0, noise_items: int = 8, letter_pairs: Sequence[ContrastivePair] | None = None,
                progress: bool | None = None) -> ReliabilityReport:
    """Per-item steerability of ``vector`` (at ``layer``, or its only layer) on held-out pairs, with
    bootstrap intervals, a random-direction null (``null``) and the numeric noise floor.

    ``null_directions`` random directions (seeds ``seed, seed+1, ...``) are scored; the vector is
    compared item by item with their mean slope, so more directions give a less noisy reference
    (each costs six more rows per item in the same batch).

    The letter share comes from the vector's metadata when extraction measured it, else from
    ``letter_pairs`` (default: ``test``) where those are A/B items that can be swapped.
    """
    if layer is None:
        if len(vector.layers) != 1:
            raise InputError(f"The vector has layers {sorted(vector.layers)}; pass layer=.")
        layer = next(iter(vector.layers))
    if layer not in vector.layers:
        raise InputError(f"The vector has no layer {layer}; it has {sorted(vector.layers)}.")
    if not test:
        raise InputError("Reliability needs at least one test item.")
    multipliers = [float(m) for m in multipliers]
    real = [Variant(m * scale, layer) for m in multipliers]
    nulls = [null_vector(vector, layer, seed=seed + j) for j in range(null_directions if null else 0)]
    nonzero = [i for i, m in enumerate(multipliers) if m != 0]
    variants = real + [Variant(multipliers[i] * scale, layer, nv) for nv in nulls for i in nonzero]
    lp = answer_logprobs(lm, test, vector, variants, chat=chat, system=system, progress=progress)
    prop_all = propensity(lp)  # [V, N]
    prop = prop_all[: len(real)]
    x = torch.tensor(multipliers)
    slopes, _, r2 = fit_lines(x, prop)
    zero = [i for i, m in enumerate(multipliers) if m == 0]
    base_p = float(torch.sigmoid(prop[zero[0]]).mean()) if zero else float("nan")
    is_a = torch.tensor([[float(matching_is_a(p))] for p in test])
    yes = [matching_is_yes(p) for p in test]
    r2_a = variance_explained(slopes, is_a)[0] if 0 < is_a.sum() < len(test) else 0.0
    r2_yes = r2_both = None
    if all(v is not None for v in yes):
        is_yes = torch.tensor([[float(bool(v))] for v in yes])
        if 0 < is_yes.sum() < len(test):
            r2_yes = variance_explained(slopes, is_yes)[0]
            r2_both = variance_explained(slopes, torch.cat([is_a, is_yes], 1))[0]
    lo_i, hi_i = multipliers.index(min(multipliers)), multipliers.index(max(multipliers))
    extra: dict = dict(
        vector_norm=float(vector.layers[layer].norm()), counterbalanced=vector.meta.get("counterbalanced"),
        train_balance=vector.meta.get("balance"), test_balance=describe_balance(test),
        matching_letters=[answer_letter(p.positive) or "?" for p in test],
        slope_se=[float(v) for v in slope_standard_errors(x, prop)],
        mean_slope_ci=list(bootstrap_ci(slopes, n_boot=n_boot, seed=seed)),
        anti_steerable_ci=list(bootstrap_ci(slopes, fraction_at_most_zero, n_boot=n_boot, seed=seed)),
        p_matching_at_extremes=[float(torch.sigmoid(prop[lo_i]).mean()), float(torch.sigmoid(prop[hi_i]).mean())],
        letter_share=_letter_share(lm, vector, layer, letter_pairs if letter_pairs is not None else test, chat,
                                   system),
        noise_floor=_noise_floor(lm, test, prop[zero[0]], chat, system, noise_items) if zero else None,
        dtype=str(lm.dtype).removeprefix("torch."),
    )
    if nulls:
        per_direction = []
        for j in range(len(nulls)):
            null_prop = prop.clone()  # the multiplier-0 row is shared with the vector's
            start = len(real) + j * len(nonzero)
            null_prop[nonzero] = prop_all[start:start + len(nonzero)]
            per_direction.append(fit_lines(x, null_prop)[0])
        every = torch.stack(per_direction)  # [directions, N]
        null_slopes = every.mean(0)  # the reference each item is compared with
        flat = every.flatten()
        extra.update(
            null_slopes=[float(s) for s in flat], null_mean_slope=float(flat.mean()),
            null_mean_slope_ci=list(bootstrap_ci(null_slopes, n_boot=n_boot, seed=seed)),
            null_slope_sd=float(flat.std()) if len(flat) > 1 else 0.0,
            null_spurious_r2_a=variance_explained(null_slopes, is_a)[0] if 0 < is_a.sum() < len(test) else 0.0,
            null_anti_steerable_fraction=float((flat <= 0).double().mean()),
            null_anti_steerable_ci=list(bootstrap_ci(every.T, fraction_at_most_zero, n_boot=n_boot, seed=seed)),
            beyond_null_ci=list(bootstrap_ci(slopes - null_slopes, n_boot=n_boot, seed=seed)),
            null_directions=len(nulls),
        )
    return ReliabilityReport(
        model=lm.name, dataset=dataset, layer=layer, scale=scale, multipliers=multipliers,
        n_items=len(test), mean_slope=float(slopes.mean()), median_slope=float(slopes.median()),
        slope_variance=float(slopes.var()) if len(test) > 1 else 0.0,
        anti_steerable_fraction=float((slopes <= 0).double().mean()),
        mean_r2=float(r2.mean()), unsteered_p_matching=base_p, spurious_r2_a=r2_a, spurious_r2_yes=r2_yes,
        spurious_r2_both=r2_both, slopes=[float(s) for s in slopes], r2=[float(r) for r in r2],
        propensities=prop.tolist(), **extra,
    )


def _letter_share(lm: SteerModel, vector: SteeringVector, layer: int, pairs: Sequence[ContrastivePair], chat: bool,
                  system: str | None) -> float | None:
    from ..datasets import counterbalanced
    from ..methods import caa

    stored = (vector.meta.get("letter_share") or {}).get(str(layer))
    if stored is not None:
        return float(stored)
    if vector.layers[layer].ndim != 1 or counterbalanced(pairs) is None:
        return None
    letter = caa.letter_directions(lm, pairs, layer, chat=chat, system=system, progress=False)[layer]
    return caa.letter_share(vector.layers[layer], letter)
