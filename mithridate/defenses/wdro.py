"""Wasserstein-robust linear estimators of paper 000 (eq. 8), scikit-learn API.

fit minimises J(theta) = 1/n sum_i l(z_i, y_i) + rho L(theta), z = w.x + b, where
l is the data term of ``ops.loss_grad`` (squared 0.5 r^2, absolute |r|,
logistic softplus(z) - y z) and L the Lipschitz constant of ``ops.lipschitz``
(transport cost: the p-norm ``norm`` of (x, y); its docstring gives the forms):
  regularizer="paper"  closed forms (11), (13) (Lemma 3's ||theta||_*, not the
                       printed ||theta||_*^2), (15) in t = ||theta||_*;
  regularizer="tight"  eq. (10)/Lemma 3: max over the training rows.
  regularizer="exact"  the Wasserstein-DRO problem (6) itself, sup over the ball of
                       E_G loss, in the finite convex forms known for it (norm p in {1, 2,
                       inf}); ``kappa`` > 0 prices label moves (default inf: labels fixed):
      absolute  cost ||(x - x', kappa (y - y'))||_p, type 1: the Lipschitz relaxation is
                exact for this piecewise-linear loss on unbounded support (Esfahani & Kuhn
                2018, Shafieezadeh-Abadeh et al. 2019): J = mean |r| + rho ||(w, 1/kappa)||_q
                (kappa = 1 is regularizer="tight"; kappa = inf the x-only constant ||w||_q
                of the printed (10));
      logistic  cost ||x - x'||_p + kappa 1[y != y'] (Shafieezadeh-Abadeh, Mohajerin
                Esfahani & Kuhn 2015, Thm 1): J = min over lambda >= ||w||_q of
                lambda rho + 1/n sum_i max(l(z_i, y_i), l(z_i, 1 - y_i) - lambda kappa);
                kappa = inf: mean loss + rho ||w||_q, again the Lipschitz relaxation, exact;
      squared   type-2 ball, cost ||(x - x', kappa (y - y'))||_p^2 <= rho, i.e. rho is the
                squared radius W_2^2 (Blanchet, Kang & Murthy 2019, Thm 1, with the
                label term added to the residual's dual norm): sup E_G (z - y)^2 =
                (sqrt(MSE) + sqrt(rho) ||(w, 1/kappa)||_q)^2. The fit minimises the root
                sqrt(MSE) + sqrt(rho) ||(w, 1/kappa)||_q; ``objective_`` reports the
                certificate for the loss 0.5 r^2, 0.5 (that root)^2. Lemma 1's radius
                is a W_1 radius: choose rho for the W_2 ball instead.
                The intercept is not transported (the constant feature does not move).
By Theorem 2, with rho = zeta(beta) + beta W(Q, P), ``objective_`` (J_n) bounds
the expected loss under the true distribution with probability >= 1 - beta (for
"exact", J_n is the worst case over the ball itself: the cited dualities are tight).
Where the balls agree (absolute and logistic, fixed labels) paper's L >= ||w||_q, so
the paper objective bounds the exact one from above.
``lipschitz_`` is L(theta) for paper/tight and the dual-norm term
||(w, 1/kappa)||_q (||w||_q for logistic) for exact.

Solvers: the convex forms with p in {1, 2, inf} (all but tight squared/logistic)
go to ``barrier.solve`` (interior point, certified gap); the rest to the SLSQP
epigraph of ``solvers.solve``.

The paper's figures weight the pieces instead: with ``c1`` or ``c2`` given
(the other then defaults to 0; paper regulariser only) the regulariser is
c1 t^2 + c2 t, t = ||theta||_*, and rho is ignored; ``objective_`` is then
mean loss + c1 t^2 + c2 t, not a certificate. ``lipschitz_`` is still L.
"""
import math
import numbers
import warnings

import numpy as np
from scipy.special import expit
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.multiclass import type_of_target
from sklearn.utils.validation import check_is_fitted, validate_data

from .. import ops
from .._validation import as_bool, check_choice
from ..backends import BACKENDS
from ..errors import DivergenceError
from . import barrier
from .solvers import paper_coefficients, solve

NORMS_EXACT = (1.0, 2.0, math.inf)


class _WassersteinRobust(BaseEstimator):
    _loss = None  # set per subclass (regressor: the `loss` parameter)

    def _check_params(self):
        def number(name, value, low):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) \
                    or not (math.isfinite(value) or value == math.inf) or value < low:
                raise ValueError(f"{name}={value!r} must be a real number >= {low}.")
        number("rho", self.rho, 0)
        if isinstance(self.norm, bool) or not isinstance(self.norm, numbers.Real) or not self.norm >= 1:
            raise ValueError(f"norm={self.norm!r} must be a number p >= 1 (1, 2, numpy.inf, ...).")
        if self.rho == math.inf:
            raise ValueError("rho=inf is not allowed; pass a finite rho >= 0.")
        if self.regularizer not in ("paper", "tight", "exact"):
            raise ValueError(f"regularizer={self.regularizer!r} is not one of "
                             "['paper', 'tight', 'exact'].")
        if isinstance(self.kappa, bool) or not isinstance(self.kappa, numbers.Real) \
                or not self.kappa > 0:
            raise ValueError(f"kappa={self.kappa!r} must be a number > 0 (the cost of moving a "
                             "label), or math.inf for fixed labels.")
        if self.kappa != math.inf and self.regularizer != "exact":
            raise ValueError("kappa prices label moves in regularizer='exact' only; drop it or "
                             "use regularizer='exact'.")
        if self.regularizer == "exact" and float(self.norm) not in NORMS_EXACT:
            raise ValueError(f"regularizer='exact' needs norm in (1, 2, numpy.inf), got "
                             f"norm={self.norm!r}.")
        for name in ("c1", "c2"):
            value = getattr(self, name)
            if value is not None:
                number(name, value, 0)
                if value == math.inf:
                    raise ValueError(f"{name}=inf is not allowed.")
        if (self.c1 is not None or self.c2 is not None) and self.regularizer != "paper":
            raise ValueError("c1/c2 weight the paper's closed form; use regularizer='paper'.")
        if self.data_bounds is not None and self.regularizer != "paper":
            raise ValueError("data_bounds applies to regularizer='paper' only.")
        number("tol", self.tol, 0)
        as_bool("fit_intercept", self.fit_intercept)
        check_choice("backend", self.backend, BACKENDS)
        if not isinstance(self.max_iter, numbers.Integral) or self.max_iter < 1:
            raise ValueError(f"max_iter={self.max_iter!r} must be an integer >= 1.")

    def fit(self, X, y):
        """Validate the parameters and (X, y), solve, return self."""
        self._check_params()
        return self._fit(*self._validate(X, y))

    def _fit(self, X, y):
        form = self._form(X, y)
        if form is not None:
            Xa = np.hstack([X, np.ones((len(y), 1))]) if self.fit_intercept else X
            one = {k: np.array([[v]], float) for k, v in form["weights"].items()}
            theta, value, n_iter, done = barrier.solve(
                Xa[None], y[None], kind=form["kind"], q=form["q"], sel=form["sel"], **one,
                tol=self.tol, max_iter=self.max_iter)
            return self._store_barrier(theta[0, 0], float(value[0, 0]), form, int(n_iter[0, 0]),
                                       bool(done[0, 0]))
        loss, fi, p = self._loss, bool(self.fit_intercept), float(self.norm)
        q = math.inf if p == 1 else 1.0 if p == math.inf else p / (p - 1)
        bounds = None
        if self.regularizer == "paper":
            bounds = self._bounds(X, y, p)
            if self.c1 is None and self.c2 is None:
                a, b = paper_coefficients(X, y, loss, p, fi, bounds, self.backend)
                weights = (self.rho * a, self.rho * b)
            else:
                weights = (float(self.c1 or 0.0), float(self.c2 or 0.0))
        else:
            weights = float(self.rho)
        n_params = X.shape[1] + fi
        best = None
        for theta0 in self._starts(X, y, n_params):
            theta, res = solve(X, y, loss=loss, q=q, regularizer=self.regularizer,
                               reg_weights=weights, fit_intercept=fi, tol=self.tol,
                               max_iter=self.max_iter, backend=self.backend, theta0=theta0)
            value = self._objective(theta, X, y, p, fi, bounds, weights)
            if best is None or value < best[0]:
                best = (value, theta, res)
        value, theta, res = best
        lipschitz = float(ops.lipschitz(theta, X, y, loss=loss, norm=p, bound=self.regularizer,
                                        fit_intercept=fi, data_bounds=bounds,
                                        backend=self.backend)[0])
        return self._store(theta, value, lipschitz, bounds, int(res.nit), bool(res.success),
                           res.message)

    def _bounds(self, X, y, p):
        """Data bounds (X, Y) of the paper form: given, or max ||x||_p, max |y| of the data."""
        if self.data_bounds is None:
            with np.errstate(over="ignore"):
                bounds = float(np.max(np.linalg.norm(X, p, axis=1))), float(np.max(np.abs(y)))
            if not all(math.isfinite(v) for v in bounds):
                raise ValueError(f"X or y is too large for float64: max ||x||_{p:g} = {bounds[0]:.3g}, "
                                 f"max |y| = {bounds[1]:.3g} overflow; standardise X (and y).")
            return bounds
        try:
            bounds = tuple(float(v) for v in self.data_bounds)
        except (TypeError, ValueError):
            bounds = ()
        if len(bounds) != 2 or not all(math.isfinite(v) and v >= 0 for v in bounds):
            raise ValueError("data_bounds must be a pair (X, Y) of finite numbers >= 0: "
                             "max ||x||_p and max |y|.")
        return bounds

    def _form(self, X, y):
        """The convex problem for ``barrier.solve`` (None for the SLSQP cases): kind, q,
        sel (entries of theta under the norm), weights c, a, b, kappa of one problem,
        and what ``_store`` needs (Lipschitz coefficients, data bounds)."""
        loss, reg, p = self._loss, self.regularizer, float(self.norm)
        if p not in NORMS_EXACT or (reg == "tight" and loss != "absolute"):
            return None
        q = math.inf if p == 1 else 1.0 if p == math.inf else 2.0
        d = X.shape[1]
        fi = bool(self.fit_intercept)
        w_only, rho, bounds, lip = np.arange(d), float(self.rho), None, (0.0, 1.0)
        weights = dict(c=0.0, a=0.0, b=rho, kappa=0.0)
        if reg == "paper":
            bounds = self._bounds(X, y, p)
            lip = paper_coefficients(X, y, loss, p, fi, bounds, self.backend)
            if self.c1 is None and self.c2 is None:
                weights.update(a=rho * lip[0], b=rho * lip[1])
            else:
                weights.update(a=float(self.c1 or 0.0), b=float(self.c2 or 0.0))
            kind, sel = loss, np.arange(d + fi)
        elif reg == "tight":  # absolute: ||(w, 1)||_q
            kind, sel = "absolute", w_only
            weights.update(c=1.0)
        elif loss == "logistic":
            flips = self.kappa != math.inf and rho > 0
            kind, sel = ("flip" if flips else "logistic"), w_only
            weights.update(kappa=float(self.kappa) if flips else 0.0)
        else:
            kind, sel = ("rmse" if loss == "squared" else "absolute"), w_only
            weights.update(c=1.0 / self.kappa, b=math.sqrt(rho) if loss == "squared" else rho)
        return dict(kind=kind, q=q, sel=sel, weights=weights, lip=lip, bounds=bounds)

    def _store_barrier(self, theta, value, form, n_iter, converged):
        """_store for a barrier solution: the certificate and L from the form."""
        if form["kind"] == "rmse":
            value = 0.5 * value ** 2
        t = float(np.linalg.norm(np.r_[theta[form["sel"]], form["weights"]["c"]], form["q"]))
        lipschitz = form["lip"][0] * t * t + form["lip"][1] * t
        return self._store(theta, value, lipschitz, form["bounds"], n_iter, converged,
                           "the barrier method stopped short of tol")

    def _store(self, theta, value, lipschitz, bounds, n_iter, converged, why):
        """Set the fitted attributes; a nan/inf solution raises DivergenceError."""
        if not (np.isfinite(theta).all() and math.isfinite(value) and math.isfinite(lipschitz)):
            raise DivergenceError(
                f"{type(self).__name__}.fit diverged: the solver's iterate became nan/inf "
                f"within {n_iter} iterations (finite inputs, so a scale overflowed float64): "
                f"rho={self.rho!r}" + (f", c1={self.c1!r}, c2={self.c2!r}"
                                       if self.c1 is not None or self.c2 is not None else "")
                + " or the feature scale is too large; standardise X (and y) or lower rho.",
                step=n_iter)
        d = len(theta) - bool(self.fit_intercept)
        self.coef_ = theta[:d].copy()
        self.intercept_ = float(theta[-1]) if self.fit_intercept else 0.0
        self.objective_ = float(value)
        self.lipschitz_ = float(lipschitz)
        self.data_bounds_ = bounds
        self.n_iter_ = n_iter
        self.converged_ = converged
        if not converged:
            warnings.warn(f"{type(self).__name__} did not converge in max_iter={self.max_iter} "
                          f"(tol={self.tol}): {why}. Increase max_iter or tol, or rescale X.",
                          ConvergenceWarning, stacklevel=4)
        return self

    def _starts(self, X, y, n_params):
        """Zero, plus the unregularised least-squares fit for the nonconvex tight squared
        problem (the best of the two local optima is kept)."""
        starts = [np.zeros(n_params)]
        if self.regularizer == "tight" and self._loss == "squared":
            Xa = np.hstack([X, np.ones((len(y), 1))]) if self.fit_intercept else X
            starts.append(np.linalg.lstsq(Xa, y, rcond=None)[0])
        return starts

    def _objective(self, theta, X, y, p, fi, bounds, weights):
        """J at theta from the ops kernels (the solver's epigraph variables play no part)."""
        data = float(ops.loss_grad(theta, X, y, loss=self._loss, fit_intercept=fi,
                                   backend=self.backend)[0])
        if self.regularizer == "paper" and (self.c1 is not None or self.c2 is not None):
            t = float(np.linalg.norm(theta, 1 if p == math.inf else math.inf if p == 1 else p / (p - 1)))
            return data + weights[0] * t ** 2 + weights[1] * t
        L = float(ops.lipschitz(theta, X, y, loss=self._loss, norm=p, bound=self.regularizer,
                                fit_intercept=fi, data_bounds=bounds, backend=self.backend)[0])
        return data + self.rho * L

    def _decision(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return X @ self.coef_ + self.intercept_


class WassersteinRobustRegressor(RegressorMixin, _WassersteinRobust):
    """Linear regression with the Wasserstein-DRO regulariser (11) or (13), tight (10) or exact.

    loss "squared" (0.5 r^2, eq. 9) or "absolute" (``|r|``, eq. 12); rho >= 0 the
    Wasserstein radius; norm = p of the transport cost (dual q in the
    regulariser); data_bounds = (X, Y) overrides the training-set bounds of the
    paper form; kappa (> 0, default inf) the cost of moving labels in
    regularizer="exact". Fitted: ``coef_``, ``intercept_``, ``lipschitz_``, ``objective_``
    (J_n), ``data_bounds_`` (None unless "paper"), ``n_iter_``, ``converged_``.
    """

    def __init__(self, loss="squared", rho=0.1, norm=2, regularizer="paper", c1=None, c2=None,
                 fit_intercept=True, data_bounds=None, tol=1e-8, max_iter=1000, backend="auto",
                 kappa=math.inf):
        self.loss = loss
        self.rho = rho
        self.norm = norm
        self.regularizer = regularizer
        self.c1 = c1
        self.c2 = c2
        self.fit_intercept = fit_intercept
        self.data_bounds = data_bounds
        self.tol = tol
        self.max_iter = max_iter
        self.backend = backend
        self.kappa = kappa

    def _check_params(self):
        if self.loss not in ("squared", "absolute"):
            raise ValueError(f"loss={self.loss!r} is not one of ['squared', 'absolute'] "
                             "(use WassersteinRobustClassifier for the logistic loss).")
        super()._check_params()

    def _validate(self, X, y):
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True)
        return np.ascontiguousarray(X), np.ascontiguousarray(y, dtype=np.float64)

    def __sklearn_tags__(self):
        # rho * L with L = (X + 1) t^2 + Y t (11) shrinks hard at the default rho on
        # data with large X, Y bounds: check_regressors_train's R^2 > 0.5 is not a goal.
        tags = super().__sklearn_tags__()
        tags.regressor_tags.poor_score = True
        return tags

    @property
    def _loss(self):
        return self.loss

    def predict(self, X):
        return self._decision(X)


class WassersteinRobustClassifier(ClassifierMixin, _WassersteinRobust):
    """Binary logistic regression with the Wasserstein-DRO regulariser (15), tight (10) or exact.

    Any two labels: ``classes_`` (sorted) map to {0, 1}. Parameters and fitted
    attributes as WassersteinRobustRegressor (no loss argument).
    """
    _loss = "logistic"

    def __init__(self, rho=0.1, norm=2, regularizer="paper", c1=None, c2=None,
                 fit_intercept=True, data_bounds=None, tol=1e-8, max_iter=1000, backend="auto",
                 kappa=math.inf):
        self.rho = rho
        self.norm = norm
        self.regularizer = regularizer
        self.c1 = c1
        self.c2 = c2
        self.fit_intercept = fit_intercept
        self.data_bounds = data_bounds
        self.tol = tol
        self.max_iter = max_iter
        self.backend = backend
        self.kappa = kappa

    def _validate(self, X, y):
        X, y = validate_data(self, X, y, dtype=np.float64)
        kind = type_of_target(y, input_name="y", raise_unknown=True)
        if kind != "binary":
            raise ValueError(f"Only binary classification is supported. The type of the target "
                             f"is {kind}: y must hold exactly two classes (got {np.unique(y)[:10]}).")
        self.classes_, y01 = np.unique(y, return_inverse=True)
        if len(self.classes_) != 2:
            raise ValueError(f"y holds one class ({self.classes_[0]!r}); a binary classifier "
                             "needs examples of two classes.")
        return np.ascontiguousarray(X), y01.astype(np.float64)

    def decision_function(self, X):
        return self._decision(X)

    def predict(self, X):
        scores = self.decision_function(X)
        return self.classes_[(scores > 0).astype(int)]

    def predict_proba(self, X):
        p1 = expit(self.decision_function(X))
        return np.column_stack([1 - p1, p1])

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        return tags
