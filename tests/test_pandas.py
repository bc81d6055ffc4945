"""The estimators of mithridate.defenses on pandas input: DataFrames and Series
in, feature_names_in_ kept, names checked at predict time, results equal to
numpy input."""
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mithridate.defenses import (WassersteinRobustClassifier, WassersteinRobustRegressor,
                                 fit_batch, select_rho)

ESTIMATORS = [WassersteinRobustRegressor(rho=0.01), WassersteinRobustRegressor(loss="absolute"),
              WassersteinRobustClassifier(rho=0.01),
              WassersteinRobustClassifier(regularizer="exact", kappa=1.0)]
ids = ["squared", "absolute", "logistic", "logistic-exact"]


def _frame(est, n=30, seed=0):
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(n, 3)), columns=["age", "income", "score"])
    z = X.to_numpy() @ np.array([1.0, -0.5, 0.25])
    if isinstance(est, WassersteinRobustClassifier):
        return X, pd.Series(np.where(z + 0.3 * rng.normal(size=n) > 0, "yes", "no"), name="label")
    return X, pd.Series(z + 0.1 * rng.normal(size=n), name="target")


@pytest.mark.parametrize("est", ESTIMATORS, ids=ids)
def test_dataframe_fit_keeps_feature_names_and_matches_numpy(est):
    X, y = _frame(est)
    fitted = est.__class__(**est.get_params()).fit(X, y)
    plain = est.__class__(**est.get_params()).fit(X.to_numpy(), y.to_numpy())
    np.testing.assert_array_equal(fitted.feature_names_in_, ["age", "income", "score"])
    assert fitted.n_features_in_ == 3 and not hasattr(plain, "feature_names_in_")
    np.testing.assert_allclose(fitted.coef_, plain.coef_, rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(fitted.predict(X), plain.predict(X.to_numpy()))
    assert fitted.score(X, y) == pytest.approx(plain.score(X.to_numpy(), y.to_numpy()))
    if isinstance(est, WassersteinRobustClassifier):
        np.testing.assert_array_equal(fitted.classes_, ["no", "yes"])
        assert set(fitted.predict(X)) <= {"no", "yes"}


@pytest.mark.parametrize("est", ESTIMATORS[::2], ids=ids[::2])
def test_feature_names_are_checked_at_predict_time(est):
    X, y = _frame(est)
    est = est.__class__(**est.get_params()).fit(X, y)
    with pytest.raises(ValueError, match="feature names should match"):
        est.predict(X[["income", "age", "score"]])
    with pytest.raises(ValueError, match="feature names should match"):
        est.predict(X.rename(columns={"age": "AGE"}))
    with pytest.warns(UserWarning, match="does not have valid feature names"):
        est.predict(X.to_numpy())
    numpy_fitted = est.__class__(**est.get_params()).fit(X.to_numpy(), y.to_numpy())
    with pytest.warns(UserWarning, match="fitted without feature names"):
        numpy_fitted.predict(X)


def test_non_string_column_names_give_no_feature_names():
    X, y = _frame(WassersteinRobustRegressor())
    est = WassersteinRobustRegressor(rho=0.01).fit(X.set_axis([0, 1, 2], axis=1), y)
    assert not hasattr(est, "feature_names_in_")
    with pytest.raises(TypeError, match="string names"):
        WassersteinRobustRegressor().fit(X.set_axis(["a", 1, "c"], axis=1), y)


def test_nullable_dtypes_and_missing_values():
    X, y = _frame(WassersteinRobustRegressor())
    Xn = X.astype("Float64")
    est = WassersteinRobustRegressor(rho=0.01).fit(Xn, y.astype("Float64"))
    np.testing.assert_allclose(est.coef_, WassersteinRobustRegressor(rho=0.01).fit(X, y).coef_)
    Xn.iloc[3, 1] = pd.NA
    with pytest.raises(ValueError, match="NaN"):
        WassersteinRobustRegressor().fit(Xn, y)


def test_in_a_pandas_pipeline():
    X, y = _frame(WassersteinRobustClassifier())
    scale = ColumnTransformer([("num", StandardScaler(), ["age", "income"])],
                              remainder="passthrough", verbose_feature_names_out=False)
    pipe = make_pipeline(scale, WassersteinRobustClassifier(rho=0.01))
    pipe.set_output(transform="pandas")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no feature-name warning between the steps
        pipe.fit(X, y)
        pred = pipe.predict(X)
    np.testing.assert_array_equal(pipe[-1].feature_names_in_, ["age", "income", "score"])
    np.testing.assert_array_equal(pipe.feature_names_in_, ["age", "income", "score"])
    assert pred.shape == (30,) and set(pred) <= {"no", "yes"}


def test_batch_fits_and_rho_selection_keep_feature_names():
    X, y = _frame(WassersteinRobustClassifier())
    res = fit_batch(WassersteinRobustClassifier(), X, y, {"rho": [0.01, 0.1]})
    res_list = fit_batch(WassersteinRobustClassifier(), [X, X.iloc[:20]], [y, y.iloc[:20]])
    for est in (res.estimator(0, 1), res_list.estimator(1, 0)):
        np.testing.assert_array_equal(est.feature_names_in_, ["age", "income", "score"])
    single = WassersteinRobustClassifier(rho=0.1).fit(X, y)
    np.testing.assert_allclose(res.coef[0, 1], single.coef_, rtol=1e-6, atol=1e-9)
    chosen = select_rho(WassersteinRobustClassifier(), X, y, [0.01, 0.1]).estimator
    np.testing.assert_array_equal(chosen.feature_names_in_, ["age", "income", "score"])
