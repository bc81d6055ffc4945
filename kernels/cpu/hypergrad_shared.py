"""Hypergradient loops for G problems that share their clean rows Xc
(trajectory and forward modes): the same values as kernels/cpu/hypergrad.py
up to rounding (the summation order differs).

Per pass each block of clean rows is read from memory once for all G
problems: register-blocked multi-column dot products (four weight vectors per
read of a row) and axpys (four rows into four accumulators per load of X),
no BLAS (on a few columns it is no faster than streaming X per problem). The
k poisoning rows of each problem are taken per problem. Row groups are
kernels/cpu/hypergrad.layout's, fixed by the shape and reduced in order, so
the bits do not depend on the thread count; a pass is one parallel region
whose worker w takes the same run of groups every step (its share of Xc
stays in its own L2 across the T steps). The trajectory mode keeps the
clean rows' l'' and the poisoning rows' l'' and l' of every forward step
(T G (nc + 2k) float64), so the reverse sweep's HVP needs X u only (half its
dot products).
"""
import numpy as np
from numba import njit, prange

from . import heavy_ball
from ._math import JIT
from .hypergrad import (FLUSH_ROWS, _adjoint_step, _cast, _objective, _validation, _watch,
                        layout, new_watch)
from .linear import _axpy_rows, _dot2_rows, _dot_rows, _terms

# Batches with at least SHARED_MIN_GROUP consecutive problems sharing Xc, yc
# and d >= SHARED_MIN_FEATURES take this route (shared_parts). Measured at paper
# size (nc = 529, d = 784, k = 17, T = 150, logistic, 1 numba thread, CPU time,
# against G single kernel calls): G = 2, 3: 1.0x (trajectory), 1.2-1.5x (forward);
# G = 4: 1.6-1.7x (trajectory), 1.3-1.6x (forward), float32 and float64; G = 8:
# 1.9x / 1.4x. No group size loses, so every group of two or more goes.
SHARED_MIN_GROUP = 2
SHARED_MIN_FEATURES = 32


@njit(**JIT)
def _dots(X, r0, m, W, q0, R, Z):
    """Z[q, :m] = X[r0:r0+m] @ W[q0 + q, :d] + W[q0 + q, d] for q < R (W in
    X's dtype, accumulated in it; Z float64). Four rows by four weight rows
    per pass over d: 8 loads per 16 FMAs (measured 3.3x (f32) and 2.6x (f64)
    faster than four one-row dot products at d = 784)."""
    d = X.shape[1]
    zero = X.dtype.type(0)
    q = 0
    while q + 4 <= R:
        w0, w1, w2, w3 = W[q0 + q], W[q0 + q + 1], W[q0 + q + 2], W[q0 + q + 3]
        i = 0
        while i + 4 <= m:
            x0, x1, x2, x3 = X[r0 + i], X[r0 + i + 1], X[r0 + i + 2], X[r0 + i + 3]
            a00 = a01 = a02 = a03 = zero
            a10 = a11 = a12 = a13 = zero
            a20 = a21 = a22 = a23 = zero
            a30 = a31 = a32 = a33 = zero
            for j in range(d):
                p0, p1, p2, p3 = w0[j], w1[j], w2[j], w3[j]
                e0, e1, e2, e3 = x0[j], x1[j], x2[j], x3[j]
                a00 += e0 * p0
                a01 += e0 * p1
                a02 += e0 * p2
                a03 += e0 * p3
                a10 += e1 * p0
                a11 += e1 * p1
                a12 += e1 * p2
                a13 += e1 * p3
                a20 += e2 * p0
                a21 += e2 * p1
                a22 += e2 * p2
                a23 += e2 * p3
                a30 += e3 * p0
                a31 += e3 * p1
                a32 += e3 * p2
                a33 += e3 * p3
            Z[q, i], Z[q, i + 1], Z[q, i + 2], Z[q, i + 3] = (a00 + w0[d], a10 + w0[d],
                                                              a20 + w0[d], a30 + w0[d])
            Z[q + 1, i], Z[q + 1, i + 1], Z[q + 1, i + 2], Z[q + 1, i + 3] = (
                a01 + w1[d], a11 + w1[d], a21 + w1[d], a31 + w1[d])
            Z[q + 2, i], Z[q + 2, i + 1], Z[q + 2, i + 2], Z[q + 2, i + 3] = (
                a02 + w2[d], a12 + w2[d], a22 + w2[d], a32 + w2[d])
            Z[q + 3, i], Z[q + 3, i + 1], Z[q + 3, i + 2], Z[q + 3, i + 3] = (
                a03 + w3[d], a13 + w3[d], a23 + w3[d], a33 + w3[d])
            i += 4
        for r in range(i, m):
            x = X[r0 + r]
            a0 = a1 = a2 = a3 = zero
            for j in range(d):
                a0 += x[j] * w0[j]
                a1 += x[j] * w1[j]
                a2 += x[j] * w2[j]
                a3 += x[j] * w3[j]
            Z[q, r], Z[q + 1, r], Z[q + 2, r], Z[q + 3, r] = (a0 + w0[d], a1 + w1[d],
                                                              a2 + w2[d], a3 + w3[d])
        q += 4
    for r in range(q, R):
        _dot_rows(X, r0, m, W[q0 + r], W[q0 + r, d], Z[r])


@njit(**JIT)
def _axpys(X, r0, m, C, R, acc, fit_b):
    """acc[q, :d] += X[r0:r0+m]^T C[q, :m] (acc[q, d] += sum C[q] when
    fitting an intercept) for q < R; acc in X's dtype: four rows into four
    accumulators per load of X."""
    d = X.shape[1]
    cast = X.dtype.type
    q = 0
    while q + 4 <= R:
        g0, g1, g2, g3 = acc[q], acc[q + 1], acc[q + 2], acc[q + 3]
        i = 0
        while i + 4 <= m:
            x0, x1, x2, x3 = X[r0 + i], X[r0 + i + 1], X[r0 + i + 2], X[r0 + i + 3]
            c00, c01, c02, c03 = cast(C[q, i]), cast(C[q, i + 1]), cast(C[q, i + 2]), cast(C[q, i + 3])
            c10, c11, c12, c13 = (cast(C[q + 1, i]), cast(C[q + 1, i + 1]), cast(C[q + 1, i + 2]),
                                  cast(C[q + 1, i + 3]))
            c20, c21, c22, c23 = (cast(C[q + 2, i]), cast(C[q + 2, i + 1]), cast(C[q + 2, i + 2]),
                                  cast(C[q + 2, i + 3]))
            c30, c31, c32, c33 = (cast(C[q + 3, i]), cast(C[q + 3, i + 1]), cast(C[q + 3, i + 2]),
                                  cast(C[q + 3, i + 3]))
            for j in range(d):
                a, b, c, e = x0[j], x1[j], x2[j], x3[j]
                # a chain of FMAs (a tree of products would add a multiply and two adds)
                g0[j] = (((g0[j] + c00 * a) + c01 * b) + c02 * c) + c03 * e
                g1[j] = (((g1[j] + c10 * a) + c11 * b) + c12 * c) + c13 * e
                g2[j] = (((g2[j] + c20 * a) + c21 * b) + c22 * c) + c23 * e
                g3[j] = (((g3[j] + c30 * a) + c31 * b) + c32 * c) + c33 * e
            i += 4
        for r in range(i, m):
            x = X[r0 + r]
            c0, c1, c2, c3 = cast(C[q, r]), cast(C[q + 1, r]), cast(C[q + 2, r]), cast(C[q + 3, r])
            for j in range(d):
                g0[j] += c0 * x[j]
                g1[j] += c1 * x[j]
                g2[j] += c2 * x[j]
                g3[j] += c3 * x[j]
        if fit_b:
            for p in range(q, q + 4):
                for r in range(m):
                    acc[p, d] += cast(C[p, r])
        q += 4
    for r in range(q, R):
        _axpy_rows(X, r0, m, C[r], acc[r], fit_b)


@njit(**JIT)
def workspace(Xc, G, k, groups, block, n_threads):
    """Buffers of _pass: group partials and the poisoning rows' sums
    (float64), weights W = [theta rows; u rows] (2G, d + 1) in X's dtype, and
    per-worker Z, C (2G rows), scratch and accumulators (zero between groups).
    At most one worker per group."""
    d = Xc.shape[1]
    n_groups = groups.shape[0] - 1
    n_threads = max(1, min(n_threads, n_groups))
    nb = max(block, k)
    return (np.zeros((n_groups, 2 * G, d + 1)), np.zeros((G, 2, d + 1)),
            np.empty((2 * G, d + 1), dtype=Xc.dtype), np.empty((n_threads, 2 * G, nb)),
            np.empty((n_threads, 2 * G, nb)), np.empty((n_threads, 5, nb)),
            np.empty((n_threads, nb), dtype=np.int64),
            np.zeros((n_threads, 2 * G + 2, d + 1), dtype=Xc.dtype))


@njit(**JIT)
def _work(Xc, yc, Xp, yp, code, fit_b, want_g, want_h, curv, keep, groups, g0, g1, block, ws,
          w, p0, p1, rows):
    """Worker w's part of _pass: clean row groups g0..g1-1 for all G problems
    (partials into ws), then the poisoning rows of problems p0..p1-1. keep = 1:
    store the clean rows' l'' into curv (G, nc); 2: take l'' from there (the
    HVP then needs X u only); the poisoning rows' l'' and l' follow in
    curv[:, nc:nc + k] and curv[:, nc + k:]."""
    d = Xc.shape[1]
    G, k = Xp.shape[0], Xp.shape[1]
    kg = rows.shape[2]
    part, ppart, W, Z, C, scratch, all_bits, accs = ws
    Z, C, acc, bits = Z[w], C[w], accs[w], all_bits[w]
    c1, c2, t, z, xu = scratch[w, 0], scratch[w, 1], scratch[w, 2], scratch[w, 3], scratch[w, 4]
    need_z = want_g or (code != 1 and keep != 2)  # the squared loss's HVP needs X u only
    nz = G if need_z else 0
    ng = G if want_g else 0
    R = ng + (G if want_h else 0)
    for grp in range(g0, g1):
        i1 = groups[grp + 1]
        since = 0
        for q in range(R):
            for j in range(d + 1):
                part[grp, q, j] = 0.0
        for r0 in range(groups[grp], i1, block):
            m = min(block, i1 - r0)
            ys = yc[r0:r0 + m]
            _dots(Xc, r0, m, W, 0 if need_z else G, nz + (G if want_h else 0), Z)
            for b in range(G):
                if want_g and (want_h or keep == 1):
                    _terms(code, Z[b], ys, None, m, C[b], c2, t, bits)
                elif want_g:
                    _terms(code, Z[b], ys, None, m, C[b], None, t, bits)
                elif need_z:
                    _terms(code, Z[b], ys, None, m, None, c2, t, bits)
                if keep == 1:
                    curv[b, r0:r0 + m] = c2[:m]
                if want_h:
                    zu, ch = Z[nz + b], C[ng + b]
                    if keep == 2:
                        for i in range(m):
                            ch[i] = curv[b, r0 + i] * zu[i]
                    elif need_z:
                        for i in range(m):
                            ch[i] = c2[i] * zu[i]
                    else:
                        for i in range(m):
                            ch[i] = zu[i]
            _axpys(Xc, r0, m, C, R, acc, fit_b)
            since += m  # sums in X's dtype over at most FLUSH_ROWS rows, then float64
            if since < FLUSH_ROWS and r0 + block < i1:
                continue
            since = 0
            for q in range(R):
                for j in range(d + 1):
                    part[grp, q, j] += acc[q, j]
                    acc[q, j] = 0
    gb, hb = acc[2 * G], acc[2 * G + 1]
    nc = Xc.shape[0]
    for b in range(p0, p1):
        X, th, u = Xp[b], W[b], W[G + b]
        if keep == 2:  # l'' and l' of the forward step: the HVP needs X u only
            _dot_rows(X, 0, k, u, u[d], xu)
            for i in range(k):
                c2[i] = curv[b, nc + i]
                c1[i] = curv[b, nc + k + i]
        else:
            if want_h:
                _dot2_rows(X, 0, k, th, th[d], u, u[d], z, xu)
            else:
                _dot_rows(X, 0, k, th, th[d], z)
            _terms(code, z, yp[b], None, k, c1, c2, t, bits)
            if keep == 1:
                for i in range(k):
                    curv[b, nc + i] = c2[i]
                    curv[b, nc + k + i] = c1[i]
        if want_g:
            _axpy_rows(X, 0, k, c1, gb, fit_b)
            for j in range(d + 1):
                ppart[b, 0, j] = gb[j]
                gb[j] = 0
        if want_h:
            for i in range(k - kg, k):  # only the trailing kg rows need mixed products
                rows[b, 0, i - k + kg] = c1[i]
                rows[b, 1, i - k + kg] = c2[i]
                rows[b, 2, i - k + kg] = xu[i]
            for i in range(k):
                c2[i] *= xu[i]
            _axpy_rows(X, 0, k, c2, hb, fit_b)
            for j in range(d + 1):
                ppart[b, 1, j] = hb[j]
                hb[j] = 0


@njit(parallel=True, **JIT)
def _pass(Xc, yc, Xp, yp, code, fit_b, Th, U, want_g, want_h, curv, keep, groups, block, ws, g,
          h, rows):
    """One read of Xc for G problems X_b = [Xc; Xp[b]], state Th, U (G, d + 1):
    g = X_b^T l'(z) if want_g, h = X_b^T (l''(z) (X_b u)) if want_h (row sums),
    z = X_b th; rows[b] = (l', l'', x.u) of the trailing rows.shape[2]
    poisoning rows; curv, keep as in _work. ws's worker count sets the parallel width (1: serial)."""
    G = Th.shape[0]
    _weights(Th, U, want_h, ws[2])
    n_threads = ws[3].shape[0]
    n_groups = groups.shape[0] - 1
    if n_threads == 1:
        _work(Xc, yc, Xp, yp, code, fit_b, want_g, want_h, curv, keep, groups, 0, n_groups,
              block, ws, 0, 0, G, rows)
    else:
        for w in prange(n_threads):
            _work(Xc, yc, Xp, yp, code, fit_b, want_g, want_h, curv, keep, groups,
                  w * n_groups // n_threads, (w + 1) * n_groups // n_threads, block, ws, w,
                  w * G // n_threads, (w + 1) * G // n_threads, rows)
    _reduce(ws, want_g, want_h, g, h)


@njit(**JIT)
def _weights(Th, U, want_h, W):
    """W = [Th; U] in X's dtype (the U rows only when want_h)."""
    G = Th.shape[0]
    for b in range(G):
        _cast(Th[b], W[b])
        if want_h:
            _cast(U[b], W[G + b])


@njit(**JIT)
def _reduce(ws, want_g, want_h, g, h):
    """g, h = the poisoning rows' sums plus the group partials in order."""
    part, ppart = ws[0], ws[1]
    G = ppart.shape[0]
    if want_g:
        for b in range(G):
            _cast(ppart[b, 0], g[b])
            for grp in range(part.shape[0]):
                _add(part[grp, b], g[b])
    if want_h:
        q = G if want_g else 0
        for b in range(G):
            _cast(ppart[b, 1], h[b])
            for grp in range(part.shape[0]):
                _add(part[grp, q + b], h[b])


@njit(**JIT)
def _add(src, dst):
    for j in range(src.shape[0]):
        dst[j] += src[j]


@njit(**JIT)
def reverse_shared(Xc, yc, Xp, yp, Xv, yv, code, fit_b, theta0, alpha, gamma, e, T,
                   groups, block, v_groups, v_block, n_threads, dXp, out, theta_T):
    """`reverse_batch` (trajectory) for G problems sharing Xc, yc: Xp (G, k, d);
    dXp (G, kg, d), kg <= k: the gradients of the trailing kg poisoning rows
    (the others enter the training but need none)."""
    G, k, d = Xp.shape
    n = Xc.shape[0] + k
    ws = workspace(Xc, G, k, groups, block, n_threads)
    traj = np.empty((T, G, d + 1))
    keep = 1 if code == 0 else 0  # logistic: keep l'' of the clean rows for the reverse sweep
    curv = np.empty((T, G, Xc.shape[0] + 2 * k if keep else 0))  # clean l''; poisoning l'', l'
    theta = theta0.copy()
    v = np.zeros((G, d + 1))
    g = np.empty((G, d + 1))
    h = np.empty((G, d + 1))
    rows = np.empty((G, 3, dXp.shape[1]))
    watch = np.empty((G, 2))
    for b in range(G):
        watch[b] = new_watch()
    for t in range(T):
        traj[t] = theta
        _pass(Xc, yc, Xp, yp, code, fit_b, theta, theta, True, False, curv[t],
              keep, groups, block, ws, g, h, rows)
        for b in range(G):
            _watch(_objective(g[b], theta[b], n, e[b]), gamma, t, watch[b])
            heavy_ball.step(theta[b], v[b], g[b], alpha, gamma)
    tb = np.empty((G, d + 1))
    for b in range(G):
        p = 0 if Xv.shape[0] == 1 else b
        out[b, 0] = _validation(Xv[p], yv[p], code, fit_b, theta[b], v_groups, v_block, 1, tb[b])
        out[b, 1] = 0.0
        out[b, 2] = watch[b, 1]
    theta_T[:] = theta
    vb = np.zeros((G, d + 1))
    u = np.empty((G, d + 1))
    dXp[:] = 0.0
    for t in range(T - 1, -1, -1):
        for b in range(G):
            heavy_ball.direction(tb[b], vb[b], alpha, u[b])
        _pass(Xc, yc, Xp, yp, code, fit_b, traj[t], u, False, True, curv[t],
              2 * keep, groups, block, ws, g, h, rows)
        for b in range(G):
            out[b, 1] += _adjoint_step(traj[t, b], u[b], h[b], rows[b], tb[b], vb[b], dXp[b], n,
                                       gamma, e[b])


@njit(**JIT)
def forward_shared(Xc, yc, Xp, yp, Xv, yv, code, fit_b, theta0, alpha, gamma, e, T,
                   groups, block, v_groups, v_block, n_threads, out, theta_T):
    """`forward_batch` for G problems sharing Xc, yc."""
    G, k, d = Xp.shape
    n = Xc.shape[0] + k
    ws = workspace(Xc, G, k, groups, block, n_threads)
    theta = theta0.copy()
    v = np.zeros((G, d + 1))
    dth = np.zeros((G, d + 1))
    dv = np.zeros((G, d + 1))
    g = np.empty((G, d + 1))
    h = np.empty((G, d + 1))
    rows = np.empty((G, 3, 0))
    curv = np.empty((G, 0))
    watch = np.empty((G, 2))
    for b in range(G):
        watch[b] = new_watch()
    for t in range(T):
        _pass(Xc, yc, Xp, yp, code, fit_b, theta, dth, True, True, curv, 0, groups, block, ws, g,
              h, rows)
        for b in range(G):
            for j in range(d + 1):  # the tangent of g: H_data dth + e (dw + w)
                h[b, j] = h[b, j] / n + (e[b] * (dth[b, j] + theta[b, j]) if j < d else 0.0)
            _watch(_objective(g[b], theta[b], n, e[b]), gamma, t, watch[b])
            heavy_ball.step(theta[b], v[b], g[b], alpha, gamma)
            heavy_ball.step(dth[b], dv[b], h[b], alpha, gamma)
    grad = np.empty(d + 1)
    for b in range(G):
        p = 0 if Xv.shape[0] == 1 else b
        out[b, 0] = _validation(Xv[p], yv[p], code, fit_b, theta[b], v_groups, v_block, 1, grad)
        out[b, 1] = (grad * dth[b]).sum()
        out[b, 2] = watch[b, 1]
    theta_T[:] = theta


def shared_parts(reverse, Xc, yc, Xp, yp, Xv, yv, code, fit_b, theta0, alpha, gamma, e, T,
                 v_groups, v_block, n_parts, dXp, out, theta_T):
    """reverse_shared (or forward_shared) for the G problems, n_parts numba
    threads splitting the clean rows' groups (kernels/cpu/hypergrad.layout of
    Xc: same bits whatever the thread count). dXp (G, kg, d): the trailing
    kg <= k poisoning rows' gradients (unused in forward mode)."""
    groups, block = layout(*Xc.shape, Xc.itemsize)
    if reverse:
        reverse_shared(Xc, yc, Xp, yp, Xv, yv, code, fit_b, theta0, alpha, gamma, e, T, groups,
                       block, v_groups, v_block, n_parts, dXp, out, theta_T)
    else:
        forward_shared(Xc, yc, Xp, yp, Xv, yv, code, fit_b, theta0, alpha, gamma, e, T, groups,
                       block, v_groups, v_block, n_parts, out, theta_T)
