"""Victim descriptions for :class:`~mithridate.attacks.OptimalPoisoning`: the
model the attacker poisons, given as a loss name or as the estimator a user
already has, fitted or not (its hyperparameters are read, never its weights).

Every victim is trained by the attack's inner loop (T steps of full-batch
gradient descent from zeros, see :mod:`mithridate.hypergrad`) on the objective
below; ``lam`` is the victim's hyperparameter on the attack's log scale.

Model victims: a mithridate.models Model with a loss and ``init`` (the network
``MLP`` of issue 10, labels {0, 1}) runs on the prepared Engine's route for it
(the generic engine for a model without a fused loop) with one lam per
penalised group (per layer for the MLP) on the attack's scale,
(1/n) [ sum_i l_i + sum_l exp(lam_l)/2 ||W_l||^2 ]. Its inner training starts
from ``model.init`` (zeros is a saddle of a network), with a fresh seed drawn
from the attack's random_state for every update (paper 002, section 5.2).

L2 victims, the attack's scale (mithridate.attacks.optimal), intercept never
penalised, (1/n) [ sum_i l(z_i, y_i) + exp(lam)/2 ||w||^2 ]::

  "logistic" / "squared"   a bare loss (l = softplus(z) - y z or 0.5 (z - y)^2);
                           lam comes from the attack.
  LogisticRegression       sklearn minimises C sum_i l_i + 1/2 ||w||^2 (L2 penalty;
                           the intercept unpenalised except by liblinear). Divided by
                           C n it is the form above with exp(lam) = 1/C:
                           lam = -log(C).
  Ridge                    sklearn minimises ||y - X w - b||^2 + alpha ||w||^2 =
                           2 [ sum_i 0.5 r_i^2 + alpha/2 ||w||^2 ]: exp(lam) = alpha,
                           lam = log(alpha).

The maps do not involve n: sklearn's objectives already sum the loss over the
rows, as the attack's scale does. ``fit_intercept`` is kept. Refused: other
penalties (l1, elastic net, none), C or alpha that are infinite or zero,
``class_weight`` (reweights the loss), liblinear with an intercept (it penalises
the intercept), ``positive=True`` Ridge (a constrained problem), multi-output
alpha, and a fitted classifier with more than two classes.

Wasserstein victims (mithridate.defenses, paper 000, eq. 8) with
regularizer="paper", the closed forms (11) (squared) and (15) (logistic)::

    (1/n) sum_i l(z_i, y_i) + rho L(theta),   L = a(X, Y) t^2 + b(X, Y) t,

t = ||theta||_q (theta = [w; b], q the dual of the estimator's ``norm``), with
the data bounds X = max ||x_i||_p, ``Y = max |y_i|`` of the *poisoned* training set
(so the poisoning points move them) unless the estimator fixes ``data_bounds``;
lam = log(rho). The engine's fused hypergradient through this objective is not
written yet (issue 11): these victims take the slow path, torch autograd through
the unrolled T steps, in float64 (the results are cast to X's dtype). It is the
exact gradient of the unrolled loop wherever the objective is differentiable:
L is smooth away from theta = 0 for 1 < p < inf (at theta = 0 the loop takes
the subgradient 0; p in {1, inf} is refused: its dual norm has kinks at every
zero coordinate), and the max in the data bound has a kink where two rows tie.
Refused: the absolute loss (no curvature, no hypergradient), the tight and
exact regularisers, c1/c2 weights (the attack tunes rho), rho = 0.
"""
import math
from dataclasses import dataclass

import numpy as np

LOSSES = ("logistic", "squared")


@dataclass(frozen=True)
class Victim:
    """A resolved victim. loss: the data term; fit_intercept; lam: its own
    hyperparameter on the attack's scale (None for a bare loss name); regularizer
    "l2" or "wasserstein"; norm and data_bounds: the Wasserstein estimator's;
    n_features: a fitted estimator's ``n_features_in_`` (None if unfitted); name: how
    messages refer to it; model: a mithridate.models Model victim (None otherwise)."""
    loss: str
    fit_intercept: bool = True
    lam: float = None
    regularizer: str = "l2"
    norm: float = 2.0
    data_bounds: tuple = None
    n_features: int = None
    name: str = ""
    model: object = None

    def check_features(self, d):
        if self.model is not None:
            widths = getattr(self.model, "layers", None)
            if widths is not None and widths[0] != d:
                raise ValueError(f"model {self.name} takes {widths[0]} inputs (layers[0]) but the "
                                 f"attack's data has {d} features; build it with layers=({d}, "
                                 f"{', '.join(map(str, widths[1:]))}).")
            try:
                self.model.layout(d)
            except ValueError as err:
                raise ValueError(f"model {self.name} does not fit the attack's data with {d} "
                                 f"features: {err}") from None
        if self.n_features is not None and self.n_features != d:
            raise ValueError(f"model {self.name} was fitted on {self.n_features} features but the "
                             f"attack's data has {d}; pass the data it was fitted on (or an "
                             "unfitted estimator).")

    def n_lam(self, d):
        """Length of the lam vector for d features (1 unless a model victim says more)."""
        return 1 if self.model is None else self.model.layout(d).n_lam

    def theta0(self, d, rng, dtype):
        """The inner training's start: None (zeros) for the linear victims, else
        ``model.init`` with a fresh seed drawn from ``rng``, in ``dtype``."""
        if self.model is None:
            return None
        seed = int(rng.integers(2 ** 63))
        return np.asarray(self.model.init(d, random_state=seed), dtype=dtype)

    def engine(self, Xc, yc, Xv, yv, *, T, eta, gamma, mode, backend):
        """The victim's hypergradients prepared on fixed clean rows (Xc, yc) and
        validation rows: ``.run(Xp, yp, lam, need)`` for one problem (Xp (k, d))
        or a batch (Xp (B, k, d), lam (B,)) whose rows are [Xc; Xp[b]]."""
        if self.regularizer == "wasserstein":
            return WassersteinEngine(self, Xc, yc, Xv, yv, T=T, eta=eta, gamma=gamma)
        return L2Engine(self, Xc, yc, Xv, yv, T=T, eta=eta, gamma=gamma, mode=mode,
                        backend=backend)

    def hypergrad(self, Xc, yc, Xp, yp, Xv, yv, lam, *, T, eta, gamma, mode, backend):
        """HyperGrad of the mean validation loss after T inner steps wrt Xp and lam."""
        return self.engine(Xc, yc, Xv, yv, T=T, eta=eta, gamma=gamma, mode=mode,
                           backend=backend).run(Xp, yp, lam)

    def check_engine(self, mode, backend):
        """The Wasserstein slow path is torch's unrolled trajectory RMD only; a model
        without a fused loop runs on the generic engine (backend 'auto' there), the
        network also on its torch route (backend 'torch' or 'triton')."""
        from ..hypergrad.engine import TORCH_ROUTE
        from ..models import MLP
        if self.model is not None and self.model.fused is None and backend not in ("numba", "auto"):
            network = isinstance(self.model, MLP)
            if not (network and backend in TORCH_ROUTE):
                also = " or its torch route ('torch', 'triton')" if network else ""
                raise ValueError(f"model {self.name} has no fused loop: it runs on the generic "
                                 f"engine over its own primitives{also}; leave backend at its "
                                 f"default (or 'auto'), not backend={backend!r}.")
        if self.regularizer == "wasserstein" and (mode != "trajectory"
                                                  or backend not in ("numba", "torch")):
            raise ValueError(f"model {self.name} runs its hypergradient by torch autograd through "
                             f"the unrolled loop; use mode='trajectory' and backend 'numba' (the "
                             f"default) or 'torch', not mode={mode!r}, backend={backend!r}.")


NEEDS = ("all", "lam", "value")


class L2Engine:
    """An L2 victim's prepared hypergradient engine (mithridate.hypergrad.Engine:
    the clean and validation rows checked and packed once) on the attack's scale:
    the engine's lam is lam - log(n), n the rows trained on (clean + poisoning),
    for every penalised group. The model: LinearModel(loss, fit_intercept), or a
    model victim's own (its generic route unless it has a fused loop).
    ``need``: "all" (value, grad_Xp, grad_lam by ``mode``), "lam" (value and
    grad_lam by forward mode, the same exact derivative of the unrolled loop as
    the reverse modes; ``mode="implicit"`` keeps its own lam step) or "value".
    ``w0``: the start of the inner training (zeros when None)."""

    def __init__(self, victim, Xc, yc, Xv, yv, *, T, eta, gamma, mode, backend):
        from ..hypergrad import Engine
        from ..hypergrad.engine import TORCH_ROUTE
        from ..models import LinearModel
        self.victim, self.Xc = victim, Xc
        model = victim.model or LinearModel(victim.loss, victim.fit_intercept)
        if model.fused is None and backend not in TORCH_ROUTE:
            backend = "auto"  # the generic engine; check_engine refused any other choice
        self.engine = Engine(Xc, yc, Xv, yv, model=model, T=T, alpha=eta, gamma=gamma, mode=mode,
                             backend=backend)
        self._vector = victim.model is not None and model.layout(Xc.shape[-1]).n_lam == 1

    def run(self, Xp, yp, lam, need="all", w0=None):
        n = self.Xc.shape[0] + Xp.shape[-2]
        if need == "lam" and self.engine.mode == "implicit":
            need = "all"
        lam = np.subtract(lam, math.log(n))
        if self._vector:  # a one-group model victim's lam vectors (1,) -> the engine's numbers
            lam = lam[..., 0]
        return self.engine.run(Xp, yp, lam, w0, need=need)


class WassersteinEngine:
    """The Wasserstein victims' slow path (module docstring), one problem at a
    time; every ``need`` gets the full result (autograd gives all of it)."""

    def __init__(self, victim, Xc, yc, Xv, yv, *, T, eta, gamma):
        self.victim, self.Xc, self.yc, self.Xv, self.yv = victim, Xc, yc, Xv, yv
        self.T, self.eta, self.gamma = T, eta, gamma

    def run(self, Xp, yp, lam, need="all"):
        from ..hypergrad import HyperGrad
        one = lambda Xp, yp, lam: _wasserstein_hypergrad(
            self.victim, self.Xc, self.yc, Xp, yp, self.Xv, self.yv, lam, self.T, self.eta,
            self.gamma)
        if Xp.ndim == 2:
            return one(Xp, yp, lam)
        rs = [one(Xp[b], yp[b], lam[b]) for b in range(Xp.shape[0])]
        return HyperGrad(np.array([r.value for r in rs]), np.stack([r.grad_Xp for r in rs]),
                         np.array([r.grad_lam for r in rs]), np.stack([r.theta_T for r in rs]),
                         dict(rs[0].info, B=len(rs)))


def as_victim(model):
    """The :class:`Victim` that ``model`` describes: "logistic", "squared", a
    ``LogisticRegression``, a ``Ridge``, a ``WassersteinRobustClassifier``, a
    ``WassersteinRobustRegressor`` (mappings in the module docstring) or a
    mithridate.models Model with a logistic loss and ``init`` (the MLP)."""
    from ..models.base import Model
    if isinstance(model, Model):
        return _model_victim(model)
    if isinstance(model, str):
        if model not in LOSSES:
            raise ValueError(f"model={model!r} is not supported; use one of {list(LOSSES)} or an "
                             "estimator (LogisticRegression, Ridge, WassersteinRobust*).")
        return Victim(model, name=repr(model))
    from sklearn.linear_model import LogisticRegression, Ridge
    from ..defenses import WassersteinRobustClassifier, WassersteinRobustRegressor
    readers = {LogisticRegression: _logistic_regression, Ridge: _ridge,
               WassersteinRobustClassifier: _wasserstein, WassersteinRobustRegressor: _wasserstein}
    for cls, read in readers.items():
        if type(model) is cls:
            params = model.get_params(deep=False)
            fields = read(type(model).__name__, params)
            n_features = getattr(model, "n_features_in_", None)
            classes = getattr(model, "classes_", None)
            if classes is not None and len(classes) != 2:
                raise ValueError(f"model {type(model).__name__} was fitted on {len(classes)} "
                                 "classes; the attack needs a binary classifier.")
            return Victim(fit_intercept=bool(params["fit_intercept"]), n_features=n_features,
                          name=type(model).__name__, **fields)
    raise TypeError(f"model of type {type(model).__name__} is not a supported victim; give "
                    f"'logistic', 'squared', or an instance of "
                    f"{', '.join(c.__name__ for c in readers)}.")


def _model_victim(model):
    name = type(model).__name__
    if getattr(model, "loss", None) != "logistic" or not callable(getattr(model, "init", None)):
        raise ValueError(f"model {name}: a Model victim needs loss 'logistic' (labels {{0, 1}}) and "
                         "an init(d, random_state) method (its inner training starts there); "
                         "mithridate.models.MLP has both.")
    if getattr(model, "sample_weight", None) is not None:
        raise ValueError(f"model {name} has sample weights; the attack's victim weights every row "
                         "the same: pass a model without sample_weight.")
    return Victim("logistic", fit_intercept=True, name=name, model=model)


def _positive(name, value, what):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} has {name}={value!r}; the attack needs a finite {name} > 0 "
                         "(its log is the attack's lam).")
    return float(value)


def _logistic_regression(name, p):
    # penalty: 'l2' before sklearn 1.8; 'deprecated' (the default) after, l1_ratio then decides.
    penalty = p.get("penalty", "l2")
    l1_ratio = p.get("l1_ratio")
    l2 = penalty == "l2" or (penalty == "deprecated" and l1_ratio in (None, 0))
    if not l2:
        raise ValueError(f"{name}(penalty={penalty!r}, l1_ratio={l1_ratio!r}) is not an L2 "
                         "penalty; the attack's victim is L2-regularised: use the default "
                         "penalty (l1_ratio=0) and a finite C.")
    if p["class_weight"] is not None:
        raise ValueError(f"{name}(class_weight={p['class_weight']!r}) reweights the loss, which "
                         "the attack's victim does not; use class_weight=None.")
    if p["solver"] == "liblinear" and p["fit_intercept"]:
        raise ValueError(f"{name}(solver='liblinear') penalises the intercept, the attack's victim "
                         "does not; use solver='lbfgs' (or fit_intercept=False).")
    C = _positive("C", p["C"], name)
    return dict(loss="logistic", lam=-math.log(C))


def _ridge(name, p):
    if p["positive"]:
        raise ValueError(f"{name}(positive=True) constrains the weights; the attack's victim is "
                         "unconstrained: use positive=False.")
    alpha = p["alpha"]
    if np.ndim(alpha) != 0:
        raise ValueError(f"{name} has one alpha per target ({np.shape(alpha)}); the attack needs a "
                         "single-target Ridge with a scalar alpha.")
    return dict(loss="squared", lam=math.log(_positive("alpha", float(alpha), name)))


def _wasserstein(name, p):
    loss = p.get("loss", "logistic")
    if loss not in LOSSES:
        raise ValueError(f"{name}(loss={loss!r}) has no curvature, so no useful hypergradient; "
                         "use loss='squared'.")
    if p["regularizer"] != "paper":
        raise ValueError(f"{name}(regularizer={p['regularizer']!r}): the attack supports the "
                         "paper's closed form only; use regularizer='paper'.")
    if p["c1"] is not None or p["c2"] is not None:
        raise ValueError(f"{name}(c1=..., c2=...): the attack tunes rho, so the victim must be "
                         "weighted by rho; leave c1 and c2 None.")
    norm = p["norm"]
    if isinstance(norm, bool) or not isinstance(norm, (int, float)) or not 1 < norm < math.inf:
        raise ValueError(f"{name}(norm={norm!r}): the attack needs 1 < norm < inf (the regulariser "
                         "must be smooth away from theta = 0); e.g. norm=2.")
    bounds = p["data_bounds"]
    if bounds is not None:
        bounds = tuple(float(v) for v in bounds)
        if len(bounds) != 2 or not all(math.isfinite(v) and v >= 0 for v in bounds):
            raise ValueError(f"{name}(data_bounds={p['data_bounds']!r}) must be a pair (X, Y) of "
                             "finite numbers >= 0.")
    rho = _positive("rho", p["rho"], name)
    return dict(loss=loss, lam=math.log(rho), regularizer="wasserstein", norm=float(norm),
                data_bounds=bounds)


def _mean_loss(theta, X, y, victim):
    # The data term of mithridate.reference.linear, with logaddexp in place of its
    # log_sigmoid: torch runs log_sigmoid on its intra-op thread pool even for tiny
    # inputs (about 10 ms a call on a loaded 2-core machine, T calls per hypergradient).
    import torch
    d = X.shape[1]
    z = X @ theta[:d] + (theta[d] if victim.fit_intercept else 0.0)
    if victim.loss == "logistic":
        return (torch.logaddexp(torch.zeros_like(z), z) - y * z).mean()
    return 0.5 * ((z - y) ** 2).mean()


def wasserstein_objective(victim, theta, X, y, lam):
    """The Wasserstein victim's training objective (module docstring) as a torch
    scalar, differentiable wrt theta (p,), X (n, d) and lam = log(rho)."""
    import torch
    from ..reference.lipschitz import _value as lipschitz
    J = _mean_loss(theta, X, y, victim)
    if not theta.detach().any():  # t is not differentiable at 0: the subgradient 0 of rho L
        return J
    p = victim.norm
    bounds = victim.data_bounds or (torch.linalg.vector_norm(X, ord=p, dim=1).max(), y.abs().max())
    return J + torch.exp(lam) * lipschitz(theta[None], X, y, victim.loss, p / (p - 1), "paper",
                                          victim.fit_intercept, bounds)[0]


def _check_divergence(v, J, J0, t, T, eta, gamma, lam):
    """The engine's bound GROWTH (kernels/cpu/hypergrad.py) applied to the objective J at
    step t: nan/inf or above GROWTH J0 / (1 - gamma)^2, J0 its value at step 0.
    (The compiled engine watches the squared gradient norm instead.)"""
    from ..errors import DivergenceError
    from ..kernels.cpu.hypergrad import GROWTH
    if not math.isfinite(J) or J > GROWTH * J0 / (1 - gamma) ** 2:
        raise DivergenceError(
            f"model {v.name}: the inner training diverged by step {t} of T={T}: its objective "
            f"became nan/inf or grew past {GROWTH:g} / (1 - gamma)^2 times its value at w0, so "
            f"the hypergradient would be garbage. Lower eta={eta:g} (the attack's inner step) "
            f"or rho = exp(lam) = {math.exp(lam):.3g}, or standardise X.", step=t)


def _wasserstein_hypergrad(v, Xc, yc, Xp, yp, Xv, yv, lam, T, eta, gamma):
    """The slow path: torch autograd through T heavy-ball steps (float64)."""
    import torch
    from ..hypergrad import HyperGrad
    f64 = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64))
    Xc, yc, yp, Xv, yv = map(f64, (Xc, yc, yp, Xv, yv))
    Xp_t = f64(Xp).requires_grad_(True)
    lam_t = torch.tensor(float(lam), dtype=torch.float64, requires_grad=True)
    X, y = torch.cat([Xc, Xp_t]), torch.cat([yc, yp])
    theta = torch.zeros(X.shape[1] + v.fit_intercept, dtype=torch.float64, requires_grad=True)
    vel = torch.zeros_like(theta)
    for t in range(T):
        J = wasserstein_objective(v, theta, X, y, lam_t)
        J0 = float(J.detach()) if t == 0 else J0
        _check_divergence(v, float(J.detach()), J0, t, T, eta, gamma, lam)
        (g,) = torch.autograd.grad(J, theta, create_graph=True)
        vel = gamma * vel - (1 - gamma) * g
        theta = theta + eta * vel
    _check_divergence(v, float(wasserstein_objective(v, theta, X, y, lam_t).detach()), J0, T, T,
                      eta, gamma, lam)
    value = _mean_loss(theta, Xv, yv, v)
    gX, glam = torch.autograd.grad(value, (Xp_t, lam_t))
    return HyperGrad(float(value.detach()), gX.numpy().astype(Xp.dtype), float(glam),
                     theta.detach().numpy().astype(Xp.dtype),
                     dict(mode="trajectory", backend="torch", T=T))
