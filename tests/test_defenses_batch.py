"""fit_batch: every problem of a batch has the optimum and attributes of its own fit; bad input."""
import math
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning

from mithridate.defenses import (BatchResult, WassersteinRobustClassifier,
                                 WassersteinRobustRegressor, fit_batch)


def sets(loss, S=3, n=40, d=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(S, n, d)) * np.array([1.0, 3.0, 0.3])[:d]
    z = X @ rng.normal(size=d) + 0.2
    if loss == "logistic":
        return X, (rng.random((S, n)) < 1 / (1 + np.exp(-z))).astype(float)
    return X, z + 0.5 * rng.standard_t(3, size=(S, n))


CASES = [  # (estimator, params): barrier forms, mixed kinds in one batch, the SLSQP fallback
    # (last; one training set: tight squared takes seconds)
    (WassersteinRobustRegressor(), {"c1": [0.0, 0.05, 0.5], "c2": [0.0, 0.2]}),
    (WassersteinRobustRegressor(norm=1), {"rho": [0.0, 0.01, 0.3]}),
    (WassersteinRobustRegressor(loss="absolute", norm=math.inf, regularizer="tight"),
     {"rho": [0.05, 0.5]}),
    (WassersteinRobustRegressor(regularizer="exact"), {"rho": [0.01, 0.2], "kappa": [1.0, math.inf]}),
    (WassersteinRobustClassifier(norm=math.inf), {"rho": [0.01, 0.1]}),
    (WassersteinRobustClassifier(regularizer="exact", norm=1), {"rho": [0.0, 0.1], "kappa": [0.5, math.inf]}),
    (WassersteinRobustRegressor(), [{"rho": 0.1, "regularizer": "tight"}, {"rho": 0.3, "norm": 3.0},
                                    {"rho": 0.3}]),
]


@pytest.mark.parametrize("estimator,params", CASES)
def test_batch_equals_single_fits(estimator, params):
    loss = "logistic" if isinstance(estimator, WassersteinRobustClassifier) else estimator.loss
    X, y = sets(loss, S=1 if isinstance(params, list) else 3)
    res = fit_batch(estimator, X, y, params)
    assert isinstance(res, BatchResult)
    S, G = len(X), len(res.settings)
    assert res.coef.shape == (S, G, X.shape[2]) and res.objective.shape == (S, G)
    assert res.converged.all()
    for s in range(S):
        for g, setting in enumerate(res.settings):
            one = clone(estimator).set_params(**setting).fit(X[s], y[s])
            assert res.objective[s, g] == pytest.approx(one.objective_, rel=1e-7)
            np.testing.assert_allclose(res.coef[s, g], one.coef_, rtol=1e-4, atol=1e-6)
            assert res.lipschitz[s, g] == pytest.approx(one.lipschitz_, rel=1e-4, abs=1e-7)
            fitted = res.estimator(s, g)
            assert fitted.get_params() == one.get_params()
            assert fitted.objective_ == res.objective[s, g]
            assert fitted.n_features_in_ == X.shape[2]
            bounds = one.data_bounds_ if one.data_bounds_ is not None else (np.nan, np.nan)
            np.testing.assert_allclose(res.data_bounds[s, g], bounds)
            np.testing.assert_allclose(fitted.predict(X[s]), one.predict(X[s]), rtol=1e-4, atol=1e-5)


def test_one_set_and_lists_of_sets():
    X, y = sets("logistic", S=2)
    labels = [np.where(y[0] > 0, "spam", "ham"), np.where(y[1][:30] > 0, 7, 3)]
    res = fit_batch(WassersteinRobustClassifier(), [X[0], X[1][:30]], labels, {"rho": [0.05, 0.2]})
    assert res.coef.shape == (2, 2, 3)
    assert list(res.estimator(0, 1).classes_) == ["ham", "spam"]
    assert list(res.estimator(1, 0).classes_) == [3, 7]
    single = fit_batch(WassersteinRobustClassifier(rho=0.2), X[1][:30], labels[1])
    assert single.objective.shape == (1, 1)
    assert single.objective[0, 0] == pytest.approx(res.objective[1, 1], rel=1e-7)
    assert single.settings == [{}]


def test_convergence_warning_lists_problems():
    X, y = sets("squared", S=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = fit_batch(WassersteinRobustRegressor(loss="absolute", max_iter=1), X, y,
                        {"rho": [0.1, 0.2]})
    messages = [str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)]
    assert len(messages) == 1 and "4 of 4 problems did not converge" in messages[0]
    assert not res.converged.any()


@pytest.mark.parametrize("args,error,match", [
    ((object(), np.zeros((5, 3)), np.zeros(5)), TypeError, "estimator"),
    ((WassersteinRobustRegressor(), np.zeros((2, 5, 3)), np.zeros(5)), ValueError, r"\(S, n\)"),
    ((WassersteinRobustRegressor(), [np.zeros((5, 3))], np.zeros(5)), ValueError, "lists"),
    ((WassersteinRobustRegressor(), [], []), ValueError, "empty"),
    ((WassersteinRobustRegressor(), [np.ones((5, 3)), np.ones((5, 2))], [np.ones(5)] * 2),
     ValueError, "same features"),
])
def test_bad_arguments(args, error, match):
    with pytest.raises(error, match=match):
        fit_batch(*args)


@pytest.mark.parametrize("params,error,match", [
    ({"alpha": [1.0]}, ValueError, "alpha"), ("rho", TypeError, "params"),
    ({"rho": []}, ValueError, "rho"), ({"rho": [0.1, -1.0]}, ValueError, "rho"),
    ([{"kappa": 0.0, "regularizer": "exact"}], ValueError, "kappa"),
])
def test_bad_params_fail_before_any_fit(params, error, match, monkeypatch):
    X, y = sets("squared")

    def no_solve(*args, **kwargs):
        raise AssertionError("solved before validating every problem")
    monkeypatch.setattr("mithridate.defenses.batch.barrier.solve", no_solve)
    with pytest.raises(error, match=match):
        fit_batch(WassersteinRobustRegressor(), X, y, params)


def test_bad_training_set():
    X, y = sets("logistic")
    bad = X.copy()
    bad[1, 3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fit_batch(WassersteinRobustClassifier(), bad, y)
    with pytest.raises(ValueError, match="binary"):
        fit_batch(WassersteinRobustClassifier(), X, np.arange(X.shape[1])[None].repeat(3, 0) % 3)
