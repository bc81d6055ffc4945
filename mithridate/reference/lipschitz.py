"""Lipschitz regularisers of paper 000 by torch autograd (the test oracle).

Backend contract: inputs validated by :func:`mithridate.ops.lipschitz`;
``theta`` (B, p), ``X`` (n, d), ``y`` (n,) torch tensors; ``q`` the dual
exponent (a float, ``inf`` allowed); ``bounds`` the data bounds (X, Y) as
floats for ``bound="paper"`` (from :func:`data_bounds` or the caller), else None.
Returns ``(value (B,), subgrad (B, p))``. The math is in the docstring of
:func:`mithridate.ops.lipschitz`. The B x n matrix is materialised on purpose.
"""
import torch


def data_bounds(X, y, p):
    """(max_i ||x_i||_p, max_i |y_i|) as floats."""
    return (float(torch.linalg.vector_norm(X.double(), ord=p, dim=1).max()),
            float(y.double().abs().max()))


def _value(theta, X, y, loss, q, bound, fit_intercept, bounds):
    d = X.shape[1]
    w = theta[:, :d]
    e = 1.0 if fit_intercept else 0.0
    if bound == "paper":
        t = torch.linalg.vector_norm(theta, ord=q, dim=1)  # ||theta||_*
        Xb, Yb = bounds
        if loss == "squared":
            return (Xb + e) * t ** 2 + Yb * t                   # (11)
        if loss == "absolute":
            return t                                            # (13), Lemma 3
        return (Yb + Xb + 1.0 + e) * t                          # (15)
    ones = torch.ones_like(w[:, :1])
    n_wy = torch.linalg.vector_norm(torch.cat([w, ones], dim=1), ord=q, dim=1)  # ||(w, -1)||_*
    if loss == "absolute":
        return n_wy
    z = X @ w.T + (theta[:, d] if fit_intercept else 0.0)      # (n, B)
    yc = y[:, None]
    if loss == "squared":
        per_row = (z - yc).abs() * n_wy                          # |r| ||(w, -1)||_*
    else:
        a = torch.sigmoid(z) - yc                                # grad_x = a w, grad_y = -z
        n_w = torch.linalg.vector_norm(w, ord=q, dim=1)
        per_row = torch.linalg.vector_norm(torch.stack([a.abs() * n_w, z.abs()]), ord=q, dim=0)
    return per_row.max(dim=0).values                            # (10): max over the rows


def lipschitz(theta, X, y, loss, q, bound, fit_intercept, bounds):
    theta = theta.detach().requires_grad_(True)
    value = _value(theta, X, y, loss, q, bound, fit_intercept, bounds)
    (grad,) = torch.autograd.grad(value.sum(), theta)
    return value.detach(), grad
