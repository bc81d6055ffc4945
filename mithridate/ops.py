"""Functional API: one entry per hot path, ``backend="auto"``.

Linear models, per problem (labels {0, 1} for the logistic loss)::

    L(theta) = 1/n sum_i s_i l(z_i, y_i) + exp(lam)/2 (||w||^2 [+ b^2]),
    z = X w + b,  theta = [w; b] (b present when fit_intercept).

l is ``logistic`` softplus(z) - y z, ``squared`` (z - y)^2 / 2 or
``absolute`` ``|z - y|`` (subgradient 0 at 0). s are optional sample weights,
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
import math
import numpy as np

from . import backends
from ._validation import (LOSSES, as_bool, check_array, check_choice, check_finite,
                          check_finite_X, check_labels, check_no_grad, check_shape, check_weights,
                          dtype_name, is_torch)

__all__ = ["loss_grad", "hvp", "mixed", "lipschitz"]


def _check_model_args(path, theta, X, y, loss, fit_intercept, backend, x_ndims, **others):
    """Checks every op shares: the loss name; the backend that runs hot path
    `path` for this data (registry selection); fit_intercept a
    bool; no tensor that requires grad (ops return values without a graph:
    mithridate.torch gives one, handing the ops detached tensors); X, theta and y of one float
    dtype; theta's width d + fit_intercept; y's shape; finite theta; labels.
    Returns (X's dtype name, the backend name)."""
    check_choice("loss", loss, LOSSES)
    chosen = backends.select(path, backend, theta, X)
    as_bool("fit_intercept", fit_intercept)
    for name, a in dict(theta=theta, X=X, y=y, **others).items():
        check_no_grad(name, a, "mithridate.ops")
    check_array("X", X, x_ndims)
    dt = dtype_name(X)
    check_array("theta", theta, (1, 2), dt)
    d = X.shape[-1]
    p = d + bool(fit_intercept)
    if theta.shape[-1] != p:
        raise ValueError(f"theta has {theta.shape[-1]} columns but X has {d} features "
                         f"{'plus an intercept ' if fit_intercept else ''}(expected {p}).")
    check_array("y", y, (X.ndim - 1,), dt)
    check_shape("y", y, X.shape[:-1])
    check_finite("theta", theta)
    check_labels(y, loss)
    return dt, chosen


class _Problem:
    """Validated, normalised arguments of one call (theta always (B, p))."""

    def __init__(self, theta, X, y, v, sample_weight, lam, loss, fit_intercept,
                 penalize_intercept, backend):
        dt, self.backend = _check_model_args("linear", theta, X, y, loss, fit_intercept, backend,
                                             (2, 3), v=v, sample_weight=sample_weight, lam=lam)
        as_bool("penalize_intercept", penalize_intercept)
        self.single = theta.ndim == 1
        B = 1 if self.single else theta.shape[0]
        if X.ndim == 3:
            if self.single:
                raise ValueError("X is 3-D (B independent problems) but theta is 1-D; "
                                 "pass theta of shape (B, p).")
            if X.shape[0] != B:
                raise ValueError(f"X holds {X.shape[0]} problems but theta holds {B}; "
                                 "the batch sizes must match.")
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
    value, grad = backends.implementation("linear", pb.backend).loss_grad(
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
    out = backends.implementation("linear", pb.backend).hvp(
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
    dX, dlam = backends.implementation("linear", pb.backend).mixed(
        a["theta"], a["v"], a["X"], a["y"], a["sample_weight"], a["lam"], r, **pb.options)
    _nonfinite(pb, (dX, dlam))
    return pb.output(dX), pb.output(dlam)


BOUNDS = ("tight", "paper")


def _one_device(**tensors):
    """The tensors on one device for triton: the CUDA one they are on, else the
    GPU (the CPU under the interpreter, for tests)."""
    on_gpu = {str(t.device) for t in tensors.values() if t.is_cuda}
    if len(on_gpu) > 1:
        where = ", ".join(f"{k} on {t.device}" for k, t in tensors.items())
        raise ValueError(f"the arrays live on different GPUs ({where}); move them to one device.")
    device = on_gpu.pop() if on_gpu else "cuda" if backends.cuda_available() else "cpu"
    return tuple(t.to(device) for t in tensors.values())


def _dual_exponent(norm):
    if isinstance(norm, bool) or not isinstance(norm, (int, float, np.integer, np.floating)) \
            or not norm >= 1:
        raise ValueError(f"norm={norm!r} must be a number p >= 1 (1, 2, numpy.inf, 3.0, ...).")
    p = float(norm)
    return math.inf if p == 1 else 1.0 if p == math.inf else p / (p - 1)


def lipschitz(theta, X, y, *, loss, norm=2, bound="tight", fit_intercept=True,
              data_bounds=None, backend="auto"):
    """Lipschitz constant L(theta) of the loss in (x, y), and a subgradient wrt theta.

    This is the regulariser of paper 000: J_n = 1/n sum_i l_i + rho L(theta)
    (eq. 8). Transport cost (Section 3, Lemma 2): the p-norm ``norm`` of the
    stacked vector, ||(x, y) - (x', y')||_p, so labels move too and enter like
    one more feature. Its dual norm ||.||_* has q = p/(p-1) (p = 1 -> inf,
    inf -> 1). Notation: theta = [w; b], z = w.x + b, e = 1 with an intercept
    (0 without: the "+1" of ||[x; 1]|| <= ||x|| + 1 disappears).

    ``bound="tight"``, Lemma 3 / eq. (10): L = max over the training rows of
    ||grad_(x,y) l||_*::

      squared   grad = r (w, -1), r = z - y:  L = max_i |r_i| ||(w, 1)||_*
      absolute  grad = sign(r) (w, -1):       L = ||(w, 1)||_*  (X not read)
      logistic  grad = ((sigmoid(z) - y) w, -z):
                L = max_i ||((sigmoid(z_i) - y_i) ||w||_*, z_i)||_q  (2-vector)

    The printed (10) has ||W theta||_* = ||w||_* in place of ||(w, 1)||_*:
    that is the constant in x alone; with y transported Lemma 3 adds the y
    component, and we follow Lemma 3 for every loss.

    ``bound="paper"``, closed forms with t = ||theta||_* (theta incl. b) and
    data bounds X = max_i ||x_i||_p, ``Y = max_i |y_i|`` (from X, y in one pass,
    or ``data_bounds=(X, Y)``, which then need not come from X)::

      squared   (11)  L = (X + e) t^2 + Y t   (as printed: it bounds (10)'s x-only form)
      absolute  (13)  L = t   (Lemma 3; the text of (13) prints rho ||theta||_*^2,
                                a typo: the line above it derives L = ||theta||_*)
      logistic  (15)  L = (Y + X + 1 + e) t

    Shapes: theta (p,) -> value (), subgrad (p,); theta (B, p) -> (B,), (B, p);
    X (n, d), y (n,) shared by the B vectors (labels {0, 1} for logistic).
    The tight bound of squared/logistic is one B x d by d x n product fused
    with the max over rows (the B x n matrix is never stored); the subgradient
    is that of the argmax row (the lowest one on ties). Returns theta's type
    in X's dtype. ``backend``: numba, triton (CUDA tensors; numpy inputs are
    moved to the GPU) or torch.
    """
    check_choice("bound", bound, BOUNDS)
    q = _dual_exponent(norm)
    _, name = _check_model_args("lipschitz", theta, X, y, loss, fit_intercept, backend, (2,))
    if data_bounds is not None:
        if bound != "paper":
            raise ValueError("data_bounds applies to bound='paper' only; drop it for the tight bound.")
        try:
            data_bounds = tuple(float(v) for v in data_bounds)
        except (TypeError, ValueError):
            data_bounds = ()
        if len(data_bounds) != 2 or not all(math.isfinite(v) and v >= 0 for v in data_bounds):
            raise ValueError("data_bounds must be a pair (X, Y) of finite numbers >= 0: "
                             "max ||x||_p and max |y|.")
    mod = backends.implementation("lipschitz", name)
    conv = _to_numpy if name == "numba" else _to_torch
    th, Xc, yc = conv(theta), conv(X), conv(y)
    if name == "triton":
        th, Xc, yc = _one_device(theta=th, X=Xc, y=yc)
    th = th[None] if theta.ndim == 1 else th
    reads_X = bound == "tight" and loss != "absolute"
    if bound == "paper" and data_bounds is None:
        data_bounds = mod.data_bounds(Xc, yc, float(norm))
        reads_X = True
    if not reads_X:
        check_finite_X(_host(X))
    value, grad = mod.lipschitz(th, Xc, yc, loss, q, bound, bool(fit_intercept), data_bounds)
    if not (np.isfinite(_host(value)).all() and np.isfinite(data_bounds or 0.0).all()):
        check_finite_X(_host(X))
        raise ValueError("the Lipschitz constant overflowed (|X @ theta| too large for the dtype); "
                         "rescale X or theta.")
    if is_torch(theta):
        value, grad = _to_torch(value).to(theta.device), _to_torch(grad).to(theta.device)
    else:
        value, grad = _to_numpy(value), _to_numpy(grad)
    return (value[0], grad[0]) if theta.ndim == 1 else (value, grad)
