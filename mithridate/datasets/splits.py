"""Train/validation/test splits as the papers draw them, reproducible from a seed."""
from dataclasses import dataclass

import numpy as np

from .dataset import Dataset


@dataclass
class Split:
    """Arrays of one split. `idx_*` index the rows of the data set(s) they came from
    (for paper 002, train and val index the training pool, test the test set)."""
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    idx_train: np.ndarray
    idx_test: np.ndarray
    X_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    idx_val: np.ndarray | None = None


def _check_dataset(ds, arg):
    if not isinstance(ds, Dataset):
        raise TypeError(f"{arg} must be a mithridate.datasets.Dataset, got {type(ds).__name__}")


def split_paper000(ds, seed, test_fraction=0.5):
    """Paper 000: a random train/test split of `ds`, half and half by default.

    The test set has round(n * test_fraction) rows, the train set the rest.
    """
    _check_dataset(ds, "ds")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    n = ds.n_samples
    n_test = int(round(n * test_fraction))
    if not 0 < n_test < n:
        raise ValueError(f"{ds.name}: {n} rows are too few to split with "
                         f"test_fraction={test_fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    tr, te = np.sort(perm[n_test:]), np.sort(perm[:n_test])
    return Split(ds.X[tr], ds.y[tr], ds.X[te], ds.y[te], tr, te)


def split_paper002(ds_train_pool, ds_test, seed, n_train=512, n_val=171):
    """Paper 002 (Appendix D): `n_train` training and `n_val` validation rows drawn
    at random without replacement from `ds_train_pool`; the test set is all of `ds_test`.
    """
    _check_dataset(ds_train_pool, "ds_train_pool")
    _check_dataset(ds_test, "ds_test")
    for arg, v in (("n_train", n_train), ("n_val", n_val)):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{arg} must be a positive int, got {v!r}")
    pool = ds_train_pool.n_samples
    if n_train + n_val > pool:
        raise ValueError(f"n_train + n_val = {n_train + n_val} exceeds the {pool} rows of "
                         f"ds_train_pool; lower them")
    if ds_test.n_features != ds_train_pool.n_features:
        raise ValueError(f"ds_test has {ds_test.n_features} features, ds_train_pool "
                         f"{ds_train_pool.n_features}")
    pick = np.random.default_rng(seed).choice(pool, n_train + n_val, replace=False)
    tr, va, te = pick[:n_train], pick[n_train:], np.arange(ds_test.n_samples)
    X, y = ds_train_pool.X, ds_train_pool.y
    return Split(X[tr], y[tr], ds_test.X.copy(), ds_test.y.copy(), tr, te, X[va], y[va], va)
