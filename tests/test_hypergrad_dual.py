"""The Gram (dual) form of the linear hypergradient loops (mithridate/hypergrad/dual.py,
kernels/cpu/hypergrad_dual.py) against the primal loops, the torch unrolled reference
and finite differences; its routing and its errors."""
import numba
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mithridate.hypergrad import Engine, hypergrad
from mithridate.models import LinearModel
from mithridate.testing import assert_verbose_allclose

RTOL = {np.float64: 1e-9, np.float32: 2e-4}
NEED = {"trajectory": "all", "forward": "lam", "value": "value"}


def _data(nc, k, nv, d, dtype, loss, B=None, seed=0):
    rng = np.random.default_rng(seed)
    lead = () if B is None else (B,)
    lab = (lambda *s: (rng.random(s) > 0.5).astype(dtype)) if loss == "logistic" else \
        (lambda *s: rng.standard_normal(s).astype(dtype))
    yv = lab(nv)
    if loss == "logistic":
        yv[:2] = 0, 1  # both classes in the validation set
    return (rng.random((nc, d)).astype(dtype), lab(nc), rng.random(lead + (k, d)).astype(dtype),
            lab(*lead, k), rng.random((nv, d)).astype(dtype), yv)


def _both(data, mode, lam, **kw):
    Xc, yc, Xp, yp, Xv, yv = data
    out = []  # (gram, primal)
    for form in ("gram", "primal"):
        eng = Engine(Xc, yc, Xv, yv, mode=mode if mode != "value" else "trajectory", form=form,
                     **kw)
        out.append(eng.run(Xp, yp, lam, need=NEED[mode]))
    return out


def _close(got, ref, dtype, mode):
    tol = RTOL[dtype]
    assert_verbose_allclose(np.asarray(got.value), np.asarray(ref.value), rtol=tol, atol=tol)
    assert_verbose_allclose(got.theta_T, ref.theta_T, rtol=tol, atol=tol * 10)
    if mode != "value":
        assert_verbose_allclose(np.asarray(got.grad_lam), np.asarray(ref.grad_lam), rtol=tol * 10,
                                atol=tol * 10 * np.max(np.abs(ref.grad_lam)))
    if mode == "trajectory":
        scale = np.max(np.abs(ref.grad_Xp))
        assert_verbose_allclose(got.grad_Xp, ref.grad_Xp, rtol=tol * 10, atol=tol * 10 * scale)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("mode", ["trajectory", "forward", "value"])
@pytest.mark.parametrize("loss,gamma,fit", [("logistic", 0.0, True), ("squared", 0.5, True),
                                            ("logistic", 0.3, False)])
def test_gram_equals_primal(dtype, mode, loss, gamma, fit):
    data = _data(29, 3, 7, 41, dtype, loss, B=5)  # 5 problems: tiles of 4 vectors and one left
    got, ref = _both(data, mode, np.array([-3.0, -1.0, 0.5, -2.0, -0.5]), T=23, alpha=0.3,
                     gamma=gamma, model=LinearModel(loss, fit_intercept=fit))
    assert got.info["form"] == "gram" and "form" not in ref.info
    _close(got, ref, dtype, mode)


@pytest.mark.parametrize("k", [1, 2, 6])
def test_gram_single_problem_and_odd_row_counts(k):
    data = _data(13, k, 5, 33, np.float64, "logistic")  # nc + k not a multiple of 4
    for mode in NEED:
        got, ref = _both(data, mode, -1.5, T=17, alpha=0.5)
        _close(got, ref, np.float64, mode)


def test_gram_equals_the_torch_unrolled_reference():
    Xc, yc, Xp, yp, Xv, yv = _data(11, 2, 5, 19, np.float64, "logistic")
    kw = dict(lam=-1.0, T=15, alpha=0.4, gamma=0.2)
    got = hypergrad(Xc, yc, Xp, yp, Xv, yv, form="gram", **kw)
    ref = hypergrad(Xc, yc, Xp, yp, Xv, yv, backend="torch", **kw)
    _close(got, ref, np.float64, "trajectory")


def test_gram_against_finite_differences():
    Xc, yc, Xp, yp, Xv, yv = _data(9, 2, 4, 15, np.float64, "logistic", seed=3)
    kw = dict(T=12, alpha=0.5, form="gram")
    hg = hypergrad(Xc, yc, Xp, yp, Xv, yv, lam=-1.0, **kw)
    f = lambda lam, P: hypergrad(Xc, yc, P, yp, Xv, yv, lam=lam, **kw).value  # noqa: E731
    h = 1e-6
    assert hg.grad_lam == pytest.approx((f(-1.0 + h, Xp) - f(-1.0 - h, Xp)) / (2 * h), rel=1e-6)
    E = np.zeros_like(Xp)
    E[1, 4] = h
    fd = (f(-1.0, Xp + E) - f(-1.0, Xp - E)) / (2 * h)
    assert hg.grad_Xp[1, 4] == pytest.approx(fd, rel=1e-6, abs=1e-12)


def test_gram_bits_do_not_depend_on_the_call_or_the_thread_count():
    Xc, yc, Xp, yp, Xv, yv = _data(21, 3, 6, 30, np.float32, "logistic", B=4)
    eng = Engine(Xc, yc, Xv, yv, T=19, alpha=0.3, form="gram")
    lam = np.array([-2.0, -1.0, 0.0, 1.0])
    first = eng.run(Xp, yp, lam)
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        again = Engine(Xc, yc, Xv, yv, T=19, alpha=0.3, form="gram").run(Xp, yp, lam)
    finally:
        numba.set_num_threads(old)
    for name in ("value", "grad_Xp", "grad_lam", "theta_T"):
        assert np.array_equal(getattr(first, name), getattr(again, name)), name


def test_auto_takes_the_gram_form_where_it_pays():
    wide = _data(10, 2, 4, 40, np.float64, "logistic")      # n = 12 rows, d = 40
    tall = _data(60, 2, 4, 8, np.float64, "logistic")       # n = 62 rows, d = 8
    threads = numba.get_num_threads()
    for (Xc, yc, Xp, yp, Xv, yv), pays in ((wide, 12 * threads < 80), (tall, False)):
        hg = hypergrad(Xc, yc, Xp, yp, Xv, yv, lam=-1.0, T=5, alpha=0.3)
        assert (hg.info.get("form") == "gram") == pays
        w0 = np.full(Xc.shape[1] + 1, 0.01)  # a start off the rows' span: primal
        hg = hypergrad(Xc, yc, Xp, yp, Xv, yv, lam=-1.0, T=5, alpha=0.3, w0=w0)
        assert "form" not in hg.info


def test_gram_reports_divergence_as_the_primal_does():
    data = _data(15, 2, 5, 30, np.float64, "logistic")
    got, ref = (Engine(data[0], data[1], data[4], data[5], T=40, alpha=80.0, form=f,
                       on_divergence="warn") for f in ("gram", "primal"))
    with pytest.warns(Warning):
        a = got.run(data[2], data[3], -1.0)
    with pytest.warns(Warning):
        b = ref.run(data[2], data[3], -1.0)
    assert a.info["diverged_at"] == b.info["diverged_at"] is not None


def test_gram_refuses_what_it_does_not_run():
    Xc, yc, Xp, yp, Xv, yv = _data(8, 2, 4, 12, np.float64, "logistic")
    kw = dict(T=5, alpha=0.3)
    with pytest.raises(ValueError, match="form"):
        Engine(Xc, yc, Xv, yv, form="dual", **kw)
    with pytest.raises(ValueError, match="form='gram' runs modes"):
        Engine(Xc, yc, Xv, yv, form="gram", mode="checkpoint", **kw)
    with pytest.raises(ValueError, match="form='gram' runs the linear"):
        Engine(Xc, yc, Xv, yv, form="gram", backend="torch", **kw)
    with pytest.raises(ValueError, match="shared by every problem"):
        Engine(np.stack([Xc, Xc]), np.stack([yc, yc]), Xv, yv, form="gram", **kw)
    with pytest.raises(ValueError, match="w0 = 0"):
        Engine(Xc, yc, Xv, yv, form="gram", **kw).run(Xp, yp, -1.0, np.full(13, 0.1))


@settings(max_examples=12, deadline=None)
@given(nc=st.integers(1, 12), k=st.integers(1, 5), nv=st.integers(2, 6), d=st.integers(1, 20),
       B=st.integers(1, 6), T=st.integers(1, 12), gamma=st.sampled_from([0.0, 0.5]),
       seed=st.integers(0, 2**16))
def test_gram_equals_primal_for_any_shape(nc, k, nv, d, B, T, gamma, seed):
    data = _data(nc, k, nv, d, np.float64, "logistic", B=B, seed=seed)
    lam = np.linspace(-2.0, 0.0, B)
    got, ref = _both(data, "trajectory", lam, T=T, alpha=0.2, gamma=gamma)
    _close(got, ref, np.float64, "trajectory")
