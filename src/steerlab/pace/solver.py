"""Batched elastic-net sparse coding (docs/methods.md, "PaCE", step 3).

For every row ``z`` of ``Z`` solve

    c* = argmin_c 0.5 ||z - D c||^2 + alpha * (tau ||c||_1 + 0.5 (1 - tau) ||c||^2)

with ``D`` the ``[d, K]`` dictionary (unit-norm columns). ``K`` is large (10^4 - 10^5) and the
solutions are sparse, so the solver works on a *working set* per row: the atoms most correlated with
the current residual plus the current support. On that small set it runs FISTA on the ``[m, m]``
Gram matrix (batched over rows); then one full ``Z D`` product checks the optimality conditions
over all K atoms and brings in the violators. It stops when no atom violates them by more than
``tol * alpha * tau``. Everything is batched torch, so it runs on CPU or GPU and on many token
activations at once; warm starts pass the previous coefficients (e.g. the previous decoding step).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from ..errors import InputError


@dataclass(frozen=True)
class ElasticNet:
    """Solver settings. ``alpha``/``tau``: the penalty (PaCE's reference values 0.05 / 0.95 for
    unit-norm ``z``); ``tol``: allowed optimality violation relative to ``alpha * tau`` (0.02 keeps
    the objective within ~1e-5 relative of the optimum on real activations, see
    benchmarks/pace_speed.py; float32 reaches about 1e-5, float64 far lower); ``working_set``: atoms
    per row in the first inner problems (grown automatically when too small)."""

    alpha: float = 0.05
    tau: float = 0.95
    tol: float = 0.02
    max_outer: int = 20
    max_inner: int = 2000
    working_set: int = 64

    def __post_init__(self) -> None:
        if not (self.alpha > 0 and 0 < self.tau <= 1):
            raise InputError(f"Need alpha > 0 and 0 < tau <= 1 (got alpha={self.alpha}, tau={self.tau}).")

    @property
    def l1(self) -> float:
        return self.alpha * self.tau

    @property
    def l2(self) -> float:
        return self.alpha * (1.0 - self.tau)


def objective(D: torch.Tensor, Z: torch.Tensor, C: torch.Tensor, cfg: ElasticNet = ElasticNet()) -> torch.Tensor:
    """The elastic-net objective of each row (``[B]``), in float64 for comparisons."""
    D, Z, C = D.double(), Z.double(), C.double()
    r = Z - C @ D.T
    return 0.5 * (r * r).sum(-1) + cfg.l1 * C.abs().sum(-1) + 0.5 * cfg.l2 * (C * C).sum(-1)


def _soft(x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    return torch.sign(x) * torch.clamp(x.abs() - t, min=0.0)


def _largest_eigenvalue(G: torch.Tensor, steps: int = 30) -> torch.Tensor:
    """Largest eigenvalue of each PSD matrix in ``G`` [B, m, m] by power iteration, with a 5% margin
    (an overestimate only shortens FISTA's step; the caller checks optimality exactly anyway)."""
    v = torch.ones(G.shape[0], G.shape[1], 1, dtype=G.dtype, device=G.device)
    for _ in range(steps):
        v = torch.bmm(G, v)
        v = v / v.norm(dim=1, keepdim=True).clamp(min=1e-30)
    return (v * torch.bmm(G, v)).sum((1, 2)).clamp(min=1e-12) * 1.05


def _fista(G: torch.Tensor, b: torch.Tensor, c0: torch.Tensor, cfg: ElasticNet, tol: float) -> torch.Tensor:
    """min 0.5 c'Gc - b'c + l1|c|_1 + 0.5 l2|c|^2 for a batch of small problems (G [B,m,m]).
    A row stops once no coefficient moves by more than ``tol`` in a step; finished rows are dropped
    from the batch every few steps, so the slow rows do not make the others iterate."""
    out = c0.clone()
    live = torch.arange(G.shape[0], device=G.device)
    lip = _largest_eigenvalue(G) + cfg.l2  # [B]
    step = (1.0 / lip)[:, None]
    thresh = cfg.l1 * step
    c = c0.clone()
    y = c.clone()
    t = torch.ones(c.shape[0], 1, dtype=c.dtype, device=c.device)
    moving = torch.zeros(c.shape[0], dtype=torch.bool, device=c.device)
    for it in range(1, cfg.max_inner + 1):
        grad = torch.bmm(G, y[..., None])[..., 0] - b + cfg.l2 * y
        c_new = _soft(y - step * grad, thresh)
        delta = c_new - c
        moving |= delta.abs().amax(-1) > tol
        t_new = (1 + torch.sqrt(1 + 4 * t * t)) / 2
        # Restart momentum on rows where it points uphill (keeps FISTA monotone in practice).
        restart = ((y - c_new) * delta).sum(-1, keepdim=True) > 0
        t_new = torch.where(restart, torch.ones_like(t_new), t_new)
        y = c_new + torch.where(restart, torch.zeros_like(delta), ((t - 1) / t_new) * delta)
        c, t = c_new, t_new
        if it % 8 == 0 or it == cfg.max_inner:
            done = ~moving
            if done.any():
                out[live[done]] = c[done]
                keep = moving
                if not keep.any():
                    return out
                live, G, b, c, y, t = live[keep], G[keep], b[keep], c[keep], y[keep], t[keep]
                step, thresh = step[keep], thresh[keep]
            moving = torch.zeros(c.shape[0], dtype=torch.bool, device=c.device)
    out[live] = c
    return out


def _violation(corr: torch.Tensor, C: torch.Tensor, cfg: ElasticNet) -> torch.Tensor:
    """How far each coefficient is from the optimality conditions (``corr = D'(z - Dc)``)."""
    zero = C == 0
    at_zero = torch.clamp(corr.abs() - cfg.l1, min=0.0)
    active = (corr - cfg.l2 * C - cfg.l1 * torch.sign(C)).abs()
    return torch.where(zero, at_zero, active)


@torch.no_grad()
def sparse_code(
    D: torch.Tensor,
    Z: torch.Tensor,
    cfg: ElasticNet = ElasticNet(),
    *,
    init: torch.Tensor | None = None,
    chunk: int = 256,
) -> torch.Tensor:
    """Elastic-net coefficients ``[B, K]`` for the rows of ``Z`` (``[B, d]``) against ``D`` (``[d, K]``).

    ``init``: warm-start coefficients ``[B, K]`` (e.g. from the previous decoding step). Rows are
    solved ``chunk`` at a time to bound memory. Works in ``D``'s dtype (use float32 or float64)."""
    if D.ndim != 2 or Z.ndim != 2 or Z.shape[1] != D.shape[0]:
        raise InputError(f"Need D [d, K] and Z [B, d]; got D {tuple(D.shape)} and Z {tuple(Z.shape)}.")
    if not torch.isfinite(Z).all():
        raise InputError("Z holds NaN or infinite values.")
    if init is not None and init.shape != (Z.shape[0], D.shape[1]):
        raise InputError(f"init has shape {tuple(init.shape)}; expected {(Z.shape[0], D.shape[1])}.")
    Z = Z.to(D.dtype)
    out = []
    for s in range(0, Z.shape[0], chunk):
        c0 = None if init is None else init[s: s + chunk].to(D.dtype)
        out.append(_solve_chunk(D, Z[s: s + chunk], cfg, c0))
    return torch.cat(out) if out else Z.new_zeros(0, D.shape[1])


def _solve_chunk(D: torch.Tensor, Z: torch.Tensor, cfg: ElasticNet, C: torch.Tensor | None) -> torch.Tensor:
    B, K = Z.shape[0], D.shape[1]
    Dt = D.T.contiguous()  # [K, d]: atom rows, for gathering
    C = Z.new_zeros(B, K) if C is None else C.clone()
    m = min(K, cfg.working_set)
    gate = cfg.tol * cfg.l1
    resid = Z - C @ D.T if C.any() else Z
    todo = torch.arange(B, device=Z.device)  # rows still violating the optimality conditions
    for _ in range(cfg.max_outer):
        corr = resid @ D  # [n, K]
        viol = _violation(corr, C[todo], cfg)
        bad = viol.amax(-1) > gate
        if not bad.any():
            return C
        todo, viol, Ct, Zt = todo[bad], viol[bad], C[todo[bad]], Z[todo[bad]]
        support = int((Ct != 0).sum(-1).max())
        n_viol = int((viol > gate).sum(-1).max())
        # Grow the working set to hold the support and the worst violators (at most 1.5x per round).
        m = min(K, max(m, support + min(n_viol, max(m // 2, 16))))
        score = torch.where(Ct != 0, torch.full_like(viol, float("inf")), viol)
        idx = score.topk(m, dim=-1).indices  # [n, m]: the current support first, then the violators
        A = Dt[idx]  # [n, m, d]
        G = torch.bmm(A, A.transpose(1, 2))
        b = torch.bmm(A, Zt[..., None])[..., 0]
        rows = torch.arange(len(todo), device=Z.device)[:, None]
        c_ws = _fista(G, b, Ct[rows, idx], cfg, tol=gate * 0.1)
        Ct = torch.zeros_like(Ct)
        Ct[rows, idx] = c_ws
        C[todo] = Ct
        resid = Zt - torch.bmm(c_ws[:, None, :], A)[:, 0]  # C is zero outside the working set
    worst = float(_violation((Z - C @ D.T) @ D, C, cfg).max())
    if worst > gate:
        warnings.warn(f"sparse_code: stopped after max_outer={cfg.max_outer} rounds with an optimality violation "
                      f"of {worst:.2e} (target {gate:.2e}); raise max_outer/max_inner or loosen tol.", stacklevel=3)
    return C
