"""Batched Lipschitz regularisers on the CPU (numba).

Backend contract and math: :mod:`mithridate.reference.lipschitz` and
:func:`mithridate.ops.lipschitz`. The tight bound of the squared and logistic
losses is a max over rows of a function of z_i = x_i . w + b: per row block,
Z = W_x X_blk^T by BLAS (one thread; the row chunks are spread over numba's
threads), then the per-row score, a running max and argmax per theta. The
B x n matrix is never stored. Chunks are fixed by the shape and merged in
order (ties go to the lowest row), so the result does not depend on the thread
count. The value and subgradient are then recomputed in float64 from the
argmax row alone.
"""
import math

import numpy as np
from numba import njit, prange

from ._math import JIT, exp_neg_abs
from .linear import GEMM_BLOCK_ROWS, _n_gemm_chunks, _one_blas_thread


@njit(**JIT)
def _score(logistic, q, r, a, nw):
    """Monotone proxy of the row's dual norm: squared |r|; logistic
    ||(|a| nw, |r|)||_q (r = z there) up to the root for q in {1, 2}."""
    if not logistic:
        return abs(r)
    u = abs(a) * nw
    v = abs(r)
    if q == 2.0:
        return u * u + v * v
    if q == 1.0:
        return u + v
    hi = max(u, v)
    if q == np.inf or hi == 0.0:
        return hi
    lo = min(u, v) / hi
    return hi * (1.0 + lo ** q) ** (1.0 / q)


@njit(parallel=True, **JIT)
def _tight_kernel(X, y, Wx, bias, nw, logistic, q, n_chunks, block, best, arg, bad):
    """best[c, b], arg[c, b]: max score of theta b over row chunk c and its
    first row; bad[c]: rows of chunk c whose score is nan."""
    n = X.shape[0]
    B = Wx.shape[0]
    for c in prange(n_chunks):
        i0 = c * n // n_chunks
        i1 = (c + 1) * n // n_chunks
        z = np.empty(block)
        t = np.empty(block)
        bits = np.empty(block, dtype=np.int64)
        for r0 in range(i0, i1, block):
            m = min(block, i1 - r0)
            Z = np.dot(Wx, X[r0:r0 + m].T)  # (B, m)
            for b in range(B):
                for i in range(m):
                    z[i] = Z[b, i] + bias[b]
                if logistic:
                    exp_neg_abs(z, t, bits, m)  # sigmoid from exp(-|z|), stable
                cur = best[c, b]
                k = arg[c, b]
                for i in range(m):
                    yi = np.float64(y[r0 + i])
                    if logistic:
                        s = 1.0 / (1.0 + t[i]) if z[i] >= 0.0 else t[i] / (1.0 + t[i])
                        sc = _score(True, q, z[i], s - yi, nw[b])
                    else:
                        sc = _score(False, q, z[i] - yi, 0.0, 0.0)
                    if sc > cur:
                        cur = sc
                        k = r0 + i
                    elif sc != sc:
                        bad[c] += 1
                best[c, b] = cur
                arg[c, b] = k


@njit(parallel=True, **JIT)
def _bounds_kernel(X, p, n_chunks, out):
    """out[c] = max over row chunk c of ||x_i||_p**p (max |x_ij| for p = inf),
    nan if the chunk holds a nan."""
    n, d = X.shape
    for c in prange(n_chunks):
        hi = 0.0
        seen_nan = False
        for i in range(c * n // n_chunks, (c + 1) * n // n_chunks):
            acc = 0.0
            for j in range(d):
                v = abs(np.float64(X[i, j]))
                seen_nan |= v != v
                if p == 1.0:
                    acc += v
                elif p == 2.0:
                    acc += v * v
                elif p == np.inf:
                    acc = max(acc, v)
                else:
                    acc += v ** p
            hi = max(hi, acc)
        out[c] = np.nan if seen_nan else hi


def data_bounds(X, y, p):
    """(max_i ||x_i||_p, max_i |y_i|) as floats, one pass over X."""
    n_chunks = int(min(64, max(1, X.shape[0] // 1024)))
    out = np.zeros(n_chunks)
    _bounds_kernel(X, float(p), n_chunks, out)
    hi = out.max()
    hi = hi if p in (1.0, math.inf) else math.sqrt(hi) if p == 2.0 else hi ** (1.0 / p)
    return float(hi), float(np.abs(y).max())


def dual_norm(v, q):
    """Rows' q-norms (B,) and a subgradient (B, k) of each, in float64.

    Scaled by max|v| so that large q neither overflows nor underflows; at
    v = 0 the subgradient is 0; for q = inf the first maximal entry carries it.
    """
    a = np.abs(v)
    if q == 1.0:
        return a.sum(axis=1), np.sign(v)
    hi = a.max(axis=1)
    if q == math.inf:
        g = np.zeros_like(v)
        j = a.argmax(axis=1)
        rows = np.arange(v.shape[0])
        g[rows, j] = np.sign(v[rows, j])
        return hi, g
    safe = np.where(hi > 0, hi, 1.0)[:, None]
    u = a / safe
    s = (u ** q).sum(axis=1)
    norm = safe[:, 0] * s ** (1.0 / q)
    s = np.where(s > 0, s, 1.0)[:, None]  # v = 0: u = 0 makes g = 0
    g = np.sign(v) * u ** (q - 1) / s ** ((q - 1) / q)
    return norm, g


def _paper(theta, loss, q, fit_intercept, bounds):
    t, g = dual_norm(theta, q)
    Xb, Yb = bounds
    e = 1.0 if fit_intercept else 0.0
    if loss == "squared":
        return (Xb + e) * t ** 2 + Yb * t, (2 * (Xb + e) * t + Yb)[:, None] * g
    if loss == "absolute":
        return t, g
    k = Yb + Xb + 1.0 + e
    return k * t, k * g


def _tight(theta, X, y, loss, q, fit_intercept):
    n, d = X.shape
    B = theta.shape[0]
    th = theta.astype(np.float64)
    w = th[:, :d]
    ones = np.ones((B, 1))
    n_wy, g_wy = dual_norm(np.concatenate([w, ones], axis=1), q)  # ||(w, -1)||_*
    grad = np.zeros_like(th)
    if loss == "absolute":
        grad[:, :d] = g_wy[:, :d]
        return n_wy, grad, 0
    logistic = loss == "logistic"
    bias = th[:, d].copy() if fit_intercept else np.zeros(B)
    nw = dual_norm(w, q)[0]
    n_chunks = _n_gemm_chunks(n)
    best = np.full((n_chunks, B), -1.0)
    arg = np.zeros((n_chunks, B), dtype=np.int64)
    bad = np.zeros(n_chunks, dtype=np.int64)
    with _one_blas_thread():
        _tight_kernel(X, y, np.ascontiguousarray(theta[:, :d]), bias, nw, logistic,
                      float(q), n_chunks, GEMM_BLOCK_ROWS, best, arg, bad)
    k = arg[best.argmax(axis=0), np.arange(B)]  # first chunk wins ties: lowest row
    xk = X[k].astype(np.float64)
    yk = y[k].astype(np.float64)
    z = np.einsum("bd,bd->b", xk, w) + bias
    if not logistic:  # |r| ||(w, -1)||_*
        r = z - yk
        value = np.abs(r) * n_wy
        grad[:, :d] = np.sign(r)[:, None] * n_wy[:, None] * xk + np.abs(r)[:, None] * g_wy[:, :d]
        if fit_intercept:
            grad[:, d] = np.sign(r) * n_wy
        return value, grad, bad.sum()
    sig = 0.5 * (1.0 + np.tanh(0.5 * z))
    a = sig - yk
    value, G = dual_norm(np.concatenate([a[:, None] * w, -z[:, None]], axis=1), q)
    Gw, Gy = G[:, :d], G[:, d]
    c = sig * (1.0 - sig) * np.einsum("bd,bd->b", Gw, w)
    grad[:, :d] = a[:, None] * Gw + (c - Gy)[:, None] * xk
    if fit_intercept:
        grad[:, d] = c - Gy
    return value, grad, bad.sum()


def lipschitz(theta, X, y, loss, q, bound, fit_intercept, bounds):
    """(value (B,), subgrad (B, p)); values are nan when a row of X gave a nan
    score (as the reference's max does), so the caller can name the row."""
    if bound == "paper":
        value, grad = _paper(theta.astype(np.float64), loss, q, fit_intercept, bounds)
    else:
        value, grad, nan_rows = _tight(theta, X, y, loss, q, fit_intercept)
        if nan_rows:
            value[:] = np.nan
    return value.astype(X.dtype), grad.astype(X.dtype)
