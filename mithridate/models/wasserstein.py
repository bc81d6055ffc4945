"""Paper 000's Wasserstein-robust regulariser as a model component, and the model that
carries it beside the L2 component (issue 11: hypergradients through the robust objective).

The component (eq. 8 with the closed forms (11), (13), (15))::

    R(theta) = rho (a t^2 + b t),   t = N(theta),   rho = exp(log_rho),

N the dual norm ||theta||_q of the transport cost's p-norm (q = p / (p - 1); theta = [w; b],
intercept included, as ops.lipschitz's bound="paper"), (a, b) the paper's coefficients from
the data bounds ``X = max ||x||_p``, ``Y = max |y|`` (defenses.solvers.paper_coefficients: squared
(X + e, Y), absolute (0, 1), logistic (0, Y + X + 1 + e)) or the figures' weights (c1, c2).
The bounds are fixed when the component is built (the support's, or the clean training
set's): poisoning rows do not move them, so R does not depend on X.

Norms (``smoothing`` mu):

- q = 2 exact (mu None): t = ||theta||_2, C-infinity away from theta = 0; at 0 the
  subgradient 0 and a zero Hessian (the unrolled loop from theta_0 = 0 takes that step).
  Any 2 <= q < inf (data norm 1 < p <= 2) likewise exact: t = ||theta||_q is C^2 away from 0
  (curvature (q - 1) abs(theta_i)^(q-2) / t^(q-1) on the diagonal, finite at zero coordinates).
- 1 < q < 2 (p > 2): that curvature is unbounded at every zero coordinate; q in {1, inf}
  are kinked at every zero coordinate (q = 1) or tie (q = inf): they need mu > 0 (mu None
  there is refused)::

    q = 1    t = sum_i sqrt(theta_i^2 + mu^2) - mu,     ||theta||_1 - p mu <= t <= ||theta||_1
    q = inf  t = mu (logsumexp([theta; -theta] / mu) - log 2p),
                                             ||theta||_inf - mu log 2p <= t <= ||theta||_inf
    q = 2    t = sqrt(||theta||^2 + mu^2) - mu (optional),  ||theta||_2 - mu <= t <= ||theta||_2
    other q  t = (sum_i (theta_i^2 + mu^2)^(q/2))^(1/q) - p^(1/q) mu (optional for q > 2)

  each C-infinity with curvature <= 1/mu: the engine differentiates the smoothed objective
  exactly. SMOOTHING is a default to pass.

The model (:class:`Robust`): a base model's data term (a LinearModel's fused kernels) plus the
components [L2 groups of the base (optional), Wasserstein]; lam = (lam_g for the L2 groups...,
log_rho), named by ``layout(d).names``. It runs on the generic engine in every mode; over
models.LabelFeature (rows [X | y]) it also gives the gradient wrt the poisoning labels.
"""
import math
from dataclasses import dataclass

import numpy as np

from .base import Model
from .layout import Layout
from .regularizers import L2, checked_lam

SMOOTHING = 1e-3  # a default mu for the kinked norms (theta entries are O(0.1-10) in the papers)


@dataclass(frozen=True)
class HyperLayout(Layout):
    """A Layout whose lam vector goes on past the L2 groups' entries with ``extra`` named
    hyperparameters (a Wasserstein component's log_rho)."""
    extra: tuple = ()

    @property
    def n_lam(self):
        return len(self.penalised) + len(self.extra)

    @property
    def names(self):
        """The lam vector's entries: lam_<group> for the L2 groups, then ``extra``."""
        return tuple(f"lam_{g}" for g in self.penalised) + tuple(self.extra)


def dual(norm):
    """q = p / (p - 1) of the transport cost's p-norm (p >= 1; 1 -> inf, inf -> 1)."""
    from ..ops import _dual_exponent
    return _dual_exponent(norm)


class Wasserstein:
    """R(theta) = exp(log_rho) (a t^2 + b t), t the (smoothed) dual norm of all of theta
    (the paper form includes the intercept); module docstring. One hyperparameter,
    log_rho. Methods take theta (..., p) with lam (..., 1), like L2's; results float64."""
    n_lam = 1

    def __init__(self, a, b, q, smoothing=None):
        for name, v in (("a", a), ("b", b)):
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name}={v!r}: the paper coefficients are finite and >= 0.")
        if smoothing is not None and not (math.isfinite(smoothing) and smoothing > 0):
            raise ValueError(f"smoothing={smoothing!r} must be a finite mu > 0, or None "
                             "(exact, 2-norm only).")
        if smoothing is None and (q < 2 or q == math.inf):
            p = "1" if q == math.inf else "inf" if q == 1 else f"{q / (q - 1):g}"
            why = "the largest |theta_i| tie" if q == math.inf else \
                "a coordinate is zero (its curvature |theta_i|^(q-2) is unbounded there)"
            raise ValueError(f"norm={p}: the dual norm ||theta||_{q:g} is not twice "
                             f"differentiable where {why}; pass smoothing=mu > 0 (e.g. "
                             f"mithridate.models.wasserstein.SMOOTHING = {SMOOTHING:g}) or use "
                             "a norm 1 < p <= 2 (exact).")
        self.a, self.b, self.q, self.mu = float(a), float(b), float(q), smoothing

    def __repr__(self):
        return f"Wasserstein(a={self.a:g}, b={self.b:g}, q={self.q:g}, smoothing={self.mu})"

    @classmethod
    def paper(cls, X, y, *, loss, norm=2, fit_intercept=True, data_bounds=None, c1=None,
              c2=None, smoothing=None):
        """The component of estimator form (11)/(13)/(15) on data (X, y): (a, b) from the
        data bounds (``data_bounds`` = (X, Y), else those of X, y), or (c1, c2) when either
        is given (the other 0)."""
        q = dual(norm)
        if c1 is not None or c2 is not None:
            for name, v in (("c1", c1), ("c2", c2)):
                if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                                      or not math.isfinite(v) or v < 0):
                    raise ValueError(f"{name}={v!r} must be a finite number >= 0.")
            return cls(float(c1 or 0.0), float(c2 or 0.0), q, smoothing)
        from ..defenses.solvers import paper_coefficients
        X64, y64 = np.asarray(X, np.float64), np.asarray(y, np.float64)
        a, b = paper_coefficients(X64, y64, loss, float(norm), bool(fit_intercept), data_bounds,
                                  "numba")
        return cls(max(a, 0.0), max(b, 0.0), q, smoothing)  # (a, b) read off at e_1: >= -eps

    # -- the norm t = N(theta): (t, dt, curvature data) -----------------------------------
    def _norm(self, th):
        mu = self.mu
        if self.q == 2:  # curvature data: 1 / s (0 at the exact norm's kink theta = 0)
            s = np.sqrt(np.einsum("...j,...j->...", th, th) + (mu or 0.0) ** 2)
            inv = np.divide(1.0, s, out=np.zeros_like(s), where=s > 0)
            return s - (mu or 0.0), th * inv[..., None], inv
        if self.q == 1:
            s = np.sqrt(th * th + mu * mu)
            return s.sum(-1) - th.shape[-1] * mu, th / s, s
        if self.q != math.inf:  # t = (sum s_i^q)^(1/q) - m^(1/q) mu, s_i = sqrt(theta_i^2 + mu^2)
            q, m = self.q, th.shape[-1]
            s = np.abs(th) if mu is None else np.sqrt(th * th + mu * mu)
            tt = (s ** q).sum(-1) ** (1 / q)
            inv = np.divide(1.0, tt, out=np.zeros_like(tt), where=tt > 0)
            dt = (s * inv[..., None]) ** (q - 2) * th * inv[..., None]
            return tt - (m ** (1 / q) * mu if mu else 0.0), dt, (s, inv)
        z = np.concatenate([th, -th], axis=-1) / mu
        top = z.max(-1, keepdims=True)
        e = np.exp(z - top)
        tot = e.sum(-1, keepdims=True)
        pi = e / tot
        m = th.shape[-1]
        t = mu * (np.log(tot[..., 0]) + top[..., 0] - math.log(2 * m))
        return t, pi[..., :m] - pi[..., m:], pi

    def _norm_hvp(self, th, u, dt, s):
        """(Hessian of t) u."""
        if self.q == 2:
            return (u - dt * np.einsum("...j,...j->...", dt, u)[..., None]) * s[..., None]
        if self.q == 1:
            return self.mu ** 2 / s ** 3 * u
        if self.q != math.inf:  # (1 - q)/t dt dt^T + diag(t^(1-q) s^(q-4) (s^2 + (q-2) theta^2))
            q, (si, inv) = self.q, s
            r = si * inv[..., None]  # s_i / t, in [0, 1]
            if self.mu is None:
                diag = (q - 1) * r ** (q - 2) * inv[..., None]
            else:
                diag = r ** (q - 4) * (si * si + (q - 2) * th * th) * inv[..., None] ** 3
            du = np.einsum("...j,...j->...", dt, u)[..., None]
            return diag * u + (1 - q) * inv[..., None] * du * dt
        m = th.shape[-1]
        both = s[..., :m] + s[..., m:]
        return (both * u - dt * np.einsum("...j,...j->...", dt, u)[..., None]) / self.mu

    def _scaled(self, theta, lam):
        th = np.asarray(theta, np.float64)
        rho = np.exp(np.asarray(lam, np.float64)[..., 0])
        return th, rho, self._norm(th)

    def _two(self, theta, lam):
        """One problem, q = 2: (theta float64, rho c / s, rho (2a - c / s) / s^2) with
        c = 2 a t + b, from which grad = k1 theta and H u = k1 u + k2 (theta . u) theta
        (a few BLAS-1 calls: the engine calls these T times per hypergradient)."""
        th = np.asarray(theta, np.float64)
        mu = self.mu or 0.0
        s = math.sqrt(float(th @ th) + mu * mu)
        if s == 0.0:  # the exact norm's kink: subgradient 0, zero Hessian
            return th, 0.0, 0.0
        rho = math.exp(float(lam[0]))
        c = 2 * self.a * (s - mu) + self.b
        return th, rho * c / s, rho * (2 * self.a - c / s) / (s * s)

    # -- the component's interface (as L2's) ---------------------------------------------
    def value(self, theta, lam):
        _, rho, (t, _, _) = self._scaled(theta, lam)
        return rho * (self.a * t * t + self.b * t)

    def grad(self, theta, lam):
        if self.q == 2 and np.ndim(theta) == 1:
            th, k1, _ = self._two(theta, lam)
            return k1 * th
        _, rho, (t, dt, _) = self._scaled(theta, lam)
        return (rho * (2 * self.a * t + self.b))[..., None] * dt

    def hvp_at(self, theta, u, lam):
        u = np.asarray(u, np.float64)
        if self.q == 2 and np.ndim(theta) == 1:
            th, k1, k2 = self._two(theta, lam)
            out = k1 * u
            out += (k2 * float(th @ u)) * th
            return out
        th, rho, (t, dt, s) = self._scaled(theta, lam)
        du = np.einsum("...j,...j->...", dt, u)[..., None]
        c = (2 * self.a * t + self.b)[..., None]
        return rho[..., None] * (2 * self.a * du * dt + c * self._norm_hvp(th, u, dt, s))

    def mixed_lam(self, theta, u, lam):
        """d/dlog_rho (grad . u) = grad . u (R is linear in rho), shape (..., 1)."""
        if self.q == 2 and np.ndim(theta) == 1:
            th, k1, _ = self._two(theta, lam)
            return np.array([k1 * float(th @ np.asarray(u, np.float64))])
        g = self.grad(theta, lam)
        return np.einsum("...j,...j->...", g, np.asarray(u, np.float64))[..., None]

    def lam_tangent(self, theta, lam):
        """d grad / d log_rho = grad, shape (..., 1, p)."""
        return self.grad(theta, lam)[..., None, :]

    def add_hessian(self, H, theta, lam):
        """H += the dense Hessian at theta (one problem), in place."""
        p = H.shape[0]
        for j, e in enumerate(np.eye(p)):
            H[:, j] += self.hvp_at(theta, e, lam)

    def torch_value(self, theta, lam):
        """R on torch tensors (theta (p,), lam (1,)): the autograd oracle's form."""
        import torch
        mu = self.mu
        if self.q == 2:
            t = torch.linalg.vector_norm(theta) if mu is None else \
                torch.sqrt((theta * theta).sum() + mu * mu) - mu
        elif self.q == 1:
            t = (torch.sqrt(theta * theta + mu * mu) - mu).sum()
        elif self.q != math.inf:
            s = theta.abs() if mu is None else torch.sqrt(theta * theta + mu * mu)
            t = (s ** self.q).sum() ** (1 / self.q) - (theta.shape[0] ** (1 / self.q) * mu
                                                       if mu else 0.0)
        else:
            t = mu * (torch.logsumexp(torch.cat([theta, -theta]) / mu, 0)
                      - math.log(2 * theta.shape[0]))
        return torch.exp(lam[0]) * (self.a * t * t + self.b * t)


class Components:
    """The regulariser of a model with several components: their hyperparameters, in
    order, form one lam vector (..., n_lam); each method sums (or, for lam derivatives,
    concatenates) the components' own. Interface of L2 (``layout``, ``check_lam``,
    ``value``, ``grad``, ``hvp_at``, ``mixed_lam``, ``lam_tangent``, ``add_hessian``;
    ``diagonal``: the L2 part's, a lower bound of the curvature the convex Wasserstein
    part only adds to)."""

    def __init__(self, layout, parts):
        self.layout, self.parts = layout, tuple(parts)
        cuts, start = [], 0
        for part in self.parts:
            cuts.append(slice(start, start + part.n_lam))
            start += part.n_lam
        self.cuts = tuple(cuts)
        self.l2 = next((c for c in self.parts if isinstance(c, L2)), None)

    def check_lam(self, lam):
        names = list(self.layout.names)
        return checked_lam(lam, self.layout.n_lam, names,
                           f"its entries {names} are log-scale strengths (log rho for the "
                           "Wasserstein term): pass finite values.")

    def _sum(self, name, *args, lam):
        parts = [getattr(c, name)(*args, lam[..., cut]) for c, cut in zip(self.parts, self.cuts)]
        return sum(parts[1:], parts[0])

    def value(self, theta, lam):
        return self._sum("value", theta, lam=lam)

    def grad(self, theta, lam):
        return self._sum("grad", theta, lam=lam).astype(theta.dtype, copy=False)

    def hvp_at(self, theta, u, lam):
        return self._sum("hvp_at", theta, u, lam=lam).astype(u.dtype, copy=False)

    def mixed_lam(self, theta, u, lam):
        return np.concatenate([c.mixed_lam(theta, u, lam[..., cut])
                               for c, cut in zip(self.parts, self.cuts)], axis=-1)

    def lam_tangent(self, theta, lam):
        return np.concatenate([c.lam_tangent(theta, lam[..., cut])
                               for c, cut in zip(self.parts, self.cuts)], axis=-2)

    def diagonal(self, lam, dtype=np.float64):
        if self.l2 is None:
            return np.zeros(np.shape(lam)[:-1] + (self.layout.size,), dtype)
        return self.l2.diagonal(lam[..., self.cuts[self.parts.index(self.l2)]], dtype)

    def add_hessian(self, H, theta, lam):
        for c, cut in zip(self.parts, self.cuts):
            c.add_hessian(H, theta, lam[..., cut])

    def prox(self, theta, lam, step):
        raise ValueError("prox=True: the Wasserstein component has no closed-form proximal "
                         "step; train with prox=False (gradient steps).")


class Robust(Model):
    """``base``'s data term (a mithridate.models Model, e.g. LinearModel: its loss primitives
    are used as they are) + its L2 component (``l2=True``) + ``wasserstein``
    (a :class:`Wasserstein`); lam = (base's L2 entries if l2, log_rho). No fused loop: the
    generic engine runs it in every mode (trajectory, checkpoint, reversible, forward,
    implicit)."""
    fused = None

    def __init__(self, base, wasserstein, l2=True):
        if not isinstance(base, Model) or isinstance(base, Robust):
            raise TypeError(f"base must be a mithridate.models Model (not a Robust one), got "
                            f"{type(base).__name__}.")
        if not isinstance(wasserstein, Wasserstein):
            raise TypeError("wasserstein must be a mithridate.models.wasserstein.Wasserstein "
                            "(e.g. Wasserstein.paper(X, y, loss=...)).")
        self.base, self.wasserstein, self.l2 = base, wasserstein, bool(l2)
        self.loss = getattr(base, "loss", None)
        self.fit_intercept = getattr(base, "fit_intercept", None)
        self.sample_weight = getattr(base, "sample_weight", None)
        self._layouts = {}

    def __repr__(self):
        return f"Robust({self.base!r}, {self.wasserstein!r}, l2={self.l2})"

    def layout(self, d):
        if d not in self._layouts:
            lay = self.base.layout(d)
            self._layouts[d] = HyperLayout(lay.groups, lay.penalised if self.l2 else (),
                                           ("log_rho",))
        return self._layouts[d]

    def regularizer(self, d):
        cache = self.__dict__.setdefault("_regularizers", {})
        if d not in cache:
            lay = self.layout(d)
            l2 = [L2(Layout(lay.groups, lay.penalised))] if lay.penalised else []
            cache[d] = Components(lay, l2 + [self.wasserstein])
        return cache[d]

    def features(self, p):
        return self.base.features(p)

    def check_data(self, X, y, name):
        self.base.check_data(X, y, name)

    def loss_grad(self, theta, X, y):
        return self.base.loss_grad(theta, X, y)

    def loss_grad_batch(self, theta, X, y):
        return self.base.loss_grad_batch(theta, X, y)

    def loss_hvp(self, theta, u, X, y):
        return self.base.loss_hvp(theta, u, X, y)

    def loss_hessian(self, theta, X, y):
        return self.base.loss_hessian(theta, X, y)

    def mixed_rows(self, theta, u, X, y, rows):
        return self.base.mixed_rows(theta, u, X, y, rows)

    def data_loss_grad(self, theta, X, y):
        return self.base.data_loss_grad(theta, X, y)

    def torch_objective(self, theta, X, y, lam):
        """The base's objective with its L2 entries + the Wasserstein term (torch_value)."""
        import torch
        lam = torch.as_tensor(lam, dtype=torch.float64).reshape(-1)
        n = self.layout(X.shape[-1]).n_lam - 1
        if n:
            data = self.base.torch_objective(theta, X, y, lam[:n])
        else:  # the base's data term alone: its L2 weighted by exp(-inf) = 0
            data = self.base.torch_objective(theta, X, y, torch.full(
                (self.base.layout(X.shape[-1]).n_lam,), -math.inf, dtype=torch.float64))
        return data + self.wasserstein.torch_value(theta, lam[n:]).to(data.dtype)
