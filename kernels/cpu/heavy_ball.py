"""The heavy-ball step, written once for every numba driver: in float64 and in
exact int64 fixed point, over flat vectors (a model's parameters in one row).

Float (Maclaurin et al. 2015; gamma = 0 is plain GD), g the full gradient of
the training objective at theta_t:
    v_{t+1} = gamma v_t - (1 - gamma) g,   theta_{t+1} = theta_t + alpha v_{t+1}.
Its adjoint, with tb = dA/dtheta_{t+1}, vb = dA/dv_{t+1} and H = the
objective's Hessian at theta_t: u = vb + alpha tb (the adjoint of v_{t+1},
`direction`), then (`adjoint`)
    tb <- tb - (1 - gamma) H u,   vb <- gamma u;
the model's mixed terms -(1 - gamma) d/dX (g . u) and -(1 - gamma) d/dlam (g . u)
are the caller's (they need the rows). The float functions are compiled with
the drivers' fastmath flags (_math.JIT): they are the same instructions the
drivers ran inline before, so every result keeps its bits.

Exact fixed point (Maclaurin et al.'s reversible learning): theta_q, v_q are
int64 (x 2^f), v is multiplied by gamma = num/den exactly with the lost
digits in a limb-major uint32 buffer (fixed_point.step_lanes), and the
gradient enters as an int64 increment `incr` computed by the caller from
integer state and one float gradient (so that the reverse, recomputing the
same gradient at the same theta_q, recomputes the same integers):
    forward  (exact_forward):          v_q <- mul(v_q) + incr;  theta_q <- theta_q + rint(alpha v_q)
    reverse  (exact_reverse_theta):    theta_q <- theta_q - rint(alpha v_q)     -> theta_t again
             (caller: incr at theta_t, the same integers as the forward's)
             (exact_reverse):          v_q <- unmul(v_q - incr)                 -> v_t again
incr is e.g. `exact_increment` (rint(scale g), scale = -(1 - gamma) 2^f: one
rounded product), or a model's own sum of such products (the linear kernel:
rint(-(s/n) g 2^f) + rint(-(s e) theta_q)). Every exact function is compiled
fastmath=False explicitly and never inlined by numba (fixed_point.EXACT_JIT:
why), so a fastmath driver cannot change how an increment rounds.
"""
import numpy as np
from numba import njit

from . import fixed_point as fp
from ._math import JIT

V_STATE, THETA_STATE = 0, 1  # which state left int64, in exact_forward's status
ELEMENT_BAD_THETA = 8        # exact_forward's codes: v's code, or this times theta's


# ---- float ------------------------------------------------------------------

@njit(**JIT)
def step(theta, v, g, alpha, gamma):
    """One step in place: v = gamma v - (1 - gamma) g, theta += alpha v (float64 (p,))."""
    s = 1.0 - gamma
    for j in range(theta.shape[0]):
        v[j] = gamma * v[j] - s * g[j]
        theta[j] += alpha * v[j]


@njit(**JIT)
def direction(tb, vb, alpha, u):
    """u = vb + alpha tb: the adjoint of v_{t+1}, the vector the step back
    needs the Hessian (and the mixed products) of."""
    for j in range(u.shape[0]):
        u[j] = vb[j] + alpha * tb[j]


@njit(**JIT)
def adjoint(tb, vb, u, hu, gamma):
    """One step back in place, hu = H(theta_t) u (u from `direction`):
    tb -= (1 - gamma) hu, vb = gamma u."""
    s = 1.0 - gamma
    for j in range(tb.shape[0]):
        tb[j] -= s * hu[j]
        vb[j] = gamma * u[j]


# ---- exact fixed point ------------------------------------------------------

@njit(**fp.EXACT_JIT)
def to_int(y):
    """(code, q) for an integral float y: q = int64(y) and OK if y lies in
    [-2^63, 2^63), else q = 0 and NOT_FINITE (nan) or RANGE (inf too). Branch-free."""
    in_range = (y >= -fp._TWO63) & (y < fp._TWO63)  # False for nan too
    q = np.int64(y) if in_range else np.int64(0)
    code = fp.OK if in_range else (fp.NOT_FINITE if y != y else fp.RANGE)
    return code, q


@njit(**fp.EXACT_JIT)
def fits(a, q):
    """Whether a + q fits int64 (int64 a, q). Branch-free."""
    return ((q > 0) & (a <= fp._I64_MAX - q)) | ((q <= 0) & (a >= -fp._I64_MAX - 1 - q))


@njit(**fp.EXACT_JIT)
def exact_increment(g, scale, out, codes):
    """out[j] = rint(scale * g[j]) (int64; one rounded product: scale is
    e.g. -(1 - gamma) 2^f), codes[j] its to_int code (out[j] = 0 unless OK)."""
    for j in range(out.shape[0]):
        codes[j], out[j] = to_int(np.rint(scale * g[j]))


@njit(**fp.EXACT_JIT)
def _theta_incr(vq, alpha):
    """rint(alpha vq) = Q(alpha decode(vq)), as an integral float."""
    return np.rint(alpha * np.float64(vq))


@njit(**fp.EXACT_JIT)
def exact_forward(thq, vq, buf, incr, codes, w, num, den, alpha, rem, hi):
    """One exact step in place: v_q = mul(v_q, num, den) + incr (the digits
    into buf, limb-major (W, p) uint32, first w limbs: w = required_words(t + 1)
    after t steps, so the mul needs no check, and |v| num/den with num < den
    cannot leave int64); theta_q += rint(alpha v_q). thq, vq, incr (p,) int64.
    codes (p,) int64: on entry the increment's per-element status (OK = 0:
    incr[j] is valid), on return each element's: v's code (the increment's,
    or INT64 if v_q + incr leaves int64), else ELEMENT_BAD_THETA times theta's
    (RANGE/NOT_FINITE of rint(alpha v_q), INT64 of the sum). Every element
    without a branch (the loop vectorises). rem, hi: int64 scratch (p,).
    Returns (status, which, j): (OK, V_STATE, -1), or the first bad element's
    code, which (V_STATE or THETA_STATE) and j; the state is then garbage."""
    fp.step_lanes(vq, buf, w, num, den, rem, hi)
    bad = 0
    for j in range(thq.shape[0]):
        q = incr[j]
        code_v = codes[j] if codes[j] != fp.OK else (fp.OK if fits(vq[j], q) else fp.INT64)
        vq[j] += q if code_v == fp.OK else np.int64(0)
        code_t, dth = to_int(_theta_incr(vq[j], alpha))
        code_t = code_t if (code_t != fp.OK) | fits(thq[j], dth) else fp.INT64
        thq[j] += dth if code_t == fp.OK else np.int64(0)
        codes[j] = code_v if code_v != fp.OK else ELEMENT_BAD_THETA * code_t
        bad |= codes[j]
    if bad == 0:
        return fp.OK, V_STATE, -1
    for j in range(thq.shape[0]):
        c = codes[j]
        if c != 0:
            return (c, V_STATE, j) if c < ELEMENT_BAD_THETA else \
                (c // ELEMENT_BAD_THETA, THETA_STATE, j)
    return fp.OK, V_STATE, -1


@njit(**fp.EXACT_JIT)
def exact_reverse_theta(thq, vq, alpha):
    """The first half of the inverse: theta_q -= rint(alpha v_q) (the
    forward's increment, so it fits), giving back theta_t, where the caller
    recomputes incr."""
    for j in range(thq.shape[0]):
        thq[j] -= np.int64(_theta_incr(vq[j], alpha))


@njit(**fp.EXACT_JIT)
def exact_reverse(vq, buf, incr, w, num, den, rem, hi):
    """The second half: v_q = unmul(v_q - incr) with the forward's incr and w,
    back to the (v_q, buf) the forward held before the step. No check is
    needed: the reverse only revisits states the forward held."""
    for j in range(vq.shape[0]):
        vq[j] -= incr[j]
    fp.step_lanes(vq, buf, w, den, num, rem, hi)
