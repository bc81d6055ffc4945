"""Reversible-mode hypergradients: the numba fixed-point port against the C++
one bit for bit, the hypergradient against autograd through the unrolled loop
and central differences, w0 recovered bit for bit, and bad inputs."""
import re
from fractions import Fraction

import numba
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mithridate import _C
from mithridate import fixed_point as fp
from mithridate.hypergrad import hypergrad
from mithridate.hypergrad import reversible
from mithridate.hypergrad.problem import make_problem
from mithridate.kernels.cpu import fixed_point as nfp
from mithridate.kernels.cpu import hypergrad_reversible
from mithridate.kernels.cpu.linear import LOSS_CODES
from mithridate.testing import TOLERANCES, assert_verbose_allclose, bilevel_data as data, hypergrad_fd

CPP = _C.fixed_point
I64_MIN, I64_MAX = -2**63, 2**63 - 1
MAX_BASE = 2**31 - 1


def kw(loss="logistic", fi=True, gamma=0.8, T=40, **extra):
    return dict(lam=-1.0, T=T, alpha=0.3, gamma=gamma, loss=loss, fit_intercept=fi, **extra)


def close(actual, expected, rtol, name):
    assert_verbose_allclose(actual, expected, rtol, rtol * np.abs(expected).max(), name=name)


# ---- the numba port of csrc/include/fixed_point.h == the C++, bit for bit ----

doubles = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                    st.floats(-1e6, 1e6), st.integers(-2**20, 2**20).map(lambda i: i / 8.0),
                    st.sampled_from([2.5, -2.5, 0.5, -0.5, 2.0**22, -2.0**22, 5e-324]))
int64s = st.one_of(st.integers(I64_MIN, I64_MAX), st.integers(-10**6, 10**6),
                   st.sampled_from([I64_MIN, I64_MIN + 1, -1, 0, 1, I64_MAX - 1, I64_MAX]))
limbs = st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 2**31, 2**32 - 1]))
bases = st.one_of(st.sampled_from([(9, 10), (10, 9), (1, 2), (2, 1), (1, 1), (MAX_BASE, 1),
                                   (MAX_BASE - 1, MAX_BASE), (1, MAX_BASE)]),
                  st.tuples(st.integers(1, MAX_BASE), st.integers(1, MAX_BASE)),
                  st.tuples(st.integers(1, 50), st.integers(1, 50)))


@settings(max_examples=200, deadline=None)
@given(st.lists(doubles, min_size=1, max_size=8), st.integers(0, 62))
def test_port_encode_decode_match_cpp(xs, frac_bits):
    x = np.array(xs, np.float64)
    q_port, q_cpp = np.zeros(x.size, np.int64), np.zeros(x.size, np.int64)
    assert nfp.encode(x, q_port, frac_bits) == tuple(CPP.encode(x, q_cpp, frac_bits))
    np.testing.assert_array_equal(q_port, q_cpp)
    out_port, out_cpp = np.empty(x.size), np.empty(x.size)
    nfp.decode(q_cpp, out_port, frac_bits)
    CPP.decode(q_cpp, out_cpp, frac_bits)
    assert out_port.tobytes() == out_cpp.tobytes()


@settings(max_examples=300, deadline=None)
@given(st.data(), bases)
def test_port_step_matches_cpp(draw, base):
    n, w = draw.draw(st.integers(1, 5)), draw.draw(st.integers(1, 4))
    q = np.array(draw.draw(st.lists(int64s, min_size=n, max_size=n)), np.int64)
    buf = np.array(draw.draw(st.lists(limbs, min_size=n * w, max_size=n * w)),
                   np.uint32).reshape(n, w)
    if draw.draw(st.booleans()):
        buf[:, -1] = 0  # room to grow: most steps then succeed
    m, d = base
    q0, buf0 = q.copy(), buf.copy()
    q_cpp, buf_cpp = q.copy(), buf.copy()
    status = nfp.mul(q, buf, m, d)
    assert status == tuple(CPP.mul(q_cpp, buf_cpp, w, m, d))
    np.testing.assert_array_equal(q, q_cpp)  # stepped, or untouched on failure
    np.testing.assert_array_equal(buf, buf_cpp)
    if status[0] == nfp.OK:  # the step (d, m) undoes it
        assert nfp.mul(q, buf, d, m) == (nfp.OK, -1)
        np.testing.assert_array_equal(q, q0)
        np.testing.assert_array_equal(buf, buf0)


@settings(max_examples=200, deadline=None)
@given(st.lists(int64s, min_size=1, max_size=8), st.integers(0, 62))
def test_scaled_decode_matches_cpp(qs, frac_bits):
    """The loop's decode, a product by 2^-frac_bits without ldexp."""
    q = np.array(qs, np.int64)
    out = np.empty(q.size)
    CPP.decode(q, out, frac_bits)
    for i in range(q.size):
        assert nfp.decode_scaled(q[i], 2.0**-frac_bits) == out[i]


@settings(max_examples=300, deadline=None)
@given(st.data(), bases)
def test_lanes_step_matches_cpp(draw, base):
    """step_lanes (limb-major, float-reciprocal division) == the C++ step."""
    n, w = draw.draw(st.integers(1, 40)), draw.draw(st.integers(1, 4))
    q = np.array(draw.draw(st.lists(int64s, min_size=n, max_size=n)), np.int64)
    buf = np.array(draw.draw(st.lists(limbs, min_size=n * w, max_size=n * w)),
                   np.uint32).reshape(n, w)
    buf[:, -1] = 0
    m, d = base
    q_cpp, buf_cpp = q.copy(), buf.copy()
    assume(CPP.mul(q_cpp, buf_cpp, w, m, d)[0] == nfp.OK)  # step_lanes is for checked steps
    lanes = np.ascontiguousarray(buf.T)
    nfp.step_lanes(q, lanes, w, m, d, np.empty(n, np.int64), np.empty(n, np.int64))
    np.testing.assert_array_equal(q, q_cpp)
    np.testing.assert_array_equal(lanes.T, buf_cpp)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10**7), bases)
def test_port_required_words_matches_cpp(n_steps, base):
    num, den = base
    assert nfp.required_words(n_steps, num, den) == fp.required_words(n_steps, num, den)


# ---- gamma as a fraction --------------------------------------------------------

@pytest.mark.parametrize("gamma,frac", [(0.9, (9, 10)), (0.5, (1, 2)), (0.99, (99, 100)),
                                        (1 / 3, (1, 3)), (0.875, (7, 8)), (0.1, (1, 10))])
def test_gamma_fraction_is_the_simple_one(gamma, frac):
    assert reversible.gamma_fraction(gamma) == frac


@settings(max_examples=200, deadline=None)
@given(st.floats(1e-6, 1 - 1e-9))
def test_gamma_fraction_is_the_simplest_within_tolerance(gamma):
    try:
        num, den = reversible.gamma_fraction(gamma)
    except ValueError as err:  # only when no den < 2^31 comes that close
        assert "no fraction" in str(err)
        assert abs(Fraction(gamma).limit_denominator(MAX_BASE) - Fraction(gamma)) > 1e-12
        return
    assert 0 < num < den <= MAX_BASE
    assert abs(Fraction(num, den) - Fraction(gamma)) <= Fraction(1e-12)
    if den > 1:  # no smaller denominator comes as close
        assert abs(Fraction(gamma).limit_denominator(den - 1) - Fraction(gamma)) > Fraction(1e-12)


def test_gamma_without_a_short_fraction_is_refused():
    with pytest.raises(ValueError, match=r"gamma=0.50000000001 has no fraction"):
        reversible.gamma_fraction(0.5 + 1e-11)


# ---- the hypergradient -------------------------------------------------------------

CASES = [(loss, fi, gamma) for loss in ("logistic", "squared") for fi in (True, False)
         for gamma in (0.5, 0.9)]


@pytest.mark.parametrize("loss,fi,gamma", CASES)
def test_matches_unrolled_autograd(loss, fi, gamma):
    D = data(k=4, d=6)
    ref = hypergrad(*D, backend="torch", **kw(loss, fi, gamma))
    rev = hypergrad(*D, mode="reversible", **kw(loss, fi, gamma))
    assert rev.info["w0_recovered"] and rev.info["frac_bits"] == reversible.DEFAULT_FRAC_BITS
    assert rev.value == pytest.approx(ref.value, rel=1e-10)
    close(rev.theta_T, ref.theta_T, 1e-10, "theta_T")
    close(rev.grad_Xp, ref.grad_Xp, 1e-8, "grad_Xp")
    assert rev.grad_lam == pytest.approx(ref.grad_lam, rel=1e-8)


@pytest.mark.parametrize("loss,fi", [("logistic", True), ("squared", False)])
def test_matches_finite_differences(loss, fi):
    # frac_bits=54: the fixed-point rounding (2^-54) stays below the FD error.
    D = data(n=24, k=2, d=4, seed=1)
    opts = kw(loss, fi, 0.8, T=15, mode="reversible", frac_bits=54)
    gX, glam = hypergrad_fd(D, opts, eps=1e-5)
    hg = hypergrad(*D, **opts)
    close(hg.grad_Xp, gX, 1e-6, "grad_Xp")
    assert hg.grad_lam == pytest.approx(glam, rel=1e-6)


def test_float32_to_float32_tolerance():
    D64 = data(d=6, seed=5)
    D32 = tuple(a.astype(np.float32) for a in D64)
    ref = hypergrad(*D64, backend="torch", **kw(T=30))
    hg = hypergrad(*D32, mode="reversible", **kw(T=30))
    assert hg.info["w0_recovered"]
    assert hg.theta_T.dtype == np.float32 and hg.grad_Xp.dtype == np.float32
    rtol, atol = TOLERANCES["float32"]
    assert_verbose_allclose(hg.theta_T, ref.theta_T, rtol, atol, name="theta_T")
    assert hg.value == pytest.approx(ref.value, rel=rtol)
    # the hypergradient sums T float32 HVPs: 1e-3, as trajectory mode's float32 test
    close(hg.grad_Xp, ref.grad_Xp, 1e-3, "grad_Xp")
    assert hg.grad_lam == pytest.approx(ref.grad_lam, rel=1e-3, abs=1e-6)


# ---- w0 recovered bit for bit ---------------------------------------------------

def run_kernel(pb, frac_bits):
    """The compiled loop on one Problem; returns its final state (thq, vq, buf)
    and the status tuple."""
    num, den = reversible.gamma_fraction(pb.gamma)
    X, y = np.concatenate([pb.Xc, pb.Xp]), np.concatenate([pb.yc, pb.yp])
    (n, d), k = X.shape, pb.Xp.shape[0]
    theta0 = np.zeros(d + 1)
    theta0[:pb.theta0.size] = pb.theta0
    words = hypergrad_reversible.step_words(pb.T, num, den)
    p = d + pb.fit_intercept
    thq, vq = np.full(p, 7, np.int64), np.full(p, 7, np.int64)  # overwritten by the kernel
    buf = np.full((words[-1], p), 7, np.uint32)
    out = hypergrad_reversible.reversible(
        X, y, k, pb.Xv, pb.yv, LOSS_CODES[pb.loss], pb.fit_intercept, theta0, pb.alpha, pb.gamma,
        num, den, np.exp(pb.lam), pb.T, frac_bits, words, *hypergrad_reversible.layout(n, d, X.itemsize),
        *hypergrad_reversible.layout(pb.Xv.shape[0], d, X.itemsize), np.empty((k, d)), np.empty(d + 1),
        thq, vq, buf)
    return theta0, thq, vq, buf, out


@settings(max_examples=6, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([np.float64, np.float32]),
       st.sampled_from(["logistic", "squared"]), st.booleans(),
       st.sampled_from([0.3, 0.5, 0.9, 0.99, 0.123456789]), st.integers(24, 56),
       st.integers(1, 60))
def test_w0_recovered_bit_for_bit(seed, dtype, loss, fi, gamma, frac_bits, T):
    rng = np.random.default_rng(seed)
    d = int(rng.integers(1, 80))
    D = data(n=int(rng.integers(2, 50)), k=int(rng.integers(1, 4)), d=d, dtype=dtype, seed=seed)
    w0 = rng.normal(size=d + fi).astype(dtype)
    pb = make_problem(*D, -1.0, w0, T, 0.2, gamma, loss, fi, "trajectory", "numba")
    theta0, thq, vq, buf, (status, *_, recovered) = run_kernel(pb, frac_bits)
    assert status == nfp.OK and recovered
    np.testing.assert_array_equal(thq, fp.encode(theta0[:d + fi], frac_bits))  # the C++ encode
    assert not vq.any() and not buf.any()


def test_w0_recovered_with_several_row_chunks_and_threads():
    """Wide rows, several row chunks: the recomputed gradient must not depend
    on the thread count, so 1 and 2 threads give the same bits."""
    D = data(n=1100, k=5, nv=30, d=400, seed=7)
    assert hypergrad_reversible.layout(1105, 400, 8)[0] > 1
    opts = kw(T=12, gamma=0.9, mode="reversible")
    hg = hypergrad(*D, **opts)
    assert hg.info["w0_recovered"]
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = hypergrad(*D, **opts)
    finally:
        numba.set_num_threads(before)
    assert one.grad_Xp.tobytes() == hg.grad_Xp.tobytes() and one.grad_lam == hg.grad_lam
    close(hg.grad_Xp, hypergrad(*D, **kw(T=12, gamma=0.9)).grad_Xp, 1e-8, "grad_Xp")


def test_state_at_paper_scale_is_small():
    """T = 1000, d = 784 (MNIST): the state is under 1/20 of the trajectory."""
    D = data(n=20, k=2, nv=10, d=784, seed=8)
    hg = hypergrad(*D, mode="reversible", **kw(T=1000, gamma=0.9))
    info = hg.info
    assert info["w0_recovered"] and info["gamma_fraction"] == (9, 10)
    assert info["buffer_words"] == fp.required_words(1000, 9, 10)
    assert info["state_bytes"] == 785 * (16 + 4 * info["buffer_words"])
    assert 20 * info["state_bytes"] <= 1001 * 785 * 8


# ---- bad inputs -------------------------------------------------------------------

@pytest.mark.parametrize("change,error,match", [
    (dict(gamma=0.0), ValueError, "mode='trajectory' or 'checkpoint'"),
    (dict(gamma=1.0), ValueError, "gamma"),
    (dict(T=0), ValueError, "T=0"),
    (dict(frac_bits=63), ValueError, "frac_bits=63"),
    (dict(frac_bits=0), ValueError, "frac_bits=0"),
    (dict(frac_bits=2.5), TypeError, "frac_bits must be an int"),
    (dict(gamma=0.5 + 1e-11), ValueError, "no fraction"),
])
def test_bad_settings_name_the_argument(change, error, match):
    with pytest.raises(error, match=match):
        hypergrad(*data(), **{**kw(mode="reversible"), **change})


def test_buffer_cap():
    D = data()
    pb = make_problem(*D, -1.0, None, 40, 0.3, 0.5, "logistic", True, "trajectory", "numba")
    need = 6 * fp.required_words(40, 1, 2) * 4
    assert reversible.run([pb], max_buffer_bytes=need)[0].info["w0_recovered"]
    with pytest.raises(ValueError, match=r"T=40 and gamma=0.5 .*mode='checkpoint'"):
        reversible.run([pb], max_buffer_bytes=need - 1)
    with pytest.raises(ValueError, match="max_buffer_bytes"):
        reversible.run([pb], max_buffer_bytes=-1)


@pytest.mark.parametrize("backend", ["numba", "cpp"])
def test_buffer_cap_through_hypergrad(backend):
    """The public API refuses a reversible run whose buffer would exceed the cap
    before any step runs, on every backend that has the mode."""
    need = 6 * fp.required_words(40, 4, 5) * 4  # d + 1 = 6 slots, gamma = 0.8 = 4/5
    opts = {**kw(mode="reversible"), "backend": backend}
    assert hypergrad(*data(), max_buffer_bytes=need, **opts).info["w0_recovered"]
    with pytest.raises(ValueError, match=r"T=40 and gamma=0.8 .*mode='checkpoint'"):
        hypergrad(*data(), max_buffer_bytes=need - 1, **opts)
    with pytest.raises(ValueError, match="applies to mode='reversible' only"):
        hypergrad(*data(), max_buffer_bytes=need, **{**opts, "mode": "trajectory"})


def test_overflow_raises_and_loses_nothing():
    """Squared loss on labels ~100 drives theta past the +-8 of frac_bits=60."""
    D = data(d=3, seed=9)
    Xc, yc, Xp, yp, Xv, yv = D
    big = tuple(a if i % 2 == 0 else 100.0 + a for i, a in enumerate(D))
    copies = [a.copy() for a in big]
    opts = kw("squared", gamma=0.5, mode="reversible")
    with pytest.raises(fp.FixedPointOverflow, match=r"with frac_bits=60; lower frac_bits"):
        hypergrad(*big, frac_bits=60, **opts)
    for a, b in zip(big, copies):
        np.testing.assert_array_equal(a, b)
    hg = hypergrad(*big, frac_bits=40, **opts)  # the fix named in the message works
    assert hg.info["w0_recovered"]
    close(hg.grad_Xp, hypergrad(*big, **{**opts, "mode": "trajectory"}).grad_Xp, 1e-8, "grad_Xp")
    with pytest.raises(fp.FixedPointOverflow, match="w0"):
        hypergrad(*D, w0=np.full(4, 1e10), **kw(mode="reversible"))


@pytest.mark.parametrize("backend", ["numba", "cpp"])
def test_w0_outside_the_fixed_point_is_refused_naming_frac_bits_and_the_bound(backend):
    w0 = np.array([0.5, -3e6, 1.0, 0.0, 2.0, 0.1])  # 3e6 < 2**22: fits frac_bits <= 41 only
    opts = {**kw(mode="reversible"), "backend": backend, "w0": w0}
    with pytest.raises(fp.FixedPointOverflow,
                       match=r"w0\[1\] = -3000000.0 .* frac_bits=45: it needs \|w0\| < 2\*\*18 .* "
                             r"use frac_bits=41 \(the largest"):
        hypergrad(*data(), frac_bits=45, **opts)
    assert hypergrad(*data(), frac_bits=41, **opts).info["w0_recovered"]


@settings(max_examples=100, deadline=None)
@given(st.floats(-2.0**64, 2.0**64, allow_nan=False), st.integers(1, 62))
def test_w0_range_check_is_the_encode_range(x, frac_bits):
    """Refused exactly when encode does not fit, and the frac_bits it suggests
    is the largest that fits."""
    w0 = np.array([0.25, x])
    fits = nfp.encode(w0, np.empty(2, np.int64), frac_bits)[0] == nfp.OK
    if fits:
        reversible.check_w0_fits(w0, frac_bits)
        return
    with pytest.raises(fp.FixedPointOverflow, match=f"frac_bits={frac_bits}: it needs") as err:
        reversible.check_w0_fits(w0, frac_bits)
    suggested = [int(f) for f in re.findall(r"use frac_bits=(\d+)", str(err.value))]
    for f in suggested:
        assert nfp.encode(w0, np.empty(2, np.int64), f)[0] == nfp.OK
        assert nfp.encode(w0, np.empty(2, np.int64), f + 1)[0] != nfp.OK
    assert suggested or nfp.encode(w0, np.empty(2, np.int64), 1)[0] != nfp.OK


def test_unrecovered_w0_raises(monkeypatch):
    real = hypergrad_reversible.reversible

    def broken(*args):
        status, which, t, j, value, dlam, _, diverged_at = real(*args)
        return status, which, t, j, value, dlam, False, diverged_at
    monkeypatch.setattr(hypergrad_reversible, "reversible", broken)
    with pytest.raises(RuntimeError, match="did not recover w0"):
        hypergrad(*data(), **kw(mode="reversible"))
