"""The PaCE solver's CPU kernels, compiled with numba: exact elastic-net solves on small working sets,
and products of a few rows with the whole dictionary.

The working-set method of :mod:`steerlab.pace.solver` reduces each token to a small problem

    min_c 0.5 c'Gc - b'c + l1 |c|_1 + 0.5 l2 |c|^2      (G = A A' [m, m], b = A z, m ~ 100-500)

In torch every step of its solve is a separate small call, and on a CPU their fixed cost (~10-20 us
each, a few hundred per token) was most of PaCE's time per token. Here one compiled function solves
all rows (in parallel over rows): cyclic coordinate descent on the Gram matrix, which finds the
support, then a Newton step on that support (``(G_AA + l2 I) c_A = b_A - l1 s_A``) whose answer is
the exact optimum when it keeps the signs and every atom off the support satisfies ``|b_j - (Gc)_j|
<= l1``; if it does not, coordinate descent goes on from where it was and the step is tried again.

For a few rows (decoding), ``X @ Dt.T`` against a 10k-atom dictionary is a memory-bound matrix-vector
product; on one machine torch's CPU path for it ran ~4x slower than a plain compiled loop over the atoms
(2 threads; on another they were even), so :func:`with_atoms` does it that way for up to
:data:`FEW_ROWS` rows. The checks of each round (:class:`_Checks`) multiply fewer atoms, or read a
bfloat16 copy of them, where a bound shows the answer cannot change.

numba is optional (the ``pace`` extra installs it); :func:`available` says whether it is there, and
the solver falls back to its torch path when it is not.
"""

from __future__ import annotations

import functools
import os
import threading
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import torch


@functools.cache
def available() -> bool:
    """Whether the compiled kernel can be used (numba importable and not turned off with
    ``STEERLAB_NUMBA=0``)."""
    if os.environ.get("STEERLAB_NUMBA", "1") == "0":
        return False
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _kernels() -> ModuleType:
    from . import _numba_kernels

    return _numba_kernels


FEW_ROWS = 8
"""Up to this many rows :func:`with_atoms` uses the compiled loop (10,000 x 576 float32 atoms, on a Xeon:
one row 0.42 ms against torch's 0.43 ms, four 0.49 against 0.82, eight 0.72 against 0.91; on another
machine one row took 0.28 ms against torch's 1.0 ms); beyond, torch's matrix product is as fast or faster."""

# numba's parallel kernels may not be entered from two threads at once (its fallback threading layer
# aborts the process), so calls from threads (e.g. a server's) take turns.
_LOCK = threading.Lock()


def with_atoms(X: np.ndarray, Dt: np.ndarray) -> np.ndarray:
    """``X @ Dt.T`` for rows ``X`` [n, d] against atom rows ``Dt`` [K, d] (same dtype): the compiled loop
    for up to :data:`FEW_ROWS` rows, torch's matrix product for more."""
    if X.shape[0] > FEW_ROWS:
        # (torch's product, never numpy's: numpy's bundled BLAS leaves its threads spinning after a call, and
        # one small numpy product per check slowed a whole PaCE generation, model included, 2-3x.)
        return (torch.from_numpy(X) @ torch.from_numpy(Dt).T).numpy()
    out = np.empty((X.shape[0], Dt.shape[0]), dtype=Dt.dtype)
    with _LOCK:
        _kernels().rows_with_atoms(np.ascontiguousarray(Dt), np.ascontiguousarray(X), out)
    return out


HALF_ROWS = 2
"""Up to this many rows, a full product with the dictionary streams its bfloat16 copy through a compiled loop
(half the bytes; the values it may get wrong are then taken exactly, see :class:`_Checks`): one row 0.22 ms,
two 0.33 ms, against 0.42 and 0.51 ms in float32 (10,000 x 576 atoms, a Xeon); from about four rows the
float32 loop, four rows per pass, is as fast. (Inside generation at batch 8, bfloat16 for up to 8 rows gave
the same time per token as this; torch's own bfloat16 product, twice as fast as its float32 one alone on a
Xeon with AMX, gained nothing inside generation either, nor on 512 rows at once.)"""


@dataclass(frozen=True)
class AtomTable:
    """What the checks need to know about a dictionary ``Dt`` [K, d] beyond its atoms, computed once:
    each atom's norm, and (float32 atoms) a bfloat16 copy with, per atom, a bound on how far a product
    with it can stray from the float32 one: ``|x.h_j - x.d_j| <= half_err_j ||x||`` for every float32
    ``x``, both sums in float32."""

    norms: np.ndarray  # [K]
    half: np.ndarray | None  # [K, d] uint16: the bfloat16 bit patterns; None for float64 atoms
    half_err: np.ndarray | None  # [K]


def atom_table(Dt: torch.Tensor) -> AtomTable:
    """The :class:`AtomTable` of the atom rows ``Dt`` [K, d] (float32 or float64, on the CPU)."""
    eps = float(torch.finfo(Dt.dtype).eps)
    norms, halves, errs = [], [], []
    for part in Dt.split(4096):  # in blocks: a float64 copy of a 40k-atom dictionary would be large
        p64 = part.double()
        n = torch.linalg.vector_norm(p64, dim=1)
        norms.append(n)
        if Dt.dtype == torch.float32:
            h = part.bfloat16()
            hn = torch.linalg.vector_norm(h.double(), dim=1)
            # The rounding of each atom, plus each float32 sum's own rounding error (at most d u sum_i
            # |a_i x_i| <= d u ||a|| ||x||, u = eps / 2; counted as d eps, for both sums).
            errs.append(torch.linalg.vector_norm(h.double() - p64, dim=1) + Dt.shape[1] * eps * (n + hn))
            halves.append(h.view(torch.int16).numpy().view(np.uint16))
    up = 1 + 1e-6  # rounded up a little: a bound rounded to float32 must not shrink
    return AtomTable(norms=(torch.cat(norms) * up).to(Dt.dtype).numpy(),
                     half=np.concatenate(halves) if halves else None,
                     half_err=(torch.cat(errs) * up).float().numpy() if errs else None)


def sparse_code(Dt: np.ndarray, Z: np.ndarray, C0: np.ndarray | None, l1: float, l2: float, gate: float,
                working_set: int, max_outer: int, max_sweeps: int = 2000,
                table: AtomTable | None = None) -> tuple[np.ndarray, bool]:
    """The working-set method of :mod:`steerlab.pace.solver` with every per-row step compiled: rows
    ``Z`` [n, d] against atom rows ``Dt`` [K, d]; ``C0`` an optional warm start [n, K]. Each round
    solves every unfinished row on its working set (the Gram grown by the new atoms only), then one
    product of all their residuals with the dictionary checks them and adds the worst violators
    (with the dictionary's ``table``, the checks multiply fewer atoms, or fewer bytes: :class:`_Checks`).
    Returns the coefficients [n, K] (in ``Dt``'s dtype) and whether every row met ``gate`` within
    ``max_outer`` rounds."""
    k = _kernels()
    n, K = Z.shape[0], Dt.shape[0]
    checks = _Checks(Dt, table, l1 + gate, n)
    score = np.abs(checks.first(Z))  # the first working sets: the atoms most correlated with z
    if C0 is not None:
        score = np.where(C0 != 0, np.inf, score)
    m0 = min(K, max(working_set, int((C0 != 0).sum(1).max()) if C0 is not None else 0))
    ws = np.empty((n, K), dtype=np.int64)  # each row's working set: atom indices, [:m_new[i]] in use
    ws[:, :m0] = np.argpartition(-score, m0 - 1, axis=1)[:, :m0] if m0 < K else np.arange(K)
    inws = np.zeros((n, K), dtype=np.bool_)  # whether each atom is in its row's working set
    np.put_along_axis(inws, ws[:, :m0], True, axis=1)
    c = np.zeros((n, K))
    if C0 is not None:
        c[:, :m0] = np.take_along_axis(C0, ws[:, :m0], axis=1)
    m_old = np.zeros(n, dtype=np.int64)
    m_new = np.full(n, m0, dtype=np.int64)
    live = np.arange(n, dtype=np.int64)
    # Each row's working-set Gram (G[i][:m, :m]), in D's dtype (its entries are sums in that dtype). Room for
    # twice the first working set (on SmolLM2 with 10,000 atoms they end at ~110-200 atoms from 96), doubled
    # when a working set outgrows it; a copy keeps only what the next round reads, the kept atoms' block
    # of the live rows (copying whole matrices was 7% of the solver's time in PaCE generation at batch 8).
    G = np.empty((n, min(K, 2 * m0), min(K, 2 * m0)), dtype=Dt.dtype)
    converged = False
    for _ in range(max_outer):
        cap = int(m_new[live].max())
        if G.shape[1] < cap:
            size = min(K, max(cap, 2 * G.shape[1]))
            grown = np.empty((n, size, size), dtype=Dt.dtype)
            for i in live:
                grown[i, : m_old[i], : m_old[i]] = G[i, : m_old[i], : m_old[i]]
            G = grown
        R = np.empty((len(live), Z.shape[1]))
        with _LOCK:
            k.solve_round(Dt, Z, live, ws, inws, m_old, m_new, G, c, R, l1, l2, max_sweeps)
        corr_t = checks.check(R, live)
        done = np.zeros(len(live), dtype=np.bool_)
        with _LOCK:
            k.check_round(corr_t, live, ws, inws, m_new, l1, gate, 16, done)
        if done.all():
            converged = True
            break
        live = live[~done]
    C = np.zeros((n, K), dtype=Dt.dtype)
    k.scatter_solution(ws, c, m_new, C)
    return C, converged


class _Checks:
    """The products with the whole dictionary: the first one (``Z``'s correlations, which only rank atoms
    for the first working sets) and each round's check of the residuals ``R``, which must be exact
    wherever a correlation can exceed the limit ``l1 + gate`` and may be anything below it.

    Without a table every product is the full float32 one. With the dictionary's :class:`AtomTable`:

    * *Bounded by the last full check.* With ``r0`` a row's residual at its last full check and ``u0_j``
      an upper bound on ``|d_j . r0|`` from it, Cauchy-Schwarz gives ``|d_j . r| <= u0_j + ||d_j|| ||r -
      r0||``: atoms whose bound stays below the limit cannot violate, and only the others are multiplied.
      The residual moves less and less from round to round (on SmolLM2 with 10,000 atoms, a median of
      0.015, 0.0035 and 0.002 in the fifth to seventh rounds), so the late rounds multiply some 100-700
      atoms. A row with more than an eighth of the atoms left takes a full check again.
    * *Full checks of a few rows in bfloat16.* Up to :data:`HALF_ROWS` rows stream the bfloat16 copy:
      an atom whose approximate value is within ``half_err_j ||r||`` of the limit is multiplied again in
      float32; one clearly above keeps its approximate value (it violates either way, and the value only
      ranks it among the violators); one clearly below cannot violate. ``u0_j = |approx_j| + half_err_j
      ||r||``.
    """

    def __init__(self, Dt: np.ndarray, table: AtomTable | None, limit: float, n: int) -> None:
        self.Dt, self.table, self.limit = Dt, table, limit
        K, d = Dt.shape
        if table is not None:
            self.r0 = np.zeros((n, d))  # each row's residual at its last full check
            self.u0 = np.empty((n, K), dtype=Dt.dtype)  # upper bounds on |that check| (rows in ``seen``)
            self.seen = np.zeros(n, dtype=np.bool_)
        # Rounding in the bound: each float sum of d terms errs by at most d u ||d_j|| ||r|| (u = eps / 2);
        # twice that for each of the two sums, relative to the norms of both residuals.
        self.gamma = 2.0 * d * float(np.finfo(Dt.dtype).eps)

    def _half_ok(self, rows: int) -> bool:
        return self.table is not None and self.table.half is not None and rows <= HALF_ROWS

    def _half(self, X: np.ndarray) -> np.ndarray:
        """``X @ Dt'`` from the bfloat16 atoms; it errs by at most ``half_err_j ||x_t||``."""
        assert self.table is not None and self.table.half is not None
        out = np.empty((X.shape[0], self.Dt.shape[0]), dtype=np.float32)
        with _LOCK:
            _kernels().rows_with_atoms(self.table.half, np.ascontiguousarray(X, dtype=np.float32), out)
        return out

    def _refine(self, X: np.ndarray, mask: np.ndarray, out: np.ndarray) -> None:
        """``out[r, k] = X[r] . Dt[k]`` in the dictionary's dtype where ``mask[r, k]``."""
        with _LOCK:
            _kernels().refine(self.Dt, np.ascontiguousarray(X), mask, out)

    def first(self, Z: np.ndarray) -> np.ndarray:
        return self._half(Z) if self._half_ok(Z.shape[0]) else with_atoms(Z, self.Dt)

    def check(self, R: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """The correlations of the residuals ``R`` [t, d] of ``rows`` (of ``Z``) with every atom [t, K]."""
        Rd = R.astype(self.Dt.dtype)
        if self.table is None:
            return with_atoms(Rd, self.Dt)
        norm = np.linalg.norm
        out = np.empty((len(rows), self.Dt.shape[0]), dtype=self.Dt.dtype)
        fresh = ~self.seen[rows]
        old = np.flatnonzero(~fresh)
        if len(old):
            r0 = self.r0[rows[old]]
            shift = norm(R[old] - r0, axis=1) + self.gamma * (norm(R[old], axis=1) + norm(r0, axis=1))
            mask = np.empty((len(old), self.Dt.shape[0]), dtype=np.bool_)
            counts = np.empty(len(old), dtype=np.int64)
            with _LOCK:
                _kernels().bounded_candidates(self.u0, rows[old], shift.astype(self.Dt.dtype), self.table.norms,
                                              self.limit, mask, counts)
            small = counts <= self.Dt.shape[0] // 8
            if small.any():  # the ruled-out atoms read 0
                some = np.zeros((int(small.sum()), self.Dt.shape[0]), dtype=self.Dt.dtype)
                self._refine(Rd[old[small]], mask[small], some)
                out[old[small]] = some
            fresh[old[~small]] = True
        f = np.flatnonzero(fresh)
        if len(f):
            every = len(f) == len(rows)
            Rf = Rd if every else np.ascontiguousarray(Rd[f])
            if self._half_ok(len(f)):
                values = self._half(Rf)
                unsure = np.empty(values.shape, dtype=np.bool_)
                with _LOCK:
                    _kernels().half_bounds(values, norm(Rf.astype(np.float64), axis=1), self.table.half_err,
                                           self.limit, rows[f], self.u0, unsure)
                # Atoms the approximation cannot place are taken in float32; the others keep their
                # approximate value (it only ranks the violators among themselves).
                self._refine(Rf, unsure, values)
            else:
                values = with_atoms(Rf, self.Dt)
                with _LOCK:
                    _kernels().store_bounds(values, rows[f], self.u0)
            if every:  # (the common case: no copy)
                out = values
            else:
                out[f] = values
            self.r0[rows[f]] = R[f]
            self.seen[rows[f]] = True
        return out
