"""Choosing the Wasserstein radius rho of paper 000, and checking its Theorem 2.

- :func:`wasserstein_distance`: the empirical 1-Wasserstein distance between
  two point clouds (rows = (x, y) stacked), transport cost the p-norm as in
  the paper's W (Section 3), computed with POT.
- :func:`concentration_radius` (zeta of Lemma 1) and :func:`rho_bound`
  (rho = zeta(beta) + beta W(Q, P) of Theorems 1 and 2).
- :func:`select_rho`: rho from a grid by held-out validation (hold-out or
  K-fold), the practical alternative when Lemma 1's constants are unknown.
- :func:`theorem2_check`: whether a fit's clean test loss is <= its J_n.
"""
import math
import numbers
from typing import NamedTuple

import numpy as np

MAX_EXACT = 1000  # rows per cloud solved exactly: a 1000 x 1000 EMD takes about a second


def _cloud(name, a):
    a = np.asarray(a, dtype=np.float64) if not isinstance(a, np.ndarray) or a.dtype.kind in "iub" \
        else a.astype(np.float64, copy=False)
    if a.dtype.kind != "f":
        raise TypeError(f"{name} must hold real numbers, got dtype {a.dtype}.")
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array of points (rows = points, e.g. "
                         f"numpy.column_stack([X, y])), got shape {a.shape}.")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains nan or inf; remove those rows first.")
    return a


def _positive_int(name, v, low=1):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low:
        raise ValueError(f"{name}={v!r} must be an integer >= {low}.")
    return int(v)


def _cost(P, Q, p):
    from scipy.spatial.distance import cdist
    if p == math.inf:
        return cdist(P, Q, "chebyshev")
    return cdist(P, Q, "minkowski", p=p)


def _emd(P, Q, p):
    import ot
    a, b = np.full(len(P), 1.0 / len(P)), np.full(len(Q), 1.0 / len(Q))
    return float(ot.emd2(a, b, _cost(P, Q, p), numItermax=10_000_000))


def wasserstein_distance(P, Q, p=2, *, max_exact=MAX_EXACT, approx="subsample",
                         n_repeats=5, n_projections=200, seed=0):
    """Empirical 1-Wasserstein distance W(P, Q) between the uniform measures on the
    rows of ``P`` (n, m) and ``Q`` (k, m), cost ||xi - xi'||_p (p >= 1 or numpy.inf).

    Exact (``ot.emd2`` on the full n x k cost matrix) when both clouds have at most
    ``max_exact`` rows. Beyond that, a stated approximation:

    - ``approx="subsample"`` (default, any p): the mean over ``n_repeats`` draws of
      the exact W between uniform subsamples (without replacement) of ``max_exact``
      rows of each cloud. W is jointly convex and a subsample's empirical measure
      averages to the full one, so the expectation of this estimate is >= the full
      W: it errs on the conservative side for rho, by the subsample's own
      sampling error, which decays like max_exact^(-1/m') (m' the intrinsic
      dimension; Fournier and Guillin 2015). The spread over repeats is not
      returned; raise ``max_exact`` or ``n_repeats`` to shrink it.
    - ``approx="sliced"`` (p = 2 only): ``ot.sliced_wasserstein_distance`` with
      power 1 over ``n_projections`` random directions, the mean of the 1-D
      distances of the projections. Projections are 1-Lipschitz, so this is a
      lower bound on W (it can be smaller by a factor up to about sqrt(m)): use it
      for scale, not for a certificate.
    """
    P, Q = _cloud("P", P), _cloud("Q", Q)
    if P.shape[1] != Q.shape[1]:
        raise ValueError(f"P has {P.shape[1]} columns but Q has {Q.shape[1]}; both clouds must "
                         "live in the same space (stack (x, y) the same way).")
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not p >= 1:
        raise ValueError(f"p={p!r} must be a number >= 1 (1, 2, numpy.inf, ...).")
    max_exact = _positive_int("max_exact", max_exact, 2)
    n_repeats = _positive_int("n_repeats", n_repeats)
    n_projections = _positive_int("n_projections", n_projections)
    if approx not in ("subsample", "sliced"):
        raise ValueError(f"approx={approx!r} must be 'subsample' or 'sliced'.")
    if approx == "sliced" and p != 2:
        raise ValueError(f"approx='sliced' projects on Euclidean directions: it needs p=2, got "
                         f"p={p!r}; use approx='subsample'.")
    p = float(p)
    if len(P) <= max_exact and len(Q) <= max_exact:
        return _emd(P, Q, p)
    rng = np.random.default_rng(seed)
    if approx == "sliced":
        import ot
        return float(ot.sliced_wasserstein_distance(P, Q, n_projections=n_projections, p=1,
                                                    seed=int(rng.integers(2 ** 31))))
    draws = []
    for _ in range(n_repeats):
        Ps = P[rng.choice(len(P), min(len(P), max_exact), replace=False)]
        Qs = Q[rng.choice(len(Q), min(len(Q), max_exact), replace=False)]
        draws.append(_emd(Ps, Qs, p))
    return float(np.mean(draws))


def _real(name, v, low=0.0, high=math.inf, open_low=False):
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (numbers.Real, np.floating)) \
            or not math.isfinite(v) or v < low or v > high or (open_low and v == low):
        rng = f"{'(' if open_low else '['}{low:g}, {high:g}{']' if math.isfinite(high) else ')'}"
        raise ValueError(f"{name}={v!r} must be a finite number in {rng}.")
    return float(v)


def concentration_radius(n, dim, gamma, c1, c2, a=2.0):
    """zeta(gamma) of Lemma 1 (Esfahani and Kuhn 2018, Thm 3.4): with probability
    >= 1 - gamma the empirical measure of ``n`` samples in R^dim lies within W <= zeta
    of the true one, where, with r = log(c1 / gamma) / (c2 n),

        zeta = r^(1 / max(dim, 2))  if n >= log(c1 / gamma) / c2,   else  r^(1 / a).

    ``c1, c2 > 0`` are the light-tail constants of the data distribution (unknown
    in practice: give your own) and ``a > 1`` its exponent in Assumption 1
    (E exp(||xi||^a) < inf). ``dim`` = p_x + p_y must not be 2 (the lemma's
    excluded case, which carries an extra log factor).
    """
    n = _positive_int("n", n)
    dim = _positive_int("dim", dim)
    if dim == 2:
        raise ValueError("dim=2 is the case Lemma 1 excludes (its rate has an extra log "
                         "factor); pass dim=3 for a slightly looser radius.")
    gamma = _real("gamma", gamma, 0.0, 1.0, open_low=True)
    c1 = _real("c1", c1, 0.0, open_low=True)
    c2 = _real("c2", c2, 0.0, open_low=True)
    a = _real("a", a, 1.0, open_low=True)
    if gamma == 1.0 or c1 <= gamma:
        return 0.0  # log(c1 / gamma) <= 0: the bound holds with any radius
    log_term = math.log(c1 / gamma)
    r = log_term / (c2 * n)
    return r ** (1.0 / max(dim, 2)) if n >= log_term / c2 else r ** (1.0 / a)


def rho_bound(beta, W, zeta):
    """rho = zeta + beta W(Q, P): the radius of Theorems 1 and 2 (Lemma 1 with
    gamma = beta), from the poisoning fraction ``beta`` in [0, 1], the distance
    ``W`` >= 0 between the poison and clean distributions (e.g.
    :func:`wasserstein_distance`) and the concentration term ``zeta`` >= 0 (e.g.
    :func:`concentration_radius`)."""
    beta = _real("beta", beta, 0.0, 1.0)
    return _real("zeta", zeta) + beta * _real("W", W)


class TestLoss(NamedTuple):
    """Theorem 2 record of one fit: mean clean test loss, the fit's J_n, and
    ``holds`` = test_loss <= J_n. ``certificate`` is False when the estimator was
    fitted with c1/c2 weights (then J_n is a penalised objective, not (8))."""
    test_loss: float
    J_n: float
    holds: bool
    certificate: bool


def _check_xy(X, y):
    X = np.asarray(X, dtype=np.float64) if not (isinstance(X, np.ndarray) and X.dtype.kind == "f") else X
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"X must be a non-empty 2-D array (n_samples, n_features), got shape "
                         f"{X.shape}.")
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != len(X):
        raise ValueError(f"y must be 1-D with one entry per row of X ({len(X)}), got shape "
                         f"{y.shape}.")
    if not np.isfinite(X).all():
        raise ValueError("X contains nan or inf; remove or impute those values first.")
    return X, y


def mean_loss(est, X, y):
    """Mean loss of the fitted WassersteinRobust* ``est`` on (X, y), in the units of
    its ``objective_``: 0.5 r^2 (squared), |r| (absolute), softplus(z) - y z (logistic,
    labels through ``classes_``). For regularizer="exact" with the squared loss,
    ``objective_`` is also stated for 0.5 r^2 (0.5 (sqrt(MSE) + sqrt(rho) ||.||)^2)."""
    z = X @ est.coef_ + est.intercept_
    if hasattr(est, "classes_"):
        known = np.isin(y, est.classes_)
        if not known.all():
            raise ValueError(f"y holds labels {np.unique(y[~known])[:5]} not seen in fit "
                             f"(classes_ = {est.classes_}).")
        y01 = (y == est.classes_[1]).astype(np.float64)
        return float(np.mean(np.logaddexp(0.0, z) - y01 * z))
    r = z - np.asarray(y, dtype=np.float64)
    if est.loss == "absolute":
        return float(np.mean(np.abs(r)))
    return float(np.mean(0.5 * r ** 2))


def theorem2_check(estimator, X_test, y_test):
    """Theorem 2 on one fit: is the mean loss on clean test data <= J_n (``objective_``)?

    ``estimator`` is a fitted WassersteinRobustRegressor/Classifier; returns a
    :class:`TestLoss`. Theorem 2 promises ``holds`` with probability >= 1 - beta
    only when rho >= zeta(beta) + beta W(Q, P); with c1/c2 weights ``objective_``
    is not (8) and ``certificate`` is False.
    """
    if not hasattr(estimator, "objective_") or not hasattr(estimator, "coef_"):
        raise TypeError(f"estimator must be a fitted WassersteinRobustRegressor or "
                        f"WassersteinRobustClassifier, got {type(estimator).__name__}; call "
                        f"fit first.")
    X, y = _check_xy(X_test, y_test)
    if X.shape[1] != len(estimator.coef_):
        raise ValueError(f"X_test has {X.shape[1]} features but the estimator was fitted on "
                         f"{len(estimator.coef_)}.")
    loss = mean_loss(estimator, X, y)
    J = float(estimator.objective_)
    cert = getattr(estimator, "c1", None) is None and getattr(estimator, "c2", None) is None
    return TestLoss(loss, J, bool(loss <= J), cert)


class RhoSelection(NamedTuple):
    """Result of :func:`select_rho`: the best rho, a table (pandas DataFrame: rho,
    val_loss = mean validation loss over folds, val_loss_std), and the estimator
    refitted on all of (X, y) at the best rho (None if refit=False)."""
    rho: float
    scores: object
    estimator: object


def select_rho(estimator, X, y, rhos, *, val_size=0.25, cv=None, seed=0, refit=True):
    """Pick rho from the grid ``rhos`` by validation loss (the estimator's own loss,
    see :func:`mean_loss`), lowest wins (ties: the larger rho, the more robust).

    Hold-out by default: a random ``val_size`` fraction of (X, y) is held out
    (stratified for a classifier); ``cv=K`` (K >= 2) uses K folds instead
    (stratified K-fold for a classifier). Every rho is fitted on the same split(s), all
    (fold, rho) problems in one ``fit_batch`` call.
    The defender sees only the (possibly poisoned) training set, so validation
    happens on it too. ``estimator`` is an unfitted WassersteinRobust* whose
    other parameters are kept (c1/c2 must be None: they override rho).
    """
    from sklearn.base import clone, is_classifier
    from sklearn.model_selection import KFold, StratifiedKFold, train_test_split
    import pandas as pd

    if not hasattr(estimator, "rho") or not hasattr(estimator, "get_params"):
        raise TypeError(f"estimator must be a WassersteinRobustRegressor or "
                        f"WassersteinRobustClassifier, got {type(estimator).__name__}.")
    if getattr(estimator, "c1", None) is not None or getattr(estimator, "c2", None) is not None:
        raise ValueError("estimator has c1/c2 set, which override rho; set c1=None, c2=None to "
                         "tune rho.")
    grid = np.atleast_1d(np.asarray(rhos, dtype=np.float64)) if not isinstance(rhos, str) else None
    if grid is None or grid.ndim != 1 or grid.size == 0 or not np.isfinite(grid).all() \
            or (grid < 0).any():
        raise ValueError(f"rhos={rhos!r} must be a non-empty 1-D list of finite numbers >= 0.")
    given = X, y  # the refit sees them as given: a DataFrame keeps its feature names
    X, y = _check_xy(X, y)
    if cv is None:
        _real("val_size", val_size, 0.0, 1.0, open_low=True)
        if val_size >= 1.0:
            raise ValueError(f"val_size={val_size!r} must be < 1: some rows must stay for training.")
        strat = y if is_classifier(estimator) else None
        idx = np.arange(len(y))
        tr, va = train_test_split(idx, test_size=val_size, random_state=seed, stratify=strat)
        folds = [(tr, va)]
    else:
        cv = _positive_int("cv", cv, 2)
        splitter = (StratifiedKFold if is_classifier(estimator) else KFold)(
            cv, shuffle=True, random_state=seed)
        folds = list(splitter.split(X, y))
    from .batch import fit_batch
    # every (fold, rho) problem in one batched fit
    res = fit_batch(estimator, [X[tr] for tr, _ in folds], [y[tr] for tr, _ in folds],
                    {"rho": [float(r) for r in grid]})
    losses = np.array([[mean_loss(res.estimator(j, i), X[va], y[va])
                        for j, (_, va) in enumerate(folds)] for i in range(len(grid))])
    mean = losses.mean(1)
    if not np.isfinite(mean).any():
        raise ValueError("every rho gave a non-finite validation loss; rescale X or y.")
    ties = np.flatnonzero(mean == np.nanmin(mean))
    best = int(ties[np.argmax(grid[ties])])
    table = pd.DataFrame({"rho": grid, "val_loss": mean,
                          "val_loss_std": losses.std(1) if len(folds) > 1 else np.nan})
    final = clone(estimator).set_params(rho=float(grid[best])).fit(*given) if refit else None
    return RhoSelection(float(grid[best]), table, final)
