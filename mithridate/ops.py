"""Functional API: one entry per hot path, ``backend="auto"``.

Linear models, per problem (labels {0, 1} for the logistic loss)::

    L(theta) = 1/n sum_i s_i l(z_i, y_i) + exp(lam)/2 (||w||^2 [+ b^2]),
    z = X w + b,  theta = [w; b] (b present when fit_intercept).

l is ``logistic`` softplus(z) - y z, ``squared`` (z - y)^2 / 2 or
``absolute`` |z - y| (subgradient 0 at 0). s are optional sample weights,
``lam=None`` drops the L2 term, the intercept is penalised only with
``penalize_intercept=True``.

Shapes (p = d + fit_intercept): theta (p,) with X (n, d) is one problem;
theta (B, p) with X (n, d) is B parameter vectors against one X (one
matrix-matrix product inside); theta (B, p) with X (B, n, d), y (B, n) is B
independent problems. ``lam`` is a scalar or (B,). Results come back as the
type of ``theta`` (numpy array or torch tensor) in X's dtype.

Arrays must be C-contiguous float32/float64 of one dtype; everything is
checked before a kernel runs. X's values are checked for nan/inf inside the
kernels' single pass (a separate scan would double the cost): a non-finite
result raises a ValueError naming the row, and nothing is returned.
"""
import numpy as np

from . import backends
from ._validation import (LOSSES, check_array, check_choice, check_finite, check_finite_X,
                          check_labels, check_shape, check_weights, dtype_name, is_torch)

__all__ = ["loss_grad", "hvp", "mixed"]


class _Problem:
    """Validated, normalised arguments of one call (theta always (B, p))."""

    def __init__(self, theta, X, y, v, sample_weight, lam, loss, fit_intercept,
                 penalize_intercept, backend):
        check_choice("loss", loss, LOSSES)
        if backend not in backends.BACKENDS:
            raise ValueError(f"backend={backend!r} is unknown; choose one of {list(backends.BACKENDS)}.")
        check_array("X", X, (2, 3))
        dt = dtype_name(X)
        check_array("theta", theta, (1, 2), dt)
        d = X.shape[-1]
        p = d + bool(fit_intercept)
        if theta.shape[-1] != p:
            raise ValueError(f"theta has {theta.shape[-1]} columns but X has {d} features "
                             f"{'plus an intercept ' if fit_intercept else ''}(expected {p}).")
        self.single = theta.ndim == 1
        B = 1 if self.single else theta.shape[0]
        if X.ndim == 3:
            if self.single:
                raise ValueError("X is 3-D (B independent problems) but theta is 1-D; "
                                 "pass theta of shape (B, p).")
            if X.shape[0] != B:
                raise ValueError(f"X holds {X.shape[0]} problems but theta holds {B}; "
                                 "the batch sizes must match.")
        check_array("y", y, (X.ndim - 1,), dt)
        check_shape("y", y, X.shape[:-1])
        check_finite("theta", theta)
        check_labels(y, loss)
        if sample_weight is not None:
            check_array("sample_weight", sample_weight, (X.ndim - 1,), dt)
            check_shape("sample_weight", sample_weight, X.shape[:-1])
            check_weights(sample_weight)
        if v is not None:
            check_array("v", v, (theta.ndim,), dt)
            check_shape("v", v, theta.shape)
            check_finite("v", v)
        if lam is not None:
            lam = np.asarray(lam.detach().cpu() if is_torch(lam) else lam, dtype=np.float64)
            if lam.ndim > 1 or (lam.ndim == 1 and lam.shape[0] != B):
                raise ValueError(f"lam must be a scalar or have shape ({B},), got {lam.shape}.")
            if not np.isfinite(lam).all():
                raise ValueError("lam contains nan or inf; it is log(L2 strength), pass a finite value "
                                 "or lam=None for no regulariser.")
            lam = np.broadcast_to(lam, (B,)).copy()
        self.backend = backends.select(backend, theta, X)
        self.out_torch = is_torch(theta)
        self.out_device = theta.device if self.out_torch else None
        self.args = dict(theta=theta, X=X, y=y, v=v, sample_weight=sample_weight)
        self.lam = lam
        self.options = dict(loss=loss, fit_intercept=bool(fit_intercept),
                            penalize_intercept=bool(penalize_intercept))

    def arrays(self):
        """Arguments converted for the selected backend, theta/v as (B, p)."""
        conv = _to_torch if self.backend in ("torch", "triton") else _to_numpy
        a = {k: (None if x is None else conv(x)) for k, x in self.args.items()}
        if self.single:
            a["theta"] = a["theta"][None]
            if a["v"] is not None:
                a["v"] = a["v"][None]
        lam = self.lam
        if lam is not None and conv is _to_torch:
            import torch
            lam = torch.from_numpy(lam).to(a["X"].device)
        a["lam"] = lam
        return a

    def output(self, out):
        """Back to theta's type; drop the batch axis for a single problem."""
        out = _to_torch(out).to(self.out_device) if self.out_torch else _to_numpy(out)
        return out[0] if self.single else out


def _to_numpy(a):
    if is_torch(a):
        if a.is_cuda:
            raise ValueError("the numba backend runs on the CPU; move CUDA tensors with .cpu() "
                             "or use backend='triton'.")
        return a.detach().numpy()
    return a


def _to_torch(a):
    if is_torch(a):
        return a.detach()
    import torch
    return torch.from_numpy(np.ascontiguousarray(a))


def _host(a):
    return a.detach().cpu().numpy() if is_torch(a) else np.asarray(a)


def _nonfinite(problem, results):
    """Raise naming X's first bad row if any result is nan/inf."""
    if all(np.isfinite(_host(r)).all() for r in results):
        return
    check_finite_X(_host(problem.args["X"]))
    raise ValueError("the objective overflowed (|X @ theta| too large for the dtype); "
                     "rescale X or theta.")


def loss_grad(theta, X, y, *, loss="logistic", lam=None, sample_weight=None,
              fit_intercept=True, penalize_intercept=False, backend="auto"):
    """Objective value and gradient wrt theta, in one pass over X.

    Returns ``(value, grad)``: shapes () and (p,) for one problem, (B,) and
    (B, p) for a batch.
    """
    pb = _Problem(theta, X, y, None, sample_weight, lam, loss, fit_intercept,
                  penalize_intercept, backend)
    a = pb.arrays()
    value, grad = backends.linear_module(pb.backend).loss_grad(
        a["theta"], a["X"], a["y"], a["sample_weight"], a["lam"], **pb.options)
    _nonfinite(pb, (value, grad))
    return pb.output(value), pb.output(grad)


def hvp(theta, v, X, y, *, loss="logistic", lam=None, sample_weight=None,
        fit_intercept=True, penalize_intercept=False, backend="auto"):
    """Hessian-vector product H(theta) v of the objective, in one pass over X.

    ``v`` has theta's shape. The absolute loss has zero curvature almost
    everywhere, so its product is the L2 term alone.
    """
    pb = _Problem(theta, X, y, v, sample_weight, lam, loss, fit_intercept,
                  penalize_intercept, backend)
    if loss == "absolute":  # X is not read, so check it here
        check_finite_X(_host(X))
    a = pb.arrays()
    out = backends.linear_module(pb.backend).hvp(
        a["theta"], a["v"], a["X"], a["y"], a["sample_weight"], a["lam"], **pb.options)
    _nonfinite(pb, (out,))
    return pb.output(out)


def mixed(theta, v, X, y, rows, *, loss="logistic", lam=None, sample_weight=None,
          fit_intercept=True, penalize_intercept=False, backend="auto"):
    """Mixed second derivatives for hypergradients.

    For the selected rows k (the poisoning points) returns
    ``(d/dX[rows] (grad_theta L . v), d/dlam (grad_theta L . v))`` with shapes
    ((k, d), ()) for one problem and ((B, k, d), (B,)) for a batch. Only the
    rows k of X are read. ``lam=None`` gives a zero lam derivative.
    """
    pb = _Problem(theta, X, y, v, sample_weight, lam, loss, fit_intercept,
                  penalize_intercept, backend)
    rows_np = np.asarray(_to_numpy(rows.cpu()) if is_torch(rows) else rows)
    if rows_np.ndim != 1 or rows_np.size == 0 or not np.issubdtype(rows_np.dtype, np.integer):
        raise ValueError(f"rows must be a non-empty 1-D integer array of row indices, got "
                         f"dtype {rows_np.dtype} and shape {rows_np.shape}.")
    n = X.shape[-2]
    if rows_np.min() < 0 or rows_np.max() >= n:
        raise ValueError(f"rows must lie in [0, {n}); got values from {rows_np.min()} to {rows_np.max()}.")
    rows_np = rows_np.astype(np.int64)
    check_finite_X(_host(X[..., rows_np, :]), rows_np)
    a = pb.arrays()
    r = _to_torch(rows_np).to(a["X"].device) if pb.backend in ("torch", "triton") else rows_np
    dX, dlam = backends.linear_module(pb.backend).mixed(
        a["theta"], a["v"], a["X"], a["y"], a["sample_weight"], a["lam"], r, **pb.options)
    _nonfinite(pb, (dX, dlam))
    return pb.output(dX), pb.output(dlam)
