"""Data sets that install with scikit-learn (bundled files, no download)."""
import numpy as np

from .dataset import Dataset


def _sk(loader):
    import sklearn.datasets  # deferred: importing sklearn costs about a second
    return getattr(sklearn.datasets, loader)()


def load_digits(classes=None):
    """scikit-learn's 8x8 digits (1,797 x 64, pixels 0..16 scaled to [0, 1]).

    `classes=(a, b)`: binary a (y = 0) vs b (y = 1); None: all ten, y = the digit.
    """
    b = _sk("load_digits")
    X, y = b.data / 16.0, b.target
    meta = {"origin": "embedded"}
    if classes is None:
        return Dataset(X, y, "digits", b.feature_names, "multiclass", meta)
    from .loaders import _check_pair
    lo, hi = _check_pair(classes, 10)
    keep = (y == lo) | (y == hi)
    meta["classes"] = {0: lo, 1: hi}
    return Dataset(X[keep], y[keep] == hi, "digits", b.feature_names, "binary", meta)


def load_diabetes():
    """scikit-learn's diabetes (442 x 10, features as scikit-learn scales them); regression."""
    b = _sk("load_diabetes")
    return Dataset(b.data, b.target, "diabetes", b.feature_names, "regression",
                   {"origin": "embedded"})


def load_breast_cancer():
    """scikit-learn's Wisconsin breast cancer (569 x 30); y = 1 benign, 0 malignant."""
    b = _sk("load_breast_cancer")
    return Dataset(b.data, np.asarray(b.target), "breast-cancer", b.feature_names, "binary",
                   {"origin": "embedded", "classes": {0: "malignant", 1: "benign"}})
