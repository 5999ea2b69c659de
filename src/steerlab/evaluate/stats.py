"""Uncertainty and null references for per-item results: bootstrap intervals, slope standard
errors, and random directions of a given norm."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..vector import SteeringVector

LEVEL = 0.95


def bootstrap_ci(values: torch.Tensor, statistic: Callable[[torch.Tensor], torch.Tensor] | None = None, *,
                 n_boot: int = 2000, level: float = LEVEL, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` (default: the mean) over the rows of ``values``.

    ``values`` is ``[N]`` or ``[N, k]`` (rows resampled together, e.g. paired real/null slopes);
    ``statistic`` maps a batch of resamples ``[B, N, ...]`` to ``[B]``.
    """
    values = values.double()
    n = values.shape[0]
    if n == 0:
        return float("nan"), float("nan")
    stat = statistic or (lambda v: v.mean(1))
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n, (n_boot, n), generator=gen)
    draws = stat(values[idx])
    tail = (1 - level) / 2
    lo, hi = torch.quantile(draws, torch.tensor([tail, 1 - tail], dtype=torch.float64))
    return float(lo), float(hi)


def fraction_at_most_zero(draws: torch.Tensor) -> torch.Tensor:
    """Share of entries <= 0 in each resample (row of ``draws``, whatever its further dimensions):
    the anti-steerable fraction of each resample."""
    return (draws <= 0).double().flatten(1).mean(1)


def slope_standard_errors(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Ordinary least-squares standard error of each column's slope in ``y[:, i] ~ a_i + b_i x``:
    ``sqrt(SSR / (n - 2) / Sxx)``; zero where a line fits exactly, NaN with fewer than 3 points."""
    x, y = x.double(), y.double()
    n = x.shape[0]
    if n < 3:
        return torch.full((y.shape[1],), float("nan"), dtype=torch.float64)
    xc = x - x.mean()
    sxx = xc @ xc
    slopes = (xc[:, None] * (y - y.mean(0))).sum(0) / sxx
    resid = (y - y.mean(0)) - slopes * xc[:, None]
    return ((resid ** 2).sum(0) / (n - 2) / sxx).sqrt()


def random_direction(like: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
    """A direction drawn uniformly at random (seeded) with the same norm, shape and dtype as ``like``."""
    gen = torch.Generator().manual_seed(seed)
    r = torch.randn(like.shape, generator=gen, dtype=torch.float64)
    return (r * (like.double().norm() / r.norm())).to(like.dtype)


def null_vector(vector: SteeringVector, layer: int, *, seed: int = 0) -> SteeringVector:
    """The null reference for ``vector`` at ``layer``: a random direction of the same norm, applied the
    same way (site and window)."""
    return SteeringVector({layer: random_direction(vector.layers[layer], seed=seed)}, vector.model_name,
                          vector.hidden_size, "null", vector.site, vector.apply)
