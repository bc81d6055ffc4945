"""Trainers over any Model: full-batch (heavy-ball) gradient descent for many problems
at once, and the mini-batch SGD victim of paper 002's Table 3.

Both minimise the model's training objective, mean loss + sum_g exp(lam_g)/2
||theta_g||^2. (The attack's trainers scale the regulariser by 1/n: they pass
lam - log(n); see mithridate.attacks.optimal.)
"""
import contextlib
import math

import numpy as np

from .._validation import as_int, as_number, check_array
from . import heavy_ball


def _problems(model, X, y, lam, theta0):
    """Validated (X, y, reg, lam (B, n_lam), theta (B, p), single)."""
    check_array("X", X, (2, 3))
    d = X.shape[-1]
    for b, Xb in enumerate([X] if X.ndim == 2 else X):
        model.check_data(Xb, y if y.ndim == 1 else y[b], "train" if X.ndim == 2 else f"train problem {b}")
    reg = model.regularizer(d)
    lam = np.asarray(lam, dtype=np.float64)
    one_lam = reg.layout.n_lam == 1
    single = X.ndim == 2 and (lam.ndim == 0 or (lam.ndim == 1 and not one_lam))
    lam = reg.check_lam(lam.reshape(-1, 1) if lam.ndim == 0 or (lam.ndim == 1 and one_lam)
                        else lam.reshape(1, -1) if lam.ndim == 1 else lam)
    B = X.shape[0] if X.ndim == 3 else lam.shape[0]
    if lam.ndim != 2 or lam.shape[0] not in (1, B):
        raise ValueError(f"lam has shape {lam.shape} for {B} problems; pass one lam per problem "
                         "(B,) or (B, n_lam), or one for all.")
    lam = np.broadcast_to(lam, (B, reg.layout.n_lam))
    p = reg.layout.size
    theta = np.zeros((B, p), X.dtype) if theta0 is None else np.asarray(theta0, dtype=X.dtype)
    if theta.shape[-1] != p or theta.ndim > 2 or (theta.ndim == 2 and theta.shape[0] not in (1, B)):
        raise ValueError(f"theta0 has shape {theta.shape}; expected ({p},) or ({B}, {p}).")
    theta = np.array(np.broadcast_to(theta, (B, p)), order="C")
    if not np.isfinite(theta).all():
        raise ValueError("theta0 contains nan or inf.")
    return reg, lam, theta, single


# Elements of X per step below which a trainer runs numba on one thread: a
# mini-batch (64 x 784) took 0.07 ms on one thread and 8-24 ms on two on this
# 2-core machine under load (a parallel region waits for its slowest thread).
# Same bits: the kernels' row chunks depend on the shape, not the thread count.
SERIAL_WORK = 1 << 18


@contextlib.contextmanager
def _threads_for(work):
    if work >= SERIAL_WORK:
        yield
        return
    try:
        import numba
    except ImportError:  # no numba kernel to limit
        yield
        return
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(threads)


def _check_finite(theta, who, step):
    bad = ~np.isfinite(theta).all(axis=-1)
    if bad.any():
        raise ValueError(f"{who}: theta became nan or inf (problem {int(np.argmax(bad))}): the "
                         f"steps diverged or the loss overflowed; lower {step} or rescale X.")


def gradient_descent(model, X, y, lam, *, T, alpha, gamma=0.0, theta0=None, prox=False):
    """T full-batch steps theta <- heavy_ball.step(theta, v, grad, alpha, gamma) from theta0
    (zeros by default), for one or many problems at once.

    X (n, d) shared by the problems (one matrix-matrix product per step) or
    (B, n, d) with y (n,) shared or (B, n); lam a scalar or (B,) for a
    one-hyperparameter model, (n_lam,) for one problem or (B, n_lam).
    ``prox=True`` (gamma = 0 only) takes the regulariser's step implicitly,
    theta <- L2.prox(theta - alpha grad loss, lam, alpha). Returns theta (p,)
    for one problem (X 2-D and lam one problem's), else (B, p), in X's dtype.
    """
    T = as_int("T", T, 0, "the number of steps")
    alpha = as_number("alpha", alpha, "it is the step size")
    gamma = as_number("gamma", gamma, "it is the momentum")
    if alpha <= 0 or not 0 <= gamma < 1:
        raise ValueError(f"alpha={alpha} must be > 0 and gamma={gamma} in [0, 1).")
    if prox and gamma:
        raise ValueError("prox=True takes plain proximal steps; pass gamma=0.")
    reg, lam, theta, single = _problems(model, X, y, lam, theta0)
    if X.ndim == 3 and y.ndim == 1:
        y = np.ascontiguousarray(np.broadcast_to(y, X.shape[:2]))
    v = np.zeros_like(theta)
    with _threads_for(X.size * (theta.shape[0] if X.ndim == 2 else 1)):
        for _ in range(T):
            g = model.loss_grad_batch(theta, X, y)[1]
            if prox:
                theta = reg.prox(theta - alpha * g, lam, alpha)
            else:
                theta, v = heavy_ball.step(theta, v, g + reg.grad(theta, lam), alpha, gamma)
    _check_finite(theta, "gradient_descent", "alpha")
    return theta[0] if single else theta


def sgd(model, X, y, lam, *, lr, batch_size, epochs, random_state=None, theta0=None):
    """Mini-batch SGD (paper 002, Table 3's victim) from theta0 (zeros by default; a network
    needs a non-zero start): each epoch visits the rows in a fresh random order (numpy
    default_rng(random_state).permutation(n)), one step of size lr per batch on the
    batch's mean loss + the regulariser. Returns theta (p,) in X's dtype.

    A LinearModel without sample weights on numba runs every epoch in one compiled
    call (kernels.cpu.sgd: the same steps, equal to float tolerance); any other model
    steps through model.loss_grad_batch."""
    if getattr(model, "sample_weight", None) is not None:
        raise ValueError("sgd does not weight mini-batches; pass a model without sample weights.")
    lr = as_number("lr", lr, "it is the step size")
    batch_size = as_int("batch_size", batch_size, 1, "rows per step")
    epochs = as_int("epochs", epochs, 1, "passes over the data")
    check_array("X", X, (2,))
    reg, lam, theta, _ = _problems(model, X, y, lam, theta0)
    if lam.shape[0] != 1:
        raise ValueError(f"sgd trains one problem; lam has shape {lam.shape}.")
    if lr <= 0:
        raise ValueError(f"lr={lr} must be > 0.")
    if lr * math.exp(lam.max(initial=-math.inf)) >= 2:
        raise ValueError(f"lr * exp(lam) = {lr * math.exp(lam.max()):.3g} >= 2: the regulariser's "
                         "SGD steps diverge; lower lr or lam.")
    rng = np.random.default_rng(random_state)
    orders = np.stack([rng.permutation(X.shape[0]) for _ in range(epochs)])
    if _compiled_sgd(model, X):
        from ..kernels.cpu import sgd as kernel
        theta = theta[0]
        kernel.epochs(X, y, theta, reg.diagonal(lam[0]), orders, lr, batch_size,
                      model.fit_intercept, model.loss_code)
    else:
        theta = _sgd_steps(model, X, y, reg, lam, theta, orders, lr, batch_size)[0]
    _check_finite(theta, "sgd", "lr")
    return theta


def _compiled_sgd(model, X):
    from .. import backends
    from .linear import LinearModel
    return isinstance(model, LinearModel) and model.sample_weight is None and \
        backends.select("linear", model.backend, X) == "numba"


def _sgd_steps(model, X, y, reg, lam, theta, orders, lr, batch_size):
    """The generic loop: one model.loss_grad_batch call per batch; theta (1, p)."""
    n = X.shape[0]
    with _threads_for(min(batch_size, n) * X.shape[1]):
        for order in orders:
            Xe, ye = X[order], y[order]  # one copy per epoch: the batches are contiguous slices
            for i in range(0, n, batch_size):
                g = model.loss_grad_batch(theta, Xe[i:i + batch_size], ye[i:i + batch_size])[1]
                theta = theta - lr * (g + reg.grad(theta, lam))
    return theta
