"""The network (mithridate.models.MLP) by torch autograd: the objective on
tensors, and autograd through the unrolled heavy-ball loop of any Model (the
oracle of every MLP test and the baseline of the benchmarks)."""
import numpy as np
import torch

from ..models.heavy_ball import step
from .linear import l2


def logits(model, theta, X):
    """(n,) logits of MLP ``model`` for flat theta (its layout) on X."""
    h, k = X, 0
    for l, (a, b) in enumerate(zip(model.layers[:-1], model.layers[1:])):
        W, bias = theta[k:k + a * b].reshape(a, b), theta[k + a * b:k + a * b + b]
        k += a * b + b
        h = h @ W + bias
        if l < model.n_layers - 1:
            h = torch.nn.functional.leaky_relu(h, model.negative_slope)
    return h[:, 0]


def loss(model, theta, X, y):
    """Mean logistic loss softplus(z) - y z (as -logsigmoid(-z): torch's softplus is
    linear above its threshold 20, logsigmoid is exact for every z)."""
    z = logits(model, theta, X)
    return (-torch.nn.functional.logsigmoid(-z) - y * z).mean()


def objective(model, theta, X, y, lam):
    layout = model.layout(X.shape[-1])
    return loss(model, theta, X, y) + l2(theta, lam, [layout.slice(g) for g in layout.penalised])


def unrolled(model, X, y, Xv, yv, lam, theta0, T, alpha, gamma, rows):
    """(value, dA/dX[rows], dA/dlam) for A = model.data_loss's torch form (the
    mean loss of model.torch_objective at lam = -inf, i.e. without the L2 term)
    on (Xv, yv) at theta_T, theta_T after T heavy-ball steps of
    model.torch_objective on (X, y) from theta0, v = 0; by autograd with
    create_graph through every step. Tensors in, tensors out (X's dtype)."""
    rows = torch.as_tensor(np.asarray(rows), dtype=torch.long)
    Xr = X[rows].detach().clone().requires_grad_(True)
    Xf = X.detach().index_copy(0, rows, Xr)  # X with its rows [rows] the leaf Xr
    lam_t = torch.as_tensor(np.atleast_1d(np.asarray(lam, np.float64))).requires_grad_(True)
    theta = torch.as_tensor(theta0, dtype=X.dtype).detach().clone().requires_grad_(True)
    v = torch.zeros_like(theta)
    for _ in range(T):
        (g,) = torch.autograd.grad(model.torch_objective(theta, Xf, y, lam_t), theta,
                                   create_graph=True)
        theta, v = step(theta, v, g, alpha, gamma)
    value = model.torch_objective(theta, Xv, yv, torch.full_like(lam_t, -float("inf")))
    gX, glam = torch.autograd.grad(value, (Xr, lam_t))
    return value.detach(), gX, glam
