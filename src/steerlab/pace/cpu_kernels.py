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
