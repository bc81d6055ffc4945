"""Hypergradient loops for problems that share their clean rows Xc
(trajectory and forward modes): per step the clean rows enter as BLAS
matrix-matrix products over the group, the k poisoning rows per problem; the
same values as kernels/cpu/hypergrad.py up to rounding (the summation order differs)."""
import numpy as np
from numba import njit, prange

from ._math import JIT
from .hypergrad import _adjoint_step, _cast, _validation, _watch, new_watch
from .linear import _axpy_rows, _dot2_rows, _dot_rows, _terms

# Trajectory- and forward-mode batches: at least SHARED_MIN_GROUP consecutive problems sharing Xc, yc
# with d >= SHARED_MIN_FEATURES take the matrix-matrix route (shared_parts).
# Measured at paper size (n = 529, d = 784, T = 150, 2 cores) against the per-problem
# batch: groups of 24-40 gain 1.3-1.5x (f32) and 1.4-2.5x (f64); groups of 4-20 lose
# (0.3-0.9x: BLAS on a few rows is no faster than streaming X per problem).
# Below d = 32 the per-problem route is as fast for shared X (kernels/cpu/linear.py).
SHARED_MIN_GROUP = 24
SHARED_MIN_FEATURES = 32


@njit(**JIT)
def _shared_pass(Xc, yc, Xp, yp, code, fit_b, Th, U, want_g, want_h, g, h, rows):
    """_pass for G problems sharing the clean rows Xc: X_b = [Xc; Xp[b]], state
    Th, U (G, d + 1). The clean rows go through BLAS as matrix-matrix products
    over the G problems (Z = [W; U_w] Xc^T, then C Xc), so Xc is read once per
    product for all G instead of twice per problem; the k poisoning rows are
    taken per problem (their (l', l'', x.u) into rows[b] when want_h).
    g, h (G, d + 1) row sums, as _pass."""
    nc, d = Xc.shape
    G, k = Xp.shape[0], Xp.shape[1]
    dt = Xc.dtype
    m = G * (want_g + want_h)
    A = np.empty((G * (1 + want_h), d), dtype=dt)
    for b in range(G):
        for j in range(d):
            A[b, j] = Th[b, j]
            if want_h:
                A[G + b, j] = U[b, j]
    Z = np.dot(A, Xc.T)  # (G or 2G, nc): X w, then X u
    C = np.empty((m, nc), dtype=dt)
    nb = max(nc, k)
    z = np.empty(nb)
    c1 = np.empty(nb)
    c2 = np.empty(nb)
    t = np.empty(nb)
    xu = np.empty(k)
    bits = np.empty(nb, dtype=np.int64)
    thx = np.empty(d + 1, dtype=dt)
    ux = np.empty(d + 1, dtype=dt)
    acc = np.zeros(d + 1, dtype=dt)
    for b in range(G):
        for i in range(nc):
            z[i] = np.float64(Z[b, i]) + Th[b, d]
        _terms(code, z, yc, None, nc, c1, c2, t, bits)
        sg = 0.0
        sh = 0.0
        for i in range(nc):
            if want_g:
                C[b, i] = c1[i]
                sg += c1[i]
            if want_h:
                c = c2[i] * (np.float64(Z[G + b, i]) + U[b, d])
                C[m - G + b, i] = c
                sh += c
        # the problem's own k rows, as in _groups
        _cast(Th[b], thx)
        _cast(U[b], ux)
        if want_h:
            _dot2_rows(Xp[b], 0, k, thx, thx[d], ux, ux[d], z, xu)
        else:
            _dot_rows(Xp[b], 0, k, thx, thx[d], z)
        _terms(code, z, yp[b], None, k, c1, c2, t, bits)
        if want_g:
            _axpy_rows(Xp[b], 0, k, c1, acc, fit_b)
            _cast(acc, g[b])
            acc[:] = 0
            g[b, d] = g[b, d] + sg if fit_b else 0.0
        if want_h:
            for i in range(k):
                rows[b, 0, i] = c1[i]
                rows[b, 1, i] = c2[i]
                rows[b, 2, i] = xu[i]
                c2[i] *= xu[i]
            _axpy_rows(Xp[b], 0, k, c2, acc, fit_b)
            _cast(acc, h[b])
            acc[:] = 0
            h[b, d] = h[b, d] + sh if fit_b else 0.0
    P = np.dot(C, Xc)  # (m, d): X^T l', then X^T (l'' X u)
    for b in range(G):
        for j in range(d):
            if want_g:
                g[b, j] += P[b, j]
            if want_h:
                h[b, j] += P[m - G + b, j]


@njit(**JIT)
def reverse_shared(Xc, yc, Xp, yp, Xv, yv, code, fit_b, theta0, alpha, gamma, e, T,
                   v_groups, v_block, dXp, out, theta_T):
    """`reverse_batch` (trajectory) for G problems sharing Xc, yc, with
    _shared_pass for every step (serial: see shared_parts)."""
    G, k, d = Xp.shape
    n = Xc.shape[0] + k
    traj = np.empty((T, G, d + 1))
    theta = theta0.copy()
    v = np.zeros((G, d + 1))
    g = np.empty((G, d + 1))
    h = np.empty((G, d + 1))
    rows = np.empty((G, 3, k))
    watch = np.empty((G, 2))
    for b in range(G):
        watch[b] = new_watch()
    for t in range(T):
        traj[t] = theta
        _shared_pass(Xc, yc, Xp, yp, code, fit_b, theta, theta, True, False, g, h, rows)
        for b in range(G):
            gg = 0.0
            for j in range(d + 1):
                gj = g[b, j] / n + (e[b] * theta[b, j] if j < d else 0.0)
                gg += gj * gj
                v[b, j] = gamma * v[b, j] - (1.0 - gamma) * gj
                theta[b, j] += alpha * v[b, j]
            _watch(gg, gamma, t, watch[b])
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
            for j in range(d + 1):
                u[b, j] = vb[b, j] + alpha * tb[b, j]
        _shared_pass(Xc, yc, Xp, yp, code, fit_b, traj[t], u, False, True, g, h, rows)
        for b in range(G):
            out[b, 1] += _adjoint_step(traj[t, b], u[b], h[b], rows[b], tb[b], vb[b], dXp[b], n,
                                       gamma, e[b])


@njit(**JIT)
def forward_shared(Xc, yc, Xp, yp, Xv, yv, code, fit_b, theta0, alpha, gamma, e, T,
                   v_groups, v_block, out, theta_T):
    """`forward_batch` for G problems sharing Xc, yc, with _shared_pass."""
    G, k, d = Xp.shape
    n = Xc.shape[0] + k
    theta = theta0.copy()
    v = np.zeros((G, d + 1))
    dth = np.zeros((G, d + 1))
    dv = np.zeros((G, d + 1))
    g = np.empty((G, d + 1))
    h = np.empty((G, d + 1))
    rows = np.empty((G, 3, k))
    watch = np.empty((G, 2))
    for b in range(G):
        watch[b] = new_watch()
    s = 1.0 - gamma
    for t in range(T):
        _shared_pass(Xc, yc, Xp, yp, code, fit_b, theta, dth, True, True, g, h, rows)
        for b in range(G):
            gg = 0.0
            for j in range(d + 1):
                gj = g[b, j] / n
                dgj = h[b, j] / n
                if j < d:
                    gj += e[b] * theta[b, j]
                    dgj += e[b] * (dth[b, j] + theta[b, j])
                gg += gj * gj
                v[b, j] = gamma * v[b, j] - s * gj
                dv[b, j] = gamma * dv[b, j] - s * dgj
                theta[b, j] += alpha * v[b, j]
                dth[b, j] += alpha * dv[b, j]
            _watch(gg, gamma, t, watch[b])
    grad = np.empty(d + 1)
    for b in range(G):
        p = 0 if Xv.shape[0] == 1 else b
        out[b, 0] = _validation(Xv[p], yv[p], code, fit_b, theta[b], v_groups, v_block, 1, grad)
        out[b, 1] = (grad * dth[b]).sum()
        out[b, 2] = watch[b, 1]
    theta_T[:] = theta


@njit(parallel=True, **JIT)
def shared_parts(reverse, Xc, yc, Xp, yp, Xv, yv, code, fit_b, theta0, alpha, gamma, e, T,
                 v_groups, v_block, n_parts, dXp, out, theta_T):
    """reverse_shared (or forward_shared) on n_parts contiguous slices of the
    G problems, one per numba thread, with BLAS at one thread (caller): a BLAS
    pool beside numba's threads spins against them (measured 6x slower on 2
    cores)."""
    G = Xp.shape[0]
    for q in prange(n_parts):
        s, t = q * G // n_parts, (q + 1) * G // n_parts
        p = slice(s, t) if Xv.shape[0] > 1 else slice(0, 1)
        if reverse:
            reverse_shared(Xc, yc, Xp[s:t], yp[s:t], Xv[p], yv[p], code, fit_b, theta0[s:t],
                           alpha, gamma, e[s:t], T, v_groups, v_block, dXp[s:t], out[s:t],
                           theta_T[s:t])
        else:
            forward_shared(Xc, yc, Xp[s:t], yp[s:t], Xv[p], yv[p], code, fit_b, theta0[s:t],
                           alpha, gamma, e[s:t], T, v_groups, v_block, out[s:t], theta_T[s:t])
