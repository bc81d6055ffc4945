"""Regularisers: components with their own hyperparameters, one per penalised group."""
import numpy as np


class L2:
    """sum over the penalised groups g of exp(lam_g)/2 ||theta_g||^2 (lam on log scale,
    in ``layout.penalised`` order). Every method also takes a leading batch axis:
    theta/u (B, p) with lam (B, n_lam)."""

    def __init__(self, layout):
        self.layout = layout
        self.slices = tuple(layout.slice(g) for g in layout.penalised)

    @property
    def n_lam(self):
        return self.layout.n_lam

    def check_lam(self, lam):
        """lam as a float64 array (..., n_lam), or ValueError naming the expected length."""
        return checked_lam(lam, self.layout.n_lam, f"(groups {list(self.layout.penalised)})",
                           "it is log(L2 strength), pass finite values.")

    def value(self, theta, lam):
        s = np.exp(lam)
        return sum(0.5 * s[..., i] * np.einsum("...j,...j->...", theta[..., sl], theta[..., sl])
                   for i, sl in enumerate(self.slices))

    def grad(self, theta, lam):
        return self.hvp(theta, lam)  # quadratic: the gradient is the Hessian applied to theta

    def hvp_at(self, theta, u, lam):
        """H u at theta, the signature every component shares (L2's H does not depend on theta)."""
        return self.hvp(u, lam)

    def hvp(self, u, lam):
        s, out = np.exp(lam), np.zeros_like(u)
        for i, sl in enumerate(self.slices):
            out[..., sl] = s[..., i, None] * u[..., sl]
        return out

    def diagonal(self, lam, dtype=np.float64):
        """The (diagonal) Hessian as a (..., p) array."""
        return self.hvp(np.ones(np.shape(lam)[:-1] + (self.layout.size,), dtype), lam)

    def mixed_lam(self, theta, u, lam):
        """d/dlam_g (grad . u) = exp(lam_g) theta_g . u_g, shape (..., n_lam)."""
        s = np.exp(lam)
        return np.stack([s[..., i] * np.einsum("...j,...j->...", theta[..., sl], u[..., sl])
                         for i, sl in enumerate(self.slices)], axis=-1) if self.slices else \
            np.zeros(np.shape(lam))

    def lam_tangent(self, theta, lam):
        """d grad / d lam_g = exp(lam_g) theta_g on group g's entries, shape (..., n_lam, p)."""
        s = np.exp(lam)
        out = np.zeros(np.shape(lam) + (theta.shape[-1],))
        for i, sl in enumerate(self.slices):
            out[..., i, sl] = s[..., i, None] * theta[..., sl]
        return out

    def add_hessian(self, H, theta, lam):
        """H += the (diagonal) Hessian, in place; H (p, p) float64, one problem."""
        H[np.diag_indices_from(H)] += self.diagonal(lam)

    def prox(self, theta, lam, step):
        """argmin_x ||x - theta||^2 / (2 step) + value(x): theta_g / (1 + step exp(lam_g))."""
        s, out = np.exp(lam), theta.copy()
        for i, sl in enumerate(self.slices):
            out[..., sl] = theta[..., sl] / (1 + step * s[..., i, None])
        return out


def checked_lam(lam, n, names, finite_hint):
    """lam as a float64 array (..., n): ValueError naming the n hyperparameters (``names``)
    for a wrong length, ``finite_hint`` for nan or inf."""
    lam = np.asarray(lam, dtype=np.float64)
    if lam.ndim == 0 or lam.shape[-1] != n:
        raise ValueError(f"lam has shape {lam.shape}; this model has {n} hyperparameter(s) "
                         f"{names}: pass shape ({n},) or (B, {n}).")
    if not np.isfinite(lam).all():
        raise ValueError(f"lam contains nan or inf; {finite_hint}")
    return lam
