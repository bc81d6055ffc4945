"""Hypergradients of the poisoning bilevel problem (paper 002) for linear models.

Inner problem: T steps of full-batch heavy-ball gradient descent from theta_0
on the poisoned training set [Xc; Xp] (labels fixed)::

    L(theta) = 1/n sum_i l(z_i, y_i) + exp(lam)/2 ||w||^2,   theta = [w; b],
    v_{t+1} = gamma v_t - (1 - gamma) grad L(theta_t),   theta_{t+1} = theta_t + alpha v_{t+1},

v_0 = 0 (Maclaurin et al. 2015; gamma = 0 is Algorithm 2's plain GD).
Outer: A = mean validation loss of theta_T (no regulariser).

Modes: ``trajectory`` (RMD storing theta_0..theta_T, Algorithm 2 with
momentum; exact), ``checkpoint`` (RMD storing ~sqrt(T) (theta, v) states and
recomputing segments; the same bits as trajectory), ``reversible`` (exact
fixed-point reversal, mithridate.hypergrad.reversible), ``forward`` (tangents
dtheta/dlam, dv/dlam; lam only), ``implicit`` (eq. 4 at theta_T: Cholesky for
p <= 2000, else CG on HVPs; MINRES where H is indefinite, implicit.py). Backends
from the registry (mithridate.backends, ``backend="auto"``): numba (fused.py),
torch (reference.py), cpp/cuda (native.py); each module's MODES says what it
runs. Other models run on the generic engine (generic.py); the network
(models.MLP) also on torch tensors, backend "torch" or "triton" (mlp_torch.py). Batched calls: Xp
(B, k, d), see ``hypergrad``. ``Engine``: the clean and validation rows
checked and packed once, for many calls (engine.py).
"""
from .api import hypergrad
from .engine import Engine
from .result import HyperGrad

__all__ = ["hypergrad", "Engine", "HyperGrad"]
