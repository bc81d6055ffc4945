"""Wasserstein-robust estimators: optima against cvxpy, rho = 0 limits, sklearn API, bad input."""
import math
import warnings

import numpy as np
import pytest
from scipy.optimize import minimize, minimize_scalar
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.utils.estimator_checks import parametrize_with_checks

from mithridate.defenses import WassersteinRobustClassifier, WassersteinRobustRegressor

cp = pytest.importorskip("cvxpy")
NORMS = [1, 2, math.inf]


def problem(loss, seed, n=25, d=3):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    z = X @ rng.normal(size=d) + 0.3
    if loss == "logistic":
        y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(float)
    else:
        y = z + 0.5 * rng.standard_t(3, size=n)
    return X, y


def dual(p):
    return math.inf if p == 1 else 1 if p == math.inf else p / (p - 1)


def cvx_data(loss, w, b, X, y):
    r = X @ w + b - y
    if loss == "squared":
        return 0.5 * cp.sum_squares(r) / len(y)
    if loss == "absolute":
        return cp.sum(cp.abs(r)) / len(y)
    zz = X @ w + b
    return cp.sum(cp.logistic(zz) - cp.multiply(y, zz)) / len(y)


def cvx_optimum(loss, reg, X, y, rho, p, V=None):
    """Optimal value of (8) written directly in cvxpy (paper forms from the text, not from ops)."""
    q = dual(p)
    w, b = cp.Variable(X.shape[1]), cp.Variable()
    data = cvx_data(loss, w, b, X, y)
    cons = []
    if reg == "paper":
        t = cp.norm(cp.hstack([w, b]), q)
        Xb, Yb = np.max(np.linalg.norm(X, p, axis=1)), np.max(np.abs(y))
        L = {"squared": (Xb + 1) * cp.square(t) + Yb * t, "absolute": t,
             "logistic": (Yb + Xb + 2) * t}[loss]
    elif loss == "absolute":
        L = cp.norm(cp.hstack([w, 1]), q)
    else:  # squared tight at fixed V >= ||(w, 1)||_q (convex for fixed V)
        cons = [cp.norm(cp.hstack([w, 1]), q) <= V]
        L = V * cp.max(cp.abs(X @ w + b - y))
    prob = cp.Problem(cp.Minimize(data + rho * L), cons)
    prob.solve(solver="CLARABEL")
    return prob.value


CONVEX = [("squared", "paper"), ("absolute", "paper"), ("logistic", "paper"), ("absolute", "tight")]


@pytest.mark.parametrize("p", NORMS)
@pytest.mark.parametrize("loss,reg", CONVEX)
@pytest.mark.parametrize("seed", [0, 1])
def test_convex_optimum_matches_cvxpy(loss, reg, p, seed):
    X, y = problem(loss, seed)
    rho = [0.05, 0.3][seed]
    cls = WassersteinRobustClassifier if loss == "logistic" else WassersteinRobustRegressor
    kw = {} if loss == "logistic" else {"loss": loss}
    est = cls(rho=rho, norm=p, regularizer=reg, **kw).fit(X, y)
    ref = cvx_optimum(loss, reg, X, y, rho, p)
    assert est.converged_
    assert est.objective_ == pytest.approx(ref, rel=1e-6)


def cvx_exact(loss, X, y, rho, p, kappa):
    """Optimal J of the exact Wasserstein-DRO forms, written from the cited theorems."""
    q = dual(p)
    n, d = X.shape
    w, b = cp.Variable(d), cp.Variable()
    r = X @ w + b - y
    grow = cp.norm(w, q) if kappa == math.inf else cp.norm(cp.hstack([w, 1 / kappa]), q)
    if loss == "absolute":
        return cp.Problem(cp.Minimize(cp.sum(cp.abs(r)) / n + rho * grow)).solve(solver="CLARABEL")
    if loss == "squared":  # (sqrt(MSE) + sqrt(rho) ||.||)^2 / 2, minimised through its root
        root = cp.Problem(cp.Minimize(cp.norm(r, 2) / math.sqrt(n) + math.sqrt(rho) * grow))
        return 0.5 * root.solve(solver="CLARABEL") ** 2
    z = X @ w + b
    if kappa == math.inf:
        return cp.Problem(cp.Minimize(cvx_data(loss, w, b, X, y) + rho * cp.norm(w, q))).solve(
            solver="CLARABEL")
    lam, s = cp.Variable(), cp.Variable(n)
    cons = [s >= cp.logistic(z) - cp.multiply(y, z),
            s >= cp.logistic(z) - cp.multiply(1 - y, z) - lam * kappa, cp.norm(w, q) <= lam]
    return cp.Problem(cp.Minimize(lam * rho + cp.sum(s) / n), cons).solve(solver="CLARABEL")


def fit_exact(loss, X, y, rho, p, kappa):
    if loss == "logistic":
        return WassersteinRobustClassifier(rho=rho, norm=p, regularizer="exact", kappa=kappa).fit(X, y)
    return WassersteinRobustRegressor(loss=loss, rho=rho, norm=p, regularizer="exact",
                                      kappa=kappa).fit(X, y)


@pytest.mark.parametrize("p", NORMS)
@pytest.mark.parametrize("loss", ["squared", "absolute", "logistic"])
@pytest.mark.parametrize("kappa", [math.inf, 0.5])
def test_exact_optimum_matches_cvxpy(loss, p, kappa):
    X, y = problem(loss, 10)
    est = fit_exact(loss, X, y, 0.2, p, kappa)
    assert est.converged_
    assert est.objective_ == pytest.approx(cvx_exact(loss, X, y, 0.2, p, kappa), rel=1e-6)
    w = est.coef_
    grow = np.linalg.norm(w if kappa == math.inf or loss == "logistic" else np.r_[w, 1 / kappa],
                          dual(p))
    assert est.lipschitz_ == pytest.approx(grow)
    assert est.data_bounds_ is None


@pytest.mark.parametrize("p", NORMS)
def test_relaxations_bound_the_exact_problem(p):
    """Where the balls agree (fixed labels, absolute and logistic): paper >= exact; tight
    absolute is exact with label cost kappa = 1; a finite label cost only enlarges the ball."""
    for loss in ("absolute", "logistic"):
        X, y = problem(loss, 11)
        exact = fit_exact(loss, X, y, 0.1, p, math.inf).objective_
        cls = WassersteinRobustClassifier if loss == "logistic" else WassersteinRobustRegressor
        kw = {} if loss == "logistic" else {"loss": loss}
        assert cls(rho=0.1, norm=p, **kw).fit(X, y).objective_ >= exact - 1e-9
        assert fit_exact(loss, X, y, 0.1, p, 2.0).objective_ >= exact - 1e-9
    X, y = problem("absolute", 12)
    tight = WassersteinRobustRegressor(loss="absolute", rho=0.1, norm=p, regularizer="tight")
    assert tight.fit(X, y).objective_ == pytest.approx(
        fit_exact("absolute", X, y, 0.1, p, 1.0).objective_, rel=1e-7)


@pytest.mark.parametrize("p", NORMS)
def test_tight_squared_global_optimum(p):
    """Nonconvex: reference = min over V of the convex problem at fixed V = ||(w, 1)||_q."""
    X, y = problem("squared", 3, n=15, d=2)
    rho = 0.2
    est = WassersteinRobustRegressor(rho=rho, norm=p, regularizer="tight").fit(X, y)
    V = max(1.0, np.linalg.norm(np.r_[est.coef_, 1.0], dual(p)))
    grid = np.linspace(1.0, 2 * V, 15)
    vals = [cvx_optimum("squared", "tight", X, y, rho, p, v) for v in grid]
    k = int(np.argmin(vals))
    lo, hi = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
    ref = minimize_scalar(lambda v: cvx_optimum("squared", "tight", X, y, rho, p, v),
                          bounds=(lo, hi), method="bounded", options={"xatol": 1e-7}).fun
    assert est.objective_ == pytest.approx(min(ref, vals[k]), rel=1e-6)


@pytest.mark.parametrize("p", NORMS)
def test_tight_logistic_local_optimum(p):
    """Nonconvex, no convex reference: the fit beats random nearby points and the paper fit."""
    X, y = problem("logistic", 4)
    est = WassersteinRobustClassifier(rho=0.1, norm=p, regularizer="tight").fit(X, y)
    paper = WassersteinRobustClassifier(rho=0.1, norm=p, regularizer="paper").fit(X, y)
    probe = WassersteinRobustClassifier(rho=0.1, norm=p, regularizer="tight")
    rng = np.random.default_rng(0)

    def J(theta):
        probe.coef_, probe.intercept_ = theta[:-1], theta[-1]
        return probe._objective(theta, X, y, float(p), True, None, 0.1)
    theta = np.r_[est.coef_, est.intercept_]
    assert est.objective_ == pytest.approx(J(theta), rel=1e-12)
    assert est.objective_ <= J(np.r_[paper.coef_, paper.intercept_]) + 1e-9
    for _ in range(20):
        assert est.objective_ <= J(theta + 1e-3 * rng.normal(size=theta.size)) + 1e-9


def test_rho_zero_is_plain_regression():
    X, y = problem("squared", 5)
    ols = LinearRegression().fit(X, y)
    est = WassersteinRobustRegressor(rho=0.0, tol=1e-13).fit(X, y)
    np.testing.assert_allclose(est.coef_, ols.coef_, atol=1e-5)
    assert est.intercept_ == pytest.approx(ols.intercept_, abs=1e-5)
    lad = WassersteinRobustRegressor(loss="absolute", rho=0.0).fit(X, y)
    ref = minimize(lambda t: np.mean(np.abs(X @ t[:-1] + t[-1] - y)), np.r_[ols.coef_, ols.intercept_],
                   method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20000})
    assert lad.objective_ == pytest.approx(ref.fun, rel=1e-6)
    assert lad.objective_ <= ref.fun + lad.tol * (1 + ref.fun)  # the barrier's certified gap
    Xc, yc = problem("logistic", 6, n=60)
    lr = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10000).fit(Xc, yc)
    clf = WassersteinRobustClassifier(rho=0.0, tol=1e-13).fit(Xc, yc)
    z = Xc @ lr.coef_[0] + lr.intercept_[0]
    assert clf.objective_ <= np.mean(np.logaddexp(0, z) - yc * z) + 1e-10
    np.testing.assert_allclose(clf.coef_, lr.coef_[0], atol=1e-3)
    np.testing.assert_allclose(clf.predict_proba(Xc), lr.predict_proba(Xc), atol=1e-4)


def test_fitted_attributes_and_labels():
    X, y = problem("logistic", 7)
    labels = np.where(y > 0, "spam", "ham")
    clf = WassersteinRobustClassifier(rho=0.05).fit(X, labels)
    assert list(clf.classes_) == ["ham", "spam"]
    assert set(clf.predict(X)) <= {"ham", "spam"}
    assert clf.predict_proba(X).shape == (len(y), 2)
    for name in ("coef_", "intercept_", "lipschitz_", "objective_", "data_bounds_", "n_iter_",
                 "converged_"):
        assert hasattr(clf, name)
    Xb = np.max(np.linalg.norm(X, axis=1))
    assert clf.data_bounds_ == pytest.approx((Xb, 1.0))
    t = np.linalg.norm(np.r_[clf.coef_, clf.intercept_])
    assert clf.lipschitz_ == pytest.approx((1 + Xb + 2) * t)


def test_c1_c2_weights():
    X, y = problem("squared", 8)
    est = WassersteinRobustRegressor(c1=0.1, c2=0.2).fit(X, y)
    t = np.linalg.norm(np.r_[est.coef_, est.intercept_])
    data = 0.5 * np.mean((X @ est.coef_ + est.intercept_ - y) ** 2)
    assert est.objective_ == pytest.approx(data + 0.1 * t ** 2 + 0.2 * t)
    w, b = cp.Variable(X.shape[1]), cp.Variable()
    tt = cp.norm(cp.hstack([w, b]), 2)
    ref = cp.Problem(cp.Minimize(cvx_data("squared", w, b, X, y) + 0.1 * cp.square(tt) + 0.2 * tt))
    assert est.objective_ == pytest.approx(ref.solve(solver="CLARABEL"), rel=1e-6)
    given = WassersteinRobustRegressor(rho=0.1, data_bounds=(2.0, 3.0)).fit(X, y)
    assert given.data_bounds_ == (2.0, 3.0)


def test_convergence_warning():
    X, y = problem("squared", 9)
    with pytest.warns(Warning, match="did not converge"):
        est = WassersteinRobustRegressor(loss="absolute", max_iter=1).fit(X, y)
    assert not est.converged_


@pytest.mark.parametrize("kwargs,match", [
    ({"rho": -1.0}, "rho"), ({"norm": 0.5}, "norm"), ({"regularizer": "ridge"}, "regularizer"),
    ({"c1": -1.0}, "c1"), ({"loss": "hinge"}, "loss"), ({"data_bounds": (1.0,)}, "data_bounds"),
    ({"regularizer": "tight", "c2": 1.0}, "c1/c2"), ({"c2": -0.5}, "c2"),
    ({"regularizer": "exact", "kappa": 0.0}, "kappa"), ({"regularizer": "exact", "kappa": -1}, "kappa"),
    ({"kappa": 2.0}, "kappa"), ({"regularizer": "exact", "norm": 3.0}, "norm"),
    ({"rho": float("nan")}, "rho")])
def test_bad_parameters(kwargs, match):
    X, y = problem("squared", 0)
    with pytest.raises(ValueError, match=match):
        WassersteinRobustRegressor(**kwargs).fit(X, y)


def test_bad_data():
    X, y = problem("logistic", 0)
    with pytest.raises(ValueError, match="y"):
        WassersteinRobustClassifier().fit(X, np.arange(len(y)) % 3)
    with pytest.raises(ValueError, match="two classes"):
        WassersteinRobustClassifier().fit(X, np.ones(len(y)))
    for bad in (np.nan, np.inf):
        Xb = X.copy()
        Xb[2, 1] = bad
        with pytest.raises(ValueError, match="X"):
            WassersteinRobustClassifier().fit(Xb, y)
        yb = problem("squared", 0)[1].copy()
        yb[0] = bad
        with pytest.raises(ValueError, match="y"):
            WassersteinRobustRegressor().fit(X, yb)
    clf = WassersteinRobustClassifier().fit(X, y)
    for method in (clf.predict, clf.predict_proba, clf.decision_function,
                   lambda Z: clf.score(Z, y)):
        with pytest.raises(ValueError, match="X has 2 features"):
            method(X[:, :2])
    reg = WassersteinRobustRegressor(regularizer="exact").fit(X, y)
    with pytest.raises(ValueError, match="X has 4 features"):
        reg.score(np.hstack([X, X[:, :1]]), y)


with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    CHECKS = list(parametrize_with_checks([
        WassersteinRobustRegressor(), WassersteinRobustClassifier(),
        WassersteinRobustRegressor(regularizer="exact", kappa=2.0),
        WassersteinRobustClassifier(regularizer="exact", kappa=1.0)]).args[1])


@pytest.mark.parametrize("estimator,check", CHECKS)
def test_sklearn_api(estimator, check):
    check(estimator)
