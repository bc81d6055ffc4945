"""Victim descriptions of the optimal attack (mithridate.attacks.victims): the
C / alpha / rho -> lam maps checked against the estimators' own fits, the
Wasserstein slow path against finite differences, refusals, and the attack run
on each kind of victim."""
import math

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.svm import LinearSVC

from mithridate.attacks import OptimalPoisoning
from mithridate.attacks.victims import as_victim, wasserstein_objective
from mithridate.defenses import WassersteinRobustClassifier, WassersteinRobustRegressor

TOL = {np.float64: 1e-6, np.float32: 2e-4}


def _data(seed=0, n=40, d=3, kind="logistic"):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    z = X @ np.linspace(1.0, -0.5, d) + rng.normal(size=n)  # overlapping classes: a well-posed fit
    return X, ((z > 0).astype(float) if kind == "logistic" else z)


def _theta(est):
    coef = np.ravel(est.coef_)
    return np.r_[coef, np.ravel(est.intercept_)] if est.fit_intercept else coef


def _converged(victim, X, y, T, eta, gamma=0.9, dtype=np.float64):
    """theta_T of the attack's inner loop on (X, y) (the last row plays the poisoning row)."""
    X, y = X.astype(dtype), y.astype(dtype)
    return victim.hypergrad(X[:-1], y[:-1], X[-1:], y[-1:], X, y, victim.lam, T=T, eta=eta,
                            gamma=gamma, mode="trajectory", backend="numba").theta_T


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("C", [0.05, 1.0, 10.0])
def test_logistic_regression_map_matches_sklearn_fit(C, fit_intercept, dtype):
    X, y = _data(n=37)
    est = LogisticRegression(C=C, fit_intercept=fit_intercept, tol=1e-12, max_iter=10_000)
    victim = as_victim(est)
    assert victim.lam == pytest.approx(-math.log(C)) and victim.loss == "logistic"
    est.fit(X, y)
    theta = _converged(as_victim(est), X, y, T=3000, eta=0.5, dtype=dtype)
    np.testing.assert_allclose(theta, _theta(est), atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("alpha", [0.3, 4.0])
def test_ridge_map_matches_sklearn_fit(alpha, fit_intercept, dtype):
    X, y = _data(n=33, kind="squared")
    y = y + 2.0  # a nonzero intercept
    est = Ridge(alpha=alpha, fit_intercept=fit_intercept, tol=1e-12).fit(X, y)
    victim = as_victim(est)
    assert victim.lam == pytest.approx(math.log(alpha)) and victim.loss == "squared"
    theta = _converged(victim, X, y, T=1500, eta=0.3, dtype=dtype)
    np.testing.assert_allclose(theta, _theta(est), atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("est,kind", [
    (WassersteinRobustClassifier(rho=0.01), "logistic"),
    (WassersteinRobustClassifier(rho=0.02, norm=3, fit_intercept=False), "logistic"),
    (WassersteinRobustRegressor(rho=0.002), "squared"),
    (WassersteinRobustClassifier(rho=0.01, data_bounds=(5.0, 1.0)), "logistic")])
def test_wasserstein_map_matches_estimator_fit(est, kind):
    """The objective the slow path descends is the estimator's: equal value
    (objective_) and a vanishing gradient at the estimator's solution."""
    import torch
    X, y = _data(n=24, d=2, kind=kind)
    est.set_params(tol=1e-12).fit(X, y)
    victim = as_victim(est)
    assert victim.lam == pytest.approx(math.log(est.rho)) and victim.regularizer == "wasserstein"
    theta = torch.tensor(_theta(est), requires_grad=True)
    J = wasserstein_objective(victim, theta, torch.tensor(X), torch.tensor(y),
                              torch.tensor(victim.lam, dtype=torch.float64))
    (g,) = torch.autograd.grad(J, theta)
    assert float(J.detach()) == pytest.approx(est.objective_, rel=1e-9)
    assert float(g.abs().max()) < 1e-7


def _fd(f, x, eps=1e-6):
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[i] = eps
        g[i] = (f(x + e) - f(x - e)) / (2 * eps)
    return g


@pytest.mark.parametrize("est,kind", [
    (WassersteinRobustClassifier(rho=0.05), "logistic"),
    (WassersteinRobustClassifier(rho=0.05, norm=1.5, fit_intercept=False), "logistic"),
    (WassersteinRobustRegressor(rho=0.01), "squared")])
@pytest.mark.parametrize("gamma", [0.0, 0.5])
def test_wasserstein_hypergradient_matches_finite_differences(est, kind, gamma):
    """grad_Xp and grad_lam of the slow path against central differences; the
    first poisoning point is the largest-norm row, so the data bound moves with it."""
    X, y = _data(seed=3, n=20, d=2, kind=kind)
    Xv, yv = _data(seed=4, n=15, d=2, kind=kind)
    Xc, yc, Xp, yp = X[:-2], y[:-2], X[-2:].copy(), y[-2:]
    Xp[0] *= 1.5 * np.max(np.linalg.norm(Xc, axis=1)) / np.linalg.norm(Xp[0])
    v = as_victim(est)
    kw = dict(T=25, eta=0.3, gamma=gamma, mode="trajectory", backend="torch")
    hg = v.hypergrad(Xc, yc, Xp, yp, Xv, yv, v.lam, **kw)
    value = lambda Xp_, lam: v.hypergrad(Xc, yc, Xp_, yp, Xv, yv, lam, **kw).value
    np.testing.assert_allclose(hg.grad_Xp, _fd(lambda a: value(a, v.lam), Xp), rtol=1e-5, atol=1e-8)
    fd_lam = _fd(lambda a: value(Xp, float(a[0])), np.array([v.lam]))[0]
    assert hg.grad_lam == pytest.approx(fd_lam, rel=1e-5, abs=1e-9)
    assert np.abs(hg.grad_Xp[0]).max() > 0 and hg.grad_lam != 0


@pytest.mark.parametrize("model,match", [
    (LogisticRegression(l1_ratio=1.0, solver="saga"), "not an L2 penalty"),
    (LogisticRegression(C=math.inf), "finite C > 0"),
    (LogisticRegression(class_weight="balanced"), "class_weight"),
    (LogisticRegression(solver="liblinear"), "penalises the intercept"),
    (Ridge(positive=True), "positive=False"),
    (Ridge(alpha=np.array([1.0, 2.0])), "scalar alpha"),
    (Ridge(alpha=0.0), "finite alpha > 0"),
    (WassersteinRobustRegressor(loss="absolute"), "no curvature"),
    (WassersteinRobustClassifier(regularizer="tight"), "regularizer='paper'"),
    (WassersteinRobustClassifier(c1=1.0), "leave c1 and c2 None"),
    (WassersteinRobustClassifier(norm=1), "1 < norm < inf"),
    (WassersteinRobustClassifier(norm=math.inf), "1 < norm < inf"),
    (WassersteinRobustClassifier(rho=0.0), "finite rho > 0"),
    (LinearSVC(), "not a supported victim"),
    ("hinge", "not supported"),
])
def test_unsupported_victims_are_refused(model, match):
    with pytest.raises((ValueError, TypeError), match=match):
        as_victim(model)


def test_liblinear_without_intercept_is_accepted():
    assert as_victim(LogisticRegression(solver="liblinear", fit_intercept=False)).lam == 0.0


def _attack_data(kind="logistic", seed=0, n=30, nv=20, d=3):
    (X, y), (Xv, yv) = (_data(seed + i, m, d, kind) for i, m in ((0, n), (1, nv)))
    return (np.clip(0.5 + 0.2 * X, 0, 1), y), (np.clip(0.5 + 0.2 * Xv, 0, 1), yv)


SMALL = dict(n_points=2, batch_size=2, T=20, T_outer=3, T_lam=2, alpha=0.3, beta=0.5, eta=0.5,
             box=(0.0, 1.0), lam_range=(-8.0, 6.0), random_state=0)


def test_fitted_multiclass_and_feature_mismatch_are_refused():
    X, y = _data()
    with pytest.raises(ValueError, match="3 classes"):
        as_victim(LogisticRegression().fit(X, np.arange(len(y)) % 3))
    train, val = _attack_data(d=3)
    fitted = LogisticRegression().fit(np.c_[train[0], train[0][:, :1]], train[1])
    with pytest.raises(ValueError, match="fitted on 4 features"):
        OptimalPoisoning(model=fitted, lam="model", **SMALL).run(train, val)


def test_lam_model_is_the_estimators_lam_and_fitting_does_not_matter():
    train, val = _attack_data()
    C = 0.3
    plain = OptimalPoisoning(lam=-math.log(C), **SMALL).run(train, val)
    unfitted = OptimalPoisoning(model=LogisticRegression(C=C), lam="model", **SMALL).run(train, val)
    fitted = OptimalPoisoning(model=LogisticRegression(C=C).fit(*train), lam="model",
                              **SMALL).run(train, val)
    for res in (unfitted, fitted):
        np.testing.assert_array_equal(res.Xp, plain.Xp)
        np.testing.assert_array_equal(res.values, plain.values)


def test_learned_lam_starts_at_the_estimators_lam():
    train, val = _attack_data()
    kw = {**SMALL, "T_lam": 0}
    res = OptimalPoisoning(model=LogisticRegression(C=0.2), lam="learned", **kw).run(train, val)
    assert res.lam_batches[0] == pytest.approx(-math.log(0.2))
    res = OptimalPoisoning(model=LogisticRegression(C=0.2), lam="learned", lam_init=1.0,
                           **kw).run(train, val)
    assert res.lam_batches[0] == 1.0
    with pytest.raises(ValueError, match="lam_range"):
        OptimalPoisoning(model=LogisticRegression(C=1e-4), **kw).run(train, val)


def test_lam_model_needs_an_estimator():
    train, val = _attack_data()
    with pytest.raises(ValueError, match="needs an estimator"):
        OptimalPoisoning(lam="model", **SMALL).run(train, val)


@pytest.mark.parametrize("model,kind", [
    (Ridge(alpha=2.0), "squared"),
    (WassersteinRobustClassifier(rho=0.05), "logistic"),
    (WassersteinRobustRegressor(rho=0.01), "squared")])
def test_attack_raises_the_validation_loss_of_each_victim(model, kind):
    train, val = _attack_data(kind)
    kw = {**SMALL, "T_outer": 6, "eta": 0.3, "alpha": 0.5}
    res = OptimalPoisoning(model=model, lam="model", **kw).run(train, val)
    assert res.values[-1] > res.values[0]
    assert res.lam == pytest.approx(as_victim(model).lam)
    if kind == "squared":  # a clone's label y becomes lo + hi - y, [lo, hi] the labels' range
        src = [np.flatnonzero((val[0] == x).all(1))[0] for x in res.Xp_init]
        np.testing.assert_allclose(res.yp, train[1].min() + train[1].max() - val[1][src])


def test_wasserstein_victim_learns_rho():
    train, val = _attack_data()
    res = OptimalPoisoning(model=WassersteinRobustClassifier(rho=0.05), lam="learned",
                           **SMALL).run(train, val)
    assert res.lam_batches[0] != pytest.approx(math.log(0.05))
    assert np.isfinite(res.history["grad_lam"][:SMALL["T_lam"]]).all()


def test_wasserstein_victim_needs_the_trajectory_mode():
    train, val = _attack_data()
    with pytest.raises(ValueError, match="mode='trajectory'"):
        OptimalPoisoning(model=WassersteinRobustClassifier(), mode="implicit",
                         **SMALL).run(train, val)


def test_diverging_wasserstein_training_is_an_error():
    from mithridate.errors import DivergenceError
    X, y = _data(n=20, d=2, kind="squared")
    v = as_victim(WassersteinRobustRegressor(rho=0.01))
    with pytest.raises(DivergenceError, match="Lower eta=30"):
        v.hypergrad(X[:-1], y[:-1], X[-1:], y[-1:], X, y, v.lam, T=40, eta=30.0, gamma=0.0,
                    mode="trajectory", backend="torch")


def test_attack_on_a_diverging_wasserstein_victim_raises_or_warns():
    from mithridate.errors import DivergenceError, DivergenceWarning
    train, val = _attack_data("squared")
    kw = {**SMALL, "eta": 30.0, "T": 10, "T_outer": 2}
    model = WassersteinRobustRegressor(rho=0.01)
    with pytest.raises(DivergenceError, match="optimal poisoning, .*Lower eta=30"):
        OptimalPoisoning(model=model, lam="model", **kw).run(train, val)
    with pytest.warns(DivergenceWarning, match="is skipped"):
        OptimalPoisoning(model=model, lam="model", on_divergence="warn", **kw).run(train, val)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("model, kind", [
    ("logistic", "logistic"), (Ridge(alpha=2.0, fit_intercept=False), "squared"),
    (WassersteinRobustClassifier(rho=0.05), "logistic")])
def test_prepared_engine_batch_equals_single_problems(model, kind, dtype):
    """victim.engine: a batch of problems over the same clean rows equals each problem
    alone; need='lam' and need='value' agree with need='all' on what they return."""
    X, y = (a.astype(dtype) for a in _data(seed=5, n=23, d=3, kind=kind))
    Xv, yv = (a.astype(dtype) for a in _data(seed=6, n=11, d=3, kind=kind))
    v = as_victim(model)
    eng = v.engine(X[:-3], y[:-3], Xv, yv, T=15, eta=0.3, gamma=0.5, mode="trajectory",
                   backend="numba")
    Xp = np.stack([X[-3:], X[-3:] * 0.5, X[-3:] + 0.1]).astype(dtype)
    yp = np.stack([y[-3:]] * 3)
    lam = np.array([-1.0, 0.0, 1.5])
    tol = dict(rtol=TOL[dtype], atol=TOL[dtype] * 1e-2)
    hg = eng.run(Xp, yp, lam)
    assert hg.grad_Xp.shape == (3, 3, 3) and hg.grad_Xp.dtype == dtype
    for b in range(3):
        one = eng.run(Xp[b], yp[b], lam[b])
        np.testing.assert_allclose(hg.grad_Xp[b], one.grad_Xp, **tol)
        assert hg.value[b] == pytest.approx(one.value, rel=TOL[dtype])
        assert hg.grad_lam[b] == pytest.approx(one.grad_lam, rel=TOL[dtype], abs=1e-9)
    lam_only, value = eng.run(Xp, yp, lam, "lam"), eng.run(Xp, yp, lam, "value")
    np.testing.assert_allclose(lam_only.grad_lam, hg.grad_lam, rtol=TOL[dtype], atol=1e-9)
    np.testing.assert_allclose(lam_only.value, hg.value, rtol=TOL[dtype])
    np.testing.assert_allclose(value.value, hg.value, rtol=TOL[dtype])


def test_model_victims():
    from mithridate.models import MLP, LinearModel
    v = as_victim(MLP(layers=(4, 6, 3, 1)))
    assert v.model is not None and v.loss == "logistic" and v.n_lam(4) == 3
    assert v.theta0(4, np.random.default_rng(0), np.float32).dtype == np.float32
    assert as_victim("logistic").theta0(4, np.random.default_rng(0), np.float64) is None
    with pytest.raises(ValueError, match="init"):  # a Model that cannot start a network
        as_victim(LinearModel())
