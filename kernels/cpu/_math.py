"""Vectorisable elementwise math for the numba kernels.

numba's pip builds have no SVML, so ``math.exp``/``math.log1p`` stay scalar
calls inside a loop. These loops use only +, *, floor, compares and an integer
exponent write, which LLVM turns into AVX2/AVX-512 code. Accuracy (float64,
checked in tests/test_cpu_math.py against numpy over [0, 745]):
- ``exp_neg_abs``: Taylor degree 13 on |r| <= ln2/2 after range reduction,
  2^k written into the exponent bits; relative error < 4e-16. Arguments below
  -708 are clamped there (result < 3.4e-307 instead of a subnormal or 0).
- ``log1p_unit`` for t in [0, 1]: atanh series on s = t/(2+t) (or (t-1)/(t+3)
  for t > sqrt(2)-1, plus ln 2), |s| <= 0.1716, 11 terms; relative error
  < 5e-16.
"""
import numpy as np
from numba import njit

# fastmath without nnan/ninf: nan and inf keep their IEEE meaning.
FASTMATH = {"nsz", "arcp", "contract", "reassoc"}
# error_model="numpy": no zero-divisor check on float division (IEEE result),
# which would otherwise stop LLVM from vectorising any loop that divides.
JIT = dict(fastmath=FASTMATH, error_model="numpy", cache=True)
# Range reductions must not be reassociated: (x - k ln2_hi) - k ln2_lo would
# collapse into x - k ln2 and lose ~30 ulp near |x| = 708.
STRICT_JIT = dict(JIT, fastmath=FASTMATH - {"reassoc"})

LOG2E = 1.4426950408889634
LN2_HI = 6.93147180369123816490e-01
LN2_LO = 1.90821492927058770002e-10
LN2 = 0.6931471805599453
SQRT2_M1 = 0.41421356237309503


@njit(**STRICT_JIT)
def exp_neg_abs(z, out, bits, m):
    """out[:m] = exp(-|z[:m]|); `bits` is an int64 scratch array of length >= m."""
    for i in range(m):
        x = max(-abs(z[i]), -708.0)
        k = np.floor(x * LOG2E + 0.5)
        r = (x - k * LN2_HI) - k * LN2_LO
        p = 1.0 / 6227020800.0
        p = p * r + 1.0 / 479001600.0
        p = p * r + 1.0 / 39916800.0
        p = p * r + 1.0 / 3628800.0
        p = p * r + 1.0 / 362880.0
        p = p * r + 1.0 / 40320.0
        p = p * r + 1.0 / 5040.0
        p = p * r + 1.0 / 720.0
        p = p * r + 1.0 / 120.0
        p = p * r + 1.0 / 24.0
        p = p * r + 1.0 / 6.0
        p = p * r + 0.5
        p = p * r + 1.0
        out[i] = p * r + 1.0
        bits[i] = (np.int64(k) + 1023) << 52
    scale = bits.view(np.float64)
    for i in range(m):
        out[i] *= scale[i]


@njit(inline="always", **JIT)
def log1p_unit(t):
    """log(1 + t) for t in [0, 1]; branch-free so that callers' loops vectorise."""
    big = np.float64(t > SQRT2_M1)
    s = (t - big) / (t + 2.0 + big)
    s2 = s * s
    p = 1.0 / 21.0
    p = p * s2 + 1.0 / 19.0
    p = p * s2 + 1.0 / 17.0
    p = p * s2 + 1.0 / 15.0
    p = p * s2 + 1.0 / 13.0
    p = p * s2 + 1.0 / 11.0
    p = p * s2 + 1.0 / 9.0
    p = p * s2 + 1.0 / 7.0
    p = p * s2 + 1.0 / 5.0
    p = p * s2 + 1.0 / 3.0
    p = p * s2 + 1.0
    return 2.0 * s * p + big * LN2
