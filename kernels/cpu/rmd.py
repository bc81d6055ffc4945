"""Compiled hypergradient loops for linear models (numba).

One call runs all T steps of heavy-ball gradient descent and, for
``trajectory``, the whole reverse sweep (or, for ``forward``, the tangent
recursion for lam): no Python between steps. Per step the forward reads the
rows once for the gradient; the reverse reads them once for the HVP and
re-reads only the k poisoning rows (the last k of X) for the mixed products.

Step (Maclaurin et al. 2015; gamma = 0 is plain GD), v_0 = 0:
    v_{t+1} = gamma v_t - (1 - gamma) g(theta_t),   theta_{t+1} = theta_t + alpha v_{t+1},
    g = 1/n X^T l'(z) + exp(lam) [w; 0],  z = X w + b.
State is float64; the row passes read X in its own dtype (as kernels/cpu/linear.py).
theta has d + 1 slots here; slot d is the intercept (kept 0 without one).
"""
import numpy as np
from numba import njit, prange

from ._math import JIT
from .linear import _axpy_rows, _dot2_rows, _dot_rows, _terms


@njit(parallel=True, **JIT)
def _pass(X, y, code, fit_b, th, u, want_g, want_h, n_chunks, block, g, h):
    """One read of X in deterministic row chunks: g = X^T l'(z) if want_g,
    h = X^T (l''(z) (X u)) if want_h (row sums, not divided by n), z = X th.
    th, u (d + 1,) in X's dtype. Returns sum_i l(z_i) (when z is computed)."""
    n, d = X.shape
    part = np.zeros((n_chunks, 2, d + 1))
    loss = np.zeros(n_chunks)
    need_z = want_g or code == 0  # squared HVP needs X u only
    for c in prange(n_chunks):
        i0 = c * n // n_chunks
        i1 = (c + 1) * n // n_chunks
        z = np.zeros(block)
        xu = np.empty(block)
        c1 = np.empty(block)
        c2 = np.empty(block)
        t = np.empty(block)
        bits = np.empty(block, dtype=np.int64)
        gb = np.zeros(d + 1, dtype=X.dtype)
        hb = np.zeros(d + 1, dtype=X.dtype)
        total = 0.0
        for r0 in range(i0, i1, block):
            m = min(block, i1 - r0)
            if want_h and need_z:
                _dot2_rows(X, r0, m, th, th[d], u, u[d], z, xu)
            elif want_h:
                _dot_rows(X, r0, m, u, u[d], xu)
            else:
                _dot_rows(X, r0, m, th, th[d], z)
            if need_z:
                total += _terms(code, z, y[r0:r0 + m], None, m, c1, c2, t, bits)
            if want_g:
                _axpy_rows(X, r0, m, c1, gb, fit_b)
                for j in range(d + 1):
                    part[c, 0, j] += gb[j]
                    gb[j] = 0
            if want_h:
                for i in range(m):
                    c2[i] = xu[i] * (c2[i] if need_z else 1.0)
                _axpy_rows(X, r0, m, c2, hb, fit_b)
                for j in range(d + 1):
                    part[c, 1, j] += hb[j]
                    hb[j] = 0
        loss[c] = total
    g[:] = 0.0
    h[:] = 0.0
    for c in range(n_chunks):  # in order: deterministic sums
        g += part[c, 0]
        h += part[c, 1]
    return loss.sum()


@njit(**JIT)
def _cast(src, dst):
    for j in range(src.shape[0]):
        dst[j] = src[j]


@njit(**JIT)
def _descend(X, y, code, fit_b, theta, v, alpha, gamma, e, steps, n_chunks, block, traj):
    """`steps` heavy-ball steps from (theta, v), in place; stores the theta
    before each step in traj[0..steps-1] unless traj is None."""
    n, d = X.shape
    g = np.empty(d + 1)
    h = np.empty(d + 1)
    thx = np.empty(d + 1, dtype=X.dtype)
    for t in range(steps):
        if traj is not None:
            traj[t] = theta
        _cast(theta, thx)
        _pass(X, y, code, fit_b, thx, thx, True, False, n_chunks, block, g, h)
        for j in range(d + 1):
            gj = g[j] / n + (e * theta[j] if j < d else 0.0)
            v[j] = gamma * v[j] - (1.0 - gamma) * gj
            theta[j] += alpha * v[j]


@njit(**JIT)
def _validation(Xv, yv, code, fit_b, theta, n_chunks, block, grad):
    """Mean validation loss at theta (no regulariser); its gradient into grad."""
    nv = Xv.shape[0]
    thx = np.empty(theta.shape[0], dtype=Xv.dtype)
    _cast(theta, thx)
    h = np.empty(theta.shape[0])
    total = _pass(Xv, yv, code, fit_b, thx, thx, True, False, n_chunks, block, grad, h)
    grad /= nv
    return total / nv


@njit(**JIT)
def train(X, y, code, fit_b, theta0, alpha, gamma, e, T, n_chunks, block):
    """theta_T and the full training gradient there (objective incl. L2)."""
    n, d = X.shape
    theta = theta0.copy()
    _descend(X, y, code, fit_b, theta, np.zeros(d + 1), alpha, gamma, e, T, n_chunks, block, None)
    g = np.empty(d + 1)
    thx = np.empty(d + 1, dtype=X.dtype)
    _cast(theta, thx)
    _pass(X, y, code, fit_b, thx, thx, True, False, n_chunks, block, g, np.empty(d + 1))
    g /= n
    for j in range(d):
        g[j] += e * theta[j]
    return theta, g


def segment_length(T, n_states):
    """Steps per checkpoint segment: 1 (store every theta) when n_states > T."""
    return 1 if n_states > T else -(-T // n_states)


def state_bytes(T, d, n_states):
    """float64 bytes the reverse sweep stores: thetas (and velocities at
    segment starts when segments are recomputed) plus one segment buffer."""
    seg = segment_length(T, n_states)
    n_ckpt = -(-T // seg)
    return 8 * (d + 1) * (n_ckpt * (1 if seg == 1 else 2) + (seg if seg > 1 else 0))


@njit(**JIT)
def reverse(X, y, k, Xv, yv, code, fit_b, theta0, alpha, gamma, e, T,
            n_chunks, block, v_chunks, v_block, seg, dXp):
    """Exact RMD. The forward stores (theta_t, v_t) at t = 0, seg, 2 seg, ...;
    the reverse sweep recomputes each segment's thetas from its checkpoint with
    the same kernel (seg = 1: the whole trajectory is stored, nothing is
    recomputed), so every seg gives the same bits. Adjoints tb = dA/dtheta_{t+1},
    vb = dA/dv_{t+1}; per step back, with u = vb + alpha tb (the adjoint of v_{t+1}):
        tb -= (1 - gamma) H(theta_t) u,   vb = gamma u,
        dXp -= (1 - gamma) d/dXp (g . u),   dlam -= (1 - gamma) e w_t . u_w.
    Writes dXp (k, d) float64; returns (value, dlam, theta_T)."""
    n, d = X.shape
    n_ckpt = (T + seg - 1) // seg
    ck_theta = np.empty((n_ckpt, d + 1))
    ck_v = np.empty((n_ckpt if seg > 1 else 0, d + 1))
    buf = np.empty((seg, d + 1))
    theta = theta0.copy()
    v = np.zeros(d + 1)
    for c in range(n_ckpt):
        ck_theta[c] = theta
        if seg > 1:
            ck_v[c] = v
        _descend(X, y, code, fit_b, theta, v, alpha, gamma, e, min(seg, T - c * seg),
                 n_chunks, block, None)
    tb = np.empty(d + 1)
    value = _validation(Xv, yv, code, fit_b, theta, v_chunks, v_block, tb)
    vb = np.zeros(d + 1)
    u = np.empty(d + 1)
    g = np.empty(d + 1)
    h = np.empty(d + 1)
    thx = np.empty(d + 1, dtype=X.dtype)
    ux = np.empty(d + 1, dtype=X.dtype)
    zk = np.empty(k)
    uk = np.empty(k)
    c1 = np.empty(k)
    c2 = np.empty(k)
    tk = np.empty(k)
    bits = np.empty(k, dtype=np.int64)
    dXp[:] = 0.0
    dlam = 0.0
    s = 1.0 - gamma
    for c in range(n_ckpt - 1, -1, -1):
        t0 = c * seg
        steps = min(seg, T - t0)
        if seg > 1:
            th0 = ck_theta[c].copy()
            _descend(X, y, code, fit_b, th0, ck_v[c].copy(), alpha, gamma, e, steps,
                     n_chunks, block, buf)
        else:
            buf[0] = ck_theta[c]
        for i in range(steps - 1, -1, -1):
            th = buf[i]
            for j in range(d + 1):
                u[j] = vb[j] + alpha * tb[j]
            _cast(th, thx)
            _cast(u, ux)
            _pass(X, y, code, fit_b, thx, ux, False, True, n_chunks, block, g, h)
            for r in range(k):  # mixed products on the poisoning rows, float64
                x = X[n - k + r]
                zr = th[d]
                ur = u[d]
                for j in range(d):
                    zr += np.float64(x[j]) * th[j]
                    ur += np.float64(x[j]) * u[j]
                zk[r] = zr
                uk[r] = ur
            _terms(code, zk, y[n - k:], None, k, c1, c2, tk, bits)
            for r in range(k):
                a = s * c2[r] * uk[r] / n
                b = s * c1[r] / n
                for j in range(d):
                    dXp[r, j] -= a * th[j] + b * u[j]
            wu = 0.0
            for j in range(d):
                wu += th[j] * u[j]
            dlam -= s * e * wu
            for j in range(d + 1):
                hj = h[j] / n + (e * u[j] if j < d else 0.0)
                tb[j] -= s * hj
                vb[j] = gamma * u[j]
    return value, dlam, theta


@njit(**JIT)
def forward(X, y, Xv, yv, code, fit_b, theta0, alpha, gamma, e, T,
            n_chunks, block, v_chunks, v_block):
    """Forward mode for lam: carry dtheta/dlam and dv/dlam; the tangent of g is
    H_data dtheta + e (dw + w) (d/dlam of e w). One fused gradient+HVP read of
    X per step. Returns (value, dlam, theta_T)."""
    n, d = X.shape
    theta = theta0.copy()
    v = np.zeros(d + 1)
    dth = np.zeros(d + 1)
    dv = np.zeros(d + 1)
    g = np.empty(d + 1)
    h = np.empty(d + 1)
    thx = np.empty(d + 1, dtype=X.dtype)
    ux = np.empty(d + 1, dtype=X.dtype)
    s = 1.0 - gamma
    for t in range(T):
        _cast(theta, thx)
        _cast(dth, ux)
        _pass(X, y, code, fit_b, thx, ux, True, True, n_chunks, block, g, h)
        for j in range(d + 1):
            gj = g[j] / n
            dgj = h[j] / n
            if j < d:
                gj += e * theta[j]
                dgj += e * (dth[j] + theta[j])
            v[j] = gamma * v[j] - s * gj
            dv[j] = gamma * dv[j] - s * dgj
            theta[j] += alpha * v[j]
            dth[j] += alpha * dv[j]
    grad = np.empty(d + 1)
    value = _validation(Xv, yv, code, fit_b, theta, v_chunks, v_block, grad)
    return value, (grad * dth).sum(), theta
