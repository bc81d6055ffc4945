"""Hypergradients (mithridate.hypergrad) against autograd through the
unrolled loop and against central finite differences."""
import warnings

import numpy as np
import pytest

from mithridate.hypergrad import hypergrad, schedule
from mithridate.testing import bilevel_data as data, hypergrad_fd as finite_diff

CASES = [(loss, fi, gamma) for loss in ("logistic", "squared") for fi in (True, False)
         for gamma in (0.0, 0.8)]


def kw(loss, fi, gamma, T=20):
    return dict(lam=-1.0, T=T, alpha=0.3, gamma=gamma, loss=loss, fit_intercept=fi)


def close(a, b, rtol):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * np.abs(b).max())


@pytest.mark.parametrize("loss,fi,gamma", CASES)
def test_trajectory_and_forward_match_unrolled_autograd(loss, fi, gamma):
    D = data(k=4, d=6)
    ref = hypergrad(*D, backend="torch", **kw(loss, fi, gamma, T=40))
    rmd = hypergrad(*D, **kw(loss, fi, gamma, T=40))
    fwd = hypergrad(*D, mode="forward", **kw(loss, fi, gamma, T=40))
    assert rmd.value == pytest.approx(ref.value, rel=1e-10)
    close(rmd.theta_T, ref.theta_T, 1e-10)
    close(rmd.grad_Xp, ref.grad_Xp, 1e-8)
    assert rmd.grad_lam == pytest.approx(ref.grad_lam, rel=1e-8)
    assert fwd.grad_lam == pytest.approx(ref.grad_lam, rel=1e-8)
    assert fwd.grad_Xp is None
    assert fwd.value == pytest.approx(ref.value, rel=1e-10)


@pytest.mark.parametrize("loss,fi,gamma", CASES)
def test_trajectory_matches_finite_differences(loss, fi, gamma):
    D = data(n=24, k=2, d=4, seed=1)
    opts = kw(loss, fi, gamma, T=15)
    hg = hypergrad(*D, **opts)
    gX, glam = finite_diff(D, opts)
    close(hg.grad_Xp, gX, 1e-6)
    assert hg.grad_lam == pytest.approx(glam, rel=1e-6, abs=1e-9)
    assert hypergrad(*D, mode="forward", **opts).grad_lam == pytest.approx(glam, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("loss", ["logistic", "squared"])
def test_one_poisoning_point_one_step(loss):
    D = data(n=20, k=1, d=3, seed=2)
    opts = dict(kw(loss, True, 0.0, T=1), w0=np.array([0.3, -0.2, 0.1, 0.05]))
    hg, ref = hypergrad(*D, **opts), hypergrad(*D, backend="torch", **opts)
    close(hg.grad_Xp, ref.grad_Xp, 1e-10)
    assert hg.grad_lam == pytest.approx(ref.grad_lam, rel=1e-10)


@pytest.mark.parametrize("loss,fi", [("logistic", True), ("logistic", False), ("squared", True)])
@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_implicit_at_convergence_matches_finite_differences(loss, fi, backend):
    D = data(n=40, k=5, d=7, seed=3)
    opts = dict(lam=-0.5, T=600, alpha=0.5, gamma=0.5, loss=loss, fit_intercept=fi)
    imp = hypergrad(*D, mode="implicit", backend=backend, **opts)
    assert imp.info["grad_norm"] < 1e-10 and imp.info["solver"] == "cholesky"
    gX, glam = finite_diff(D, opts, eps=1e-5)
    close(imp.grad_Xp, gX, 1e-5)
    assert imp.grad_lam == pytest.approx(glam, rel=1e-5)
    rmd = hypergrad(*D, **opts)
    close(imp.grad_Xp, rmd.grad_Xp, 1e-8)


def test_implicit_warns_before_convergence():
    with pytest.warns(RuntimeWarning, match="non-stationary"):
        hg = hypergrad(*data(), mode="implicit", **kw("logistic", True, 0.0, T=3))
    assert hg.info["grad_norm"] > 1e-3


def test_implicit_cg_path_agrees_with_cholesky(monkeypatch):
    from mithridate.hypergrad import implicit
    D = data(n=40, k=3, d=6, seed=4)
    opts = dict(lam=-0.5, T=500, alpha=0.5, loss="logistic", mode="implicit")
    chol = hypergrad(*D, **opts)
    monkeypatch.setattr(implicit, "CHOLESKY_MAX", 0)
    cg = hypergrad(*D, **opts)
    assert cg.info["solver"] == "cg"
    close(cg.grad_Xp, chol.grad_Xp, 1e-7)
    assert cg.grad_lam == pytest.approx(chol.grad_lam, rel=1e-7)


@pytest.mark.parametrize("mode", ["trajectory", "forward", "implicit"])
@pytest.mark.parametrize("gamma", [0.0, 0.8])
def test_float32_to_float32_tolerance(mode, gamma):
    D64 = data(d=6, seed=5)
    D32 = tuple(a.astype(np.float32) for a in D64)
    opts = dict(lam=-1.0, T=300 if mode == "implicit" else 30, alpha=0.3, gamma=gamma)
    ref = hypergrad(*D64, mode=mode, **opts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # float32 cannot reach grad_norm 1e-6
        hg = hypergrad(*D32, mode=mode, **opts)
    assert hg.theta_T.dtype == np.float32
    assert hg.value == pytest.approx(ref.value, rel=1e-5)
    assert hg.grad_lam == pytest.approx(ref.grad_lam, rel=1e-3, abs=1e-6)
    if mode != "forward":
        assert hg.grad_Xp.dtype == np.float32
        close(hg.grad_Xp, ref.grad_Xp, 1e-3)


def test_matches_plain_gradient_descent():
    """gamma = 0 is Algorithm 2's plain GD: theta_T agrees with a numpy loop."""
    Xc, yc, Xp, yp, Xv, yv = data(seed=6)
    X, y = np.vstack([Xc, Xp]), np.concatenate([yc, yp])
    theta = np.zeros(6)
    for _ in range(10):
        z = X @ theta[:5] + theta[5]
        r = 1 / (1 + np.exp(-z)) - y
        g = np.append(X.T @ r, r.sum()) / len(y) + np.exp(-1.0) * np.append(theta[:5], 0)
        theta = theta - 0.3 * g
    hg = hypergrad(Xc, yc, Xp, yp, Xv, yv, **kw("logistic", True, 0.0, T=10))
    close(hg.theta_T, theta, 1e-12)


BAD = [
    (dict(T=0), "T=0"), (dict(T=2.5), "T=2.5"), (dict(gamma=1.0), "gamma"),
    (dict(gamma=-0.1), "gamma"), (dict(alpha=0.0), "alpha"), (dict(alpha=np.nan), "alpha"),
    (dict(lam=np.inf), "lam"), (dict(loss="absolute"), "loss"), (dict(mode="bogus"), "mode"),
    (dict(backend="gpu"), "backend"), (dict(w0=np.zeros(3)), "w0"),
    (dict(mode="reversible", backend="torch"), "backend='numba' runs every mode"),
    (dict(mode="checkpoint", checkpoints=0), "checkpoints"),
    (dict(mode="checkpoint", checkpoints="log"), "checkpoints"),
    (dict(frac_bits=40), "frac_bits"),
    (dict(max_states=4), "max_states=4 applies to mode='checkpoint' only"),
    (dict(mode="checkpoint", max_states=2), "max_states=2 is too small"),
    (dict(mode="checkpoint", checkpoints="binomial", max_states=0), "max_states=0"),
]


@pytest.mark.parametrize("change,match", BAD)
def test_bad_settings_name_the_argument(change, match):
    opts = {**kw("logistic", True, 0.0), **change}
    with pytest.raises((ValueError, TypeError), match=match):
        hypergrad(*data(), **opts)


def test_bad_arrays_name_the_argument():
    Xc, yc, Xp, yp, Xv, yv = data()
    opts = kw("logistic", True, 0.0)
    with pytest.raises(ValueError, match="yv holds one class"):
        hypergrad(Xc, yc, Xp, yp, Xv, np.ones_like(yv), **opts)
    with pytest.raises(ValueError, match="Xp has 4 features"):
        hypergrad(Xc, yc, Xp[:, :4].copy(), yp, Xv, yv, **opts)
    with pytest.raises(TypeError, match="Xv has dtype float32"):
        hypergrad(Xc, yc, Xp, yp, Xv.astype(np.float32), yv, **opts)
    with pytest.raises(ValueError, match="yp has shape"):
        hypergrad(Xc, yc, Xp, yp[:2], Xv, yv, **opts)
    with pytest.raises(ValueError, match="yc: y must hold labels"):
        hypergrad(Xc, 2 * yc, Xp, yp, Xv, yv, **opts)
    bad = Xp.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="Xp contains nan"):
        hypergrad(Xc, yc, bad, yp, Xv, yv, **opts)
    with pytest.raises(TypeError, match="Xc must be a numpy array"):
        hypergrad(Xc.tolist(), yc, Xp, yp, Xv, yv, **opts)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("T,checkpoints,max_states", [
    (17, "sqrt", None), (17, 1, None), (17, 3, None), (17, 16, None), (17, 40, None),
    (1, "sqrt", None), (17, "sqrt", 7), (17, "binomial", None), (17, "binomial", 1),
    (17, "binomial", 4), (1, "binomial", 3)])
def test_checkpoint_equals_trajectory_bitwise(T, checkpoints, max_states, dtype):
    D = tuple(a.astype(dtype) for a in data(n=31, k=3, d=7, seed=7))
    opts = dict(kw("logistic", True, 0.7, T=T), w0=np.linspace(-0.2, 0.3, 8).astype(dtype))
    traj = hypergrad(*D, **opts)
    ck = hypergrad(*D, mode="checkpoint", checkpoints=checkpoints, max_states=max_states, **opts)
    assert ck.value == traj.value and ck.grad_lam == traj.grad_lam
    np.testing.assert_array_equal(ck.grad_Xp, traj.grad_Xp)
    np.testing.assert_array_equal(ck.theta_T, traj.theta_T)
    sched = schedule.plan(T, checkpoints, max_states)
    assert ck.info["state_bytes"] == sched.state_bytes(8)
    assert ck.info["recomputed"] == sched.recomputed


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_batched_binomial_equals_trajectory_bitwise(dtype):
    """B = 3 problems (at least the thread count: the batched kernel) walking
    revolve with 3 stored states give trajectory's bits."""
    Xc, yc, _, _, Xv, yv = (a.astype(dtype) for a in data(n=23, k=2, d=6, seed=3))
    rng = np.random.default_rng(4)
    Xp = rng.normal(size=(3, 2, 6)).astype(dtype)
    yp = (rng.random((3, 2)) > 0.5).astype(dtype)
    opts = dict(kw("squared", True, 0.6, T=19), lam=np.array([-2.0, -1.0, 0.5]))
    traj = hypergrad(Xc, yc, Xp, yp, Xv, yv, **opts)
    ck = hypergrad(Xc, yc, Xp, yp, Xv, yv, mode="checkpoint", checkpoints="binomial",
                   max_states=3, **opts)
    for name in ("value", "grad_Xp", "grad_lam", "theta_T"):
        assert getattr(ck, name).tobytes() == getattr(traj, name).tobytes(), name
    assert ck.info["recomputed"] == schedule.plan(19, "binomial", 3).recomputed > 0


def test_checkpoint_state_memory_is_sqrt_T():
    D = data(n=20, k=2, d=9)
    opts = kw("squared", True, 0.5, T=100)
    traj = hypergrad(*D, **opts)
    ck = hypergrad(*D, mode="checkpoint", **opts)
    p = 10
    assert traj.info["state_bytes"] == 8 * p * 100  # theta_0 .. theta_{T-1}
    # 10 (theta, v) checkpoints + one segment's 8 recomputed thetas
    assert ck.info["state_bytes"] == 8 * p * (2 * 10 + 8) == schedule.plan(100).state_bytes(p)
    assert ck.info["recomputed"] == 100 - 10 and traj.info["recomputed"] == 0
    ref = hypergrad(*D, backend="torch", mode="checkpoint", **opts)
    close(ck.grad_Xp, ref.grad_Xp, 1e-8)
    assert ck.grad_lam == pytest.approx(ref.grad_lam, rel=1e-8)


@pytest.mark.parametrize("mode", ["trajectory", "forward"])
def test_float32_sums_do_not_grow_with_the_reduction_groups(mode):
    """Tall narrow rows (groups of ~9000 rows): the float32 row sums are flushed to float64
    every FLUSH_ROWS rows, so float32 stays within a few 1e-7 of float64 (summing a whole
    group in float32 was 1.3e-5 off for forward mode's d lam)."""
    rng = np.random.default_rng(1)
    nc, k, nv, d = 48842, 100, 171, 14
    X = rng.random((nc + k + nv, d))
    y = (rng.random(nc + k + nv) > 0.5).astype(float)
    cut = lambda f: (X[:nc].astype(f), y[:nc].astype(f), X[nc:nc + k].astype(f),
                     y[nc:nc + k].astype(f), X[nc + k:].astype(f), y[nc + k:].astype(f))
    kw = dict(lam=-3.0, T=30, alpha=0.5, backend="numba", mode=mode)
    a, b = hypergrad(*cut(np.float32), **kw), hypergrad(*cut(np.float64), **kw)
    assert abs(a.grad_lam - b.grad_lam) <= 2e-6 * abs(b.grad_lam)
    np.testing.assert_allclose(a.theta_T, b.theta_T, rtol=0, atol=2e-6 * np.abs(b.theta_T).max())
