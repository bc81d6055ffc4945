"""Reversible RMD (Maclaurin, Duvenaud & Adams 2015) for linear models, one
compiled call for the T forward steps and the T reverse steps.

theta and v live in int64 fixed point (frac_bits = f fractional bits: q =
x 2^f); v is multiplied by gamma = num/den exactly, the lost digits kept in a
per-element buffer (kernels/cpu/fixed_point.py, a port of
csrc/include/fixed_point.h). The step and its inverse are heavy_ball.py's
exact_*; this module gives them the linear model's increment. Forward step t,
element j, s = 1 - gamma:
    g = g(decode(theta_q))                      (row sums, not divided by n)
    v_q = mul(v_q, num, den) + a_j + b_j,       a_j = rint(-(s/n) g_j 2^f),
                                                b_j = rint(-(s e) theta_q,j)  (0 on the intercept)
    theta_q += c_j,                             c_j = rint(alpha v_q,j)
The reverse undoes each line in the opposite order (theta_q -= c_j; g at
the recovered theta_t; v_q -= a_j + b_j; unmul), then takes the adjoint step
of trajectory (hypergrad.py) there. Only theta_q, v_q and the buffer are stored.

Invariant (why the reversal is exact): the reverse recomputes every
increment a_j, b_j, c_j as the same integer as the forward, because
1. each is a function of integer state (theta_q, v_q) and of g only, and g
   comes from the same compiled _pass on the same bits (gradient and HVP
   together, no branch between them, row chunks fixed by the shape, chunk
   sums in order in _sum_chunks), so it is bit for bit the forward's;
2. each is rint of ONE rounded float product (int64 -> float64 rounds to
   nearest; times 2^f is exact; s/n and s e are two doubles computed once
   and passed to both sweeps), so no contraction, reciprocal or
   reassociation has anything to change, and the glue is compiled strict
   anyway (fixed_point.EXACT_JIT: fastmath=False, never inlined by numba);
3. every integer operation is exact: an increment is added only when its
   float lies in [-2^63, 2^63) and the sum fits int64 (else the run stops
   with a status, nothing returned: a_j, b_j and a_j + b_j are checked before
   v_q + (a_j + b_j)), mul/unmul are bijections on (v_q,
   buffer) and the buffer holds required_words(t) limbs after t muls, so it
   never overflows; the reverse only revisits states the forward held.
The end of the reverse checks that theta_q came back to encode(w0) and v_q,
buffer to zero. Accepted configurations (mithridate/hypergrad/reversible.py
refuses the rest before any work): 1 <= f <= 62, every |w0_j| 2^f rounding
into [-2^63, 2^63) (|w0| < 2^(63 - f)), gamma = num/den with den < 2^31.
"""
import math

import numpy as np
from numba import njit, prange

from . import fixed_point as fp
from . import heavy_ball
from ._math import JIT
from .heavy_ball import THETA_STATE, V_STATE
from .hypergrad import _adjoint_step, _watch, new_watch
from .linear import _axpy2_rows, _block_rows, _dot2_rows, _terms


CHUNK_ELEMS = 1 << 17  # about this many elements of X per row chunk, at least


def layout(n, d, itemsize):
    """(n_chunks, block) for _pass, fixed by the shape alone (so the bits do not
    depend on the thread count): a power of two of chunks of at least
    CHUNK_ELEMS elements (measured at 529 x 784: 12 chunks 135 us a pass, 2
    chunks 105 us), blocks of a multiple of 4 rows sized for L2."""
    want = max(1, min(64, n * d // CHUNK_ELEMS, n // 4))
    return 1 << (want.bit_length() - 1), max(4, _block_rows(d, itemsize) // 4 * 4)


@njit(inline="always", **JIT)
def _chunk_start(c, n, n_chunks):
    """First row of chunk c: a multiple of 4, so that blocks of a multiple of 4
    rows keep the 4-row loops of the row helpers whole."""
    return n if c == n_chunks else (c * n // n_chunks) // 4 * 4


@njit(**JIT)
def workspace(X, n_chunks, block):
    """Buffers of _pass, allocated once per call (not per step): chunk
    partials (float64), per-chunk scratch and accumulators in X's dtype."""
    d = X.shape[1]
    return (np.zeros((n_chunks, 2, d + 1)), np.zeros(n_chunks), np.zeros((n_chunks, 5, block)),
            np.zeros((n_chunks, block), dtype=np.int64),
            np.zeros((n_chunks, 2, d + 1), dtype=X.dtype))


@njit(parallel=True, **JIT)
def _pass(X, y, code, fit_b, th, u, n_chunks, block, ws, g, h, k, rows):
    """g = X^T l'(z) and h = X^T (l''(z) (X u)) at z = X th (row sums, not
    divided by n), in one read of X; th, u (d + 1,) in X's dtype; ws from
    workspace(). For the last k rows, rows[0], rows[1], rows[2] = l'(z),
    l''(z), x.u[:d] + u[d] (the mixed products' factors). Returns sum l(z).

    The forward needs only g but runs this same pass (u = 0): there is no
    branch between g and h, so the reverse's g is the same instructions on
    the same bits, bit for bit the forward's (row chunks fixed by the shape,
    summed in order). Both products share each load of X: measured, this
    costs less than a g-only forward plus separate h calls in the reverse."""
    n, d = X.shape
    part, loss, scratch, all_bits, acc = ws
    first = n - k
    for c in prange(n_chunks):
        i0 = _chunk_start(c, n, n_chunks)
        i1 = _chunk_start(c + 1, n, n_chunks)
        z = scratch[c, 0]
        xu = scratch[c, 1]
        c1 = scratch[c, 2]
        c2 = scratch[c, 3]
        t = scratch[c, 4]
        bits = all_bits[c]
        gb = acc[c, 0]
        hb = acc[c, 1]
        total = 0.0
        part[c] = 0.0
        for r0 in range(i0, i1, block):
            m = min(block, i1 - r0)
            _dot2_rows(X, r0, m, th, th[d], u, u[d], z, xu)
            total += _terms(code, z, y[r0:r0 + m], None, m, c1, c2, t, bits)
            for i in range(max(0, first - r0), m):
                rows[0, r0 + i - first] = c1[i]
                rows[1, r0 + i - first] = c2[i]
                rows[2, r0 + i - first] = xu[i]
            for i in range(m):
                c2[i] *= xu[i]
            _axpy2_rows(X, r0, m, c1, c2, gb, hb, fit_b)
            for j in range(d + 1):  # block sums in X's dtype, chunk sums in float64
                part[c, 0, j] += gb[j]
                part[c, 1, j] += hb[j]
                gb[j] = 0
                hb[j] = 0
        loss[c] = total
    return _sum_chunks(part, loss, g, h)  # in chunk order, strict: deterministic


@njit(**fp.EXACT_JIT)
def _decode(thq, th, thx, inv_scale):
    """th[:p] = decode(thq) (float64) and its copy thx in X's dtype."""
    for j in range(thq.shape[0]):
        th[j] = fp.decode_scaled(thq[j], inv_scale)
        thx[j] = th[j]


@njit(**fp.EXACT_JIT)
def _sum_chunks(part, loss, g, h):
    """g, h = the chunk partials summed in chunk order; returns the loss sum."""
    g[:] = 0.0
    h[:] = 0.0
    total = 0.0
    for c in range(part.shape[0]):
        for j in range(g.shape[0]):
            g[j] += part[c, 0, j]
            h[j] += part[c, 1, j]
        total += loss[c]
    return total


@njit(**fp.EXACT_JIT)
def _increment(g, thq, d, cg, ce, scale, incr, codes):
    """The linear model's v increment -Q(s g) = a + b per element, into incr
    (int64) with its status in codes (heavy_ball.to_int's; INT64 if a + b
    leaves int64): a = rint(-cg g[j] 2^f), cg = s/n (the data term), and
    b = rint(-ce thq[j]), ce = s e, the L2 term (thq = theta 2^f; none on the
    intercept, j = d). Branch-free."""
    for j in range(thq.shape[0]):
        code_a, a = heavy_ball.to_int(np.rint(-cg * g[j] * scale))
        code_b, b = heavy_ball.to_int(np.rint(-ce * np.float64(thq[j])) if j < d else 0.0)
        code = code_a if code_a != fp.OK else code_b
        code = code if (code != fp.OK) | heavy_ball.fits(a, b) else fp.INT64
        incr[j] = a + b if code == fp.OK else np.int64(0)
        codes[j] = code


@njit(**JIT)
def _validation(Xv, yv, code, fit_b, thx, n_chunks, block, grad):
    """Mean validation loss at thx (no regulariser); its gradient into grad."""
    h = np.empty(grad.shape[0])
    ws = workspace(Xv, n_chunks, block)
    total = _pass(Xv, yv, code, fit_b, thx, thx, n_chunks, block, ws, grad, h, np.int64(0),
                  np.empty((3, 0)))  # k typed, not literal: one compile of the parallel _pass
    grad /= Xv.shape[0]
    return total / Xv.shape[0]


@njit(**JIT)
def reversible(X, y, k, Xv, yv, code, fit_b, theta0, alpha, gamma, num, den, e, T, frac_bits,
               words, n_chunks, block, v_chunks, v_block, dXp, theta_T, thq, vq, buf):
    """T heavy-ball steps from theta0 (d + 1,) in fixed point, then the reverse
    sweep with the adjoints of trajectory (hypergrad.py). The poisoning rows are the last
    k of X. The state (overwritten): thq, vq (p,) int64 and the limb-major
    buffer buf (W, p) uint32, p = d + fit_b. Step t touches only the first
    words[t + 1] limbs, which by the bound of required_words hold the whole
    buffer after t + 1 muls. The muls need no step_check: the buffer fits by
    that bound and |v| num/den with num < den cannot leave int64. The
    reverse only revisits states the forward held, so it needs no checks.

    Writes dXp (k, d) and theta_T (d + 1,), float64. Returns (status, which,
    t, j, value, dlam, recovered, diverged_at): status a fixed_point code (OK,
    or state `which` left int64 at step t, element j: nothing else is
    meaningful then); recovered: theta_q came back to encode(theta0) and v_q,
    buf to zero; diverged_at: the first step the growth check flagged, or -1.
    """
    n, d = X.shape
    p = thq.shape[0]
    s = 1.0 - gamma
    cg = s / n  # computed once: forward and reverse use the same two doubles
    ce = s * e
    scale = math.ldexp(1.0, frac_bits)
    inv_scale = math.ldexp(1.0, -frac_bits)
    th = np.zeros(d + 1)  # slot d stays 0 without an intercept
    thx = np.zeros(d + 1, dtype=X.dtype)
    ux = np.zeros(d + 1, dtype=X.dtype)
    g = np.empty(d + 1)
    h = np.empty(d + 1)
    rows = np.empty((3, k))
    rem = np.empty(p, dtype=np.int64)
    hi = np.empty(p, dtype=np.int64)
    incr = np.empty(p, dtype=np.int64)
    codes = np.empty(p, dtype=np.int64)
    ws = workspace(X, n_chunks, block)
    vq[:] = 0
    buf[:] = 0
    watch = new_watch()  # the divergence check of trajectory (hypergrad.py), on the decoded theta_t
    status, j = fp.encode(theta0[:p], thq, frac_bits)
    if status != fp.OK:
        return status, THETA_STATE, 0, j, 0.0, 0.0, False, -1
    for t in range(T):
        _decode(thq, th, thx, inv_scale)
        _pass(X, y, code, fit_b, thx, ux, n_chunks, block, ws, g, h, k, rows)
        gg = 0.0
        for jj in range(d + 1):
            gj = g[jj] / n + (e * th[jj] if jj < d else 0.0)
            gg += gj * gj
        _watch(gg, gamma, t, watch)
        _increment(g, thq, d, cg, ce, scale, incr, codes)
        status, which, j = heavy_ball.exact_forward(thq, vq, buf, incr, codes, words[t + 1], num,
                                                    den, alpha, rem, hi)
        if status != fp.OK:
            return status, which, t, j, 0.0, 0.0, False, -1

    _decode(thq, th, thx, inv_scale)
    tb = np.empty(d + 1)
    value = _validation(Xv, yv, code, fit_b, thx, v_chunks, v_block, tb)
    theta_T[:] = th
    vb = np.zeros(d + 1)
    u = np.empty(d + 1)
    dXp[:] = 0.0
    dlam = 0.0
    for t in range(T - 1, -1, -1):
        heavy_ball.exact_reverse_theta(thq, vq, alpha)
        _decode(thq, th, thx, inv_scale)
        heavy_ball.direction(tb, vb, alpha, u)
        for j in range(d + 1):
            ux[j] = u[j]
        _pass(X, y, code, fit_b, thx, ux, n_chunks, block, ws, g, h, k, rows)
        _increment(g, thq, d, cg, ce, scale, incr, codes)  # the forward's, bit for bit
        heavy_ball.exact_reverse(vq, buf, incr, words[t + 1], num, den, rem, hi)
        dlam += _adjoint_step(th, u, h, rows, tb, vb, dXp, n, gamma, e)

    q0 = np.empty(p, dtype=np.int64)
    fp.encode(theta0[:p], q0, frac_bits)
    recovered = (thq == q0).all() and not vq.any() and not buf.any()
    return fp.OK, V_STATE, T, -1, value, dlam, recovered, np.int64(watch[1])


@njit(**fp.EXACT_JIT)
def step_words(T, num, den):
    """words[t] = required_words(t, num, den) for t = 0..T: the limbs the
    buffer can occupy after t muls (nondecreasing in t)."""
    words = np.empty(T + 1, dtype=np.int64)
    for t in range(T + 1):
        words[t] = fp.required_words(t, num, den)
    return words
