"""mithridate.defenses.rho: Wasserstein distance, radius helpers, validation choice of rho,
Theorem 2 check."""
import math

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from mithridate.defenses import WassersteinRobustClassifier, WassersteinRobustRegressor
from mithridate.defenses.rho import (concentration_radius, mean_loss, rho_bound, select_rho,
                                     theorem2_check, wasserstein_distance)


@pytest.mark.parametrize("p", [1, 2, 3, np.inf])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_wasserstein_matches_assignment(p, seed):
    # equal-size uniform clouds: the optimal plan is a permutation (Birkhoff)
    rng = np.random.default_rng(seed)
    P, Q = rng.normal(size=(7, 3)), rng.normal(size=(7, 3)) + 0.5
    M = cdist(P, Q, "chebyshev") if p == np.inf else cdist(P, Q, "minkowski", p=p)
    r, c = linear_sum_assignment(M)
    assert wasserstein_distance(P, Q, p) == pytest.approx(M[r, c].mean(), rel=1e-10)


def test_wasserstein_1d_closed_form_and_unequal_sizes():
    # in 1-D, W1 = integral |F_P - F_Q|; for samples of sizes n, 2n it is the mean gap
    # between sorted P and sorted Q with each Q point counted at half weight
    rng = np.random.default_rng(3)
    P, Q = rng.normal(size=40), rng.exponential(size=80)
    grid = np.sort(np.r_[P, Q])
    Fp = np.searchsorted(np.sort(P), grid[:-1], side="right") / len(P)
    Fq = np.searchsorted(np.sort(Q), grid[:-1], side="right") / len(Q)
    exact = np.sum(np.abs(Fp - Fq) * np.diff(grid))
    assert wasserstein_distance(P, Q) == pytest.approx(exact, rel=1e-10)
    assert wasserstein_distance(P, P) == pytest.approx(0.0, abs=1e-12)
    assert wasserstein_distance(P, Q) == pytest.approx(wasserstein_distance(Q, P), rel=1e-10)


def test_wasserstein_approximations_bracket_the_exact_value():
    rng = np.random.default_rng(4)
    P, Q = rng.normal(size=(120, 4)), rng.normal(size=(150, 4)) + 1.0
    exact = wasserstein_distance(P, Q)
    sub = wasserstein_distance(P, Q, max_exact=60, n_repeats=20)
    sliced = wasserstein_distance(P, Q, max_exact=60, approx="sliced")
    # joint convexity: the subsample estimate is >= W in expectation; sliced is a lower bound
    assert exact <= sub < 1.5 * exact
    assert sliced <= exact


@pytest.mark.parametrize("kw,match", [
    (dict(P=np.zeros((3, 2)), Q=np.zeros((3, 3))), "columns"),
    (dict(P=np.zeros((0, 2)), Q=np.zeros((3, 2))), "non-empty"),
    (dict(P=np.full((3, 2), np.nan), Q=np.zeros((3, 2))), "nan"),
    (dict(P=np.zeros((3, 2)), Q=np.zeros((3, 2)), p=0.5), "p=0.5"),
    (dict(P=np.zeros((3, 2)), Q=np.zeros((3, 2)), approx="sinkhorn"), "approx"),
    (dict(P=np.zeros((3, 2)), Q=np.zeros((3, 2)), p=1, approx="sliced"), "p=2"),
    (dict(P=np.zeros((3, 2)), Q=np.zeros((3, 2)), max_exact=1), "max_exact"),
])
def test_wasserstein_bad_inputs(kw, match):
    with pytest.raises(ValueError, match=match):
        wasserstein_distance(**kw)


def test_concentration_radius_and_rho_bound():
    n, dim, gamma, c1, c2 = 1000, 12, 0.05, 2.0, 0.5
    r = math.log(c1 / gamma) / (c2 * n)
    assert concentration_radius(n, dim, gamma, c1, c2) == pytest.approx(r ** (1 / 12))
    # few samples: the 1/a branch
    assert concentration_radius(5, dim, gamma, c1, c2, a=3.0) == pytest.approx(
        (math.log(c1 / gamma) / (c2 * 5)) ** (1 / 3))
    assert concentration_radius(10 * n, dim, gamma, c1, c2) < concentration_radius(n, dim, gamma, c1, c2)
    assert concentration_radius(n, dim, 0.5, c1=0.4, c2=c2) == 0.0  # log(c1/gamma) <= 0
    assert rho_bound(0.2, 3.0, 0.1) == pytest.approx(0.7)
    assert rho_bound(0.0, 3.0, 0.1) == pytest.approx(0.1)


@pytest.mark.parametrize("call,match", [
    (lambda: rho_bound(1.5, 1.0, 0.0), "beta"),
    (lambda: rho_bound(-0.1, 1.0, 0.0), "beta"),
    (lambda: rho_bound(0.1, -1.0, 0.0), "W"),
    (lambda: rho_bound(0.1, 1.0, math.nan), "zeta"),
    (lambda: concentration_radius(100, 2, 0.1, 1.0, 1.0), "dim=2"),
    (lambda: concentration_radius(0, 3, 0.1, 1.0, 1.0), "n="),
    (lambda: concentration_radius(100, 3, 0.0, 1.0, 1.0), "gamma"),
    (lambda: concentration_radius(100, 3, 0.1, -1.0, 1.0), "c1"),
    (lambda: concentration_radius(100, 3, 0.1, 1.0, 1.0, a=1.0), "a="),
])
def test_radius_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def _problem(seed=0, n=200, d=4, outliers=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = X @ np.linspace(1, 2, d) + 0.3 * rng.normal(size=n)
    if outliers:
        X[:outliers] = rng.normal(size=(outliers, d)) * 30  # features replaced by loud noise
    return X, y


def test_select_rho_picks_the_lowest_validation_loss():
    X, y = _problem(outliers=0)
    rhos = [0.0, 1e-3, 1e-1, 1.0]
    res = select_rho(WassersteinRobustRegressor(), X, y, rhos, cv=3)
    table = res.scores
    assert list(table["rho"]) == rhos
    assert res.rho == table["rho"][table["val_loss"].idxmin()]
    # clean linear data: shrinking hurts, so the smallest radii win and 1.0 is far worse
    assert res.rho <= 1e-3 and table["val_loss"].iloc[-1] > 2 * table["val_loss"].min()
    assert res.estimator.rho == res.rho and hasattr(res.estimator, "objective_")
    # the table's losses are those of fits on the folds, recomputed one by one
    from sklearn.model_selection import KFold
    losses = [mean_loss(WassersteinRobustRegressor(rho=1.0).fit(X[tr], y[tr]), X[va], y[va])
              for tr, va in KFold(3, shuffle=True, random_state=0).split(X)]
    assert table["val_loss"].iloc[-1] == pytest.approx(np.mean(losses), rel=1e-6)


def test_select_rho_holdout_classifier():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(300, 3))
    y = (X[:, 0] + 0.5 * rng.normal(size=300) > 0).astype(int)
    res = select_rho(WassersteinRobustClassifier(), X, y, [0.0, 0.01, 10.0], refit=False)
    assert res.estimator is None and res.rho < 10.0
    assert res.scores["val_loss_std"].isna().all()  # one hold-out: no spread


@pytest.mark.parametrize("kw,err,match", [
    (dict(rhos=[-0.1, 0.1]), ValueError, "rhos"),
    (dict(rhos=[]), ValueError, "rhos"),
    (dict(rhos=[0.1, math.inf]), ValueError, "rhos"),
    (dict(rhos=[0.1], val_size=1.0), ValueError, "val_size"),
    (dict(rhos=[0.1], cv=1), ValueError, "cv"),
    (dict(rhos=[0.1], y=np.zeros(5)), ValueError, "y must be 1-D"),
    (dict(rhos=[0.1], estimator=WassersteinRobustRegressor(c1=0.1)), ValueError, "c1/c2"),
    (dict(rhos=[0.1], estimator=object()), TypeError, "estimator"),
])
def test_select_rho_bad_inputs(kw, err, match):
    X, y = _problem(n=30)
    args = dict(estimator=WassersteinRobustRegressor(), X=X, y=y)
    args.update(kw)
    with pytest.raises(err, match=match):
        select_rho(args.pop("estimator"), args.pop("X"), args.pop("y"), args.pop("rhos"), **args)


def test_theorem2_check():
    X, y = _problem(seed=1, n=400)
    Xte, yte = _problem(seed=2, n=400)
    est = WassersteinRobustRegressor(rho=0.05).fit(X, y)
    rec = theorem2_check(est, Xte, yte)
    r = Xte @ est.coef_ + est.intercept_ - yte
    assert rec.test_loss == pytest.approx(np.mean(0.5 * r ** 2))
    assert rec.J_n == est.objective_ and rec.holds == (rec.test_loss <= rec.J_n) and rec.certificate
    # with rho = 0 the bound is the training loss, which a fresh test set usually exceeds;
    # with a large radius J_n dominates
    assert theorem2_check(WassersteinRobustRegressor(rho=1.0).fit(X, y), Xte, yte).holds
    weighted = theorem2_check(WassersteinRobustRegressor(c1=0.1, c2=0.0).fit(X, y), Xte, yte)
    assert not weighted.certificate
    # classifier: labels through classes_
    yc = np.where(y > np.median(y), "hi", "lo")
    clf = WassersteinRobustClassifier(rho=0.01).fit(X, yc)
    rec = theorem2_check(clf, X, yc)
    z = X @ clf.coef_ + clf.intercept_
    y01 = (yc == clf.classes_[1]).astype(float)
    assert rec.test_loss == pytest.approx(np.mean(np.logaddexp(0, z) - y01 * z))
    with pytest.raises(ValueError, match="features"):
        theorem2_check(est, Xte[:, :2], yte)
    with pytest.raises(ValueError, match="y must be 1-D"):
        theorem2_check(est, Xte, yte[:-1])
    with pytest.raises(TypeError, match="fitted"):
        theorem2_check(WassersteinRobustRegressor(), Xte, yte)
    with pytest.raises(ValueError, match="labels"):
        theorem2_check(clf, X, np.full(len(X), "other"))
