"""kernels/cpu/heavy_ball.py: the float step and its adjoint against their
formulas (the adjoint is the transpose of the step's Jacobian on a quadratic),
and the exact fixed-point step: its inverse is the identity on every state,
its integers are fixed_point.mul's plus the increment, and every way out of
int64 is reported with the element that left."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mithridate.kernels.cpu import fixed_point as fp
from mithridate.kernels.cpu import heavy_ball as hb

SIZES = (1, 3, 7, 17, 40)
RTOL = {np.float32: 1e-6, np.float64: 1e-14}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("p", SIZES)
def test_step_is_the_heavy_ball_update(dtype, p):
    rng = np.random.default_rng(p)
    theta, v, g = (rng.normal(size=p).astype(dtype) for _ in range(3))
    alpha, gamma = 0.37, 0.81
    want_v = gamma * v.astype(float) - (1 - gamma) * g.astype(float)
    want_theta = theta.astype(float) + alpha * want_v
    hb.step(theta, v, g, alpha, gamma)
    np.testing.assert_allclose(v, want_v, rtol=RTOL[dtype], atol=RTOL[dtype])
    np.testing.assert_allclose(theta, want_theta, rtol=RTOL[dtype], atol=RTOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("p", SIZES)
def test_adjoint_is_the_transpose_of_the_step(dtype, p):
    """On g = H theta + c the step is linear in (theta, v) with Jacobian J;
    direction + adjoint (hu = H u) map (tb, vb) to J^T (tb, vb)."""
    rng = np.random.default_rng(100 + p)
    A = rng.normal(size=(p, p))
    H = A @ A.T / p
    alpha, gamma = 0.23, 0.6
    s = 1 - gamma
    I = np.eye(p)
    # (theta', v') = J (theta, v):  v' = gamma v - s H theta,  theta' = theta + alpha v'
    Jv = np.hstack([-s * H, gamma * I])
    J = np.vstack([np.hstack([I, np.zeros((p, p))]) + alpha * Jv, Jv])
    tb, vb = (rng.normal(size=p).astype(dtype) for _ in range(2))
    want = J.T @ np.concatenate([tb, vb]).astype(float)
    u = np.empty(p, dtype)
    hb.direction(tb, vb, alpha, u)
    np.testing.assert_allclose(u, vb.astype(float) + alpha * tb, rtol=RTOL[dtype])
    hb.adjoint(tb, vb, u, (H @ u.astype(float)).astype(dtype), gamma)
    tol = 10 * RTOL[dtype]
    np.testing.assert_allclose(np.concatenate([tb, vb]), want, rtol=tol, atol=tol)


def _scratch(p):
    return tuple(np.empty(p, np.int64) for _ in range(2))


@settings(max_examples=200, deadline=None)
@given(p=st.integers(1, 40), seed=st.integers(0, 2**32 - 1),
       frac=st.sampled_from([(1, 2), (3, 10), (9, 10), (99, 100), (123456789, 1000000000)]),
       alpha=st.floats(1e-3, 2.0), shift=st.integers(0, 20))
def test_exact_reverse_undoes_exact_forward(p, seed, frac, alpha, shift):
    """Whatever the state, increment and step size: forward then the two
    halves of the inverse give back theta_q, v_q and the buffer bit for bit,
    and the forward's integers are fixed_point.mul's plus incr, then
    theta_q + rint(alpha v_q)."""
    num, den = frac
    rng = np.random.default_rng(seed)
    thq = rng.integers(-2**40, 2**40, p) << shift
    vq = rng.integers(-2**40, 2**40, p)
    incr = rng.integers(-2**40, 2**40, p) >> int(rng.integers(0, 40))
    buf = np.zeros((3, p), np.uint32)
    buf[0] = rng.integers(0, 2**32, p, dtype=np.uint32)
    state = thq.copy(), vq.copy(), buf.copy()
    want_v, want_b = vq.copy(), buf[:2].T.copy()  # fixed_point.mul: element-major
    assert fp.mul(want_v, want_b, num, den) == (fp.OK, -1)
    want_v += incr
    want_theta = thq + np.rint(alpha * want_v.astype(float)).astype(np.int64)
    codes = np.zeros(p, np.int64)
    assert hb.exact_forward(thq, vq, buf, incr, codes, 2, num, den, alpha, *_scratch(p)) == \
        (fp.OK, hb.V_STATE, -1)
    np.testing.assert_array_equal(vq, want_v)
    np.testing.assert_array_equal(buf[:2].T, want_b)
    np.testing.assert_array_equal(thq, want_theta)
    assert not codes.any()
    hb.exact_reverse_theta(thq, vq, alpha)
    np.testing.assert_array_equal(thq, state[0])
    hb.exact_reverse(vq, buf, incr, 2, num, den, *_scratch(p))
    for got, want, name in zip((thq, vq, buf), state, ("theta_q", "v_q", "buffer")):
        np.testing.assert_array_equal(got, want, err_msg=name)


def test_exact_increment_rounds_one_product_and_flags_what_does_not_fit():
    g = np.array([0.3, -1.7, 2.5, np.nan, 1e300, -np.inf, -1e-300])
    scale = -0.25 * 2.0**40
    out, codes = np.empty(7, np.int64), np.empty(7, np.int64)
    hb.exact_increment(g, scale, out, codes)
    np.testing.assert_array_equal(codes, [fp.OK] * 3 + [fp.NOT_FINITE, fp.RANGE, fp.RANGE, fp.OK])
    np.testing.assert_array_equal(out[:3], np.rint(scale * g[:3]).astype(np.int64))
    assert not out[3:6].any() and out[6] == 0


@pytest.mark.parametrize("p", (1, 5, 33))
def test_exact_forward_reports_the_first_element_that_leaves_int64(p):
    big = np.iinfo(np.int64).max
    cases = []
    # the increment's own code comes through (v's)
    codes = np.zeros(p, np.int64)
    codes[p - 1] = fp.NOT_FINITE
    cases.append((np.zeros(p, np.int64), np.zeros(p, np.int64), np.zeros(p, np.int64), codes,
                  (fp.NOT_FINITE, hb.V_STATE, p - 1)))
    # v_q + incr past int64
    vq = np.zeros(p, np.int64)
    vq[p // 2] = big - 10  # halved by the mul (1/2)
    incr = np.zeros(p, np.int64)
    incr[p // 2] = big // 2 + 10**6
    cases.append((np.zeros(p, np.int64), vq, incr, np.zeros(p, np.int64),
                  (fp.INT64, hb.V_STATE, p // 2)))
    # theta_q + rint(alpha v_q) past int64
    thq = np.zeros(p, np.int64)
    thq[0] = big - 5
    incr = np.full(p, 2**20, np.int64)
    cases.append((thq, np.zeros(p, np.int64), incr, np.zeros(p, np.int64),
                  (fp.INT64, hb.THETA_STATE, 0)))
    for thq, vq, incr, codes, want in cases:
        buf = np.zeros((1, p), np.uint32)
        got = hb.exact_forward(thq, vq, buf, incr, codes, 1, 1, 2, 1.0, *_scratch(p))
        assert got == want
