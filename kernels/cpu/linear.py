"""Fused linear-model kernels on the CPU (numba).

Backend contract: see :mod:`mithridate.reference.linear`. Each call makes ONE
pass over X: rows are taken in blocks small enough to stay in L2, the block's
z = X w + b is computed, the loss terms are evaluated on the whole block with
vectorised exp/log1p, and the block is read again from cache to accumulate
X^T c. Work is split into a fixed number of row chunks that depends on the
shape only (not on the thread count), each with its own float64 accumulator,
and the chunks are summed in order: results are deterministic.

Many parameter vectors against one X take a matrix-matrix route instead
(``_gemm_kernel``): per row block, Z^T = Theta X_blk^T and G += C X_blk by
BLAS, so the B x n matrix is never stored whole.
"""
import numpy as np
from numba import njit, prange

from ._math import JIT, exp_neg_abs, log1p_unit

LOSS_CODES = {"logistic": 0, "squared": 1, "absolute": 2}
GEMM_MIN_BATCH = 16       # shared X with at least this many thetas and this many
GEMM_MIN_FEATURES = 32    # features: matrix-matrix route (below, streaming X once per
                          # theta was as fast or faster, measured at d in 14-100)
L2_BLOCK_BYTES = 1 << 18  # rows per block so that a block stays in L2
GEMM_BLOCK_ROWS = 1024
NARROW = 32               # rows narrower than this: register-blocked dot products
WIDE = 256                # and rows at least this wide (_dot_rows)


@njit(**JIT)
def _terms(code, z, y, s, m, c1, c2, t, bits):
    """Loss terms on z[:m] with labels y[:m] and weights s[:m] (or None).

    Returns sum_i s_i l(z_i, y_i); writes c1 = s l'(z) and c2 = s l''(z) when
    those arrays are given (None skips them).
    """
    total = 0.0
    if code == 0:
        exp_neg_abs(z, t, bits, m)  # t = exp(-|z|) in (0, 1]
        for i in range(m):
            zi = z[i]
            ti = t[i]
            yi = np.float64(y[i])
            si = 1.0 if s is None else np.float64(s[i])
            inv = 1.0 / (1.0 + ti)
            pos = np.float64(zi >= 0.0)  # branch-free max(z, 0) and sigmoid
            total += si * (pos * zi + log1p_unit(ti) - yi * zi)
            if c1 is not None:
                c1[i] = si * ((pos + (1.0 - pos) * ti) * inv - yi)
            if c2 is not None:
                c2[i] = si * ti * inv * inv
    elif code == 1:
        for i in range(m):
            r = z[i] - np.float64(y[i])
            si = 1.0 if s is None else np.float64(s[i])
            total += si * 0.5 * r * r
            if c1 is not None:
                c1[i] = si * r
            if c2 is not None:
                c2[i] = si
    else:
        for i in range(m):
            r = z[i] - np.float64(y[i])
            si = 1.0 if s is None else np.float64(s[i])
            total += si * abs(r)
            if c1 is not None:
                c1[i] = si * ((r > 0.0) - (r < 0.0))
            if c2 is not None:
                c2[i] = 0.0
    return total


@njit(**JIT)
def _dot_rows(X, r0, m, w, b, out):
    """out[:m] = X[r0:r0+m] @ w + b (w in X's dtype; out float64).

    Accumulates in X's dtype (16 float32 lanes per AVX-512 vector, as BLAS
    sdot does). Narrow and wide rows take four at a time so that each load of
    w serves four FMAs; rows in between one at a time (LLVM interleaves the
    vector loop itself, and extra accumulators only add reductions: measured
    25% slower at d = 100, float64; 1.1-1.25x faster at d = 784)."""
    d = X.shape[1]
    zero = X.dtype.type(0)
    i = 0
    if d < NARROW or d >= WIDE:
        while i + 4 <= m:
            a0 = zero
            a1 = zero
            a2 = zero
            a3 = zero
            for j in range(d):
                wj = w[j]
                a0 += X[r0 + i, j] * wj
                a1 += X[r0 + i + 1, j] * wj
                a2 += X[r0 + i + 2, j] * wj
                a3 += X[r0 + i + 3, j] * wj
            out[i] = a0 + b
            out[i + 1] = a1 + b
            out[i + 2] = a2 + b
            out[i + 3] = a3 + b
            i += 4
    for k in range(i, m):
        acc = zero
        for j in range(d):
            acc += X[r0 + k, j] * w[j]
        out[k] = acc + b


@njit(**JIT)
def _dot2_rows(X, r0, m, w, bw, v, bv, outw, outv):
    """Both X w + bw and X v + bv in one read of the block (HVP of logistic);
    narrow rows two at a time, as in _dot_rows; wide rows four at a time, so
    that each load of w and v serves four FMAs (measured at d = 784, one
    thread: 40 -> 46 GFLOP/s float32 streamed from L3, 42 -> 61 from L2,
    float64 24 -> 35; d = 100: 22 -> 32 and 20 -> 25)."""
    d = X.shape[1]
    zero = X.dtype.type(0)
    i = 0
    if d < NARROW:
        while i + 2 <= m:
            a0 = zero
            a1 = zero
            e0 = zero
            e1 = zero
            for j in range(d):
                x0 = X[r0 + i, j]
                x1 = X[r0 + i + 1, j]
                a0 += x0 * w[j]
                a1 += x1 * w[j]
                e0 += x0 * v[j]
                e1 += x1 * v[j]
            outw[i] = a0 + bw
            outw[i + 1] = a1 + bw
            outv[i] = e0 + bv
            outv[i + 1] = e1 + bv
            i += 2
    else:
        while i + 4 <= m:
            x0, x1, x2, x3 = X[r0 + i], X[r0 + i + 1], X[r0 + i + 2], X[r0 + i + 3]
            a0 = a1 = a2 = a3 = zero
            e0 = e1 = e2 = e3 = zero
            for j in range(d):
                p, q = w[j], v[j]
                a0 += x0[j] * p
                a1 += x1[j] * p
                a2 += x2[j] * p
                a3 += x3[j] * p
                e0 += x0[j] * q
                e1 += x1[j] * q
                e2 += x2[j] * q
                e3 += x3[j] * q
            outw[i], outw[i + 1], outw[i + 2], outw[i + 3] = a0 + bw, a1 + bw, a2 + bw, a3 + bw
            outv[i], outv[i + 1], outv[i + 2], outv[i + 3] = e0 + bv, e1 + bv, e2 + bv, e3 + bv
            i += 4
    for k in range(i, m):
        a0 = zero
        e0 = zero
        for j in range(d):
            a0 += X[r0 + k, j] * w[j]
            e0 += X[r0 + k, j] * v[j]
        outw[k] = a0 + bw
        outv[k] = e0 + bv


@njit(**JIT)
def _axpy_rows(X, r0, m, c, g, fit_b):
    """g[:d] += X[r0:r0+m]^T c[:m]; g[d] += sum(c) when fitting an intercept.

    g is in X's dtype (a per-block accumulator flushed to float64 by the
    caller); four rows per load/store of g cut the accumulator traffic."""
    d = X.shape[1]
    cast = X.dtype.type
    i = 0
    while i + 4 <= m:
        c0 = cast(c[i])
        c1 = cast(c[i + 1])
        c2 = cast(c[i + 2])
        c3 = cast(c[i + 3])
        for j in range(d):
            g[j] += (c0 * X[r0 + i, j] + c1 * X[r0 + i + 1, j]) + \
                    (c2 * X[r0 + i + 2, j] + c3 * X[r0 + i + 3, j])
        i += 4
    for k in range(i, m):
        ck = cast(c[k])
        for j in range(d):
            g[j] += ck * X[r0 + k, j]
    if fit_b:
        for k in range(m):
            g[d] += cast(c[k])


@njit(**JIT)
def _axpy2_rows(X, r0, m, c, e, g, h, fit_b):
    """g += X[r0:r0+m]^T c and h += X[r0:r0+m]^T e in one read of the rows
    (column sums into slot d when fitting an intercept); g, h in X's dtype.
    Four rows per load/store of g and h, as _axpy_rows."""
    d = X.shape[1]
    cast = X.dtype.type
    i = 0
    while i + 4 <= m:
        c0, c1, c2, c3 = cast(c[i]), cast(c[i + 1]), cast(c[i + 2]), cast(c[i + 3])
        e0, e1, e2, e3 = cast(e[i]), cast(e[i + 1]), cast(e[i + 2]), cast(e[i + 3])
        for j in range(d):
            x0, x1, x2, x3 = X[r0 + i, j], X[r0 + i + 1, j], X[r0 + i + 2, j], X[r0 + i + 3, j]
            g[j] += (c0 * x0 + c1 * x1) + (c2 * x2 + c3 * x3)
            h[j] += (e0 * x0 + e1 * x1) + (e2 * x2 + e3 * x3)
        i += 4
    for k in range(i, m):
        ck = cast(c[k])
        ek = cast(e[k])
        for j in range(d):
            g[j] += ck * X[r0 + k, j]
            h[j] += ek * X[r0 + k, j]
    if fit_b:
        for k in range(m):
            g[d] += cast(c[k])
            h[d] += cast(e[k])


@njit(parallel=True, **JIT)
def _rows_kernel(X, Y, S, W, V, fit_b, code, want_hvp, n_chunks, block, out_loss, out_g):
    """Streaming pass for B problems x n_chunks row chunks.

    X (P, n, d) with P == 1 (shared) or P == B; Y, S (P, n); W, V (B, p) in
    X's dtype. loss_grad (want_hvp False): out_loss[b, c], out_g[b, c] =
    chunk sums of s l and X^T (s l'). hvp: out_g[b, c] = chunk sum of
    X^T (s l''(z) (X v)). Per block, X's dtype; across blocks, float64.
    """
    P, n, d = X.shape
    B = W.shape[0]
    for job in prange(B * n_chunks):
        b = job // n_chunks
        c = job % n_chunks
        p = 0 if P == 1 else b
        Xp = X[p]
        Yp = Y[p]
        i0 = c * n // n_chunks
        i1 = (c + 1) * n // n_chunks
        w = W[b]
        v = V[b]
        bias = np.float64(w[d]) if fit_b else 0.0
        vb = np.float64(v[d]) if fit_b else 0.0
        g = np.zeros(d + 1)
        gb = np.zeros(d + 1, dtype=X.dtype)
        z = np.empty(block)
        u = np.empty(block)
        coef = np.empty(block)
        t = np.empty(block)
        bits = np.empty(block, dtype=np.int64)
        total = 0.0
        for r0 in range(i0, i1, block):
            m = min(block, i1 - r0)
            ys = Yp[r0:r0 + m]
            ss = None if S is None else S[p, r0:r0 + m]
            if not want_hvp:
                _dot_rows(Xp, r0, m, w, bias, z)
                total += _terms(code, z, ys, ss, m, coef, None, t, bits)
            elif code == 0:
                _dot2_rows(Xp, r0, m, w, bias, v, vb, z, u)
                _terms(code, z, ys, ss, m, None, coef, t, bits)
                for i in range(m):
                    coef[i] *= u[i]
            else:  # squared: l'' = 1, z not needed
                _dot_rows(Xp, r0, m, v, vb, u)
                for i in range(m):
                    coef[i] = u[i] if ss is None else ss[i] * u[i]
            _axpy_rows(Xp, r0, m, coef, gb, fit_b)
            for j in range(d + 1):
                g[j] += gb[j]
                gb[j] = 0
        out_loss[b, c] = total
        out_g[b, c, :] = g


@njit(parallel=True, **JIT)
def _gemm_kernel(X, y, S, W, V, fit_b, code, want_hvp, n_chunks, block, out_loss, out_g):
    """Shared X, B thetas: per row block, Z^T = W_x X_blk^T and G += C X_blk
    by BLAS (one thread each: the row chunks are spread over numba's threads,
    so one thread pool owns the cores), the loss terms in between.

    out_loss[c], out_g[c] (B,), (B, d + 1): sums over row chunk c, as in
    _rows_kernel; W, V (B, p) in X's dtype.
    """
    n, d = X.shape
    B = W.shape[0]
    Wx = np.ascontiguousarray(W[:, :d])
    Vx = np.ascontiguousarray(V[:, :d])
    for c in prange(n_chunks):
        i0 = c * n // n_chunks
        i1 = (c + 1) * n // n_chunks
        G = np.zeros((B, d), dtype=X.dtype)
        t = np.empty(block)
        bits = np.empty(block, dtype=np.int64)
        z = np.empty(block)
        coef = np.empty(block)
        for r0 in range(i0, i1, block):
            m = min(block, i1 - r0)
            Xb = X[r0:r0 + m]
            ys = y[r0:r0 + m]
            ss = None if S is None else S[r0:r0 + m]
            Z = np.dot(Wx, Xb.T)  # (B, m)
            U = np.dot(Vx, Xb.T) if want_hvp else Z
            for b in range(B):
                bias = np.float64(W[b, d]) if fit_b else 0.0
                for i in range(m):
                    z[i] = Z[b, i] + bias
                if not want_hvp:
                    out_loss[c, b] += _terms(code, z, ys, ss, m, coef, None, t, bits)
                elif code == 0:
                    _terms(code, z, ys, ss, m, None, coef, t, bits)
                else:  # squared: l'' = 1
                    for i in range(m):
                        coef[i] = 1.0 if ss is None else ss[i]
                if want_hvp:
                    vb = np.float64(V[b, d]) if fit_b else 0.0
                    for i in range(m):
                        coef[i] *= U[b, i] + vb
                for i in range(m):
                    Z[b, i] = coef[i]  # Z now holds C
                    out_g[c, b, d] += coef[i]
            G += np.dot(Z, Xb)
        out_g[c, :, :d] = G


@njit(parallel=True, **JIT)
def _mixed_kernel(X, Y, S, W, V, rows, fit_b, code, n, out):
    """out[b, k] = d/dx_rows[k] (grad_theta L . v) for problem b (data term)."""
    P = X.shape[0]
    d = X.shape[2]
    B = W.shape[0]
    K = rows.shape[0]
    for job in prange(B * K):
        b = job // K
        k = job % K
        p = 0 if P == 1 else b
        i = rows[k]
        x = X[p, i]
        w = W[b]
        v = V[b]
        z = w[d] if fit_b else 0.0
        u = v[d] if fit_b else 0.0
        for j in range(d):
            z += np.float64(x[j]) * w[j]
            u += np.float64(x[j]) * v[j]
        zs = np.array([z])
        c1 = np.empty(1)
        c2 = np.empty(1)
        _terms(code, zs, Y[p, i:i + 1], None, 1, c1, c2, np.empty(1), np.empty(1, dtype=np.int64))
        si = 1.0 if S is None else np.float64(S[p, i])
        a = si * c2[0] * u / n
        e = si * c1[0] / n
        for j in range(d):
            out[b, k, j] = a * w[j] + e * v[j]


def _uses_gemm(B, d):
    return B >= GEMM_MIN_BATCH and d >= GEMM_MIN_FEATURES


def _n_chunks(n, d):
    # Fixed by the shape alone, so sums do not depend on the thread count.
    return int(min(64, max(1, n * d // 32768), n))


def _n_gemm_chunks(n):
    return int(min(32, max(1, n // (2 * GEMM_BLOCK_ROWS))))


def _block_rows(d, itemsize):
    return int(max(8, min(512, L2_BLOCK_BYTES // (d * itemsize))))


def _as3(X, Y, S):
    if X.ndim == 2:
        return X[None], Y[None], None if S is None else S[None]
    return X, Y, S


def _reg(theta, lam, d, penalize_b):
    """exp(lam) * theta with the intercept masked unless penalised: (B, p)."""
    r = theta.astype(np.float64) * np.exp(lam)[:, None]
    if not penalize_b and theta.shape[1] > d:
        r[:, d] = 0.0
    return r


_blas_controller = None


def _one_blas_thread():
    """Context limiting BLAS to one thread (threadpoolctl; the controller is
    built once, after numba's BLAS is loaded, since building it costs ~1 ms)."""
    global _blas_controller
    if _blas_controller is None:
        import scipy.linalg.cython_blas  # noqa: F401  (numba's np.dot calls this BLAS)
        from threadpoolctl import ThreadpoolController
        _blas_controller = ThreadpoolController()
    return _blas_controller.limit(limits=1, user_api="blas")


def _data_terms(theta, X, y, s, code, want_hvp, V):
    """Sums over rows (not yet divided by n): loss (B,), X^T c (B, p)."""
    n, d = X.shape[-2:]
    B, p = theta.shape
    V = theta if V is None else V
    if X.ndim == 2 and _uses_gemm(B, d):
        n_chunks = _n_gemm_chunks(n)
        out_loss = np.zeros((n_chunks, B))
        out_g = np.zeros((n_chunks, B, d + 1))
        with _one_blas_thread():
            _gemm_kernel(X, y, s, theta, V, p > d, code, want_hvp, n_chunks,
                         GEMM_BLOCK_ROWS, out_loss, out_g)
        return out_loss.sum(axis=0), out_g.sum(axis=0)[:, :p]
    X3, Y3, S3 = _as3(X, y, s)
    n_chunks = _n_chunks(n, d)
    out_loss = np.zeros((B, n_chunks))
    out_g = np.zeros((B, n_chunks, d + 1))
    _rows_kernel(X3, Y3, S3, theta, V, p > d, code, want_hvp,
                 n_chunks, _block_rows(d, X.itemsize), out_loss, out_g)
    return out_loss.sum(axis=1), out_g.sum(axis=1)[:, :p]


def loss_grad(theta, X, y, sample_weight, lam, loss, fit_intercept, penalize_intercept):
    n, d = X.shape[-2:]
    total, g = _data_terms(theta, X, y, sample_weight, LOSS_CODES[loss], False, None)
    value, grad = total / n, g / n
    if lam is not None:
        reg = _reg(theta, lam, d, penalize_intercept)
        value = value + 0.5 * (reg * theta).sum(axis=1)
        grad = grad + reg
    return value.astype(X.dtype), grad.astype(X.dtype)


def hvp(theta, v, X, y, sample_weight, lam, loss, fit_intercept, penalize_intercept):
    n, d = X.shape[-2:]
    if loss == "absolute":  # piecewise linear: the data term has zero curvature
        out = np.zeros(theta.shape)
    else:
        out = _data_terms(theta, X, y, sample_weight, LOSS_CODES[loss], True, v)[1] / n
    if lam is not None:
        out = out + _reg(v, lam, d, penalize_intercept)
    return out.astype(X.dtype)


def mixed(theta, v, X, y, sample_weight, lam, rows, loss, fit_intercept, penalize_intercept):
    n, d = X.shape[-2:]
    X3, Y3, S3 = _as3(X, y, sample_weight)
    out = np.empty((theta.shape[0], rows.shape[0], d))
    _mixed_kernel(X3, Y3, S3, theta.astype(np.float64), v.astype(np.float64), rows,
                  fit_intercept, LOSS_CODES[loss], n, out)
    if lam is None:
        dlam = np.zeros(theta.shape[0])
    else:
        dlam = (_reg(theta, lam, d, penalize_intercept) * v).sum(axis=1)
    return out.astype(X.dtype), dlam.astype(X.dtype)
