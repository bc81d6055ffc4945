"""Torch autograd over the fused kernels: put them inside a torch training loop.

Imported only when used (``import mithridate.torch``); ``import mithridate``
never imports torch. CPU tensors run the numba kernels, CUDA tensors the
triton ones (``backend="auto"``, as in :mod:`mithridate.ops`).

- :func:`linear_objective` -- L(theta) of :mod:`mithridate.ops`. Forward: the
  fused loss (its gradient kept for backward). Backward: that gradient wrt
  theta, closed forms wrt lam, X and y. Double backward (``create_graph=True``):
  the fused HVP wrt theta, the fused mixed product wrt X, closed forms wrt lam
  and y, so Hessian-vector products and second-order methods work. Third
  derivatives are not provided: asking for one raises, as does a second
  derivative of the two functions below. ``sample_weight`` is data:
  not differentiable.
- :func:`lipschitz` -- the batched Lipschitz regulariser of paper 000 with its
  subgradient wrt theta (X, y are data).
- :func:`hypergrad` -- validation loss after T inner training steps (paper
  002), differentiable wrt the poisoning features Xp and lam: backward is the
  RMD hypergradient (mode ``trajectory``, ``checkpoint``, ``reversible``,
  ``implicit``; ``forward`` gives lam only) times the incoming gradient.

Each wrapper checks the arguments before any kernel runs: torch tensors, and
no gradient asked of an input the function is not differentiable in.
"""
import numpy as np
import torch

from . import ops

__all__ = ["linear_objective", "lipschitz", "hypergrad",
           "LinearObjective", "Lipschitz", "HyperGradient"]


def _check_tensors(names, **tensors):
    """Torch tensors (None allowed); no gradient asked of those outside `names`."""
    for name, t in tensors.items():
        if t is None:
            continue
        if not torch.is_tensor(t):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}; use "
                            f"torch.as_tensor({name}) (or mithridate.ops for numpy arrays).")
        if t.requires_grad and name not in names:
            raise ValueError(f"{name} requires grad, but this function is differentiable wrt "
                             f"{', '.join(names)} only; pass {name}.detach().")


def _lam_arg(lam, names):
    """lam as the ops take it: None, a float, or a detached tensor."""
    if lam is None or torch.is_tensor(lam):
        _check_tensors(names, lam=lam)
        return lam
    if isinstance(lam, bool) or not isinstance(lam, (int, float, np.integer, np.floating)):
        raise TypeError(f"lam must be None, a number or a torch.Tensor, got {type(lam).__name__}.")
    return float(lam)


def _data(*tensors):
    """Detached views for the ops, which return values without a graph (ours is
    built around them); non-tensors pass through."""
    return tuple(t.detach() if torch.is_tensor(t) else t for t in tensors)


def _penalised(theta, d, o):
    """The L2-penalised part of theta (last axis)."""
    return theta if (o["fit_intercept"] and o["penalize_intercept"]) else theta[..., :d]


def _reduce_like(g, lam):
    """A (B,) or () lam derivative summed to lam's shape."""
    return g.sum().reshape(lam.shape) if lam.dim() == 0 else g.reshape(lam.shape)


def _scores(theta, X, y, loss, fit_intercept):
    """z = X w + b per problem (B, n) with theta as (B, p), and dl/dz, dl/dy."""
    d = X.shape[-1]
    th = theta if theta.dim() == 2 else theta[None]
    z = torch.einsum("bnd,bd->bn" if X.dim() == 3 else "nd,bd->bn", X, th[:, :d])
    if fit_intercept:
        z = z + th[:, d:]
    if loss == "logistic":
        return torch.sigmoid(z) - y, -z
    r = z - y
    if loss == "squared":
        return r, -r
    return torch.sign(r), -torch.sign(r)


def _row_coef(gv, s, n, dtype):
    """Incoming grad (B,) -> per-row factor gv_b s_i / n, (B, n)."""
    c = gv.reshape(-1, 1).to(dtype) / n
    return c if s is None else c * s


class _NoHigher(torch.autograd.Function):
    """Identity on `out` whose backward raises: marks derivatives one order
    beyond those provided, so they fail loudly instead of coming back as zero."""

    @staticmethod
    def forward(ctx, message, out, *inputs):
        ctx.message = message
        return out.clone()

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(ctx.message)


def _no_higher(what, out, *inputs):
    """`out` of a backward pass, differentiable no further (when create_graph is on)."""
    if out is None or not torch.is_grad_enabled():
        return out
    message = (f"mithridate.torch.{what} is differentiable only as far as stated in its "
               "docstring; use mithridate.reference (plain torch) for higher derivatives.")
    return _NoHigher.apply(message, out, *(t for t in inputs if torch.is_tensor(t)))


class LinearObjective(torch.autograd.Function):
    """Value of the linear-model objective; see :func:`linear_objective`."""

    @staticmethod
    def forward(ctx, theta, lam, X, y, sample_weight, options):
        """Fused loss (value (B,) or ()); the gradient is kept for backward."""
        with torch.enable_grad():  # the torch backend runs autograd inside
            th, Xd, yd, lamd, sd = _data(theta, X, y, lam, sample_weight)
            value, grad = ops.loss_grad(th, Xd, yd, lam=lamd, sample_weight=sd, **options)
        ctx.save_for_backward(theta, lam if torch.is_tensor(lam) else None, X, y,
                              sample_weight, grad)
        ctx.lam, ctx.options = (None if torch.is_tensor(lam) else lam), options
        return value

    @staticmethod
    def backward(ctx, gv):
        """Gradients wrt theta (differentiable again), lam, X and y."""
        theta, lam_t, X, y, s, grad = ctx.saved_tensors
        lam = lam_t if lam_t is not None else ctx.lam
        o = ctx.options
        need_theta, need_lam, need_X, need_y = ctx.needs_input_grad[:4]
        g_theta = g_lam = g_X = g_y = None
        if need_theta:
            G = LinearGradient.apply(theta, lam, X, y, s, grad, o)
            g_theta = gv[..., None] * G
        if need_lam:
            pen = _penalised(theta, X.shape[-1], o)
            g_lam = _reduce_like(gv * 0.5 * torch.exp(lam) * (pen ** 2).sum(-1), lam)
        if need_X or need_y:
            n, d = X.shape[-2:]
            dz, dy = _scores(theta, X, y, o["loss"], o["fit_intercept"])
            c = _row_coef(gv, s, n, X.dtype)
            if need_X:
                w = (theta if theta.dim() == 2 else theta[None])[:, :d]
                g_X = torch.einsum("bn,bd->bnd" if X.dim() == 3 else "bn,bd->nd", c * dz, w)
            if need_y:
                g_y = (c * dy).reshape(y.shape) if y.dim() == 2 or theta.dim() == 1 \
                    else (c * dy).sum(0)
        return g_theta, g_lam, g_X, g_y, None, None


class LinearGradient(torch.autograd.Function):
    """grad_theta L, returned from the forward pass (no recomputation); its
    backward is the second derivative of L: the fused HVP (theta), the fused
    mixed product (X), closed forms (lam, y)."""

    @staticmethod
    def forward(ctx, theta, lam, X, y, sample_weight, grad, options):
        """The gradient kept by the forward pass."""
        ctx.save_for_backward(theta, lam if torch.is_tensor(lam) else None, X, y, sample_weight)
        ctx.lam, ctx.options = (None if torch.is_tensor(lam) else lam), options
        return grad.clone()

    @staticmethod
    def backward(ctx, u):
        """Second derivatives: fused HVP (theta), fused mixed product (X), lam, y."""
        theta, lam_t, X, y, s = ctx.saved_tensors
        lam = lam_t if lam_t is not None else ctx.lam
        o = ctx.options
        u = u.contiguous()
        need_theta, need_lam, need_X, need_y = ctx.needs_input_grad[:4]
        th, ud, Xd, yd, lamd, sd = _data(theta, u, X, y, lam, s)
        kw = dict(lam=lamd, sample_weight=sd, **o)
        with torch.enable_grad():  # the torch backend runs autograd inside
            g_theta = ops.hvp(th, ud, Xd, yd, **kw) if need_theta else None
        g_lam = g_X = g_y = None
        if need_lam:  # d/dlam (exp(lam) pen . u_pen)
            d = X.shape[-1]
            g_lam = _reduce_like(torch.exp(lam) * (_penalised(theta, d, o)
                                                   * _penalised(u, d, o)).sum(-1), lam)
        if need_X:
            rows = torch.arange(X.shape[-2])
            with torch.enable_grad():
                g_X, _ = ops.mixed(th, ud, Xd, yd, rows, **kw)
            if X.dim() == 2 and theta.dim() == 2:  # one X shared by the B thetas
                g_X = g_X.sum(0)
        if need_y:  # dl'/dy = -1 (logistic, squared), 0 (absolute)
            n, d = X.shape[-2:]
            uu = u if u.dim() == 2 else u[None]
            xu = torch.einsum("bnd,bd->bn" if X.dim() == 3 else "nd,bd->bn", X, uu[:, :d])
            if o["fit_intercept"]:
                xu = xu + uu[:, d:]
            c = -xu / n * (1.0 if s is None else s) * (o["loss"] != "absolute")
            g_y = c.reshape(y.shape) if y.dim() == 2 or theta.dim() == 1 else c.sum(0)
        inputs = (theta, lam_t, X, y, u)
        return (*(_no_higher("linear_objective", g, *inputs) for g in (g_theta, g_lam, g_X, g_y)),
                None, None, None)


def linear_objective(theta, X, y, *, loss="logistic", lam=None, sample_weight=None,
                     fit_intercept=True, penalize_intercept=False, backend="auto"):
    """L(theta) of :func:`mithridate.ops.loss_grad` as a differentiable tensor.

    Shapes as in ops: theta (p,) -> (); theta (B, p) with X (n, d) or
    (B, n, d) -> (B,). Differentiable (twice) wrt theta, lam (a tensor), X
    and y; ``sample_weight`` must not require grad. For the logistic loss y
    holds labels {0, 1}: its gradient is returned, but labels cannot be moved.
    """
    names = ("theta", "lam", "X", "y")
    _check_tensors(names, theta=theta, X=X, y=y, sample_weight=sample_weight)
    lam = _lam_arg(lam, names)
    options = dict(loss=loss, fit_intercept=fit_intercept, penalize_intercept=penalize_intercept,
                   backend=backend)
    return LinearObjective.apply(theta, lam, X, y, sample_weight, options)


class Lipschitz(torch.autograd.Function):
    """Lipschitz constant of the loss; see :func:`lipschitz`."""

    @staticmethod
    def forward(ctx, theta, X, y, options):
        """The constant (B,) or (); the subgradient is kept for backward."""
        with torch.enable_grad():  # the torch and triton backends run autograd inside
            value, subgrad = ops.lipschitz(*_data(theta, X, y), **options)
        ctx.save_for_backward(theta, subgrad)
        return value

    @staticmethod
    def backward(ctx, gv):
        """The incoming gradient times the subgradient wrt theta."""
        theta, subgrad = ctx.saved_tensors
        return _no_higher("lipschitz", gv[..., None] * subgrad, theta, gv), None, None, None


def lipschitz(theta, X, y, *, loss, norm=2, bound="tight", fit_intercept=True, data_bounds=None,
              backend="auto"):
    """L(theta) of :func:`mithridate.ops.lipschitz` (paper 000's regulariser)
    as a tensor: theta (p,) -> (), (B, p) -> (B,). Backward: its subgradient
    wrt theta (that of the argmax row for the tight bound); X, y are data."""
    _check_tensors(("theta",), theta=theta, X=X, y=y)
    options = dict(loss=loss, norm=norm, bound=bound, fit_intercept=fit_intercept,
                   data_bounds=data_bounds, backend=backend)
    return Lipschitz.apply(theta, X, y, options)


def _host(t):
    return None if t is None else t.detach().cpu().numpy()


class HyperGradient(torch.autograd.Function):
    """Validation loss after T inner steps; see :func:`hypergrad`."""

    @staticmethod
    def forward(ctx, Xp, lam, Xc, yc, yp, Xv, yv, w0, options):
        """The validation loss; the hypergradients are kept for backward."""
        from .hypergrad import hypergrad as run
        lam_np = lam if not torch.is_tensor(lam) else float(lam) if lam.dim() == 0 else _host(lam)
        with torch.enable_grad():  # backend="torch" runs autograd inside
            hg = run(_host(Xc), _host(yc), _host(Xp), _host(yp), _host(Xv), _host(yv),
                     lam=lam_np, w0=_host(w0), **options)
        as_t = lambda a: torch.as_tensor(np.asarray(a), device=Xp.device)
        value = as_t(hg.value).to(Xp.dtype)
        grad_Xp = None if hg.grad_Xp is None else as_t(hg.grad_Xp).to(Xp.dtype)
        ctx.save_for_backward(Xp, lam if torch.is_tensor(lam) else None, grad_Xp,
                              as_t(hg.grad_lam))
        ctx.lam_shape = lam.shape if torch.is_tensor(lam) else None
        ctx.lam_dtype = lam.dtype if torch.is_tensor(lam) else None
        return value

    @staticmethod
    def backward(ctx, gv):
        """The incoming gradient times the hypergradients wrt Xp and lam."""
        Xp, lam, grad_Xp, grad_lam = ctx.saved_tensors
        g_Xp = g_lam = None
        if ctx.needs_input_grad[0]:
            g_Xp = gv.reshape(gv.shape + (1, 1)) * grad_Xp
        if ctx.needs_input_grad[1]:
            g = gv.to(ctx.lam_dtype) * grad_lam.to(ctx.lam_dtype)
            g_lam = g.sum().reshape(ctx.lam_shape) if len(ctx.lam_shape) == 0 else g
        inputs = (Xp, lam, gv)
        return (_no_higher("hypergrad", g_Xp, *inputs), _no_higher("hypergrad", g_lam, *inputs),
                None, None, None, None, None, None, None)


def hypergrad(Xc, yc, Xp, yp, Xv, yv, *, lam, w0=None, **options):
    """Validation loss A(theta_T) of :func:`mithridate.hypergrad.hypergrad` as a
    tensor, differentiable wrt ``Xp`` and ``lam`` (a tensor); the other
    arrays are data. Options (T, alpha, gamma, loss, mode, backend, ...) as
    there; ``mode="forward"`` differentiates wrt lam only. Single: Xp (k, d)
    -> (); batched: Xp (B, k, d), lam () or (B,) -> (B,). The tensors are
    copied to the host for the compiled loops; results come back on Xp's
    device in its dtype. Backward is the hypergradient itself (no second
    derivatives).
    """
    names = ("Xp", "lam")
    _check_tensors(names, Xc=Xc, yc=yc, Xp=Xp, yp=yp, Xv=Xv, yv=yv, w0=w0)
    lam = _lam_arg(lam, names)
    if lam is None:
        raise TypeError("lam is required (log of the L2 strength): a number or a torch.Tensor.")
    if options.get("mode") == "forward" and Xp.requires_grad:
        raise ValueError("mode='forward' differentiates wrt lam only, but Xp requires grad; "
                         "use mode='trajectory' (or pass Xp.detach()).")
    return HyperGradient.apply(Xp, lam, Xc, yc, yp, Xv, yv, w0, options)
