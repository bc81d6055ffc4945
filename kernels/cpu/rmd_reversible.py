"""Reversible RMD (Maclaurin, Duvenaud & Adams 2015) for linear models, one
compiled call for the T forward steps and the T reverse steps.

theta and v live in int64 fixed point (frac_bits fractional bits); v is
multiplied by gamma = num/den exactly, the lost digits kept in a per-element
buffer (kernels/cpu/fixed_point.py, a port of csrc/include/fixed_point.h).
Forward step t (q = fixed point, Q = encode):
    th = decode(theta_q); g = g(th)
    v_q = mul(v_q, num, den); v_q -= Q((1 - gamma) g); theta_q += Q(alpha decode(v_q))
The reverse undoes each line in the opposite order, recomputing g at the
recovered theta_t, then takes the adjoint step of rmd.trajectory there. So
only theta_q, v_q and the buffer are stored, never the trajectory.

Exactness needs g(theta_t) bit for bit as in the forward pass: both come from
the same _pass, whose gradient path runs the same instructions whether or not
it also computes the HVP, in row chunks fixed by the shape. The fixed-point
glue (_v_step, _theta_step) is compiled without fastmath, so it rounds as IEEE
says wherever it is inlined.
"""
import numpy as np
from numba import njit, prange

from . import fixed_point as fp
from ._math import JIT
from .linear import _axpy_rows, _dot_rows, _terms

V_STATE, THETA_STATE = 0, 1  # which state left int64, in the status


@njit(parallel=True, **JIT)
def _pass(X, y, code, fit_b, th, u, want_h, n_chunks, block, g, h):
    """g = X^T l'(z) at z = X th; if want_h also h = X^T (l''(z) (X u)) (row
    sums, not divided by n). th, u (d + 1,) in X's dtype. Returns sum l(z).
    X u is a second dot over the block while it is in cache, so that the
    gradient path does not depend on want_h."""
    n, d = X.shape
    part = np.zeros((n_chunks, 2, d + 1))
    loss = np.zeros(n_chunks)
    for c in prange(n_chunks):
        i0 = c * n // n_chunks
        i1 = (c + 1) * n // n_chunks
        z = np.empty(block)
        xu = np.empty(block)
        c1 = np.empty(block)
        c2 = np.empty(block)
        t = np.empty(block)
        bits = np.empty(block, dtype=np.int64)
        acc = np.zeros(d + 1, dtype=X.dtype)
        total = 0.0
        for r0 in range(i0, i1, block):
            m = min(block, i1 - r0)
            _dot_rows(X, r0, m, th, th[d], z)
            total += _terms(code, z, y[r0:r0 + m], None, m, c1, c2, t, bits)
            _axpy_rows(X, r0, m, c1, acc, fit_b)
            for j in range(d + 1):
                part[c, 0, j] += acc[j]
                acc[j] = 0
            if want_h:
                _dot_rows(X, r0, m, u, u[d], xu)
                for i in range(m):
                    c2[i] *= xu[i]
                _axpy_rows(X, r0, m, c2, acc, fit_b)
                for j in range(d + 1):
                    part[c, 1, j] += acc[j]
                    acc[j] = 0
        loss[c] = total
    g[:] = 0.0
    h[:] = 0.0
    for c in range(n_chunks):  # in order: deterministic sums
        g += part[c, 0]
        h += part[c, 1]
    return loss.sum()


@njit(**fp.EXACT_JIT)
def _decode(thq, th, thx, frac_bits):
    """th = decode(thq) (float64) and its copy thx in X's dtype."""
    for j in range(thq.shape[0]):
        th[j] = fp.decode1(thq[j], frac_bits)
        thx[j] = th[j]


@njit(**fp.EXACT_JIT)
def _v_step(g, n, e, th, j, d, s, frac_bits):
    """(code, Q(s g_j)) with g_j = g[j]/n + e th[j] (no L2 on the intercept)."""
    gj = g[j] / n
    if j < d:
        gj += e * th[j]
    return fp.encode1(s * gj, frac_bits)


@njit(**fp.EXACT_JIT)
def _theta_step(vq, alpha, frac_bits):
    """(code, Q(alpha decode(vq)))."""
    return fp.encode1(alpha * fp.decode1(vq, frac_bits), frac_bits)


@njit(**fp.EXACT_JIT)
def _add_fits(a, b):
    """Whether a + b fits int64."""
    if b > 0:
        return a <= fp._I64_MAX - b
    return a >= -fp._I64_MAX - 1 - b


@njit(**fp.EXACT_JIT)
def _sub_fits(a, b):
    """Whether a - b fits int64."""
    if b < 0:
        return a <= fp._I64_MAX + b
    return a >= -fp._I64_MAX - 1 + b


@njit(**JIT)
def _validation(Xv, yv, code, fit_b, th, thx, n_chunks, block, grad):
    """Mean validation loss at th (no regulariser); its gradient into grad."""
    h = np.empty(th.shape[0])
    total = _pass(Xv, yv, code, fit_b, thx, thx, False, n_chunks, block, grad, h)
    grad /= Xv.shape[0]
    return total / Xv.shape[0]


@njit(**JIT)
def reversible(X, y, k, Xv, yv, code, fit_b, theta0, alpha, gamma, num, den, e, T, frac_bits,
               words, n_chunks, block, v_chunks, v_block, dXp, theta_T, thq, vq, buf):
    """T heavy-ball steps from theta0 (d + 1,) in fixed point, then the reverse
    sweep with the adjoints of rmd.trajectory. The poisoning rows are the last
    k of X. thq, vq (d + 1,) int64 and buf (d + 1, W) uint32 are the state
    (overwritten); step t touches only the first words[t + 1] limbs, which by
    the bound of required_words hold the whole buffer after t + 1 muls. The
    muls need no step_check: the buffer fits by that bound and |v| * num/den
    with num < den cannot leave int64. The reverse only revisits states the
    forward held, so it needs no checks either.

    Writes dXp (k, d) and theta_T (d + 1,), float64. Returns (status, which, t, j, value, dlam,
    recovered): status a fixed_point code (OK, or the first state `which` at
    step t, element j, that left int64: then nothing else is meaningful);
    recovered: theta_q came back to encode(theta0) and v_q, buf to zero.
    """
    n, d = X.shape
    p = d + 1 if fit_b else d  # without an intercept slot d stays 0
    s = 1.0 - gamma
    num = np.uint64(num)
    den = np.uint64(den)
    th = np.zeros(d + 1)
    thx = np.zeros(d + 1, dtype=X.dtype)
    ux = np.zeros(d + 1, dtype=X.dtype)
    g = np.empty(d + 1)
    h = np.empty(d + 1)
    thq[:] = 0
    vq[:] = 0
    buf[:] = 0
    status, j = fp.encode(theta0[:p], thq[:p], frac_bits)
    if status != fp.OK:
        return status, THETA_STATE, 0, j, 0.0, 0.0, False
    for t in range(T):
        _decode(thq, th, thx, frac_bits)
        _pass(X, y, code, fit_b, thx, ux, False, n_chunks, block, g, h)
        w = words[t + 1]
        for j in range(p):
            status, dv = _v_step(g, n, e, th, j, d, s, frac_bits)
            vj = fp.step_apply(vq[j], buf[j], w, num, den)
            if status == fp.OK and not _sub_fits(vj, dv):
                status = fp.INT64
            if status != fp.OK:
                return status, V_STATE, t, j, 0.0, 0.0, False
            vq[j] = vj - dv
            status, dth = _theta_step(vq[j], alpha, frac_bits)
            if status == fp.OK and not _add_fits(thq[j], dth):
                status = fp.INT64
            if status != fp.OK:
                return status, THETA_STATE, t, j, 0.0, 0.0, False
            thq[j] += dth

    _decode(thq, th, thx, frac_bits)
    tb = np.empty(d + 1)
    value = _validation(Xv, yv, code, fit_b, th, thx, v_chunks, v_block, tb)
    theta_T[:] = th
    vb = np.zeros(d + 1)
    u = np.empty(d + 1)
    zk = np.empty(k)
    uk = np.empty(k)
    c1 = np.empty(k)
    c2 = np.empty(k)
    tk = np.empty(k)
    bits = np.empty(k, dtype=np.int64)
    dXp[:] = 0.0
    dlam = 0.0
    for t in range(T - 1, -1, -1):
        for j in range(p):
            thq[j] -= _theta_step(vq[j], alpha, frac_bits)[1]
        _decode(thq, th, thx, frac_bits)
        for j in range(d + 1):
            u[j] = vb[j] + alpha * tb[j]
            ux[j] = u[j]
        _pass(X, y, code, fit_b, thx, ux, True, n_chunks, block, g, h)
        w = words[t + 1]
        for j in range(p):
            vq[j] = fp.step_apply(vq[j] + _v_step(g, n, e, th, j, d, s, frac_bits)[1],
                                  buf[j], w, den, num)
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

    q0 = np.zeros(d + 1, dtype=np.int64)
    fp.encode(theta0[:p], q0[:p], frac_bits)
    recovered = (thq == q0).all() and not vq.any() and not buf.any()
    return fp.OK, V_STATE, T, -1, value, dlam, recovered


@njit(**fp.EXACT_JIT)
def step_words(T, num, den):
    """words[t] = required_words(t, num, den) for t = 0..T: the limbs the
    buffer can occupy after t muls (nondecreasing in t)."""
    words = np.empty(T + 1, dtype=np.int64)
    for t in range(T + 1):
        words[t] = fp.required_words(t, num, den)
    return words
