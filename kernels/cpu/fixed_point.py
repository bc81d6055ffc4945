"""Numba port of csrc/include/fixed_point.h (exact reversible int64 fixed point).

Mirrors the header function for function, so the compiled hypergradient loop
(hypergrad_reversible.py) runs the same arithmetic as the C++/CUDA kernels; tests
check it against mithridate.fixed_point bit for bit. Values are int64
x * 2^frac_bits; a buffer row is an unsigned big integer of w little-endian
uint32 limbs. See the header for the proofs (bijection, no overflow before the
checks, required_words).

Every function here is compiled with fastmath=False *explicitly* (EXACT_JIT)
and none is inlined by numba: numba compiles a callee that leaves fastmath
unset with its caller's flags (CPUTargetOptions.finalize inherits them), and
inline="always" splices the callee's IR into the caller, so either would hand
a fastmath caller's arcp/contract/reassoc to the exact arithmetic (that is
how the hypergradient loop once rounded the same increment two ways). LLVM
may still inline the compiled bodies; their instructions keep their own
(strict) flags. tests/test_reversible_fuzz.py checks both. Unsigned
arithmetic is kept in uint64 by explicit casts (numba turns uint64 op int64
into float64).
"""
import math

import numpy as np
from numba import njit

# fastmath=False must be given: left unset, a fastmath caller's flags are inherited.
EXACT_JIT = dict(cache=True, error_model="numpy", fastmath=False)

# Status codes of the header's enum Code.
OK, CAPACITY, INT64, NOT_FINITE, RANGE = 0, 1, 2, 3, 4

_LOW = np.uint64(0xFFFFFFFF)
_SHIFT = np.uint64(32)
_TWO63 = 9223372036854775808.0  # 2^63, exact
_I64_MAX = np.int64(9223372036854775807)


# ---- encode / decode --------------------------------------------------------

@njit(**EXACT_JIT)
def encode1(x, frac_bits):
    """(code, q): q = rint(x * 2^frac_bits) (ties to even); q = 0 unless code is OK."""
    if not np.isfinite(x):
        return NOT_FINITE, np.int64(0)
    y = np.rint(math.ldexp(x, frac_bits))
    if not (y >= -_TWO63 and y < _TWO63):
        return RANGE, np.int64(0)
    return OK, np.int64(y)


@njit(**EXACT_JIT)
def decode1(q, frac_bits):
    return math.ldexp(np.float64(q), -frac_bits)


@njit(**EXACT_JIT)
def decode_scaled(q, inv_scale):
    """decode1 with inv_scale = 2.0**-frac_bits: exact for frac_bits <= 62 (the
    result is 0 or at least 2^-62, never subnormal)."""
    return np.float64(q) * inv_scale


@njit(**EXACT_JIT)
def decode_into(q, inv_scale, out):
    """out[i] = decode_scaled(q[i], inv_scale) stored in out's dtype: for a float32
    out the same bits as (q * inv_scale).astype(float32), without the float64 vector."""
    for i in range(q.shape[0]):
        out[i] = decode_scaled(q[i], inv_scale)


@njit(**EXACT_JIT)
def encode(x, q, frac_bits):
    """cpu::encode over flat arrays: (code, first bad index or -1)."""
    for i in range(x.shape[0]):
        code, qi = encode1(x[i], frac_bits)
        if code != OK:
            return code, i
        q[i] = qi
    return OK, -1


@njit(**EXACT_JIT)
def decode(q, x, frac_bits):
    for i in range(q.shape[0]):
        x[i] = decode1(q[i], frac_bits)


# ---- floor division and checked int64 arithmetic ----------------------------

@njit(**EXACT_JIT)
def floor_divmod(x, d):
    """(q, r): x = q*d + r with 0 <= r < d, for d > 0 (int64)."""
    q = x // d  # numba's // on signed ints is floor division, as Python's
    return q, x - q * d


@njit(**EXACT_JIT)
def mul_add_fits(q, m, r):
    """Whether q*m + r fits int64, for m > 0 and 0 <= r < m (int64 arguments)."""
    if q >= 0:
        return q <= (_I64_MAX - r) // m
    neg_q = np.uint64(0) - np.uint64(q)  # -q in [1, 2^63]
    return neg_q <= ((np.uint64(1) << np.uint64(63)) + np.uint64(r)) // np.uint64(m)


@njit(**EXACT_JIT)
def mul_add(q, m, r):
    """q*m + r in uint64 (it may wrap on the way), once mul_add_fits holds."""
    return np.int64(np.uint64(q) * np.uint64(m) + np.uint64(r))


# ---- the buffer: an unsigned big integer of w limbs -------------------------

@njit(**EXACT_JIT)
def push(b, w, base, r):
    """B = B*base + r for r < base < 2^31 (uint64 base and r); caller checked it fits."""
    carry = r
    for j in range(w):
        cur = np.uint64(b[j]) * base + carry
        b[j] = np.uint32(cur & _LOW)
        carry = cur >> _SHIFT


@njit(**EXACT_JIT)
def pop(b, w, base):
    """Return B mod base (uint64); B = B div base."""
    rem = np.uint64(0)
    for j in range(w - 1, -1, -1):
        cur = (rem << _SHIFT) | np.uint64(b[j])
        b[j] = np.uint32(cur // base)
        rem = cur % base
    return rem


# ---- one step: x *= m/d exactly ---------------------------------------------

@njit(**EXACT_JIT)
def step_check(x, b, w, m, d):
    """OK, CAPACITY or INT64 for the step (m, d) on (x, B); reads only."""
    m = np.uint64(m)
    d = np.uint64(d)
    hi, lo = floor_divmod(x, np.int64(d))
    rem_b = np.uint64(0)
    rem_n = np.uint64(0)
    cmp = 0
    for j in range(w - 1, 0, -1):
        cb = (rem_b << _SHIFT) | np.uint64(b[j])
        cn = (rem_n << _SHIFT) | _LOW
        qb = cb // m
        qn = cn // d
        rem_b = cb % m
        rem_n = cn % d
        if cmp == 0 and qb != qn:
            cmp = -1 if qb < qn else 1
    cb = (rem_b << _SHIFT) | np.uint64(b[0])
    y = np.uint64(lo) * m + cb % m
    if cmp == 0:
        qb = cb // m
        qn = ((rem_n << _SHIFT) | (_LOW - y % d)) // d
        cmp = 1 if qb > qn else 0
    if cmp > 0:
        return CAPACITY
    return OK if mul_add_fits(hi, np.int64(m), np.int64(y // d)) else INT64


@njit(**EXACT_JIT)
def step_apply(x, b, w, m, d):
    """Return x' of the step (m, d), updating B (the first w limbs); checked before."""
    m = np.uint64(m)
    d = np.uint64(d)
    hi, lo = floor_divmod(x, np.int64(d))
    y = np.uint64(lo) * m + pop(b, w, m)
    push(b, w, d, y % d)
    return mul_add(hi, np.int64(m), np.int64(y // d))


@njit(**EXACT_JIT)
def mul(x, b, m, d):
    """cpu::mul: the step (m, d) on every element of x (n,) and b (n, w), or on
    none when any fails step_check. (code, first bad index or -1)."""
    w = b.shape[1]
    for i in range(x.shape[0]):
        code = step_check(x[i], b[i], w, m, d)
        if code != OK:
            return code, i
    for i in range(x.shape[0]):
        x[i] = step_apply(x[i], b[i], w, m, d)
    return OK, -1


# ---- capacity ---------------------------------------------------------------

@njit(**EXACT_JIT)
def required_words(n_steps, num, den):
    """Limbs that n_steps muls by num/den from a zero buffer never overflow."""
    if n_steps <= 0:
        return 1
    t = np.float64(n_steps)
    growth = max(0.0, math.log2(np.float64(den)) - math.log2(np.float64(num)))
    bits = math.log2(np.float64(den)) + math.log2(t) + (t - 1.0) * growth + 1.0
    return np.int64(math.ceil(bits / 32.0))


# ---- the same step on many elements at once (the hypergradient loop's path) ----

_BELOW = 1.0 - 2.0**-40  # biases 1/base down, so that the float quotient never overshoots


@njit(**EXACT_JIT)
def _divmod_small(cur, base, inv):
    """(cur // base, cur % base) for 0 <= cur < base * 2^32, base < 2^31 (int64),
    inv = (1.0 / base) * _BELOW. The float quotient q_f < 2^32 has relative
    error in [-2^-40 - 2^-51, -2^-40 + 2^-51], so cur/base - 1 < q_f <= cur/base
    and trunc(q_f) is the exact quotient or one below; one branch-free
    correction makes it exact, so loops over elements vectorise (there is
    no SIMD integer division)."""
    q = np.int64(np.float64(cur) * inv)
    r = cur - q * base
    high = np.int64(r >= base)
    return q + high, r - high * base


@njit(**EXACT_JIT)
def floor_divmod_lanes(x, d, d_inv):
    """floor_divmod(x, d) for any int64 x and 0 < d < 2^31 without an integer
    division (there is no SIMD one), d_inv = (1.0 / d) * _BELOW: x = xh 2^32 + xl;
    xh = qh d + rh by a float quotient (|xh| <= 2^31: off by at most one, one
    branch-free correction each way); then rh 2^32 + xl < d 2^32 by _divmod_small."""
    xh = x >> np.int64(32)  # arithmetic shift: floor(x / 2^32)
    xl = x & np.int64(0xFFFFFFFF)
    qh = np.int64(math.floor(np.float64(xh) / np.float64(d)))
    rh = xh - qh * d
    low = np.int64(rh < 0)
    qh, rh = qh - low, rh + low * d
    high = np.int64(rh >= d)
    qh, rh = qh + high, rh - high * d
    ql, r = _divmod_small((rh << np.int64(32)) | xl, d, d_inv)
    return (qh << np.int64(32)) + ql, r


@njit(**EXACT_JIT)
def step_lanes(x, B, w, m, d, rem, hi):
    """step_apply on every element: x[j] and column j of the limb-major buffer
    B (W, n) uint32, first w limbs, for the step (m, d). No checks (the caller
    has proven the step fits). rem, hi: int64 scratch (n,). Every loop runs
    over elements without an integer division, so it vectorises (the split of
    the full int64 x by floor_divmod_lanes)."""
    n = x.shape[0]
    m = np.int64(m)
    d = np.int64(d)
    m_inv = 1.0 / np.float64(m) * _BELOW
    d_inv = 1.0 / np.float64(d) * _BELOW
    for j in range(n):
        hi[j], lo = floor_divmod_lanes(x[j], d, d_inv)
        x[j] = lo  # x holds lo until the end
        rem[j] = 0
    for i in range(w - 1, -1, -1):  # pop: B div m, digits s into rem
        row = B[i]
        for j in range(n):
            q, r = _divmod_small((rem[j] << 32) | np.int64(row[j]), m, m_inv)
            row[j] = np.uint32(q)
            rem[j] = r
    for j in range(n):  # y = lo m + s; x' = hi m + y div d; carry y mod d
        q, r = _divmod_small(x[j] * m + rem[j], d, d_inv)
        x[j] = mul_add(hi[j], m, q)
        rem[j] = r
    for i in range(w):  # push: B = B d + carry
        row = B[i]
        for j in range(n):
            cur = np.int64(row[j]) * d + rem[j]
            row[j] = np.uint32(cur & 0xFFFFFFFF)
            rem[j] = cur >> 32
