"""The ART adapter (mithridate.integrations.art): the optimal attack as an ART
PoisoningAttackWhiteBox against a SklearnClassifier wrapping LogisticRegression."""
import math

import numpy as np
import pytest

pytest.importorskip("art", reason="adversarial-robustness-toolbox is not installed "
                    "(pip install 'mithridate[art]' or the test extra)")
from art.estimators.classification import SklearnClassifier  # noqa: E402
from art.exceptions import EstimatorError  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import log_loss  # noqa: E402
from sklearn.svm import SVC  # noqa: E402

from mithridate.attacks import OptimalPoisoning  # noqa: E402
from mithridate.integrations.art import HyperparameterAwarePoisoning  # noqa: E402

OPTS = dict(T=40, T_outer=10, T_lam=3, alpha=0.3, eta=0.5, lam_range=(-8.0, 6.0),
            random_state=0)


def _data(seed, n, d=4):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    X = np.clip(rng.normal(size=(n, d)) * 0.15 + 0.5 + 0.15 * (2 * y[:, None] - 1), 0, 1)
    return X, np.eye(2)[y]


def _classifier(C=1.0, **kw):
    return SklearnClassifier(model=LogisticRegression(C=C), clip_values=(0.0, 1.0), **kw)


def test_poison_returns_art_shaped_points_that_raise_the_validation_loss():
    (x, y), (xv, yv) = _data(0, 40), _data(1, 30)
    clf = _classifier(C=10.0)
    clf.fit(x, y)
    clean = log_loss(yv.argmax(1), clf.predict(xv))
    attack = HyperparameterAwarePoisoning(clf, xv, yv, n_points=8, batch_size=4, lam="model",
                                          **OPTS)
    xp, yp = attack.poison(x, y)
    assert xp.shape == (8, 4) and xp.dtype == x.dtype and yp.shape == (8, 2)
    assert np.all((xp >= 0) & (xp <= 1)) and np.all(yp.sum(1) == 1)
    assert attack.result_.lam == pytest.approx(-math.log(10.0))
    clf.fit(np.vstack([x, xp]), np.vstack([y, yp]))  # ART's convention: append the poisons
    assert log_loss(yv.argmax(1), clf.predict(xv)) > clean + 0.2


def test_poison_is_the_optimal_attack_on_the_wrapped_model():
    (x, y), (xv, yv) = _data(2, 30), _data(3, 20)
    xp, yp = HyperparameterAwarePoisoning(_classifier(C=0.5), xv, yv, n_points=4,
                                          **OPTS).poison(x, y.argmax(1))
    ref = OptimalPoisoning(model=LogisticRegression(C=0.5), n_points=4, batch_size=4,
                           box=(0.0, 1.0), replace=False, **OPTS).run(
        (x, y.argmax(1).astype(float)), (xv, yv.argmax(1).astype(float)))
    np.testing.assert_array_equal(xp, ref.Xp)
    np.testing.assert_array_equal(yp, ref.yp.astype(int))  # class indices in, indices out


@pytest.mark.parametrize("make,match", [
    (lambda: SklearnClassifier(model=LogisticRegression()), "box=\\(lo, hi\\)"),
    (lambda: _classifier(preprocessing=(0.5, 2.0)), "preprocessing"),
    (lambda: SklearnClassifier(model=LogisticRegression(),
                               clip_values=(np.zeros(4), np.r_[1.0, 1, 1, 2])), "differ"),
    (lambda: _classifier(C=math.inf), "finite C"),
])
def test_unsupported_classifiers_are_refused(make, match):
    (x, y), (xv, yv) = _data(0, 20), _data(1, 10)
    with pytest.raises(ValueError, match=match):
        HyperparameterAwarePoisoning(make(), xv, yv, n_points=2, **OPTS).poison(x, y)


def test_non_logistic_models_and_bad_calls_are_refused():
    (x, y), (xv, yv) = _data(0, 20), _data(1, 10)
    with pytest.raises(EstimatorError):
        HyperparameterAwarePoisoning(SklearnClassifier(model=SVC(), clip_values=(0.0, 1.0)), xv, yv)
    attack = HyperparameterAwarePoisoning(_classifier(), xv, yv, n_points=2, **OPTS)
    with pytest.raises(ValueError, match="y is required"):
        attack.poison(x)
    with pytest.raises(ValueError, match="one-hot"):
        attack.poison(x, np.ones((20, 3)))
    with pytest.raises(ValueError, match="drop them"):
        HyperparameterAwarePoisoning(_classifier(), xv, yv, replace=True)
