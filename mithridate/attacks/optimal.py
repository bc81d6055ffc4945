"""Hyperparameter-aware optimal poisoning (paper 002, Algorithm 1) and its victim.

The attacker maximises the validation loss of a logistic regression trained by
T steps of gradient descent on a poisoned training set, while the defender's L2
hyperparameter lam minimises it (the minimax problem (3)); with ``lam`` fixed it
is the classic attack of Xiao et al. (lam = -8, a large value, or lam_CLEAN).

Regulariser scale. The paper's Tables 2-3 (lam up to log(400) with inner steps
of 0.08-0.1, lam = log(20) with steps of 0.2 on 33 points) only give stable
gradient descent if the regulariser is divided by the training-set size, so
every trainer here minimises

    (1/n) [ sum_i l(z_i, y_i) + exp(lam)/2 ||w||^2 ],  intercept not penalised,

i.e. the hypergradient engine (mean loss + exp(lam')/2 ||w||^2) runs with
lam' = lam - log(n), n the rows trained on. Poisoning points *replace* training
points (Algorithm 1), so n stays fixed during an attack; ``replace=False``
appends them instead (the 2-D example of Figure 1).

The victim (``model``) is the logistic loss by default; the squared loss, a
scikit-learn ``LogisticRegression`` / ``Ridge`` or a Wasserstein estimator of
mithridate.defenses are mapped onto this scale by mithridate.attacks.victims.

Networks (paper 002, section 5.2): ``model`` a mithridate.models Model such as
``MLP((d, 128, 32, 1))`` has one lam per layer (a vector: learned, each layer
projected onto lam_range, or fixed: one number for every layer or a vector),
the same 1/n scale per layer, and its inner training starts from new random
weights (``model.init`` with a fresh seed from the attack's generator) at every
hyperiteration: every update of the poisoning points (and the lam step taken
with it) and every clean-set lam step, as the paper's ensemble over initial
weights. The linear victims start from zeros and draw nothing.

Defences (issue 11, ``defence=``): the defender trains paper 000's Wasserstein-robust
objective (mithridate.models.wasserstein.Robust on the generic engine, every mode)::

    (1/n) [ sum_i l(z_i, y_i) + exp(lam)/2 ||w||^2 ] + rho (a t^2 + b t),   t = ||theta||_*,

the L2 term present for ``Defence("both")`` only; the hyperparameter vector is lam on the
scale above and log rho (the Wasserstein term is already a mean-loss regulariser: rho is
not divided by n), each learned (minimax) or fixed.
"""
import dataclasses
import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from .._validation import as_bool, check_choice
from ..errors import DivergenceError, DivergenceWarning
from ..hypergrad.divergence import ON_DIVERGENCE, message
from ..backends import BACKENDS
from ..hypergrad.problem import MODES
from .victims import as_victim


@dataclass
class PoisoningResult:
    """Outcome of :meth:`OptimalPoisoning.run`.

    Xp, yp: the poisoning points (n_points, d), batch by batch; Xp_init: their
    initial values (flipped-label validation clones); replaced: indices of the
    training rows they replace (row ``replaced[i]`` holds ``Xp[i]``);
    lam_batches: lam in force after 0, 1, ..., n_batches batches (entry 0 is lam
    learned on the clean set, or the fixed lam; (n_batches + 1, n_lam) for a model
    victim with one lam per layer, (n_batches + 1, 2) = (lam, log rho) for defence "both",
    log rho for "wasserstein"); values: validation loss of the
    inner model after each batch (entry 0: clean); history: per hyperiteration
    arrays ``batch``, ``attempt``, ``iteration``, ``value`` (outer objective),
    ``grad_norm`` (mean L2 norm of the per-point hypergradients; nan while lam
    is learned on the clean set), ``grad_lam`` (nan for fixed lam) and ``lam``
    (after the step); replace: whether the points replace training rows
    (``replaced`` then indexes them) or are appended.
    """
    Xp: np.ndarray
    yp: np.ndarray
    Xp_init: np.ndarray
    replaced: np.ndarray
    lam_batches: np.ndarray
    values: np.ndarray
    history: dict
    batch_size: int
    replace: bool
    X_train: np.ndarray = field(repr=False)
    y_train: np.ndarray = field(repr=False)

    @property
    def lam(self):
        """lam after the last batch (a float, or (n_lam,) for a model victim)."""
        last = self.lam_batches[-1]
        return float(last) if np.ndim(last) == 0 else last.copy()

    def training_set(self, n_batches=None):
        """(X, y): the training set with the first ``n_batches`` batches (all by
        default) substituted for the rows they replace (or appended)."""
        n_batches = len(self.lam_batches) - 1 if n_batches is None else n_batches
        if not 0 <= n_batches < len(self.lam_batches):
            raise ValueError(f"n_batches={n_batches} must lie in [0, {len(self.lam_batches) - 1}].")
        k = n_batches * self.batch_size
        if not self.replace:
            return np.concatenate([self.X_train, self.Xp[:k]]), np.concatenate(
                [self.y_train, self.yp[:k]])
        X, y = self.X_train.copy(), self.y_train.copy()
        X[self.replaced[:k]], y[self.replaced[:k]] = self.Xp[:k], self.yp[:k]
        return X, y


def _int(name, v, low):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
        raise ValueError(f"{name}={v!r} must be an integer >= {low}.")
    return int(v)


def _pos(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) \
            or not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name}={v!r} must be a finite number > 0.")
    return float(v)


def _interval(name, v):
    try:
        lo, hi = (float(a) for a in v)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={v!r} must be a pair (lo, hi) of numbers.") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{name}={v!r} must be finite.")
    if lo >= hi:
        raise ValueError(f"{name}=({lo:g}, {hi:g}) is reversed or empty; give (lo, hi) with lo < hi.")
    return lo, hi


def _lam_value(name, v, n_lam, what):
    """A fixed lam or lam_init: a finite number (linear victims: kept a float), or for a
    model victim with n_lam groups a number for every group or an (n_lam,) vector."""
    if n_lam is None or np.ndim(v) == 0:
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) \
                or not math.isfinite(v):
            raise ValueError(f"{name}={v!r} must be {what}.")
        return float(v) if n_lam is None else np.full(n_lam, float(v))
    try:
        arr = np.array(v, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={v!r} must be {what} or one number per layer.") from None
    if arr.shape != (n_lam,):
        raise ValueError(f"{name} has shape {arr.shape} but the model has {n_lam} lam (one per "
                         f"penalised layer): give one number for all or a vector of {n_lam}.")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}={v!r} must be finite.")
    return arr


def _data(name, data, dtype=None, loss="logistic"):
    """(X, y) as C-contiguous float arrays; labels {0, 1} for the logistic loss."""
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TypeError(f"{name} must be a pair (X, y) of numpy arrays.")
    X, y = data
    if not isinstance(X, np.ndarray) or not isinstance(y, np.ndarray):
        raise TypeError(f"{name} must be a pair (X, y) of numpy arrays.")
    if X.dtype.name not in ("float32", "float64"):
        raise TypeError(f"{name} X has dtype {X.dtype}; use float32 or float64.")
    dtype = np.dtype(dtype or X.dtype).newbyteorder("=")  # the kernels read native byte order
    X = np.ascontiguousarray(X, dtype=dtype)
    y = np.ascontiguousarray(y, dtype=dtype)
    if X.ndim != 2 or y.shape != X.shape[:1] or X.shape[0] == 0:
        raise ValueError(f"{name}: X must be (n, d) with n >= 1 and y (n,), got {X.shape} and {y.shape}.")
    if not np.isfinite(X).all():
        raise ValueError(f"{name} X contains nan or inf; remove or impute those values first.")
    if loss != "logistic" and not np.isfinite(y).all():
        raise ValueError(f"{name} y contains nan or inf; remove those rows first.")
    if loss == "logistic" and not np.isin(y, (0, 1)).all():
        raise ValueError(f"{name} y must hold labels in {{0, 1}}; map them with (y > 0).")
    return X, y


DEFENCES = ("l2", "wasserstein", "both")


@dataclass(frozen=True)
class Defence:
    """The defender's objective for ``OptimalPoisoning(defence=...)`` (module docstring).

    ``regularizer``: "l2" (the attack's own lam: the same as defence=None), "wasserstein"
    (rho alone) or "both" (lam and rho; the attack's ``lam``, ``lam_init``, ``lam_range``
    are the L2 entry's). ``rho``: "learned" (minimax, from ``rho_init``, projected onto
    ``rho_range``) or a fixed rho > 0 (natural scale; the engine runs on log rho).
    The Wasserstein term (mithridate.models.wasserstein.Wasserstein.paper): transport
    cost ``norm`` (2 exact; 1 and inf need ``smoothing`` mu > 0), paper coefficients from
    ``data_bounds`` (X, Y) or, when None, the clean training set's (poisoning points do not
    move them: pass the support's bounds to cover them, e.g. X = ||box hi||_p), or the
    figures' weights ``c1``, ``c2`` (then rho scales c1 t^2 + c2 t). The default rho_init
    1e-3 is about the L2 warm start's strength (exp(log 5) / 2n ||w||^2) at paper 002's MNIST
    size (logistic b = Y + X + 2 ~ 18, ||theta|| ~ 5)."""
    regularizer: str = "wasserstein"
    rho: object = "learned"
    rho_init: float = 1e-3
    rho_range: tuple = (1e-6, 10.0)
    norm: float = 2
    smoothing: float = None
    data_bounds: tuple = None
    c1: float = None
    c2: float = None

    def check(self):
        """ValueError naming the argument and the fix, before any work."""
        check_choice("defence.regularizer", self.regularizer, DEFENCES)
        if self.rho != "learned":
            if isinstance(self.rho, str):
                raise ValueError(f"defence rho={self.rho!r}: give 'learned' or a fixed rho > 0.")
            _rho("rho", self.rho)
        _rho("rho_init", self.rho_init)
        lo, hi = _interval("rho_range", self.rho_range)
        _rho("rho_range[0]", lo)
        if self.rho == "learned" and not lo <= self.rho_init <= hi:
            raise ValueError(f"defence rho_init={self.rho_init:g} must lie in rho_range="
                             f"({lo:g}, {hi:g}); widen rho_range or pass rho_init.")

    def model(self, X, y, base):
        """The defender's Robust model over ``base`` (its data term), the Wasserstein term's
        bounds from the clean training rows (X, y)."""
        from ..models.wasserstein import Robust, Wasserstein
        W = Wasserstein.paper(X, y, loss=base.loss, norm=self.norm,
                              fit_intercept=base.fit_intercept, data_bounds=self.data_bounds,
                              c1=self.c1, c2=self.c2, smoothing=self.smoothing)
        return Robust(base, W, l2=self.regularizer == "both")


def _rho(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) \
            or not math.isfinite(v) or v <= 0:
        raise ValueError(f"defence {name}={v!r}: rho enters the engine as log rho (learned on "
                         "that scale), so it must be a finite number > 0; for no Wasserstein "
                         "term use defence='l2' (or None).")
    return float(v)


def _defence(defence, victim):
    """defence as a checked Defence, or None for the plain L2 attack (None or "l2")."""
    if defence is None:
        return None
    if isinstance(defence, str):
        check_choice("defence", defence, DEFENCES)
        defence = Defence(defence)
    if not isinstance(defence, Defence):
        raise TypeError(f"defence must be None, one of {list(DEFENCES)} or an "
                        f"attacks.Defence, got {type(defence).__name__}.")
    defence.check()
    if defence.regularizer == "l2":
        return None
    if victim.model is not None or victim.lam is not None or victim.regularizer != "l2":
        raise ValueError(f"defence={defence.regularizer!r} with model {victim.name}: the "
                         "Wasserstein-robust defence exists for the linear losses only; give "
                         "model='logistic' or 'squared' (its L2 term is the defence's), or "
                         "defence=None for this model.")
    return defence


class OptimalPoisoning:
    """Algorithm 1 of paper 002: projected hypergradient ascent on the poisoning
    features and descent on lam, coordinate-wise, batch after batch.

    Parameters (Table 2 names): ``lam`` "learned" (minimax, lam_RMD) or a fixed
    number; ``n_points`` poisoning points optimised ``batch_size`` at a time,
    cumulatively (a finished batch stays fixed); ``T`` inner gradient steps of
    size ``eta`` (momentum ``gamma``) from zeros; ``T_outer`` hyperiterations
    per batch (T_Dp / T_mul); ``T_lam`` hyperiterations learning lam on the
    clean set first (lam="learned"); ``alpha``/``beta`` step sizes for Xp (the
    hypergradient of each point is normalised to unit L2 norm) and lam;
    ``box`` the feasible (lo, hi) of every feature; ``lam_range`` the feasible
    lam; ``lam_init`` the warm start on the clean set (log 5); ``restarts``
    extra attempts per batch from other validation clones and lam drawn in
    [lam - 0.5, lam + 0.5] (footnote 8), the attempt with the largest final
    validation loss kept; ``replace`` False appends the points to the training
    set instead of replacing rows; ``clone_class`` (0 or 1) clones only
    validation points of that class (Figure 1); ``mode``/``backend`` go to
    :func:`mithridate.hypergrad.hypergrad`. lam is on the regulariser scale
    described in the module docstring. ``on_divergence``: when an inner
    training diverges (eta too large for the curvature, see
    mithridate.DivergenceError), "raise" (default) stops the attack with the
    error, naming the batch, hyperiteration, eta and lam; "warn" issues a
    DivergenceWarning and skips that update (Xp and lam unchanged, the
    history records a nan value).

    ``model``: "logistic" (labels {0, 1}), "squared" (real labels; a clone's
    label y becomes lo + hi - y, [lo, hi] the training labels' range, as 1 - y
    does for {0, 1}), or an estimator, fitted or not: ``LogisticRegression``
    (lam = -log C), ``Ridge`` (lam = log alpha), ``WassersteinRobustClassifier``
    / ``WassersteinRobustRegressor`` (lam = log rho; torch slow path); see
    :mod:`mithridate.attacks.victims`. ``lam="model"`` fixes lam at the
    estimator's own value; ``lam_init`` None starts a learned lam there too
    (log 5 for a bare loss name). A mithridate.models Model (``MLP``): one lam
    per penalised group, ``lam`` and ``lam_init`` a number (every group) or a
    vector of that length, trained from new ``model.init`` weights at every
    hyperiteration (module docstring); backend stays the default (the generic
    engine runs it).

    ``defence``: None (the L2 victim above), "l2" (the same), "wasserstein", "both" or a
    :class:`Defence` (paper 000's robust objective, module docstring; ``model`` then
    "logistic" or "squared"): lam is then the vector (lam, log rho) for "both" (learned
    entries per the attack's ``lam`` and the defence's ``rho``), log rho alone for
    "wasserstein"; ``lam_batches`` and ``history["lam"]`` hold it on that scale.
    ``optimize_labels`` (regression, model "squared" only): the poisoning labels are
    optimised with the features (ascent on [x; y], each point's hypergradient normalised
    as a whole; the engine's rows are [X | y], models.LabelFeature), labels projected onto
    ``label_box`` (default: the training labels' range), starting from the flipped clones.
    """

    def __init__(self, model="logistic", lam="learned", n_points=17, batch_size=17, T=150,
                 T_outer=100, T_lam=50, alpha=0.99, beta=0.8, eta=0.1, box=(0.0, 1.0),
                 lam_range=(-8.0, math.log(200)), lam_init=None, gamma=0.0,
                 mode="trajectory", backend="numba", restarts=0, replace=True,
                 clone_class=None, random_state=None, progress=False, on_divergence="raise",
                 defence=None, optimize_labels=False, label_box=None):
        self.model, self.lam, self.n_points, self.batch_size = model, lam, n_points, batch_size
        self.defence = defence
        self.optimize_labels, self.label_box = optimize_labels, label_box
        self.T, self.T_outer, self.T_lam = T, T_outer, T_lam
        self.alpha, self.beta, self.eta, self.box = alpha, beta, eta, box
        self.lam_range, self.lam_init, self.gamma = lam_range, lam_init, gamma
        self.mode, self.backend, self.restarts, self.replace = mode, backend, restarts, replace
        self.clone_class = clone_class
        self.random_state, self.progress = random_state, progress
        self.on_divergence = on_divergence

    def _check(self, train, val):
        victim = as_victim(self.model)
        defence = _defence(self.defence, victim)
        check_choice("mode", self.mode, MODES)
        check_choice("backend", self.backend, BACKENDS)  # the engine checks the pair
        victim.check_engine(self.mode, self.backend)
        check_choice("on_divergence", self.on_divergence, ON_DIVERGENCE)
        as_bool("progress", self.progress)
        if self.lam == "model" and victim.lam is None:
            raise ValueError(f"lam='model' needs an estimator as model, not model={self.model!r}; "
                             "give 'learned' or a fixed number.")
        lam = victim.lam if self.lam == "model" else self.lam
        learned = isinstance(lam, str)
        if learned and lam != "learned":
            raise ValueError(f"lam={self.lam!r}: give 'learned', 'model' or a fixed number.")
        n_points = _int("n_points", self.n_points, 0)
        bs = _int("batch_size", self.batch_size, 1)
        if n_points % bs:
            raise ValueError(f"n_points={n_points} must be a multiple of batch_size={bs} "
                             f"(batches are cumulative); e.g. n_points={bs * max(1, n_points // bs)}.")
        for name in ("T", "T_outer"):
            _int(name, getattr(self, name), 1)
        _int("T_lam", self.T_lam, 0)
        _int("restarts", self.restarts, 0)
        as_bool("replace", self.replace)
        for name in ("alpha", "beta", "eta"):
            _pos(name, getattr(self, name))
        if isinstance(self.gamma, bool) or not isinstance(self.gamma, (int, float)) \
                or not 0 <= self.gamma < 1:
            raise ValueError(f"gamma={self.gamma!r} must lie in [0, 1) (0: plain gradient descent).")
        if self.mode == "forward":
            raise ValueError("mode='forward' gives no gradient wrt the poisoning points; use "
                             "'trajectory' (or another reverse mode).")
        if self.mode == "reversible" and self.gamma == 0:
            raise ValueError("mode='reversible' needs momentum gamma > 0 (gamma=0 cannot be "
                             "reversed); use mode='trajectory' or set gamma.")
        box = _interval("box", self.box)
        lam_range = _interval("lam_range", self.lam_range)
        X, y = _data("train", train, loss=victim.loss)
        Xv, yv = _data("val", val, X.dtype, victim.loss)
        if Xv.shape[1] != X.shape[1]:
            raise ValueError(f"val has {Xv.shape[1]} features but train has {X.shape[1]}.")
        victim.check_features(X.shape[1])
        n_lam = None if victim.model is None else victim.n_lam(X.shape[1])
        if not learned:
            lam = _lam_value("lam", lam, n_lam, "'learned', 'model' or a finite number")
        lam_init = self.lam_init if self.lam_init is not None else \
            math.log(5) if victim.lam is None else victim.lam
        lam_init = _lam_value("lam_init", lam_init, n_lam, "a finite number")
        if learned and not np.all((lam_range[0] <= lam_init) & (lam_init <= lam_range[1])):
            origin = "" if self.lam_init is not None else " (lam_init=None: " + (
                "log 5)" if victim.lam is None else f"the lam of model {victim.name})")
            raise ValueError(f"lam_init={self.lam_init if self.lam_init is not None else lam_init!r}"
                             f"{origin} must lie in lam_range={lam_range}; widen lam_range or "
                             "pass lam_init.")
        if victim.loss == "logistic" and np.unique(yv).size < 2:
            raise ValueError("val holds one class only; the validation set needs labels 0 and 1.")
        if self.replace and n_points >= X.shape[0]:
            raise ValueError(f"n_points={n_points} must be < the {X.shape[0]} training rows "
                             "(poisoning points replace training rows).")
        if self.clone_class not in (None, 0, 1):
            raise ValueError(f"clone_class={self.clone_class!r} must be None (any), 0 or 1.")
        pool = Xv.shape[0] if self.clone_class is None else int(np.sum(yv == self.clone_class))
        if n_points > pool:
            raise ValueError(f"n_points={n_points} exceeds the {pool} validation rows "
                             "they are cloned from; lower n_points.")
        if Xv.min() < box[0] or Xv.max() > box[1]:
            raise ValueError(f"box={box} does not contain the validation points the poisoning "
                             f"points are cloned from (range [{Xv.min():g}, {Xv.max():g}]); widen box.")
        flip = 1.0 if victim.loss == "logistic" else float(y.min() + y.max())  # y -> lo + hi - y
        labels = as_bool("optimize_labels", self.optimize_labels)
        if self.label_box is not None and not labels:
            raise ValueError("label_box applies to optimize_labels=True only; drop it.")
        mask, seeds, own = None, Xv, labels or defence is not None
        if own:  # the attack builds the victim's model: labels as a feature, a defence
            from ..models import LabelFeature, LinearModel
            base = LinearModel(victim.loss, victim.fit_intercept)
            if labels:
                if victim.loss != "squared" or victim.model is not None or victim.lam is not None:
                    raise ValueError(f"optimize_labels=True with model {victim.name}: labels are "
                                     "optimised for regression only (model='squared'); a "
                                     "classifier's labels {0, 1} have no gradient: drop "
                                     "optimize_labels.")
                base = LabelFeature(base)
            model = base if defence is None else defence.model(X, y, base)
            victim = dataclasses.replace(victim, model=model)
            victim.check_engine(self.mode, self.backend)
            if defence is not None:
                lam, lam_init, learned, lam_range, mask = _hypers(defence, lam, lam_init,
                                                                 learned, lam_range)
            if labels:
                X, Xv, seeds, box = _with_labels(self.label_box, X, y, Xv, yv, flip, box)
        return victim, lam, lam_init, learned, box, lam_range, flip, X, y, Xv, yv, mask, seeds, own

    def run(self, train, val):
        """Poison ``train`` = (X, y) against the validation set ``val`` = (X, y).

        Labels {0, 1}; X float32 or float64 (the computation runs in X's dtype).
        Returns a :class:`PoisoningResult`.
        """
        return _lockstep([self], train, val)[0]


def _with_labels(label_box, X, y, Xv, yv, flip, box):
    """Rows [X | y] for optimize_labels: (X, Xv, clone seeds with the flipped labels
    projected onto label_box, per-column box (features, label))."""
    lo, hi = _interval("label_box", label_box) if label_box is not None else \
        (float(y.min()), float(y.max()))
    if lo == hi:
        raise ValueError("optimize_labels=True: the training labels are constant; pass label_box.")
    rows = lambda A, b: np.ascontiguousarray(np.column_stack([A, b]), dtype=X.dtype)  # noqa
    d = X.shape[1]
    box = tuple(np.r_[np.full(d, edge), lab].astype(X.dtype) for edge, lab in zip(box, (lo, hi)))
    return rows(X, y), rows(Xv, yv), rows(Xv, np.clip(flip - yv, lo, hi)), box


def _hypers(defence, lam, lam_init, learned, lam_range):
    """(lam, lam_init, learned, lam_range, mask) of a defence's hyperparameter vector:
    log rho alone ("wasserstein"), or (lam, log rho) ("both") with mask the learned entries
    (None: all or none)."""
    rho_learned = defence.rho == "learned"
    log_rho = math.log(defence.rho_init if rho_learned else defence.rho)
    rho_range = tuple(math.log(v) for v in defence.rho_range)
    if defence.regularizer == "wasserstein":
        return log_rho, log_rho, rho_learned, rho_range, None
    start = np.array([lam_init if learned else lam, log_rho])
    lo, hi = np.array([lam_range[0], rho_range[0]]), np.array([lam_range[1], rho_range[1]])
    mask = np.array([learned, rho_learned])
    return start, start.copy(), bool(mask.any()), (lo, hi), None if mask.all() else mask


class _DefenceEngine:
    """The prepared engine of a model the attack built (a defence's Robust model, labels as
    a feature: the generic route) on the attack's scale: lam - log(n) for the L2 entries,
    log rho as it is. ``need="lam"`` runs the reverse mode too: for one or two
    hyperparameters it costs no more than forward mode (one HVP per step against one per
    hyperparameter), and the lam step then sees the very grad_lam of the Xp step."""

    def __init__(self, victim, Xc, yc, Xv, yv, *, T, eta, gamma, mode, backend):
        from ..hypergrad import Engine
        self.victim, self.Xc = victim, Xc
        self.engine = Engine(Xc, yc, Xv, yv, model=victim.model, T=T, alpha=eta, gamma=gamma,
                             mode=mode)
        lay = victim.model.layout(Xc.shape[-1])
        shift = np.arange(lay.n_lam) < len(lay.penalised)  # the L2 entries come first
        self.shift = shift.astype(np.float64) if lay.n_lam > 1 else float(shift[0])

    def run(self, Xp, yp, lam, need="all", w0=None):
        n = self.Xc.shape[0] + Xp.shape[-2]
        lam = np.subtract(lam, self.shift * math.log(n))
        return self.engine.run(Xp, yp, lam, w0, need="all" if need == "lam" else need)


def _engine(victim, own, *args, **kw):
    """The victim's prepared engine: of the model the attack built (``own``), or its own."""
    return _DefenceEngine(victim, *args, **kw) if own else victim.engine(*args, **kw)


# What attacks run together by run_lockstep may differ in (the rest must be equal).
LOCKSTEP_FREE = ("lam", "lam_init", "lam_range", "beta", "T_lam", "on_divergence", "progress")
_LOCKSTEP_EQUAL = ("n_points", "batch_size", "T", "T_outer", "alpha", "eta", "gamma", "mode",
                   "backend", "restarts", "replace", "clone_class", "defence", "optimize_labels",
                   "label_box")


def run_lockstep(attacks, train, val):
    """Run several :class:`OptimalPoisoning` attacks on the same data side by side,
    one engine call over all of them per hyperiteration: e.g. the lam settings of
    paper 002's Figure 2 on one repetition. They may differ only in
    LOCKSTEP_FREE and must replace the same rows (the same ``random_state``).
    At batch b every attack trains on the rows no batch up to b replaces (shared:
    the engine reads them once for all) plus its own earlier points and current
    batch, in that order. Returns one :class:`PoisoningResult` per attack, each
    equal to the attack's own ``run`` up to float rounding (the engine may sum a
    batch of problems in another order)."""
    if not isinstance(attacks, (list, tuple)) or not attacks or not all(
            isinstance(a, OptimalPoisoning) for a in attacks):
        raise TypeError("attacks must be a non-empty list of OptimalPoisoning instances.")
    return _lockstep(list(attacks), train, val)


@dataclass
class _Run:
    """One attack's state in a lockstep."""
    atk: OptimalPoisoning
    lam: object  # float, or (n_lam,) for a model victim
    learned: bool
    lam_range: tuple
    rng: np.random.Generator
    replaced: np.ndarray
    clones: np.ndarray
    Xcur: np.ndarray
    ycur: np.ndarray
    Xp_init: np.ndarray
    hist: dict = field(default_factory=lambda: {k: [] for k in (
        "batch", "attempt", "iteration", "value", "grad_norm", "grad_lam", "lam")})
    lams: list = field(default_factory=list)
    values: list = field(default_factory=list)

    theta0: object = None  # () -> the inner training's start (None: zeros)
    mask: np.ndarray = None  # the learned entries of a defence's lam vector (None: all)

    @property
    def nan_lam(self):
        return np.nan if np.ndim(self.lam) == 0 else np.full(np.shape(self.lam), np.nan)

    def shaped(self, grad_lam):
        """grad_lam in the shape of lam (a one-group model's engine gives a float)."""
        return grad_lam if np.ndim(self.lam) == 0 else np.reshape(grad_lam, np.shape(self.lam))

    def lam_step(self, lam, grad_lam):
        if self.mask is not None:  # fixed entries stay
            grad_lam = np.where(self.mask, grad_lam, 0.0)
        lam = np.clip(lam - self.atk.beta * grad_lam, *self.lam_range)
        return float(lam) if np.ndim(lam) == 0 else lam

    def jitter(self, lam):
        """Footnote 8: lam redrawn in [lam - 0.5, lam + 0.5], per group (learned entries)."""
        size = None if np.ndim(lam) == 0 else np.shape(lam)
        noise = self.rng.uniform(-0.5, 0.5, size)
        return self.lam_step(lam + (noise if self.mask is None else self.mask * noise), 0.0)

    def record(self, bar, *row):
        for k, v in zip(self.hist, row):
            self.hist[k].append(v)
        bar.update()


def _lockstep(attacks, train, val):
    checked = [a._check(train, val) for a in attacks]
    a0, (victim, _, _, _, box, _, flip, X, y, Xv, yv, _, seeds, own) = attacks[0], checked[0]
    strip = lambda v: dataclasses.replace(v, lam=None, model=None if own else v.model)
    for i, (a, ck) in enumerate(zip(attacks, checked)):
        for name in _LOCKSTEP_EQUAL:
            if getattr(a, name) != getattr(a0, name):
                raise ValueError(f"run_lockstep: attack {i} has {name}={getattr(a, name)!r} but "
                                 f"attack 0 has {getattr(a0, name)!r}; attacks run in lockstep "
                                 f"differ only in {', '.join(LOCKSTEP_FREE)}.")
        if strip(ck[0]) != strip(victim) or not np.array_equal(np.asarray(ck[4], object),
                                                                np.asarray(box, object)):
            raise ValueError(f"run_lockstep: attack {i} has another model or box than attack 0; "
                             f"attacks run in lockstep differ only in {', '.join(LOCKSTEP_FREE)}.")
    n, d = X.shape
    bs = a0.batch_size
    n_batches = a0.n_points // bs
    pool = np.arange(Xv.shape[0]) if a0.clone_class is None else \
        np.flatnonzero(yv == a0.clone_class)
    runs = []
    for a, (_, lam, lam_init, learned, _, lam_range, *_, mask, _, _) in zip(attacks, checked):
        rng = np.random.default_rng(a.random_state)
        replaced = rng.permutation(n)[:a.n_points]
        clones = rng.permutation(pool)[:a.n_points]
        theta0 = (lambda: None) if own else \
            (lambda rng=rng: victim.theta0(d, rng, X.dtype))  # the attack's models: zeros
        runs.append(_Run(a, lam_init if learned else lam, learned, lam_range, rng,
                         replaced, clones, X.copy(), y.copy(), seeds[clones].copy(),
                         theta0=theta0, mask=mask))
    if any(not np.array_equal(r.replaced, runs[0].replaced) for r in runs):
        raise ValueError("run_lockstep: the attacks replace different training rows; give them "
                         "the same random_state (not None).")
    kw = dict(T=a0.T, eta=a0.eta, gamma=a0.gamma, mode=a0.mode, backend=a0.backend)
    total = sum(a.T_lam * r.learned + n_batches * a.T_outer * (a.restarts + 1)
                for a, r in zip(attacks, runs))
    from tqdm import tqdm
    bar = tqdm(total=total, desc="optimal poisoning", unit="it", leave=False,
               disable=not any(a.progress for a in attacks))  # an inner bar: gone when done
    with bar:
        _clean(_engine(victim, own, X[:-1], y[:-1], Xv, yv, **kw), runs, X[-1:], y[-1:], bar)
        replaced = runs[0].replaced
        for b in range(n_batches):
            rows = replaced[b * bs:(b + 1) * bs]
            if a0.replace:  # the rows no batch up to b replaces: the same in every attack
                keep = np.ones(n, bool)
                keep[replaced[:(b + 1) * bs]] = False
                Xs, ys = np.ascontiguousarray(X[keep]), np.ascontiguousarray(y[keep])
                prior = [(r.Xcur[replaced[:b * bs]], r.ycur[replaced[:b * bs]]) for r in runs]
            else:
                Xs, ys = X, y
                prior = [(r.Xcur[n:], r.ycur[n:]) for r in runs]
            engine = _engine(victim, own, Xs, ys, Xv, yv, **kw)
            best = [None] * len(runs)
            for attempt in range(a0.restarts + 1):
                srcs, lam0 = [], []
                for r in runs:
                    src, lam = r.clones[b * bs:(b + 1) * bs], r.lam
                    if attempt:  # footnote 8: other clones, lam jittered around its start
                        src = r.rng.choice(pool, bs, replace=False)
                        if r.learned:
                            lam = r.jitter(r.lam)
                    srcs.append(src)
                    lam0.append(lam)
                Xp = np.stack([np.concatenate([pX, seeds[src]])
                               for (pX, _), src in zip(prior, srcs)])
                yp = np.stack([np.concatenate([py, flip - yv[src]])
                               for (_, py), src in zip(prior, srcs)])
                outs = _batch(engine, runs, Xp, yp, np.array(lam0), b * bs, box, b + 1, attempt,
                              bar)
                for i, out in enumerate(outs):
                    if best[i] is None or out[2] > best[i][2]:
                        best[i] = out + (srcs[i],)
            for r, (Xp, lam, value, src) in zip(runs, best):
                r.Xp_init[b * bs:(b + 1) * bs] = seeds[src]
                if a0.replace:
                    r.Xcur[rows], r.ycur[rows] = Xp, flip - yv[src]
                else:
                    r.Xcur = np.concatenate([r.Xcur, Xp])
                    r.ycur = np.concatenate([r.ycur, flip - yv[src]])
                    r.replaced[b * bs:(b + 1) * bs] = np.arange(n + b * bs, n + (b + 1) * bs)
                r.lam = lam
                r.lams.append(lam)
                r.values.append(value)
    if a0.optimize_labels:  # rows [X | y]: the labels are the last column
        cut = lambda A: (np.ascontiguousarray(A[:, :-1]), np.ascontiguousarray(A[:, -1]))  # noqa
        return [PoisoningResult(*cut(r.Xcur[r.replaced]), cut(r.Xp_init)[0], r.replaced,
                                np.asarray(r.lams), np.asarray(r.values),
                                {k: np.asarray(v) for k, v in r.hist.items()}, bs,
                                bool(a0.replace), *cut(X)) for r in runs]
    return [PoisoningResult(r.Xcur[r.replaced].copy(), r.ycur[r.replaced].copy(), r.Xp_init,
                            r.replaced, np.asarray(r.lams), np.asarray(r.values),
                            {k: np.asarray(v) for k, v in r.hist.items()}, bs,
                            bool(a0.replace), X, y) for r in runs]


def _inits(runs):
    """Every run's start for one hyperiteration: None (zeros) or (B, p)."""
    w0 = [r.theta0() for r in runs]
    return None if w0[0] is None else np.stack(w0)


class _One:
    """One problem's part of a batched HyperGrad."""
    __slots__ = ("value", "grad_Xp", "grad_lam")

    def __init__(self, hg, i):
        self.value = float(hg.value[i])
        self.grad_Xp = None if hg.grad_Xp is None else hg.grad_Xp[i]
        self.grad_lam = None if hg.grad_lam is None else hg.grad_lam[i]


def _solve(engine, runs, Xp, yp, lam, need, where, w0=None):
    """One engine call over the problems of ``runs`` (inner training from w0,
    (B, p), or zeros when None): a list of _One, None where that problem's inner
    training diverged and its attack warns (it raises otherwise, in the attack's
    terms: eta, its lam, ``where``)."""
    start = lambda i=None: {} if w0 is None else {"w0": w0 if i is None else w0[i:i + 1]}
    try:
        hg = engine.run(Xp, yp, lam, need, **start())
        return [_One(hg, i) for i in range(len(runs))]
    except DivergenceError as err:
        if len(runs) == 1:
            return [_diverged(engine, runs[0], err, where, lam[0], Xp.shape[1])]
    out = []
    for i, r in enumerate(runs):  # which of them diverged: each alone (the error path only)
        try:
            out.append(_One(engine.run(Xp[i:i + 1], yp[i:i + 1], lam[i:i + 1], need,
                                       **start(i)), 0))
        except DivergenceError as err:
            out.append(_diverged(engine, r, err, where, lam[i], Xp.shape[1]))
    return out


def _diverged(engine, r, err, where, lam, k):
    det, n = err.details, engine.Xc.shape[0] + k
    if engine.victim.regularizer != "l2" or np.ndim(lam) or isinstance(engine, _DefenceEngine):
        # the slow path, a model or a defence words it
        text = f"optimal poisoning, {where}: {err}"
    else:
        text = message(det, f"optimal poisoning, {where}: ", alpha_name="eta",
                       lam_term=f"exp(lam) / n = {det['e']:.3g} from lam={lam:g} and "
                                f"the n={n} training rows")
    if r.atk.on_divergence == "raise":
        raise DivergenceError(text, step=err.step, details=dict(det, lam=lam)) from None
    warnings.warn(text.replace("would be garbage", "is skipped"), DivergenceWarning,
                  stacklevel=6)  # the caller of run / run_lockstep
    return None


def _clean(engine, runs, x, y, bar):
    """lam learned on the clean set (T_lam steps of projected hypergradient descent,
    forward mode) by the attacks that learn it, then every attack's value there.
    The engine wants at least one 'poisoning' row: the last training row, x."""
    rep = lambda m: (np.repeat(x[None], m, 0), np.repeat(y[None], m, 0))
    for it in range(max(r.atk.T_lam * r.learned for r in runs)):
        act = [r for r in runs if r.learned and it < r.atk.T_lam]
        hs = _solve(engine, act, *rep(len(act)), np.array([r.lam for r in act]), "lam",
                    f"learning lam on the clean set, iteration {it}", _inits(act))
        for r, h in zip(act, hs):
            if h is not None:
                r.lam = r.lam_step(r.lam, h.grad_lam)
            r.record(bar, 0, 0, it, np.nan if h is None else h.value, np.nan,
                     r.nan_lam if h is None else r.shaped(h.grad_lam), r.lam)
    hs = _solve(engine, runs, *rep(len(runs)), np.array([r.lam for r in runs]), "value",
                "the value on the clean training set", _inits(runs))
    for r, h in zip(runs, hs):
        r.lams.append(r.lam)
        r.values.append(np.nan if h is None else h.value)


def _batch(engine, runs, Xp, yp, lam, k0, box, batch, attempt, bar):
    """T_outer coordinate-wise steps on one batch of every attack at once: ascent
    on the points Xp[:, k0:] (the rows before k0 are earlier batches', fixed),
    then descent on lam (Algorithm 1, line 9: at the updated points) where it is
    learned. Returns per attack (points, lam, final value)."""
    lo, hi = box
    alpha = runs[0].atk.alpha
    for it in range(runs[0].atk.T_outer):
        where = f"batch {batch}, attempt {attempt}, hyperiteration {it}"
        w0 = _inits(runs)  # new initial weights for every update (a model victim's)
        hs = _solve(engine, runs, Xp, yp, lam, "all", where, w0)
        norm = [np.nan] * len(runs)
        for i, h in enumerate(hs):
            if h is not None:
                g = h.grad_Xp[k0:]
                norms = np.linalg.norm(g, axis=1, keepdims=True)
                Xp[i, k0:] = np.clip(Xp[i, k0:] + alpha * g / np.maximum(
                    norms, np.finfo(g.dtype).tiny), lo, hi)
                norm[i] = float(norms.mean())
        grad_lam = [r.nan_lam for r in runs]
        step = [i for i, (r, h) in enumerate(zip(runs, hs)) if r.learned and h is not None]
        if step:
            for i, h in zip(step, _solve(engine, [runs[i] for i in step], Xp[step], yp[step],
                                         lam[step], "lam", where + " (lam step)",
                                         None if w0 is None else w0[step])):
                if h is not None:
                    grad_lam[i] = runs[i].shaped(h.grad_lam)
                    lam[i] = runs[i].lam_step(lam[i], grad_lam[i])
        for i, (r, h) in enumerate(zip(runs, hs)):
            r.record(bar, batch, attempt, it, np.nan if h is None else h.value, norm[i],
                     grad_lam[i], _lam_copy(lam[i]))
    hs = _solve(engine, runs, Xp, yp, lam, "value",
                f"batch {batch}, attempt {attempt}, final value", _inits(runs))
    return [(Xp[i, k0:].copy(), _lam_copy(lam[i]), np.nan if h is None else h.value)
            for i, h in enumerate(hs)]


def _lam_copy(lam):
    return float(lam) if np.ndim(lam) == 0 else np.array(lam)


def train_sgd(X, y, lam, *, lr=0.01, batch_size=64, epochs=200, random_state=None, model=None):
    """The victim of Table 3: mini-batch SGD on the logistic loss with the
    regulariser (1/n) exp(lam)/2 ||w||^2 (n = len(X); see the module docstring),
    by mithridate.models.training.sgd, from zeros. Each epoch visits the rows in
    a fresh random order. Returns theta = [w; b] in float64.

    ``model``: a mithridate.models Model victim (the MLP; Table 3's network row:
    lr 1e-4, batch 64, 4000 epochs) with lam a number for every layer or one per
    layer, trained from ``model.init`` (its seed and the epochs' order are two
    streams spawned from ``random_state``). Returns its theta (p,) in float64."""
    from ..models import LinearModel
    from ..models.training import sgd
    X, y = _data("train", (X, y), np.float64)
    if model is not None:
        victim = as_victim(model)
        victim.check_features(X.shape[1])
        lam = _lam_value("lam", lam, victim.n_lam(X.shape[1]), "a finite number")
    elif isinstance(lam, bool) or not isinstance(lam, (int, float, np.integer, np.floating)) \
            or not math.isfinite(lam):
        raise ValueError(f"lam={lam!r} must be a finite number.")
    lr = _pos("lr", lr)
    batch_size, epochs = _int("batch_size", batch_size, 1), _int("epochs", epochs, 1)
    n = X.shape[0]
    top = float(np.max(lam))
    if lr * math.exp(top) / n >= 2:
        raise ValueError(f"lr * exp(lam) / n = {lr * math.exp(top) / n:.3g} >= 2: the "
                         "regulariser's SGD steps diverge; lower lr or lam.")
    if model is None:
        return sgd(LinearModel(), X, y, lam - math.log(n), lr=lr, batch_size=batch_size,
                   epochs=epochs, random_state=random_state)
    init_seed, order_seed = np.random.SeedSequence(random_state).spawn(2)
    theta0 = model.init(X.shape[1], random_state=np.random.default_rng(init_seed))
    return np.asarray(sgd(model, X, y, lam - math.log(n), lr=lr, batch_size=batch_size,
                          epochs=epochs, random_state=np.random.default_rng(order_seed),
                          theta0=theta0), np.float64)


def evaluate(theta, X, y, model=None):
    """Test metrics of theta = [w; b] on (X, y): error, false positive rate
    (negatives called 1), false negative rate, and ||w||^2. ``model``: a
    mithridate.models Model victim's theta (prediction: model.logits > 0);
    w_norm2 then sums its penalised groups, and ``layer_norms`` holds
    ||W_l||^2 / d_l per penalised group (d_l its number of parameters)."""
    theta = np.asarray(theta, dtype=np.float64)
    X, y = _data("test", (X, y), np.float64)
    if model is None:
        if theta.shape != (X.shape[1] + 1,):
            raise ValueError(f"theta has shape {theta.shape}, expected ({X.shape[1] + 1},) = "
                             "[w; b].")
        pred = (X @ theta[:-1] + theta[-1]) > 0
        norms = {}
        w_norm2 = float(theta[:-1] @ theta[:-1])
    else:
        as_victim(model).check_features(X.shape[1])
        layout = model.layout(X.shape[1])
        if theta.shape != (layout.size,):
            raise ValueError(f"theta has shape {theta.shape}, expected ({layout.size},) for "
                             f"model {type(model).__name__} on {X.shape[1]} features.")
        pred = np.asarray(model.logits(theta, X)) > 0
        groups = [theta[layout.slice(g)] for g in layout.penalised]
        norms = {"layer_norms": [float(w @ w) / w.size for w in groups]}
        w_norm2 = float(sum(w @ w for w in groups))
    pos = y > 0.5
    return {"error": float(np.mean(pred != pos)),
            "fpr": float(np.mean(pred[~pos])) if (~pos).any() else float("nan"),
            "fnr": float(np.mean(~pred[pos])) if pos.any() else float("nan"),
            "w_norm2": w_norm2, **norms}


def train_gd(X, y, lams, *, T, eta, gamma=0.0):
    """T steps of full-batch (heavy-ball) gradient descent from zeros, the attack's
    inner trainer, for every lam in ``lams`` at once (mithridate.models.training:
    one matrix product per step). Returns thetas (len(lams), d + 1) float64."""
    from ..models import LinearModel
    from ..models.training import gradient_descent
    X = np.ascontiguousarray(X, dtype=np.float64)
    y = np.ascontiguousarray(y, dtype=np.float64)
    lams = np.asarray(lams, dtype=np.float64).reshape(-1)
    return gradient_descent(LinearModel(), X, y, lams - math.log(X.shape[0]), T=T, alpha=eta,
                            gamma=gamma)


def lam_clean(X, y, *, grid=None, n_splits=5, T=150, eta=0.1, gamma=0.0, random_state=None):
    """lam_CLEAN: the lam of ``grid`` (default -8, -7.5, ..., 1: Appendix D.3's
    range) with the lowest mean held-out error over ``n_splits``-fold cross-
    validation (sklearn KFold, shuffled with ``random_state``) on the clean set,
    ties broken by the held-out logistic loss. Each fold is trained with the
    attack's inner trainer (``train_gd``: T full-batch steps of size eta), all
    lams at once. Returns (lam, table) with table[i] = (lam, error, loss)."""
    from sklearn.model_selection import KFold
    X, y = _data("X, y", (X, y), np.float64)
    grid = np.arange(-8.0, 1.01, 0.5) if grid is None else np.asarray(grid, dtype=np.float64)
    if grid.ndim != 1 or grid.size == 0 or not np.isfinite(grid).all():
        raise ValueError("grid must be a non-empty 1-D array of finite lam values.")
    n_splits = _int("n_splits", n_splits, 2)
    if n_splits > X.shape[0]:
        raise ValueError(f"n_splits={n_splits} exceeds the {X.shape[0]} rows.")
    _int("T", T, 1)
    _pos("eta", eta)
    err, loss = np.zeros(grid.size), np.zeros(grid.size)
    for tr, te in KFold(n_splits, shuffle=True, random_state=random_state).split(X):
        th = train_gd(X[tr], y[tr], grid, T=T, eta=eta, gamma=gamma)
        z = X[te] @ th[:, :-1].T + th[:, -1]
        err += np.mean((z > 0) != (y[te, None] > 0.5), axis=0) / n_splits
        loss += np.mean(np.logaddexp(0, z) - y[te, None] * z, axis=0) / n_splits
    best = np.lexsort((loss, err))[0]
    return float(grid[best]), np.column_stack([grid, err, loss])
