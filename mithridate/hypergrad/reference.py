"""Hypergradients by torch autograd through the unrolled T-step loop: the
test oracle and the benchmarks' baseline. Readable first."""
import math

import numpy as np

from ..reference.linear import objective
from .result import HyperGrad

MODES = ("trajectory", "forward", "implicit", "checkpoint")  # checkpoint = trajectory here;
# implicit: implicit.py at this backend's theta_T


def run(problems, mode, info):
    """Modes trajectory, checkpoint (the same unrolled graph) and forward
    (its grad_lam) of a list of Problems, one HyperGrad each."""
    out = []
    for pb in problems:
        value, gX, glam, theta, step = unrolled(pb)
        gX = None if mode == "forward" else gX.astype(pb.Xc.dtype)
        out.append(HyperGrad(value, gX, glam, theta, dict(info(pb), diverged_at=step)))
    return out


def value(problems, info):
    """Validation loss and theta_T only, without a graph."""
    out = []
    for pb in problems:
        theta, step = train(pb)
        torch, t = _tensors(pb)
        val = objective(torch.from_numpy(theta)[None], t["Xv"], t["yv"], None, None, pb.loss,
                        pb.fit_intercept, False)[0]
        out.append(HyperGrad(float(val), None, None, theta, dict(info(pb), diverged_at=step)))
    return out


def _tensors(pb):
    import torch
    t = {k: torch.from_numpy(getattr(pb, k)) for k in ("Xc", "yc", "Xp", "yp", "Xv", "yv")}
    return torch, t


def _descend(torch, X, y, lam, pb, create_graph):
    """T heavy-ball steps (see mithridate.hypergrad); graph kept if asked.
    Returns theta_T and the first step whose squared gradient norm is
    nan/inf or past the growth bound of kernels/cpu/hypergrad.py (-1: none)."""
    from ..kernels.cpu.hypergrad import GROWTH
    theta = torch.from_numpy(pb.theta0).clone().requires_grad_(True)
    v = torch.zeros_like(theta)
    bad, limit = -1, None
    for t in range(pb.T):
        value = objective(theta[None], X, y, None, lam[None], pb.loss, pb.fit_intercept, False)
        (g,) = torch.autograd.grad(value.sum(), theta, create_graph=create_graph)
        gg = float((g.detach().double() ** 2).sum())
        limit = GROWTH * gg / (1 - pb.gamma) ** 2 if limit is None else limit
        if bad < 0 and not (np.isfinite(gg) and gg <= limit):
            bad = t
        v = pb.gamma * v - (1 - pb.gamma) * g
        theta = theta + pb.alpha * v
        if not create_graph:
            theta = theta.detach().requires_grad_(True)
    return theta, bad


def unrolled(pb):
    """(value, grad_Xp, grad_lam, theta_T, first diverged step or -1) of the
    validation loss of theta_T."""
    torch, t = _tensors(pb)
    Xp = t["Xp"].clone().requires_grad_(True)
    lam = torch.tensor(pb.lam, dtype=torch.float64, requires_grad=True)
    X = torch.cat([t["Xc"], Xp])
    y = torch.cat([t["yc"], t["yp"]])
    theta, bad = _descend(torch, X, y, lam, pb, create_graph=True)
    val = objective(theta[None], t["Xv"], t["yv"], None, None, pb.loss, pb.fit_intercept, False)[0]
    gX, glam = torch.autograd.grad(val, (Xp, lam))
    return float(val.detach()), gX.numpy(), float(glam), theta.detach().numpy(), bad


def train(pb):
    """theta_T without a graph (for implicit mode), as numpy, and the first
    diverged step (-1: none)."""
    torch, t = _tensors(pb)
    lam = torch.tensor(pb.lam, dtype=torch.float64)
    theta, bad = _descend(torch, torch.cat([t["Xc"], t["Xp"]]), torch.cat([t["yc"], t["yp"]]),
                          lam, pb, create_graph=False)
    return np.ascontiguousarray(theta.detach().numpy()), bad


def unrolled_model(model, pb, dtype=None):
    """(value, grad_Xp, grad_lam (n_lam,), theta_T) by autograd through T heavy-ball steps
    of ``model.torch_objective`` (any mithridate.models Model without sample weights: the
    generic engine's oracle and baseline); the outer objective is that objective with every
    hyperparameter at -inf (the mean loss on the validation rows). Problem fields as the
    engine's; ``dtype``: the torch dtype to run in (default the data's)."""
    import torch
    dt = dtype or getattr(torch, pb.Xc.dtype.name)
    t = {k: torch.from_numpy(np.asarray(getattr(pb, k))).to(dt)
         for k in ("Xc", "yc", "Xp", "yp", "Xv", "yv")}
    Xp = t["Xp"].clone().requires_grad_(True)
    lam = torch.tensor(np.atleast_1d(pb.lam), dtype=torch.float64, requires_grad=True)
    X, y = torch.cat([t["Xc"], Xp]), torch.cat([t["yc"], t["yp"]])
    theta = torch.from_numpy(np.asarray(pb.theta0, np.float64)).to(dt).requires_grad_(True)
    v = torch.zeros_like(theta)
    for _ in range(pb.T):
        (g,) = torch.autograd.grad(model.torch_objective(theta, X, y, lam), theta,
                                   create_graph=True)
        v = pb.gamma * v - (1 - pb.gamma) * g
        theta = theta + pb.alpha * v
    value = model.torch_objective(theta, t["Xv"], t["yv"], torch.full_like(lam, -math.inf))
    gX, glam = torch.autograd.grad(value, (Xp, lam))
    return float(value.detach()), gX.numpy(), glam.numpy(), theta.detach().numpy()
