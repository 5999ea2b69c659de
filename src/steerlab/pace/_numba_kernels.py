"""The numba-compiled functions behind :mod:`steerlab.pace.cpu_kernels` (imported only when numba is
installed). They live at module level so that numba's on-disk cache can keep them between processes:
compiled inside a function, they were compiled again in every process (~10 s).
"""

import numba
import numpy as np
from numba.core import types
from numba.extending import intrinsic, overload


@numba.njit(cache=True, nogil=True)
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

@numba.njit(cache=True, nogil=True)
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

@numba.njit(cache=True, nogil=True)
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

@numba.njit(cache=True, nogil=True)
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

@intrinsic
def _bits_as_float32(typingctx, bits):
    """The float32 whose bit pattern is the uint32 ``bits`` (a bfloat16 is the top half of one)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float32))

    return types.float32(types.uint32), codegen


def _atom_value(x):
    """An atom element as a number: itself, or the float32 of a bfloat16 stored as its uint16 bits."""


@overload(_atom_value)
def _atom_value_impl(x):
    if isinstance(x, types.Integer):
        return lambda x: _bits_as_float32(np.uint32(x) << 16)
    return lambda x: x


def _sum_zero(D):
    """The zero that sums over ``D``'s elements start from: ``D``'s own dtype (as BLAS sums; float32
    vectorises twice as wide. Not ``D[0, 0] * 0``, which numba types as float64), float32 for bfloat16
    bits."""


@overload(_sum_zero)
def _sum_zero_impl(D):
    if isinstance(D.dtype, types.Integer):
        return lambda D: np.float32(0)
    return lambda D: D.dtype.type(0)


@numba.njit(cache=True, parallel=True, fastmath=True)
def rows_with_atoms(Dt, X, out):
    """``X @ Dt'`` for a few rows, against float atoms or bfloat16 ones stored as their uint16 bits (half
    the bytes to stream; summed in float32). Atoms in parallel (each thread streams its share of D once),
    four rows per pass over an atom (each loaded atom element feeds four multiply-adds: 8 rows 0.72 ms
    against 0.98 ms one row at a time, 10,000 x 576 float32 atoms)."""
    n, d = X.shape
    for k in numba.prange(Dt.shape[0]):
        r = 0
        while r + 4 <= n:
            s0 = s1 = s2 = s3 = _sum_zero(Dt)
            for i in range(d):
                v = _atom_value(Dt[k, i])
                s0 += v * X[r, i]; s1 += v * X[r + 1, i]; s2 += v * X[r + 2, i]; s3 += v * X[r + 3, i]  # noqa: E702
            out[r, k], out[r + 1, k], out[r + 2, k], out[r + 3, k] = s0, s1, s2, s3
            r += 4
        while r < n:
            s = _sum_zero(Dt)
            for i in range(d):
                s += _atom_value(Dt[k, i]) * X[r, i]
            out[r, k] = s
            r += 1


@numba.njit(cache=True, nogil=True, fastmath=True)
def gram_rows(A, m_old, m, G):
    """Rows ``m_old..m`` of the Gram ``A A'`` (and their mirror columns), accumulated in ``A``'s dtype as a
    BLAS product would be. Four new atoms against four others per pass: each loaded element feeds four
    multiply-adds instead of one, which made the Gram ~2.6x faster than one dot product per pair."""
    d = A.shape[1]
    a = m_old
    while a + 4 <= m:
        e = 0
        while e + 4 <= a + 4:  # 4x4 blocks of columns up to a+3 (pairs with earlier atoms and the block itself)
            z = A.dtype.type(0)
            s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = z
            s20 = s21 = s22 = s23 = s30 = s31 = s32 = s33 = z
            for k in range(d):
                x0, x1, x2, x3 = A[a, k], A[a + 1, k], A[a + 2, k], A[a + 3, k]
                y0, y1, y2, y3 = A[e, k], A[e + 1, k], A[e + 2, k], A[e + 3, k]
                s00 += x0 * y0; s01 += x0 * y1; s02 += x0 * y2; s03 += x0 * y3  # noqa: E702
                s10 += x1 * y0; s11 += x1 * y1; s12 += x1 * y2; s13 += x1 * y3  # noqa: E702
                s20 += x2 * y0; s21 += x2 * y1; s22 += x2 * y2; s23 += x2 * y3  # noqa: E702
                s30 += x3 * y0; s31 += x3 * y1; s32 += x3 * y2; s33 += x3 * y3  # noqa: E702
            # (written out: indexing a tuple of the sums in a loop kept them out of registers, 3x slower)
            G[a, e], G[a, e + 1], G[a, e + 2], G[a, e + 3] = s00, s01, s02, s03
            G[a + 1, e], G[a + 1, e + 1], G[a + 1, e + 2], G[a + 1, e + 3] = s10, s11, s12, s13
            G[a + 2, e], G[a + 2, e + 1], G[a + 2, e + 2], G[a + 2, e + 3] = s20, s21, s22, s23
            G[a + 3, e], G[a + 3, e + 1], G[a + 3, e + 2], G[a + 3, e + 3] = s30, s31, s32, s33
            for p in range(4):
                for q in range(4):
                    G[e + q, a + p] = G[a + p, e + q]
            e += 4
        for p in range(4):  # the columns left over (fewer than four)
            for q in range(e, a + 4):
                acc = A.dtype.type(0)
                for k in range(d):
                    acc += A[a + p, k] * A[q, k]
                G[a + p, q] = acc
                G[q, a + p] = acc
        a += 4
    for r in range(a, m):  # the last (fewer than four) new atoms, one pair at a time
        for e in range(r + 1):
            acc = A.dtype.type(0)
            for k in range(d):
                acc += A[r, k] * A[e, k]
            G[r, e] = acc
            G[e, r] = acc

@numba.njit(cache=True, parallel=True, fastmath=True)
def solve_round(Dt, Z, live, ws, inws, m_old, m_new, G, c, R, l1, l2, max_sweeps):
    """For each live row: extend the Gram of its working set by the atoms added since the last
    round (rows ``m_old..m_new`` of its ``G[i]``; the rows before are kept, not recomputed), solve its small
    problem from the current coefficients, write its residual ``z - D c``, and drop the atoms that
    ended at zero from the working set (the next round adds violators after those that stay). The
    problem's ``b = A z`` is taken here, exactly, not from the first product with the dictionary
    (which may be the approximate half-precision one)."""
    d = Dt.shape[1]
    for t in numba.prange(live.shape[0]):
        i = live[t]
        w = ws[i]
        m = m_new[i]
        A = np.empty((m, d), dtype=Dt.dtype)  # the working set's atoms, gathered: contiguous loads
        for a in range(m):
            A[a] = Dt[w[a]]
        gram_rows(A, m_old[i], m, G[i])
        b = np.empty(m)
        keep_at = np.empty(m, dtype=np.int64)
        for a in range(m):
            acc = Dt.dtype.type(0)
            for k in range(d):
                acc += A[a, k] * Z[i, k]
            b[a] = acc
        # A contiguous float64 copy for the solve: on the strided view numba cannot vectorise the sweeps
        # (it does not know the inner stride is 1), which cost more than the copy.
        Gm = np.empty((m, m))
        for a in range(m):
            for e in range(m):
                Gm[a, e] = G[i, a, e]
        solve_one(Gm, b, c[i, :m], l1, l2, max_sweeps)
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
                inws[i, w[a]] = False
        for a in range(kept, m):
            # The dropped atoms' places: the next round's new atoms go here and start from zero (left as
            # they were, they started from another atom's coefficient).
            c[i, a] = 0.0
        for a in range(kept):
            # Compact the Gram in place: entry (a, e) comes from (keep_at[a], keep_at[e]), both at or
            # after it in row-major order, so nothing is read after being overwritten.
            for e in range(kept):
                G[i, a, e] = G[i, keep_at[a], keep_at[e]]
        m_old[i] = kept
        m_new[i] = kept

@numba.njit(cache=True, parallel=True)
def check_round(corr_t, live, ws, inws, m_new, l1, gate, add_min, done):
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
            v = 0.0 if inws[i, j] else abs(corr_t[t, j]) - l1
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
            inws[i, j] = True
            m += 1
        m_new[i] = m


@numba.njit(cache=True, parallel=True)
def bounded_candidates(u0, rows, shift, norms, limit, mask, counts):
    """``mask[t, j] = u0[rows[t], j] + shift[t] norms[j] > limit`` (the atoms a residual that moved by
    ``shift`` may have pushed over the limit), and the number of them per row."""
    for t in numba.prange(rows.shape[0]):
        i = rows[t]
        n = 0
        for j in range(u0.shape[1]):
            hit = u0[i, j] + shift[t] * norms[j] > limit
            mask[t, j] = hit
            n += hit
        counts[t] = n


@numba.njit(cache=True, parallel=True)
def store_bounds(values, rows, u0):
    """``u0[rows[t]] = |values[t]|``."""
    for t in numba.prange(rows.shape[0]):
        for j in range(values.shape[1]):
            u0[rows[t], j] = abs(values[t, j])


@numba.njit(cache=True)
def scatter_solution(ws, c, m_new, C):
    """Each row's coefficients from its working set into the dense ``C`` [n, K]."""
    for i in range(C.shape[0]):
        for a in range(m_new[i]):
            C[i, ws[i, a]] = c[i, a]


@numba.njit(cache=True, parallel=True)
def half_bounds(approx, xnorm, half_err, limit, rows, u0, unsure):
    """For approximate correlations ``approx`` [t, K] that err by at most ``half_err_j xnorm_t``: the
    upper bounds ``|approx| + err`` into ``u0[rows[t]]``, and in ``unsure`` the atoms the approximation
    cannot place on one side of ``limit``."""
    for t in numba.prange(rows.shape[0]):
        for j in range(approx.shape[1]):
            v = abs(approx[t, j])
            err = half_err[j] * xnorm[t]
            u0[rows[t], j] = v + err
            unsure[t, j] = (v + err > limit) and (v - err <= limit)


@numba.njit(cache=True, parallel=True, fastmath=True)
def refine(Dt, X, mask, out):
    """``out[r, k] = X[r] . Dt[k]`` where ``mask[r, k]``; the rest of ``out`` is left as it is (on zeros:
    the products of just the masked atoms)."""
    for k in numba.prange(Dt.shape[0]):
        for r in range(X.shape[0]):
            if mask[r, k]:
                s = Dt.dtype.type(0)
                for i in range(Dt.shape[1]):
                    s += Dt[k, i] * X[r, i]
                out[r, k] = s
