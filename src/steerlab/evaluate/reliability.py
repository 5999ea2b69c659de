"""Reliability of steering vectors (Tan, Chanin et al., 2024), per item and per dataset.

- propensity of an item under multiplier ``m``: ``logp(matching) - logp(non-matching)``;
- per-item steerability: the least-squares slope of propensity against ``m`` over
  ``{-1.5, -1, -0.5, 0, 0.5, 1, 1.5}`` (times ``scale``, the multiplier unit);
- per dataset: mean / median / variance of the slopes, the anti-steerable fraction (slope <= 0),
  and how well lines fit (per-item R^2);
- spurious factors: least-squares regression of the slopes on "matching answer is (A)" and
  "matching answer is Yes", with the share of variance they explain.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..datasets import ContrastivePair
from ..vector import SteeringVector
from .behavior import Variant, answer_logprobs, propensity
from .files import pyplot, save_json_and_plot

MULTIPLIERS = (-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5)


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


def matching_is_a(pair: ContrastivePair) -> bool:
    return pair.positive.strip().startswith("(A")


def matching_is_yes(pair: ContrastivePair) -> bool | None:
    if "matching_is_yes" in pair.meta:
        return bool(pair.meta["matching_is_yes"])
    pos = pair.positive.strip().lower()
    if pos in ("yes", "no"):
        return pos == "yes"
    letter = re.search(r"\(([A-Z])\)", pair.positive)
    if letter:  # an A/B item whose matching option text is Yes/No
        m = re.search(rf"\({letter.group(1)}\):? *(Yes|No)\b", pair.prompt)
        if m:
            return m.group(1) == "Yes"
    return None


@dataclass
class ReliabilityReport:
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

    def summary(self) -> str:
        yes = "n/a" if self.spurious_r2_yes is None else f"{self.spurious_r2_yes:.2f}"
        return (f"{self.dataset}: mean steerability {self.mean_slope:+.3f} (median {self.median_slope:+.3f}, "
                f"variance {self.slope_variance:.3f}), anti-steerable {self.anti_steerable_fraction:.0%}, "
                f"line fit R^2 {self.mean_r2:.2f}, variance explained by A {self.spurious_r2_a:.2f} / Yes {yes}")

    def save(self, folder: str | Path, name: str | None = None) -> Path:
        stem = name or f"reliability-{Path(self.dataset).stem}"
        folder = save_json_and_plot(self, folder, stem)
        (folder / f"{stem}.md").write_text(
            f"# Reliability: {self.dataset} on {self.model}, layer {self.layer}\n\n{self.summary()}\n\n"
            f"Multipliers {self.multipliers} x {self.scale:g}; {self.n_items} held-out items; unsteered "
            f"p(matching) {self.unsteered_p_matching:.3f}.\n\n![slopes]({stem}.png)\n")
        return folder / f"{stem}.md"

    def plot(self, path: Path) -> None:
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6, 3.4))
        ax.hist(self.slopes, bins=30, color="#1b9e77")
        ax.axvline(0, color="black", lw=0.8)
        ax.set_xlabel("per-item steerability (slope of propensity vs multiplier)")
        ax.set_ylabel("items")
        ax.set_title(f"{Path(self.dataset).stem}: {self.anti_steerable_fraction:.0%} anti-steerable", fontsize=10)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


@torch.no_grad()
def reliability(lm, vector: SteeringVector, test: Sequence[ContrastivePair], *, layer: int | None = None,
                scale: float = 1.0, multipliers: Sequence[float] = MULTIPLIERS, dataset: str = "data",
                chat: bool = True, system: str | None = None, progress: bool | None = None) -> ReliabilityReport:
    """Per-item steerability of ``vector`` (at ``layer``, or its only layer) on held-out pairs."""
    if layer is None:
        if len(vector.layers) != 1:
            raise ValueError(f"The vector has layers {sorted(vector.layers)}; pass layer=.")
        layer = next(iter(vector.layers))
    variants = [Variant(m * scale, layer) for m in multipliers]
    lp = answer_logprobs(lm, test, vector, variants, chat=chat, system=system, progress=progress)
    prop = propensity(lp)  # [M, N]
    x = torch.tensor([float(m) for m in multipliers])
    slopes, _, r2 = fit_lines(x, prop)
    zero = [i for i, m in enumerate(multipliers) if m == 0]
    base_p = float(torch.sigmoid(prop[zero[0]]).mean()) if zero else float("nan")
    is_a = torch.tensor([[float(matching_is_a(p))] for p in test])
    yes = [matching_is_yes(p) for p in test]
    r2_a = variance_explained(slopes, is_a)[0] if 0 < is_a.sum() < len(test) else 0.0
    r2_yes = r2_both = None
    if all(v is not None for v in yes):
        is_yes = torch.tensor([[float(v)] for v in yes])
        if 0 < is_yes.sum() < len(test):
            r2_yes = variance_explained(slopes, is_yes)[0]
            r2_both = variance_explained(slopes, torch.cat([is_a, is_yes], 1))[0]
    return ReliabilityReport(
        model=lm.name, dataset=dataset, layer=layer, scale=scale, multipliers=[float(m) for m in multipliers],
        n_items=len(test), mean_slope=float(slopes.mean()), median_slope=float(slopes.median()),
        slope_variance=float(slopes.var()), anti_steerable_fraction=float((slopes <= 0).double().mean()),
        mean_r2=float(r2.mean()), unsteered_p_matching=base_p, spurious_r2_a=r2_a, spurious_r2_yes=r2_yes,
        spurious_r2_both=r2_both, slopes=[float(s) for s in slopes], r2=[float(r) for r in r2],
        propensities=prop.tolist(),
    )
