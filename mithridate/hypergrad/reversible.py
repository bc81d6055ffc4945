"""Reversible-mode hypergradients (Maclaurin, Duvenaud & Adams 2015) on numba.

The inner loop runs in int64 fixed point with ``frac_bits`` fractional bits
(default 40: resolution 2^-40 ~ 9e-13, range |theta|, |v| < 2^23 ~ 8e6), and
the momentum multiplies v by a fraction num/den within 1e-12 of gamma
exactly, moving the lost digits into a per-parameter buffer sized in advance
(mithridate.fixed_point.required_words). The reverse sweep then recomputes
theta_t, v_t bit for bit instead of storing the trajectory: state
p (16 + 4 words) bytes instead of (T + 1) p 8. The hypergradient is that of
the float dynamics along the fixed-point trajectory, within ~T 2^-frac_bits of
trajectory mode.

Why the reversal is exact: kernels/cpu/hypergrad_reversible.py (the invariant).
A configuration is accepted, and then w0 comes back bit for bit, when
(checked by ``plan`` before any work):
- 1 <= frac_bits <= 62 (MAX_FRAC_BITS: 2^-frac_bits and every decoded value
  stay normal doubles, and one integer bit is left);
- every coordinate of w0 rounds into the int64 range: |w0_j| 2^frac_bits
  < 2^63, i.e. |w0| < 2^(63 - frac_bits) (about; the exact test is encode's);
- gamma in (0, 1) is within GAMMA_TOL of a fraction num/den, den < 2^31;
- T >= 1 and the bit buffer, p required_words(T, num, den) 4 bytes, fits
  max_buffer_bytes.
If theta or v later leaves the int64 range (training diverges, or frac_bits
leaves too little room), the kernel stops at that step and FixedPointOverflow
is raised: no result is returned.
"""
import math
from fractions import Fraction

import numpy as np

from .. import fixed_point
from . import divergence
from .result import HyperGrad

DEFAULT_FRAC_BITS = 40
MAX_FRAC_BITS = fixed_point.MAX_FRAC_BITS
GAMMA_TOL = 1e-12  # gamma is replaced by the simplest fraction this close


def gamma_fraction(gamma):
    """(num, den): the simplest fraction within GAMMA_TOL of gamma in (0, 1),
    num, den <= 2^31 - 1 (e.g. 0.9 -> (9, 10))."""
    if not 0 < gamma < 1:
        raise ValueError(_gamma_message(gamma))
    g = Fraction(gamma)
    f = _simplest_between(max(g - Fraction(GAMMA_TOL), Fraction(0)), g + Fraction(GAMMA_TOL))
    if f.numerator == 0:
        raise ValueError(f"gamma={gamma!r} is within {GAMMA_TOL:g} of 0; mode='reversible' needs "
                         "gamma > 0 (use mode='trajectory' or 'checkpoint').")
    if f.denominator > fixed_point.MAX_BASE:
        raise ValueError(f"gamma={gamma!r} has no fraction num/den with den < 2**31 within "
                         f"{GAMMA_TOL:g}; round it (e.g. gamma={round(gamma, 6)}).")
    return f.numerator, f.denominator


def _simplest_between(lo, hi):
    """The fraction with the smallest denominator in [lo, hi], 0 <= lo <= hi
    (continued fractions of the two ends until they part)."""
    fl = math.floor(lo)
    if fl == lo or fl + 1 <= hi:
        return Fraction(fl if fl == lo else fl + 1)
    return fl + 1 / _simplest_between(1 / (hi - fl), 1 / (lo - fl))


def _gamma_message(gamma):
    if gamma == 0:
        return ("gamma=0 with mode='reversible': without momentum v_t is forgotten at every "
                "step and cannot be reversed; use mode='trajectory' or 'checkpoint', or gamma > 0.")
    return f"gamma={gamma!r} must lie in (0, 1) for mode='reversible'."


def check_frac_bits(frac_bits):
    """frac_bits (None -> DEFAULT_FRAC_BITS), an int in [1, MAX_FRAC_BITS]."""
    if frac_bits is None:
        return DEFAULT_FRAC_BITS
    if isinstance(frac_bits, bool) or not isinstance(frac_bits, (int, np.integer)):
        raise TypeError(f"frac_bits must be an int (fractional bits of the fixed point, default "
                        f"{DEFAULT_FRAC_BITS}), got {type(frac_bits).__name__} {frac_bits!r}.")
    if not 1 <= frac_bits <= MAX_FRAC_BITS:
        raise ValueError(f"frac_bits={frac_bits} is out of range; it must be in "
                         f"[1, {MAX_FRAC_BITS}] (default {DEFAULT_FRAC_BITS}).")
    return int(frac_bits)


def check_max_buffer_bytes(max_buffer_bytes):
    if max_buffer_bytes is not None and (isinstance(max_buffer_bytes, bool) or not isinstance(
            max_buffer_bytes, (int, np.integer)) or max_buffer_bytes < 0):
        raise ValueError(f"max_buffer_bytes={max_buffer_bytes!r} must be None or a "
                         "non-negative int (bytes).")


def plan(pb, frac_bits, max_buffer_bytes):
    """Every check of one problem before any work: (num, den, words, state_bytes)."""
    if isinstance(pb.T, bool) or not isinstance(pb.T, (int, np.integer)) or pb.T <= 0:
        raise ValueError(f"T={pb.T!r} must be a positive integer (the number of inner steps).")
    num, den = gamma_fraction(pb.gamma)
    words = fixed_point.required_words(pb.T, num, den)
    slots = pb.d + pb.fit_intercept
    buffer_bytes = slots * words * 4
    cap = (pb.T + 1) * slots * 8 if max_buffer_bytes is None else max_buffer_bytes
    if buffer_bytes > cap:
        raise ValueError(
            f"mode='reversible' with T={pb.T} and gamma={pb.gamma!r} (= {num}/{den}) needs a "
            f"{buffer_bytes}-byte bit buffer ({words} words per parameter), over max_buffer_bytes="
            f"{cap}{' (the trajectory it replaces)' if max_buffer_bytes is None else ''}; use "
            "mode='checkpoint', a larger gamma, or raise max_buffer_bytes.")
    check_w0_fits(pb.theta0, frac_bits)
    return num, den, words, slots * 16 + buffer_bytes


def check_w0_fits(w0, frac_bits):
    """Raise FixedPointOverflow, naming frac_bits and the bound, unless every
    w0_j encodes into int64 with frac_bits fractional bits."""
    w0 = np.asarray(w0, np.float64)
    if _encodes(w0, frac_bits):
        return
    j = int(np.argmax(np.abs(w0)))
    fits = next((f for f in range(frac_bits - 1, 0, -1) if _encodes(w0, f)), None)
    fix = f"use frac_bits={fits} (the largest that fits this w0) or rescale w0" if fits \
        else "rescale w0"
    e = 63 - frac_bits
    raise fixed_point.FixedPointOverflow(
        f"w0[{j}] = {float(w0[j])!r} does not fit the fixed point of mode='reversible' with "
        f"frac_bits={frac_bits}: it needs |w0| < 2**{e} = {2.0**e:g} (w0 2**frac_bits within "
        f"int64); {fix}.")


def _encodes(w0, frac_bits):
    try:
        fixed_point.encode(w0, frac_bits)
    except fixed_point.FixedPointOverflow:
        return False
    return True


def run(problems, frac_bits=None, max_buffer_bytes=None):
    """Reversible hypergradients of a list of Problems (problem.py), one
    HyperGrad each; every problem is checked before any runs.

    ``max_buffer_bytes`` caps the bit buffer per problem (default: the size
    of the trajectory, (T + 1) (d + 1) 8 bytes). Raises FixedPointOverflow
    when theta or v leaves the int64 range of ``frac_bits``, and RuntimeError
    if w0 is not recovered bit for bit (which would be a bug).
    """
    frac_bits = check_frac_bits(frac_bits)
    check_max_buffer_bytes(max_buffer_bytes)
    plans = [plan(pb, frac_bits, max_buffer_bytes) for pb in problems]
    return [_one(pb, frac_bits, *plan, where=f" (problem {i})" if len(problems) > 1 else "")
            for i, (pb, plan) in enumerate(zip(problems, plans))]


def _one(pb, frac_bits, num, den, words, state_bytes, where):
    """Run one planned problem; raise on overflow or an unrecovered w0."""
    from ..kernels.cpu.fixed_point import NOT_FINITE, OK
    from ..kernels.cpu.linear import LOSS_CODES
    from ..kernels.cpu.hypergrad_reversible import THETA_STATE, layout, reversible, step_words
    X, y = pb.rows()
    (n, d), nv, k = X.shape, pb.Xv.shape[0], pb.Xp.shape[0]
    theta0 = np.zeros(d + 1)
    theta0[:pb.theta0.shape[0]] = pb.theta0
    dXp = np.empty((k, d))
    theta_T = np.empty(d + 1)
    p = d + pb.fit_intercept
    thq = np.empty(p, np.int64)
    vq = np.empty(p, np.int64)
    buf = np.empty((words, p), np.uint32)
    status, which, t, j, value, dlam, recovered, diverged_at = reversible(
        X, y, k, pb.Xv, pb.yv, LOSS_CODES[pb.loss], pb.fit_intercept, theta0, pb.alpha, pb.gamma,
        num, den, float(np.exp(pb.lam)), pb.T, frac_bits, step_words(pb.T, num, den),
        *layout(n, d, X.itemsize), *layout(nv, d, X.itemsize), dXp, theta_T, thq, vq, buf)
    if status != OK:
        name = "theta" if which == THETA_STATE else "v"
        e = 63 - frac_bits
        what = "is not finite" if status == NOT_FINITE else \
            f"left the fixed-point range [-2**{e}, 2**{e})"
        raise fixed_point.FixedPointOverflow(
            f"mode='reversible'{where}: {name}[{j}] at step {t + 1} of {pb.T} {what} with "
            f"frac_bits={frac_bits}; lower frac_bits, or alpha if training diverges, or rescale "
            "the data. No result was returned.")
    if not recovered:
        raise RuntimeError(f"mode='reversible'{where}: the reverse sweep did not recover w0 bit "
                           "for bit, so the hypergradient is not trustworthy; please report it "
                           "and use mode='trajectory'.")
    info = dict(mode="reversible", backend="numba", T=pb.T, w0_recovered=True,
                frac_bits=frac_bits, gamma_fraction=(num, den), buffer_words=words,
                state_bytes=state_bytes, diverged_at=int(diverged_at))
    dt = pb.Xc.dtype
    return HyperGrad(float(value), divergence.to_dtype(dXp, dt, f"mode='reversible'{where}"),
                     float(dlam), theta_T[:p].astype(dt), info)
