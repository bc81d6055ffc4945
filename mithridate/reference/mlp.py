"""The network (mithridate.models.MLP) by torch autograd: the objective on
tensors, and autograd through the unrolled heavy-ball loop of any Model (the
oracle of every MLP test and the baseline of the benchmarks)."""
import numpy as np
import torch

from ..models.heavy_ball import step


def layers(model, theta):
    """[(W_l (d_{l-1}, d_l), b_l (d_l,))] of flat theta, by one torch.split (its backward
    is one concatenation: slicing every group would add a zero-padded p-vector per
    group to the graph of each gradient)."""
    sizes = [n for a, b in zip(model.layers[:-1], model.layers[1:]) for n in (a * b, b)]
    parts = torch.split(theta, sizes)
    return [(parts[2 * l].reshape(a, b), parts[2 * l + 1])
            for l, (a, b) in enumerate(zip(model.layers[:-1], model.layers[1:]))]


def logits(model, theta, X, params=None):
    """(n,) logits of MLP ``model`` for flat theta (its layout) on X."""
    h = X
    for l, (W, b) in enumerate(layers(model, theta) if params is None else params):
        h = h @ W + b
        if l < model.n_layers - 1:
            h = torch.nn.functional.leaky_relu(h, model.negative_slope)
    return h[:, 0]


def loss(model, theta, X, y, params=None):
    """Mean logistic loss softplus(z) - y z (as -logsigmoid(-z): torch's softplus is
    linear above its threshold 20, logsigmoid is exact for every z)."""
    z = logits(model, theta, X, params)
    return (-torch.nn.functional.logsigmoid(-z) - y * z).mean()


def objective(model, theta, X, y, lam):
    """loss + sum_l exp(lam_l)/2 ||W_l||^2 (with penalize_bias, + ||b_l||^2 in layer l's term)."""
    params = layers(model, theta)
    reg = sum(0.5 * torch.exp(lam[l]).to(theta.dtype)
              * ((W ** 2).sum() + ((b ** 2).sum() if model.penalize_bias else 0))
              for l, (W, b) in enumerate(params))
    return loss(model, theta, X, y, params) + reg


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
