"""The prepared engine: Engine.run equals a fresh hypergrad() call bit for bit
on every call (the packed buffer keeps no state between calls), need="lam"
and need="value" equal the matching parts of the full modes, and only the
per-call arrays are checked per call."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mithridate.hypergrad import Engine, engine as engine_module, hypergrad

OPTS = dict(T=9, alpha=0.2, gamma=0.5)


def rows(rng, n, d, dtype, lead=()):
    X = rng.normal(size=lead + (n, d)).astype(dtype)
    y = (rng.random(lead + (n,)) < 0.5).astype(dtype)
    y[..., :2] = (0, 1)[:n]  # both classes (the validation set needs them)
    return X, y


def fixed(dtype, nc=23, nv=11, d=5, seed=0):
    rng = np.random.default_rng(seed)
    return (*rows(rng, nc, d, dtype), *rows(rng, nv, d, dtype))


def same(a, b):
    for x, y in ((a.value, b.value), (a.grad_lam, b.grad_lam), (a.theta_T, b.theta_T), (a.grad_Xp, b.grad_Xp)):
        if x is None:
            assert y is None
        else:
            np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode,gamma", [("trajectory", 0.5), ("checkpoint", 0.0),
                                        ("forward", 0.5), ("reversible", 0.9), ("implicit", 0.5)])
@pytest.mark.parametrize("loss,fit_intercept", [("logistic", True), ("squared", False)])
def test_runs_equal_fresh_calls_bitwise(dtype, mode, gamma, loss, fit_intercept):
    from mithridate.models import LinearModel
    Xc, yc, Xv, yv = fixed(dtype)
    opts = dict(OPTS, gamma=gamma, mode=mode, tol=1e9)
    eng = Engine(Xc, yc, Xv, yv, model=LinearModel(loss, fit_intercept), **opts)
    rng = np.random.default_rng(1)
    for k, lam in ((3, -1.0), (3, 0.5), (1, -2.0), (3, -1.0)):  # k changes: a new buffer
        Xp, yp = rows(rng, k, 5, dtype)
        w0 = rng.normal(size=5 + fit_intercept).astype(dtype) * 0.1
        Xp0 = Xp.copy()
        got = eng.run(Xp, yp, lam, w0)
        np.testing.assert_array_equal(Xp, Xp0)
        same(got, hypergrad(Xc, yc, Xp, yp, Xv, yv, lam=lam, w0=w0, loss=loss,
                            fit_intercept=fit_intercept, **opts))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", ["numba", "torch", "cpp"])
def test_need_lam_and_value_are_parts_of_the_full_modes(dtype, backend):
    Xc, yc, Xv, yv = fixed(dtype, nc=31, d=7, seed=2)
    Xp, yp = rows(np.random.default_rng(3), 4, 7, dtype)
    mode = "trajectory"
    eng = Engine(Xc, yc, Xv, yv, mode=mode, backend=backend, **OPTS)
    full = eng.run(Xp, yp, -1.0)
    fwd = hypergrad(Xc, yc, Xp, yp, Xv, yv, lam=-1.0, mode="forward", backend=backend, **OPTS)
    lam = eng.run(Xp, yp, -1.0, need="lam")
    same(lam, fwd)
    assert lam.info["mode"] == "forward"
    val = eng.run(Xp, yp, -1.0, need="value")
    assert val.grad_Xp is None and val.grad_lam is None and val.info["mode"] == "value"
    rtol = 1e-12 if backend == "torch" else 0  # torch: the graph-free run sums alike, to rounding
    np.testing.assert_allclose(val.value, full.value, rtol=rtol)
    np.testing.assert_allclose(val.theta_T, full.theta_T, rtol=rtol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shared_c", [True, False])
@pytest.mark.parametrize("mode", ["trajectory", "forward", "checkpoint"])
def test_batched_runs_equal_fresh_calls(dtype, shared_c, mode):
    B, nc, k, d = 4, 19, 2, 6
    rng = np.random.default_rng(4)
    Xc, yc = rows(rng, nc, d, dtype, () if shared_c else (B,))
    Xv, yv = rows(rng, 9, d, dtype)
    eng = Engine(Xc, yc, Xv, yv, mode=mode, **OPTS)
    for lam in (np.linspace(-2, 0, B), -1.0):
        Xp, yp = rows(rng, k, d, dtype, (B,))
        got = eng.run(Xp, yp, lam)
        assert got.value.shape == (B,) and got.theta_T.shape == (B, d + 1)
        same(got, hypergrad(Xc, yc, Xp, yp, Xv, yv, lam=lam, mode=mode, **OPTS))
    val = eng.run(Xp, yp, lam, need="value")
    assert val.grad_lam is None and val.value.shape == (B,)


def test_fixed_rows_are_checked_once(monkeypatch):
    calls = []
    check = engine_module.check_fixed
    monkeypatch.setattr(engine_module, "check_fixed", lambda *a: calls.append(1) or check(*a))
    Xc, yc, Xv, yv = fixed(np.float64)
    eng = Engine(Xc, yc, Xv, yv, **OPTS)
    Xp, yp = rows(np.random.default_rng(5), 3, 5, np.float64)
    for lam in (-1.0, 0.0, 1.0):
        eng.run(Xp, yp, lam)
    assert len(calls) == 1


def test_bad_calls_name_the_argument():
    Xc, yc, Xv, yv = fixed(np.float64)
    eng = Engine(Xc, yc, Xv, yv, **OPTS)
    Xp, yp = rows(np.random.default_rng(6), 3, 5, np.float64)
    with pytest.raises(ValueError, match="Xp has 4 features but Xc has 5"):
        eng.run(Xp[:, :4].copy(), yp, 0.0)
    with pytest.raises(TypeError, match="Xp has dtype float32"):
        eng.run(Xp.astype(np.float32), yp, 0.0)
    with pytest.raises(ValueError, match="need='grad'"):
        eng.run(Xp, yp, 0.0, need="grad")
    with pytest.raises(ValueError, match="w0 has shape"):
        eng.run(Xp, yp, 0.0, np.zeros(3))
    batched = Engine(np.stack([Xc, Xc]), np.stack([yc, yc]), Xv, yv, **OPTS)
    with pytest.raises(ValueError, match="Xp must be 3-D"):
        batched.run(Xp, yp, 0.0)
    with pytest.raises(ValueError, match="Xc has 2 problems on axis 0 but Xp has 3"):
        batched.run(np.stack([Xp] * 3), np.stack([yp] * 3), 0.0)


def test_backend_choice(monkeypatch):
    Xc, yc, Xv, yv = fixed(np.float64)
    assert Engine(Xc, yc, Xv, yv, **OPTS).backend == "numba"
    monkeypatch.setenv("MITHRIDATE_BACKEND", "torch")
    assert Engine(Xc, yc, Xv, yv, **OPTS).backend == "torch"
    with pytest.raises(ValueError, match="no triton implementation"):
        Engine(Xc, yc, Xv, yv, backend="triton", **OPTS)
    with pytest.raises(ValueError, match="backend='numba' runs every mode"):
        Engine(Xc, yc, Xv, yv, backend="cpp", mode="checkpoint", **OPTS)


@settings(max_examples=25, deadline=None)
@given(nc=st.integers(1, 40), k=st.integers(1, 6), d=st.integers(1, 9),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**16))
def test_any_shape_equals_fresh_calls(nc, k, d, dtype, seed):
    rng = np.random.default_rng(seed)
    Xc, yc = rows(rng, nc, d, dtype)
    Xv, yv = rows(rng, 5, d, dtype)
    eng = Engine(Xc, yc, Xv, yv, **OPTS)
    for _ in range(2):
        Xp, yp = rows(rng, k, d, dtype)
        same(eng.run(Xp, yp, -1.0), hypergrad(Xc, yc, Xp, yp, Xv, yv, lam=-1.0, **OPTS))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_generic_model_with_two_hyperparameters(dtype):
    """A penalised intercept has no fused loop: the generic engine, lam (2,),
    grad_lam (2,) per problem; a batch equals its single runs."""
    from mithridate.models import LinearModel
    Xc, yc, Xv, yv = fixed(dtype, nc=13, d=3, seed=7)
    eng = Engine(Xc, yc, Xv, yv, model=LinearModel(penalize_intercept=True), **OPTS)
    assert eng.backend == "generic"
    Xp, yp = rows(np.random.default_rng(8), 2, 3, dtype, (3,))
    lam = np.array([[-1.0, 0.0], [0.0, -1.0], [-2.0, -2.0]])
    hb = eng.run(Xp, yp, lam)
    assert hb.grad_lam.shape == (3, 2) and hb.grad_Xp.shape == (3, 2, 3)
    for b in range(3):
        same(eng.run(Xp[b], yp[b], lam[b]), hypergrad(
            Xc, yc, Xp[b], yp[b], Xv, yv, lam=lam[b], model=LinearModel(penalize_intercept=True),
            **OPTS))
    with pytest.raises(ValueError, match="2 hyperparameters"):
        eng.run(Xp[0], yp[0], -1.0)
    with pytest.raises(ValueError, match="backend='auto'"):
        Engine(Xc, yc, Xv, yv, model=LinearModel(penalize_intercept=True), backend="cpp", **OPTS)
