"""Batched elastic-net sparse coding (docs/methods.md, "PaCE", step 3).

For every row ``z`` of ``Z`` solve

    c* = argmin_c 0.5 ||z - D c||^2 + alpha * (tau ||c||_1 + 0.5 (1 - tau) ||c||^2)

with ``D`` the ``[d, K]`` dictionary (unit-norm columns). ``K`` is large (10^4 - 10^5) and the
solutions are sparse (tens to a few hundred atoms), so each row is solved on a small *working set*
of atoms and the full dictionary is touched only to check the answer:

1. one full product ``Z D`` gives every atom's correlation with ``z``; the working set starts as the
   most correlated atoms (plus the support of a warm start, if one is given);
2. on the working set the problem is solved *exactly* by a primal-dual active-set (semismooth
   Newton) iteration: guess the support and signs, solve the small linear system on the support (LU),
   update the guess from the optimality conditions, repeat until the guess is stable (a few
   steps); rows where it does not settle fall back to FISTA;
3. a second full product checks the optimality conditions over all K atoms. From the same numbers a
   *gap-safe screening* test (Fercoq, Gramfort & Salmon 2015) discards every atom that provably has
   a zero coefficient at the optimum; later rounds bring the worst violators into the working set
   and check only the atoms that survived screening.

Everything is batched torch (CPU or GPU), many token activations at once. On a CPU with numba
installed, :mod:`steerlab.pace.cpu_kernels` runs the same method with every per-row step compiled
(``ElasticNet(kernel="torch")`` keeps the torch path): there the fixed cost of hundreds of small torch
calls per token was most of the time (benchmarks/pace_speed.py compares the two side by side).

On a GPU the loop above is slow for a few rows: every "is this row done?" is a host-device
synchronisation, and the small steps are launch-bound (87 ms per token on an H100, against 0.02 ms
for the ``D'z`` product; benchmarks/results/pace-speed-cuda.md). ``ElasticNet(sync_free=True)``
takes a *sync-free* path instead (opt-in: it is checked against scikit-learn on CPU, but its GPU
speed has not been measured yet), with the same steps on fixed shapes: a working set of
``fixed_set`` atoms, a fixed number of FISTA and masked active-set steps (an ``[m, m]`` system whose
rows off the support are the identity), and ``fixed_rounds`` rounds that swap the worst violators
in; nothing reads a value back until the coefficients are returned. It is exact when the support
fits in the working set and the rounds suffice (on real activations against a 400-concept dictionary
it matches scikit-learn); on the 10k SmolLM2 dictionary it stops ~8e-4 above the optimum
(benchmarks/pace_speed.py). :func:`kkt_violation` measures it afterwards.
"""

from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass

import torch

from ..errors import InputError
from . import cpu_kernels


@dataclass(frozen=True)
class ElasticNet:
    """Solver settings. ``alpha``/``tau``: the penalty (PaCE's reference values 0.05 / 0.95 for unit-norm ``z``);
    ``tol``: allowed optimality violation, relative to ``alpha * tau``, of atoms outside the working set (the
    working-set problems themselves are solved exactly; 0.02 keeps the objective within ~2e-5 relative of the
    optimum on real activations, 1e-3 within ~1e-8, see benchmarks/pace_speed.py; not used by the sync-free
    path); ``working_set``: atoms per row in the first inner problems (grown when too small); ``fista_steps``:
    FISTA steps that bring each inner problem near its support before the active-set (Newton) steps;
    ``max_newton``: active-set steps before a row falls back to FISTA (``max_inner`` steps); ``newton_rows``:
    batches of more rows than this skip the Newton steps (a batch of small factorisations costs ~0.3 ms a row on
    CPU, more than FISTA's tail there), so their inner problems are solved to ``tol`` rather than exactly;
    ``screen``: gap-safe screening of the later rounds' checks. ``sync_free``: the fixed-shape path of the
    module docstring (opt-in; meant for GPUs), with ``fixed_set`` atoms per row, ``fixed_rounds`` rounds and
    ``fixed_newton`` active-set steps per round after ``fista_steps`` FISTA steps. ``kernel``: how the small
    working-set problems are solved on a CPU: ``"auto"`` (the compiled kernel of
    :mod:`steerlab.pace.cpu_kernels` when numba is installed, else torch), ``"numba"`` or ``"torch"``; on
    other devices always torch. ``share_equal_rows``: solve bit-for-bit equal rows once (not on the sync-free
    path)."""

    alpha: float = 0.05
    tau: float = 0.95
    tol: float = 0.02
    max_outer: int = 20
    max_inner: int = 2000
    fista_steps: int = 32
    max_newton: int = 10
    newton_rows: int = 16
    working_set: int = 96
    screen: bool = True
    sync_free: bool = False
    fixed_set: int = 256
    fixed_rounds: int = 3
    fixed_newton: int = 6
    kernel: str = "auto"
    share_equal_rows: bool = True

    def __post_init__(self) -> None:
        if not (self.alpha > 0 and 0 < self.tau <= 1):
            raise InputError(f"Need alpha > 0 and 0 < tau <= 1 (got alpha={self.alpha}, tau={self.tau}).")
        if self.fixed_set < 1 or self.fixed_rounds < 1 or self.fixed_newton < 0:
            raise InputError("Need fixed_set >= 1, fixed_rounds >= 1 and fixed_newton >= 0.")
        if self.kernel not in ("auto", "numba", "torch"):
            raise InputError(f"kernel must be 'auto', 'numba' or 'torch', not {self.kernel!r}.")
        if self.kernel == "numba" and not cpu_kernels.available():
            raise InputError("kernel='numba' needs numba: pip install 'steerlab[pace]' (or use kernel='auto').")

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


def _fista_step(G: torch.Tensor, b: torch.Tensor, c: torch.Tensor, y: torch.Tensor, t: torch.Tensor,
                step: torch.Tensor, thresh: torch.Tensor, cfg: ElasticNet
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One FISTA step for every row: the new point, extrapolated point and momentum ``(c, y, t)``."""
    grad = torch.bmm(G, y[..., None])[..., 0] - b + cfg.l2 * y
    c_new = _soft(y - step * grad, thresh)
    delta = c_new - c
    t_new = (1 + torch.sqrt(1 + 4 * t * t)) / 2
    # Restart momentum on rows where it points uphill (keeps FISTA monotone in practice).
    restart = ((y - c_new) * delta).sum(-1, keepdim=True) > 0
    t_new = torch.where(restart, torch.ones_like(t_new), t_new)
    y = c_new + torch.where(restart, torch.zeros_like(delta), ((t - 1) / t_new) * delta)
    return c_new, y, t_new


def _fista(G: torch.Tensor, b: torch.Tensor, c0: torch.Tensor, cfg: ElasticNet, tol: float,
           steps: int | None = None) -> torch.Tensor:
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
    steps = cfg.max_inner if steps is None else steps
    for it in range(1, steps + 1):
        c_prev = c
        c, y, t = _fista_step(G, b, c, y, t, step, thresh, cfg)
        moving |= (c - c_prev).abs().amax(-1) > tol
        if it % 8 == 0 or it == steps:
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


def _active_set(G: torch.Tensor, b: torch.Tensor, c: torch.Tensor, cfg: ElasticNet) -> torch.Tensor:
    """Solutions of min 0.5 c'Gc - b'c + l1|c|_1 + 0.5 l2|c|^2 for a batch of small problems
    (``G`` [n, m, m]): exact, by the primal-dual active-set method in float64, for up to
    ``newton_rows`` rows; to ``tol`` by FISTA for more.

    With ``Q = G + l2 I`` and ``lam = b - Q c`` the optimum is the fixed point of
    ``A = {i : |c_i + lam_i| > l1}``, ``s = sign(c + lam)`` on A, ``c_A = Q_AA^-1 (b_A - l1 s_A)``,
    ``c = 0`` off A. Once A and s repeat, c satisfies every optimality condition exactly (an atom in
    A keeps its sign, one outside has ``|lam_i| <= l1``). Rows that have not settled after
    ``max_newton`` steps (the method can cycle) finish with FISTA from their best point."""
    n, m = b.shape
    if n > cfg.newton_rows:  # many rows: batched small factorisations cost more than FISTA's tail
        return _fista(G, b, c, cfg, tol=cfg.tol * cfg.l1 * 0.1)
    G, b, c = G.double(), b.double(), c.double()
    G_all, b_all = G, b
    eye = torch.eye(m, dtype=G.dtype, device=G.device).expand(n, m, m)
    Q = G + cfg.l2 * eye
    c = _fista(G, b, c, cfg, tol=0.0, steps=cfg.fista_steps)  # near the support, where Newton is reliable
    start = c
    out = c.clone()
    live = torch.arange(n, device=G.device)
    prev: torch.Tensor | None = None
    for _ in range(cfg.max_newton):
        lam = b - torch.bmm(Q, c[..., None])[..., 0]
        u = c + lam
        s = torch.sign(u) * (u.abs() > cfg.l1)  # the new guess: support and signs in one tensor
        if prev is not None:
            settled = (s == prev).all(-1)
            if settled.any():
                out[live[settled]] = c[settled]
                keep = ~settled
                live, Q, b, s, eye = live[keep], Q[keep], b[keep], s[keep], eye[keep]
                if not len(live):
                    break
        act = s != 0
        # Solve on the support only: move each row's support to the front and cut the matrices to
        # the largest support in the batch (padding rows are identity, so they solve to zero).
        k = max(int(act.sum(-1).max()), 1)
        order = torch.argsort((~act).to(torch.int8), dim=-1, stable=True)[:, :k]  # [t, k]
        keep_k = act.gather(1, order)
        Qk = Q.gather(1, order[:, :, None].expand(-1, -1, Q.shape[2])).gather(2, order[:, None, :].expand(-1, k, -1))
        both = keep_k[:, :, None] & keep_k[:, None, :]
        M = torch.where(both, Qk, eye[:, :k, :k])
        rhs = torch.where(keep_k, (b - cfg.l1 * s).gather(1, order), 0.0)
        sol, info = torch.linalg.solve_ex(M, rhs)
        if bool((info != 0).any()):  # numerically singular support: leave these rows to FISTA
            break
        c = torch.zeros_like(b).scatter_(1, order, torch.where(keep_k, sol, 0.0))
        prev = s
    if len(live):
        G_live = Q - cfg.l2 * eye
        out[live] = _fista(G_live, b, out[live], cfg, tol=cfg.tol * cfg.l1 * 0.1)
    # A support whose system is numerically singular (e.g. two copies of one atom with l2 = 0) can
    # "settle" on a huge solution: keep such rows at FISTA's point and finish them with FISTA.
    worse = ~(_small_objective(G_all, b_all, out, cfg) <= _small_objective(G_all, b_all, start, cfg) + 1e-12)
    if bool(worse.any()):
        out[worse] = _fista(G_all[worse], b_all[worse], start[worse], cfg, tol=cfg.tol * cfg.l1 * 0.1)
    return out


def _compiled(X: torch.Tensor, cfg: ElasticNet) -> bool:
    """Whether the compiled CPU kernels serve this call (``cfg.kernel``, the device, the dtype, numba)."""
    return (X.device.type == "cpu" and X.dtype in (torch.float32, torch.float64) and cfg.kernel != "torch"
            and cpu_kernels.available())


def correlations(X: torch.Tensor, Dt: torch.Tensor, cfg: ElasticNet) -> torch.Tensor:
    """``X @ Dt.T``: every row's correlation with every atom (``Dt`` [K, d]), as the solver computes it
    (on a CPU with numba, :func:`steerlab.pace.cpu_kernels.with_atoms`)."""
    if X.dtype == Dt.dtype and _compiled(X, cfg):
        return torch.from_numpy(cpu_kernels.with_atoms(X.contiguous().numpy(), Dt.contiguous().numpy()))
    return X @ Dt.T


def _violation(corr: torch.Tensor, C: torch.Tensor, cfg: ElasticNet) -> torch.Tensor:
    """How far each coefficient is from the optimality conditions (``corr = D'(z - Dc)``)."""
    zero = C == 0
    at_zero = torch.clamp(corr.abs() - cfg.l1, min=0.0)
    active = (corr - cfg.l2 * C - cfg.l1 * torch.sign(C)).abs()
    return torch.where(zero, at_zero, active)


def screen(corr: torch.Tensor, Z: torch.Tensor, R: torch.Tensor, C: torch.Tensor, cfg: ElasticNet) -> torch.Tensor:
    """Gap-safe screening: ``True`` where atom j provably has ``c*_j = 0`` at the optimum.

    The elastic net is a lasso on the augmented problem ``[D; sqrt(l2) I] c ~ [z; 0]``. From a
    primal point ``C`` (residual ``R = Z - C D'``, correlations ``corr = R D``) the rescaled residual
    ``theta = [R; -sqrt(l2) C] / s`` is dual feasible, ``s = max(1, max_j |corr_j - l2 c_j| / l1)``;
    the duality gap ``P(C) - Dual(theta)`` bounds the distance to the dual optimum, and any atom
    whose correlation with every dual point in that ball stays below ``l1`` is zero at the optimum."""
    l1, l2 = cfg.l1, cfg.l2
    aug = corr - l2 * C  # augmented correlations [n, K]
    s = torch.clamp(aug.abs().amax(-1) / l1, min=1.0)  # [n]
    rr = (R * R).sum(-1) + l2 * (C * C).sum(-1)  # ||augmented residual||^2
    primal = 0.5 * rr + l1 * C.abs().sum(-1)
    # Dual(theta) = 0.5||y||^2 - 0.5||y - theta||^2 with y = [z; 0], theta = r_aug / s.
    ytheta = (Z * R).sum(-1) / s  # <y, theta>: the augmented part of y is zero
    dual = ytheta - 0.5 * rr / (s * s)
    gap = torch.clamp(primal - dual, min=0.0)
    radius = torch.sqrt(2 * gap) * (1.0 + l2) ** 0.5  # ||augmented atom|| = sqrt(1 + l2)
    # Atoms of the solution sit exactly on the boundary |corr| = l1; a margin well above rounding
    # error keeps them from being screened by a last-bit difference.
    margin = l1 * 1e4 * torch.finfo(corr.dtype).eps
    return (aug.abs() / s[:, None] + radius[:, None]) < l1 - margin


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

    ``init``: warm-start coefficients ``[B, K]``: their support joins the first working set (PaCE
    does not pass one while decoding: consecutive tokens share too little support for it to help).
    Equal rows are solved once (without ``init``; ``cfg.share_equal_rows``). Rows are solved ``chunk`` at
    a time to bound memory. The full products run in ``D``'s dtype
    (float32 or float64); the small exact solves in float64."""
    if D.ndim != 2 or Z.ndim != 2 or Z.shape[1] != D.shape[0]:
        raise InputError(f"Need D [d, K] and Z [B, d]; got D {tuple(D.shape)} and Z {tuple(Z.shape)}.")
    if not cfg.sync_free and not torch.isfinite(Z).all():  # (the check is a host sync on a GPU)
        raise InputError("Z holds NaN or infinite values.")
    if init is not None and init.shape != (Z.shape[0], D.shape[1]):
        raise InputError(f"init has shape {tuple(init.shape)}; expected {(Z.shape[0], D.shape[1])}.")
    Z = Z.to(D.dtype)
    if cfg.share_equal_rows and init is None and not cfg.sync_free and Z.shape[0] > 1:
        # Equal rows have the same solution, so each is solved once. In a batch of chat prompts the
        # shared system prompt's positions are bit-for-bit equal across rows (344 prompt positions of 8
        # SmolLM2 chat prompts hold 142 distinct activations). (Not on the sync-free path: the number
        # of distinct rows is a host sync.)
        distinct, where = torch.unique(Z, dim=0, return_inverse=True)
        if distinct.shape[0] < Z.shape[0]:
            return _solve_rows(D, distinct, cfg, None, chunk)[where]
    return _solve_rows(D, Z, cfg, init, chunk)


def _solve_rows(D: torch.Tensor, Z: torch.Tensor, cfg: ElasticNet, init: torch.Tensor | None,
                chunk: int) -> torch.Tensor:
    Dt = D.T if D.T.is_contiguous() else D.T.contiguous()  # [K, d]: atom rows, for gathering
    out = []
    for s in range(0, Z.shape[0], chunk):
        c0 = None if init is None else init[s: s + chunk].to(D.dtype)
        if cfg.sync_free:
            out.append(_solve_fixed(D, Dt, Z[s: s + chunk], cfg, c0))
        elif _compiled(Z, cfg):
            out.append(_solve_compiled(Dt, Z[s: s + chunk], cfg, c0))
        else:
            out.append(_solve_chunk(D, Dt, Z[s: s + chunk], cfg, c0))
    return torch.cat(out) if out else Z.new_zeros(0, D.shape[1])


def _solve_chunk(D: torch.Tensor, Dt: torch.Tensor, Z: torch.Tensor, cfg: ElasticNet,
                 C0: torch.Tensor | None) -> torch.Tensor:
    n, K = Z.shape[0], D.shape[1]
    C = Z.new_zeros(n, K)
    gate = cfg.tol * cfg.l1
    corr = Z @ D  # [n, K]: the one product every row needs
    # First working set: the warm start's support first, then the most correlated atoms.
    score = corr.abs()
    if C0 is not None:
        score = torch.where(C0 != 0, torch.full_like(score, float("inf")), score)
    m = min(K, max(cfg.working_set, int((C0 != 0).sum(-1).max()) if C0 is not None else 0))
    idx = score.topk(m, dim=-1).indices  # [n, m]
    c_ws = C0.gather(1, idx) if C0 is not None else Z.new_zeros(n, m)
    todo = torch.arange(n, device=Z.device)
    alive: torch.Tensor | None = None  # [t, K]: atoms that survived screening (None: not screened yet)
    for _ in range(cfg.max_outer):
        A = Dt[idx]  # [t, m, d]
        # The Gram of the working set (m^2 d per row) in D's dtype; Newton steps convert to float64.
        G = torch.bmm(A, A.transpose(1, 2))
        c_ws = _active_set(G, corr[todo].gather(1, idx), c_ws, cfg).to(Z.dtype)
        rows = torch.arange(len(todo), device=Z.device)[:, None]
        Ct = torch.zeros(len(todo), K, dtype=Z.dtype, device=Z.device)
        Ct[rows, idx] = c_ws
        C[todo] = Ct
        R = Z[todo] - torch.bmm(c_ws[:, None, :], A)[:, 0]  # C is zero outside the working set
        if alive is None or int(alive.sum()) > alive.numel() // 16:
            corr_t = R @ D  # the full check
            if cfg.screen:
                safe = screen(corr_t, Z[todo], R, Ct, cfg) & (Ct == 0)
                alive = ~safe if alive is None else alive & ~safe
        else:
            # Only atoms that survived screening can violate anything: check just those.
            corr_t = torch.zeros_like(Ct)
            a_row, a_col = alive.nonzero(as_tuple=True)
            corr_t[a_row, a_col] = (R[a_row] * Dt[a_col]).sum(-1)
        viol = _violation(corr_t, Ct, cfg)
        bad = viol.amax(-1) > gate
        if not bad.any():
            return C
        todo, viol, Ct, c_ws = todo[bad], viol[bad], Ct[bad], c_ws[bad]
        if alive is not None:
            alive = alive[bad]
        n_viol = int((viol > gate).sum(-1).max())
        support = int((Ct != 0).sum(-1).max())
        # Next working set: the current support, then every violator (the worst first), up to d atoms
        # or twice the last size.
        m = min(K, max(m, support + min(n_viol, max(m // 2, 16))))
        score = torch.where(Ct != 0, torch.full_like(viol, float("inf")), viol)
        idx = score.topk(m, dim=-1).indices
        c_ws = Ct.gather(1, idx)
    _warn_unfinished(D, Z, C, cfg)
    return C


def _solve_compiled(Dt: torch.Tensor, Z: torch.Tensor, cfg: ElasticNet, C0: torch.Tensor | None) -> torch.Tensor:
    """The same method with every per-row step compiled for the CPU (:func:`steerlab.pace.cpu_kernels.sparse_code`)."""
    C, converged = cpu_kernels.sparse_code(Dt.numpy(), Z.contiguous().numpy(), None if C0 is None else C0.numpy(),
                                           cfg.l1, cfg.l2, cfg.tol * cfg.l1, cfg.working_set, cfg.max_outer,
                                           table=_atom_table(Dt))
    out = torch.from_numpy(C)
    if not converged:
        _warn_unfinished(Dt.T, Z, out, cfg)
    return out


# Each dictionary tensor's AtomTable, for the compiled path's checks. Keyed by the tensor that owns the
# memory (PaCE passes a new view of its cached atoms at every step; by identity, a tensor's == being
# elementwise), checked against the view's layout and the owner's version counter (an in-place change to
# the atoms makes a new table), and dropped with the owner. A table is built the second time an owner is
# seen: a dictionary made afresh for every call would pay for a table it never reuses.
_TABLES: dict[int, tuple[weakref.ref, tuple, cpu_kernels.AtomTable | None]] = {}


def _atom_table(Dt: torch.Tensor) -> cpu_kernels.AtomTable | None:
    owner = Dt._base if Dt._base is not None else Dt
    key = (Dt.data_ptr(), tuple(Dt.shape), Dt.stride(), Dt.dtype, owner._version)
    hit = _TABLES.get(id(owner))
    if hit is None or hit[0]() is not owner:
        weakref.finalize(owner, _TABLES.pop, id(owner), None)
        _TABLES[id(owner)] = (weakref.ref(owner), key, None)
        return None
    if hit[1] != key or hit[2] is None:
        hit = (hit[0], key, cpu_kernels.atom_table(Dt))
        _TABLES[id(owner)] = hit
    return hit[2]


def _warn_unfinished(D: torch.Tensor, Z: torch.Tensor, C: torch.Tensor, cfg: ElasticNet) -> None:
    worst = float(_violation((Z - C @ D.T) @ D, C, cfg).max())
    if worst > cfg.tol * cfg.l1:
        warnings.warn(f"sparse_code: stopped after max_outer={cfg.max_outer} rounds with an optimality violation "
                      f"of {worst:.2e} (target {cfg.tol * cfg.l1:.2e}); raise max_outer or loosen tol.", stacklevel=4)


def kkt_violation(D: torch.Tensor, Z: torch.Tensor, C: torch.Tensor, cfg: ElasticNet = ElasticNet()) -> torch.Tensor:
    """Each row's largest optimality violation relative to ``alpha * tau`` (0 at the optimum; the
    adaptive path stops below ``tol``)."""
    R = Z.to(D.dtype) - C.to(D.dtype) @ D.T
    return _violation(R @ D, C.to(D.dtype), cfg).amax(-1) / cfg.l1


def _fista_fixed(G: torch.Tensor, b: torch.Tensor, c: torch.Tensor, cfg: ElasticNet, steps: int) -> torch.Tensor:
    """``steps`` FISTA steps on every row of a batch of small problems, with no data-dependent control
    flow (the adaptive :func:`_fista` drops finished rows, which needs the host to look)."""
    lip = _largest_eigenvalue(G) + cfg.l2
    step = (1.0 / lip)[:, None]
    thresh = cfg.l1 * step
    y = c.clone()
    t = torch.ones(c.shape[0], 1, dtype=c.dtype, device=c.device)
    for _ in range(steps):
        c, y, t = _fista_step(G, b, c, y, t, step, thresh, cfg)
    return c


def _small_objective(G: torch.Tensor, b: torch.Tensor, c: torch.Tensor, cfg: ElasticNet) -> torch.Tensor:
    """0.5 c'Gc - b'c + l1|c|_1 + 0.5 l2|c|^2 per row (the working-set objective up to a constant)."""
    Gc = torch.bmm(G, c[..., None])[..., 0]
    return (0.5 * Gc * c - b * c + cfg.l1 * c.abs() + 0.5 * cfg.l2 * c * c).sum(-1)


def _newton_fixed(G: torch.Tensor, b: torch.Tensor, c: torch.Tensor, cfg: ElasticNet) -> torch.Tensor:
    """``fixed_newton`` primal-dual active-set steps (see :func:`_active_set`) on full ``[m, m]``
    systems, solved by Cholesky: rows and columns off the guessed support are replaced by the
    identity (their coefficient solves to 0), so every step has the same shape. A row keeps the step's answer only
    where it lowers the working-set objective, so a cycling row never ends worse than FISTA left it."""
    n, m = b.shape
    G64, b64, c64 = G.double(), b.double(), c.double()
    eye = torch.eye(m, dtype=torch.float64, device=G.device)
    Q = G64 + cfg.l2 * eye
    best, best_obj = c64, _small_objective(G64, b64, c64, cfg)
    for _ in range(cfg.fixed_newton):
        u = c64 + b64 - torch.bmm(Q, c64[..., None])[..., 0]
        s = torch.sign(u) * (u.abs() > cfg.l1)
        act = s != 0
        both = act[:, :, None] & act[:, None, :]
        M = torch.where(both, Q, eye)
        rhs = torch.where(act, b64 - cfg.l1 * s, 0.0)
        # M is symmetric positive definite (Q_AA = G_AA + l2 I, the identity elsewhere): Cholesky, which
        # needs no pivots (batched LU's pivoting failed inside MKL on one 256-row batch of 10k-atom sets).
        L, info = torch.linalg.cholesky_ex(M)
        sol = torch.cholesky_solve(rhs[..., None], L)[..., 0]
        usable = (info == 0)[:, None] & torch.isfinite(sol).all(-1, keepdim=True)
        c64 = torch.where(usable, sol, best)
        obj = _small_objective(G64, b64, c64, cfg)
        better = obj < best_obj
        best = torch.where(better[:, None], c64, best)
        best_obj = torch.where(better, obj, best_obj)
    return best.to(c.dtype)


def _solve_fixed(D: torch.Tensor, Dt: torch.Tensor, Z: torch.Tensor, cfg: ElasticNet,
                 C0: torch.Tensor | None) -> torch.Tensor:
    """The sync-free path (module docstring): the same working-set method on fixed shapes."""
    n, K = Z.shape[0], D.shape[1]
    m = min(K, cfg.fixed_set)
    corr = Z @ D
    score = corr.abs() if C0 is None else torch.where(C0 != 0, torch.full_like(corr, float("inf")), corr.abs())
    idx = score.topk(m, dim=-1).indices
    c_ws = Z.new_zeros(n, m) if C0 is None else C0.gather(1, idx)
    rows = torch.arange(n, device=Z.device)[:, None]
    for r in range(cfg.fixed_rounds):
        A = Dt[idx]  # [n, m, d]
        G = torch.bmm(A, A.transpose(1, 2))
        b = corr.gather(1, idx)
        c_ws = _fista_fixed(G, b, c_ws, cfg, cfg.fista_steps)
        c_ws = _newton_fixed(G, b, c_ws, cfg)
        C = Z.new_zeros(n, K)
        C[rows, idx] = c_ws
        if r == cfg.fixed_rounds - 1:
            break
        # Swap in the worst violators outside the support (the support stays: its score is inf).
        R = Z - torch.bmm(c_ws[:, None, :], A)[:, 0]
        viol = _violation(R @ D, C, cfg)
        idx = torch.where(C != 0, torch.full_like(viol, float("inf")), viol).topk(m, dim=-1).indices
        c_ws = C.gather(1, idx)
    return C
