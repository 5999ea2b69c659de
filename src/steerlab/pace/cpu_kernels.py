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
product; torch's CPU path for it ran ~4x slower here than a plain compiled loop over the atoms
(2 threads), so :func:`with_atoms` does it that way for up to :data:`FEW_ROWS` rows.

numba is optional (the ``pace`` extra installs it); :func:`available` says whether it is there, and
the solver falls back to its torch path when it is not.
"""

from __future__ import annotations

import functools
import os
import threading
from types import SimpleNamespace

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
def _kernels():
    import numba

    jit = functools.partial(numba.njit, cache=True, nogil=True, fastmath=False)

    @jit
    def sweep(G, b, c, q, l1, l2, active_only):
        """One coordinate-descent sweep; ``q = G c`` is kept current. Returns the largest change of a
        coefficient times its curvature (how far the objective can still move), and whether an atom
        joined the support."""
        m = b.shape[0]
        biggest = 0.0
        grew = False
        for j in range(m):
            cj = c[j]
            if active_only and cj == 0.0:
                continue
            gjj = G[j, j]
            r = b[j] - q[j] + gjj * cj  # the correlation with c_j taken out
            if r > l1:
                new = (r - l1) / (gjj + l2)
            elif r < -l1:
                new = (r + l1) / (gjj + l2)
            else:
                new = 0.0
            delta = new - cj
            if delta != 0.0:
                if cj == 0.0:
                    grew = True
                c[j] = new
                for i in range(m):
                    q[i] += delta * G[j, i]
                step = abs(delta) * (gjj + l2)
                if step > biggest:
                    biggest = step
        return biggest, grew

    @jit
    def cholesky_solve(Q, rhs):
        """Solve ``Q x = rhs`` for a symmetric positive definite ``Q`` (overwritten with its Cholesky
        factor); an empty array when ``Q`` is not numerically positive definite. Written out rather
        than numpy.linalg, which numba serves only through SciPy's LAPACK."""
        k = Q.shape[0]
        for j in range(k):
            s = Q[j, j]
            for p in range(j):
                s -= Q[j, p] * Q[j, p]
            if s <= 1e-12 * (1.0 + abs(Q[j, j])):
                return np.empty(0)
            Q[j, j] = np.sqrt(s)
            for i in range(j + 1, k):
                s = Q[i, j]
                for p in range(j):
                    s -= Q[i, p] * Q[j, p]
                Q[i, j] = s / Q[j, j]
        x = rhs.copy()
        for i in range(k):  # L y = rhs
            s = x[i]
            for p in range(i):
                s -= Q[i, p] * x[p]
            x[i] = s / Q[i, i]
        for i in range(k - 1, -1, -1):  # L' x = y
            s = x[i]
            for p in range(i + 1, k):
                s -= Q[p, i] * x[p]
            x[i] = s / Q[i, i]
        return x

    @jit
    def newton(G, b, c, l1, l2, slack):
        """The exact solution for ``c``'s support and signs, if it is optimal; else an empty array."""
        m = b.shape[0]
        support = np.nonzero(c)[0]
        k = support.shape[0]
        x = np.zeros(m)
        if k > 0:
            Q = np.empty((k, k))
            rhs = np.empty(k)
            for a in range(k):
                ia = support[a]
                for e in range(k):
                    Q[a, e] = G[ia, support[e]]
                Q[a, a] += l2
                rhs[a] = b[ia] - (l1 if c[ia] > 0 else -l1)
            sol = cholesky_solve(Q, rhs)
            if sol.shape[0] == 0:  # singular support (duplicate atoms with l2 = 0): keep coordinate descent
                return sol
            for a in range(k):
                if sol[a] * c[support[a]] <= 0.0:  # a sign flipped: this support is not the optimum's
                    return np.empty(0)
                x[support[a]] = sol[a]
        # Atoms off the support must not want to enter: |b_j - (G x)_j| <= l1.
        for j in range(m):
            if x[j] == 0.0:
                g = b[j]
                for a in range(k):
                    g -= G[j, support[a]] * x[support[a]]
                if abs(g) > l1 * (1.0 + slack):
                    return np.empty(0)
        return x

    @jit
    def solve_one(G, b, c, l1, l2, max_sweeps):
        q = np.zeros(b.shape[0])  # G c, written out (numba's matrix products need SciPy)
        for j in range(b.shape[0]):
            if c[j] != 0.0:
                for i in range(b.shape[0]):
                    q[i] += G[j, i] * c[j]
        sweeps = 0
        # Coordinate descent only has to find the support and signs; the Newton step then gives the
        # exact optimum. So it stops early (``thr``) and is tightened only when the step is refused.
        thr = 1e-3 * l1
        while sweeps < max_sweeps:
            # Full sweeps find the support; sweeps over it alone then converge on it cheaply.
            big, grew = sweep(G, b, c, q, l1, l2, False)
            sweeps += 1
            if grew and big > thr:
                continue
            for _ in range(16):
                if big < thr:
                    break
                big, _ = sweep(G, b, c, q, l1, l2, True)
                sweeps += 1
            x = newton(G, b, c, l1, l2, 1e-9)
            if x.shape[0] > 0:
                c[:] = x
                return sweeps
            if big < 1e-13 * l1:  # converged without an exact support (degenerate); keep the CD point
                return sweeps
            thr = max(thr * 0.1, 1e-13 * l1)
        return sweeps

    @numba.njit(cache=True, parallel=True, fastmath=True)
    def rows_with_atoms(Dt, X, out):
        for k in numba.prange(Dt.shape[0]):  # atoms in parallel: each thread streams its share of D once
            for r in range(X.shape[0]):
                s = Dt[0, 0] * 0  # accumulate in D's dtype, as BLAS does (float32 vectorises twice as wide)
                for i in range(Dt.shape[1]):
                    s += Dt[k, i] * X[r, i]
                out[r, k] = s

    @numba.njit(cache=True, parallel=True, fastmath=True)
    def solve_round(Dt, Z, corr, live, ws, pos, m_old, m_new, G, c, R, l1, l2, max_sweeps):
        """For each live row: extend the Gram of its working set by the atoms added since the last
        round (rows ``m_old..m_new`` of ``G``; the rows before are kept, not recomputed), solve its small
        problem from the current coefficients, write its residual ``z - D c``, and drop the atoms that
        ended at zero from the working set (the next round adds violators after those that stay)."""
        d = Dt.shape[1]
        for t in numba.prange(live.shape[0]):
            i = live[t]
            w = ws[i]
            m = m_new[i]
            A = np.empty((m, d), dtype=Dt.dtype)  # the working set's atoms, gathered: contiguous loads
            for a in range(m):
                A[a] = Dt[w[a]]
            for a in range(m_old[i], m):
                for e in range(a + 1):
                    acc = Dt[0, 0] * 0  # in D's dtype, as a BLAS product would (vectorises in float32)
                    for k in range(d):
                        acc += A[a, k] * A[e, k]
                    G[t, a, e] = acc
                    G[t, e, a] = acc
            b = np.empty(m)
            keep_at = np.empty(m, dtype=np.int64)
            for a in range(m):
                b[a] = corr[i, w[a]]
            solve_one(G[t, :m, :m], b, c[i, :m], l1, l2, max_sweeps)
            for k in range(d):
                R[t, k] = Z[i, k]
            kept = 0
            for a in range(m):
                if c[i, a] != 0.0:
                    for k in range(d):
                        R[t, k] -= c[i, a] * A[a, k]
                    w[kept] = w[a]
                    c[i, kept] = c[i, a]
                    keep_at[kept] = a
                    kept += 1
                else:
                    pos[i, w[a]] = -1
            for a in range(kept):
                pos[i, w[a]] = a
                # Compact the Gram in place: entry (a, e) comes from (keep_at[a], keep_at[e]), both at or
                # after it in row-major order, so nothing is read after being overwritten.
                for e in range(kept):
                    G[t, a, e] = G[t, keep_at[a], keep_at[e]]
            m_old[i] = kept
            m_new[i] = kept

    @numba.njit(cache=True, parallel=True)
    def check_round(corr_t, live, ws, pos, m_new, l1, gate, add_min, done):
        """For each live row, from its residual's correlations ``corr_t``: the optimality violation
        ``|corr_j| - l1`` of every atom outside the working set (those inside were just solved exactly,
        and re-checking them would only measure float32 rounding); a row with none above ``gate`` is
        done, the others append their worst violators (up to max(the working set's size, ``add_min``))."""
        for t in numba.prange(live.shape[0]):
            i = live[t]
            K = corr_t.shape[1]
            m = m_new[i]
            viol = np.empty(K)
            n_bad = 0
            for j in range(K):
                v = abs(corr_t[t, j]) - l1 if pos[i, j] < 0 else 0.0
                viol[j] = v
                if v > gate:
                    n_bad += 1
            if n_bad == 0:
                done[t] = True
                continue
            bad = np.empty(n_bad, dtype=np.int64)
            n = 0
            for j in range(K):
                if viol[j] > gate:
                    bad[n] = j
                    n += 1
            n_add = min(n_bad, max(m, add_min), ws.shape[1] - m)
            order = np.argsort(-viol[bad])[:n_add]  # the worst first
            for a in range(n_add):
                j = bad[order[a]]
                ws[i, m] = j
                pos[i, j] = m
                m += 1
            m_new[i] = m

    return SimpleNamespace(solve_one=solve_one, rows_with_atoms=rows_with_atoms, solve_round=solve_round,
                           check_round=check_round)


FEW_ROWS = 4
"""Up to this many rows :func:`with_atoms` uses the compiled loop (one row: 0.28 ms against torch's 1.0 ms
for 10,000 x 576 float32 atoms here); from about 8 rows torch's matrix product is as fast or faster."""

# numba's parallel kernels may not be entered from two threads at once (its fallback threading layer
# aborts the process), so calls from threads (e.g. a server's) take turns.
_LOCK = threading.Lock()


def with_atoms(X: np.ndarray, Dt: np.ndarray) -> np.ndarray:
    """``X @ Dt.T`` for rows ``X`` [n, d] against atom rows ``Dt`` [K, d] (same dtype): the compiled loop
    for up to :data:`FEW_ROWS` rows, torch's matrix product for more."""
    if X.shape[0] > FEW_ROWS:
        return (torch.from_numpy(X) @ torch.from_numpy(Dt).T).numpy()
    out = np.empty((X.shape[0], Dt.shape[0]), dtype=Dt.dtype)
    with _LOCK:
        _kernels().rows_with_atoms(np.ascontiguousarray(Dt), np.ascontiguousarray(X), out)
    return out


def sparse_code(Dt: np.ndarray, Z: np.ndarray, C0: np.ndarray | None, l1: float, l2: float, gate: float,
                working_set: int, max_outer: int, max_sweeps: int = 2000) -> tuple[np.ndarray, bool]:
    """The working-set method of :mod:`steerlab.pace.solver` with every per-row step compiled: rows
    ``Z`` [n, d] against atom rows ``Dt`` [K, d]; ``C0`` an optional warm start [n, K]. Each round
    solves every unfinished row on its working set (the Gram grown by the new atoms only), then one
    product of all their residuals with the dictionary checks them and adds the worst violators.
    Returns the coefficients [n, K] (in ``Dt``'s dtype) and whether every row met ``gate`` within
    ``max_outer`` rounds."""
    k = _kernels()
    n, K = Z.shape[0], Dt.shape[0]
    corr = with_atoms(Z, Dt)  # the one product every row needs
    score = np.abs(corr)
    if C0 is not None:
        score = np.where(C0 != 0, np.inf, score)
    m0 = min(K, max(working_set, int((C0 != 0).sum(1).max()) if C0 is not None else 0))
    ws = np.full((n, K), -1, dtype=np.int64)
    ws[:, :m0] = np.argpartition(-score, m0 - 1, axis=1)[:, :m0] if m0 < K else np.arange(K)
    pos = np.full((n, K), -1, dtype=np.int64)  # where each atom sits in its row's working set
    np.put_along_axis(pos, ws[:, :m0], np.arange(m0)[None, :].repeat(n, 0), axis=1)
    c = np.zeros((n, K))
    if C0 is not None:
        c[:, :m0] = np.take_along_axis(C0, ws[:, :m0], axis=1)
    m_old = np.zeros(n, dtype=np.int64)
    m_new = np.full(n, m0, dtype=np.int64)
    live = np.arange(n, dtype=np.int64)
    G = np.empty((n, 0, 0))  # [live rows, m, m]: each live row's working-set Gram, in ``live``'s order
    converged = False
    for _ in range(max_outer):
        cap = int(m_new[live].max())
        if G.shape[1] < cap:  # room for every live row's working set, keeping the blocks computed so far
            grown = np.empty((len(live), cap, cap))
            grown[:, : G.shape[1], : G.shape[2]] = G
            G = grown
        R = np.empty((len(live), Z.shape[1]))
        with _LOCK:
            k.solve_round(Dt, Z, corr, live, ws, pos, m_old, m_new, G, c, R, l1, l2, max_sweeps)
        corr_t = with_atoms(R.astype(Dt.dtype), Dt)
        done = np.zeros(len(live), dtype=np.bool_)
        with _LOCK:
            k.check_round(corr_t, live, ws, pos, m_new, l1, gate, 16, done)
        if done.all():
            converged = True
            break
        G, live = G[~done], live[~done]
    C = np.zeros((n, K), dtype=Dt.dtype)
    for i in range(n):
        m = int(m_new[i])
        C[i, ws[i, :m]] = c[i, :m]
    return C, converged
