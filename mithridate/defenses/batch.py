"""Batched fitting: many training sets x many parameter settings of one estimator in one call.

    result = fit_batch(estimator, X, y, params=None)

``estimator``  a WassersteinRobustRegressor or WassersteinRobustClassifier; only its
               parameters are read (it is not fitted): they are the defaults of every problem.
``X, y``       one training set, X (n, d) and y (n,); or S sets of one size, X (S, n, d) and
               y (S, n); or S sets as two lists of arrays (row counts may differ).
``params``     None (the estimator's own setting); a dict {name: list of values}, the
               Cartesian grid in ``sklearn.model_selection.ParameterGrid`` order; or a list
               of dicts, the settings themselves. Names are estimator parameters (rho, c1, c2,
               kappa, regularizer, norm, ...).

Problem (s, g) is exactly ``clone(estimator).set_params(**settings[g]).fit(X[s], y[s])``:
same validation, same optimum (to ``tol``), same fitted attributes. Returns a
:class:`BatchResult` of arrays indexed [s, g] (S = 1 for one training set):
coef (S, G, d), intercept (S, G), objective (S, G), lipschitz (S, G), n_iter (S, G),
converged (S, G), data_bounds (S, G, 2) (nan where the form has none), settings (G dicts);
``result.estimator(s, g)`` gives the fitted estimator of problem (s, g). One
ConvergenceWarning lists the problems that did not converge.

Speed: the convex problems with norm p in {1, 2, inf} (every regulariser except the
nonconvex tight squared/logistic forms) are solved together by one interior-point run
(``barrier.solve``, the solver ``fit`` uses for them): per Newton step one pass over each
training set for all its settings (G parameter vectors, one matrix-matrix product) and
one batched (p + m)-sized linear solve. Training sets of one shape share a run. The
rest are fitted one by one by ``fit``'s SLSQP.
"""
import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import ParameterGrid

from . import barrier
from .wdro import _WassersteinRobust


@dataclass
class BatchResult:
    coef: np.ndarray
    intercept: np.ndarray
    objective: np.ndarray
    lipschitz: np.ndarray
    n_iter: np.ndarray
    converged: np.ndarray
    data_bounds: np.ndarray
    settings: list
    estimators: list  # estimators[s][g], fitted

    def estimator(self, s, g):
        """The fitted estimator of training set s and setting g."""
        return self.estimators[s][g]


def _training_sets(X, y):
    if isinstance(X, (list, tuple)) or isinstance(y, (list, tuple)):
        if not (isinstance(X, (list, tuple)) and isinstance(y, (list, tuple))) or len(X) != len(y):
            raise ValueError("X and y must both be lists of the same length (one array per "
                             "training set) or both arrays.")
        if len(X) == 0:
            raise ValueError("X is an empty list; pass at least one training set.")
        return list(zip(X, y))
    if getattr(X, "ndim", None) == 2 and getattr(y, "ndim", None) == 1:
        return [(X, y)]  # as given: a DataFrame keeps its feature names through fit
    X, y = np.asarray(X), np.asarray(y)
    if X.ndim == 2 and y.ndim == 1:
        return [(X, y)]
    if X.ndim == 3 and y.ndim == 2 and X.shape[0] == y.shape[0]:
        return [(X[s], y[s]) for s in range(X.shape[0])]
    raise ValueError(f"X {X.shape} and y {y.shape} must be (n, d) and (n,) for one training set, "
                     "or (S, n, d) and (S, n) for S sets (or lists of arrays).")


def _settings(estimator, params):
    if params is None:
        return [{}]
    if isinstance(params, dict):
        settings = list(ParameterGrid(params))
    elif isinstance(params, (list, tuple)) and all(isinstance(p, dict) for p in params):
        settings = [dict(p) for p in params]
    else:
        raise TypeError("params must be None, a dict {name: list of values} (a grid) or a list "
                        f"of dicts (settings); got {type(params).__name__}.")
    if not settings:
        raise ValueError("params describes no setting; give at least one value per name.")
    known = estimator.get_params(deep=False)
    for p in settings:
        unknown = sorted(set(p) - set(known))
        if unknown:
            raise ValueError(f"params names {unknown} are not parameters of "
                             f"{type(estimator).__name__}; choose from {sorted(known)}.")
    return settings


def fit_batch(estimator, X, y, params=None):
    """Fit every (training set, setting) pair; see the module docstring."""
    if not isinstance(estimator, _WassersteinRobust):
        raise TypeError("estimator must be a WassersteinRobustRegressor or "
                        f"WassersteinRobustClassifier, got {type(estimator).__name__}.")
    sets = _training_sets(X, y)
    settings = _settings(estimator, params)
    models = [[clone(estimator).set_params(**p) for p in settings] for _ in sets]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        _fit_all(models, sets)
    for w in caught:
        if not issubclass(w.category, ConvergenceWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    S, G = len(sets), len(settings)
    flat = [m for row in models for m in row]
    shape = (S, G)
    bounds = np.array([m.data_bounds_ if m.data_bounds_ is not None else (np.nan, np.nan)
                       for m in flat]).reshape(S, G, 2)
    res = BatchResult(
        coef=np.array([m.coef_ for m in flat]).reshape(S, G, -1),
        intercept=np.array([m.intercept_ for m in flat]).reshape(shape),
        objective=np.array([m.objective_ for m in flat]).reshape(shape),
        lipschitz=np.array([m.lipschitz_ for m in flat]).reshape(shape),
        n_iter=np.array([m.n_iter_ for m in flat]).reshape(shape),
        converged=np.array([m.converged_ for m in flat]).reshape(shape),
        data_bounds=bounds, settings=settings, estimators=models)
    if not res.converged.all():
        bad = [tuple(int(i) for i in ix) for ix in np.argwhere(~res.converged)]
        warnings.warn(f"{len(bad)} of {S * G} problems did not converge (set, setting): "
                      f"{bad[:10]}{' ...' if len(bad) > 10 else ''}. Increase max_iter or tol, "
                      "or rescale X.", ConvergenceWarning, stacklevel=2)
    return res


def _fit_all(models, sets):
    """Fit models[s][g] on sets[s]: the barrier forms together, the rest one by one."""
    checked = []  # every parameter and training set is validated before any solve
    for s, (row, (X, y)) in enumerate(zip(models, sets)):
        for m in row:
            m._check_params()
            Xv, yv = m._validate(X, y)
            if checked and Xv.shape[1] != checked[0][2].shape[1]:
                raise ValueError(f"training set {s} has {Xv.shape[1]} features but set 0 has "
                                 f"{checked[0][2].shape[1]}; every set needs the same features.")
            checked.append((s, m, Xv, yv, m._form(Xv, yv)))
    groups, design = {}, {}
    for s, m, Xv, yv, form in checked:
        if form is None:
            m._fit(Xv, yv)
            continue
        fi = bool(m.fit_intercept)
        if (s, fi) not in design:
            design[s, fi] = (np.hstack([Xv, np.ones((len(yv), 1))]) if fi else Xv, yv)
        key = (form["kind"], form["q"], tuple(form["sel"]), fi, m.tol, m.max_iter)
        groups.setdefault(key, {}).setdefault(s, []).append((m, form))
    for (kind, q, sel, fi, tol, max_iter), by_set in groups.items():
        # one solve per block of sets with the same shape and number of problems
        blocks = {}
        for s, probs in by_set.items():
            blocks.setdefault((design[s, fi][0].shape, len(probs)), []).append(s)
        for block in blocks.values():
            Xa = np.stack([design[s, fi][0] for s in block])
            y = np.stack([design[s, fi][1] for s in block])
            probs = [by_set[s] for s in block]
            weights = {k: np.array([[f["weights"][k] for _, f in row] for row in probs])
                       for k in ("c", "a", "b", "kappa")}
            theta, value, n_iter, done = barrier.solve(Xa, y, kind=kind, q=q, sel=np.array(sel),
                                                       **weights, tol=tol, max_iter=max_iter)
            for i, row in enumerate(probs):
                for j, (m, form) in enumerate(row):
                    m._store_barrier(theta[i, j], float(value[i, j]), form, int(n_iter[i, j]),
                                     bool(done[i, j]))
