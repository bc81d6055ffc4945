"""Linear-model objective by torch autograd.

Backend contract (shared with ``mithridate.kernels``): inputs are validated
and normalised by :mod:`mithridate.ops`; ``theta``/``v`` are (B, p); ``X`` is
(n, d) shared by the B problems or (B, n, d) with one X per problem; ``y`` and
``sample_weight`` are (n,) or (B, n); ``lam`` is None or a float64 (B,) array;
``rows`` an int64 (k,) array. Every array is a torch tensor here.

Objective, per problem:
    L(theta) = 1/n sum_i s_i l(z_i, y_i) + exp(lam)/2 (||w||^2 [+ b^2]),
    z = X w + b.
"""
import torch


def _data_loss(z, y, loss):
    if loss == "logistic":  # softplus(z) - y z; logsigmoid keeps 1st and 2nd derivatives finite for any z
        return -torch.nn.functional.logsigmoid(-z) - y * z
    if loss == "squared":
        return 0.5 * (z - y) ** 2
    return (z - y).abs()  # torch's subgradient of |.| at 0 is 0, as in the contract


def objective(theta, X, y, sample_weight, lam, loss, fit_intercept, penalize_intercept):
    """Per-problem objective values, shape (B,)."""
    d = X.shape[-1]
    w = theta[:, :d]
    z = torch.einsum("bnd,bd->bn" if X.dim() == 3 else "nd,bd->bn", X, w)
    if fit_intercept:
        z = z + theta[:, d:]
    per_row = _data_loss(z, y, loss)
    if sample_weight is not None:
        per_row = per_row * sample_weight
    value = per_row.mean(dim=1)
    if lam is not None:
        penalised = theta if (fit_intercept and penalize_intercept) else w
        value = value + 0.5 * torch.exp(lam).to(theta.dtype) * (penalised ** 2).sum(dim=1)
    return value


def loss_grad(theta, X, y, sample_weight, lam, loss, fit_intercept, penalize_intercept):
    theta = theta.detach().requires_grad_(True)
    value = objective(theta, X, y, sample_weight, lam, loss, fit_intercept, penalize_intercept)
    (grad,) = torch.autograd.grad(value.sum(), theta)
    return value.detach(), grad


def hvp(theta, v, X, y, sample_weight, lam, loss, fit_intercept, penalize_intercept):
    theta = theta.detach().requires_grad_(True)
    value = objective(theta, X, y, sample_weight, lam, loss, fit_intercept, penalize_intercept)
    (grad,) = torch.autograd.grad(value.sum(), theta, create_graph=True)
    (out,) = torch.autograd.grad((grad * v).sum(), theta, allow_unused=True)
    return torch.zeros_like(theta) if out is None else out.detach()


def mixed(theta, v, X, y, sample_weight, lam, rows, loss, fit_intercept, penalize_intercept):
    """d/dX[rows] and d/dlam of grad_theta L . v, per problem: ((B, k, d), (B,))."""
    B = theta.shape[0]
    Xb = X if X.dim() == 3 else X.expand(B, *X.shape)
    Xk = Xb[:, rows].detach().clone().requires_grad_(True)
    Xfull = Xb.index_copy(1, rows, Xk)
    lam_ = None if lam is None else lam.detach().clone().requires_grad_(True)
    theta = theta.detach().requires_grad_(True)
    value = objective(theta, Xfull, y, sample_weight, lam_, loss, fit_intercept, penalize_intercept)
    (grad,) = torch.autograd.grad(value.sum(), theta, create_graph=True)
    inputs = (Xk,) if lam_ is None else (Xk, lam_)
    outs = torch.autograd.grad((grad * v).sum(), inputs, allow_unused=True)
    dX = torch.zeros_like(Xk) if outs[0] is None else outs[0]
    dlam = torch.zeros(B, dtype=torch.float64) if lam_ is None else outs[1]
    return dX.detach(), dlam.detach().to(theta.dtype)


def l2(theta, lam, slices):
    """sum_g exp(lam_g)/2 ||theta[slices[g]]||^2 for one problem (theta (p,), lam (n_lam,)):
    the models layer's L2 component, by autograd-friendly torch operations."""
    return sum(0.5 * torch.exp(lam[g]).to(theta.dtype) * (theta[sl] ** 2).sum()
               for g, sl in enumerate(slices))
