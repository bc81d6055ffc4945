"""Adversarial Robustness Toolbox adapter: the hyperparameter-aware optimal
attack (paper 002) as an ART ``PoisoningAttackWhiteBox``.

Needs ``adversarial-robustness-toolbox`` (``pip install "mithridate[art]"``).
The victim is the ``LogisticRegression`` inside an ART ``SklearnClassifier``
(mapped as in :mod:`mithridate.attacks.victims`: lam = -log C, fit_intercept
kept); ``poison(x, y)`` takes the clean training set and returns poisoning points
to append to it, as ART's poisoning attacks do::

    attack = HyperparameterAwarePoisoning(classifier, x_val, y_val, n_points=10)
    x_p, y_p = attack.poison(x_train, y_train)
    classifier.fit(np.vstack([x_train, x_p]), np.vstack([y_train, y_p]))
"""
import numpy as np

try:
    from art.attacks.attack import PoisoningAttackWhiteBox
    from art.estimators.classification.scikitlearn import ScikitlearnLogisticRegression
    from art.preprocessing.standardisation_mean_std import StandardisationMeanStd
except ImportError as err:  # pragma: no cover - exercised only without ART
    raise ImportError(f"mithridate.integrations.art needs the Adversarial Robustness Toolbox "
                      f"({err}); install it with pip install 'mithridate[art]'.") from None

from ..attacks import OptimalPoisoning


class HyperparameterAwarePoisoning(PoisoningAttackWhiteBox):
    """Optimal poisoning of an ART ``SklearnClassifier`` wrapping a binary
    ``LogisticRegression`` (fitted or not; its C and fit_intercept are read).

    classifier: the ART classifier; its ``clip_values`` (one (lo, hi) pair for
    every feature) are the feasible box unless ``box`` is given. x_val, y_val:
    the defender's clean validation set (labels one-hot or class indices 0/1),
    whose loss the attacker maximises and on which lam is learned. n_points,
    batch_size (default n_points), lam ("learned": minimax, the defender re-tunes
    lam = -log C; "model": fixed at the classifier's C; or a number), verbose (a
    progress bar); further keyword arguments go to
    :class:`mithridate.attacks.OptimalPoisoning` (T, T_outer, eta, alpha, ...).
    The points are appended to the training set (``replace=False``). After
    ``poison``, ``result_`` holds the :class:`mithridate.attacks.PoisoningResult`.
    """
    attack_params = PoisoningAttackWhiteBox.attack_params + [
        "x_val", "y_val", "n_points", "batch_size", "lam", "box", "verbose", "options"]
    _estimator_requirements = (ScikitlearnLogisticRegression,)

    def __init__(self, classifier, x_val, y_val, n_points=17, batch_size=None, lam="learned",
                 box=None, verbose=False, **options):
        super().__init__(classifier=classifier)
        self.x_val, self.y_val = x_val, y_val
        self.n_points, self.batch_size, self.lam = n_points, batch_size, lam
        self.box, self.verbose, self.options = box, verbose, options
        self._check_params()

    def _check_params(self):
        clf = self.estimator
        if clf.preprocessing_defences:
            raise ValueError("the classifier has preprocessing_defences; the attack differentiates "
                             "the bare model: wrap the LogisticRegression without them.")
        if not all(isinstance(p, StandardisationMeanStd) and np.all(p.mean == 0)
                   and np.all(p.std == 1) for p in clf.preprocessing_operations):
            raise ValueError(f"the classifier has preprocessing {clf.preprocessing_operations}; "
                             "the attack works in the model's input space: apply it to the data "
                             "instead and wrap the model with preprocessing=None.")
        if clf.nb_classes not in (-1, 2):
            raise ValueError(f"the classifier has {clf.nb_classes} classes; the attack needs a "
                             "binary one.")
        if self.box is None and clf.clip_values is None:
            raise ValueError("the classifier has no clip_values; pass box=(lo, hi), the feasible "
                             "range of every feature.")
        if "replace" in self.options or "model" in self.options:
            raise ValueError("replace and model are set by the adapter (append; the classifier's "
                             "model); drop them.")

    def _box(self):
        if self.box is not None:
            return self.box
        lo, hi = (np.asarray(v, dtype=np.float64) for v in self.estimator.clip_values)
        if np.ptp(lo) or np.ptp(hi):
            raise ValueError("the classifier's clip_values differ between features; the attack "
                             "takes one (lo, hi) box: pass box=(lo, hi).")
        return float(lo.flat[0]), float(hi.flat[0])

    def poison(self, x, y=None, **kwargs):
        """Poisoning points for the training set (x, y): ``(x_poison, y_poison)``,
        x_poison (n_points, d) in x's dtype, y_poison in y's format (one-hot
        (n_points, 2) or class indices)."""
        if y is None:
            raise ValueError("y is required: the labels of the training set x.")
        if kwargs:
            raise TypeError(f"poison() takes no options {sorted(kwargs)}; pass them to the "
                            "constructor.")
        x = np.asarray(x)
        if x.dtype.name not in ("float32", "float64"):
            x = x.astype(np.float64)
        train = (x, _labels("y", y, x.dtype))
        val = (np.asarray(self.x_val, dtype=x.dtype), _labels("y_val", self.y_val, x.dtype))
        attack = OptimalPoisoning(
            model=self.estimator.model, lam=self.lam, n_points=self.n_points,
            batch_size=self.batch_size or self.n_points, box=self._box(), replace=False,
            progress=self.verbose, **self.options)
        self.result_ = attack.run(train, val)
        yp = self.result_.yp.astype(int)
        y_poison = np.eye(2)[yp] if np.ndim(y) == 2 else yp
        return self.result_.Xp.copy(), y_poison


def _labels(name, y, dtype):
    """Labels {0, 1} from one-hot (n, 2) or class indices (n,)."""
    y = np.asarray(y)
    if y.ndim == 2:
        if y.shape[1] != 2 or not np.isin(y, (0, 1)).all() or not (y.sum(1) == 1).all():
            raise ValueError(f"{name} must be one-hot (n, 2) or class indices 0/1, got shape "
                             f"{y.shape}.")
        y = y.argmax(1)
    if y.ndim != 1 or not np.isin(y, (0, 1)).all():
        raise ValueError(f"{name} must hold class indices 0/1 (or be one-hot (n, 2)).")
    return y.astype(dtype)
