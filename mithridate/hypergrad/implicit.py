"""Implicit mode: eq. (4) of paper 002 at theta_T (exact only at a stationary point)."""
import math
import warnings

import numpy as np

from .. import ops
from ..errors import SingularHessianError
from .fused import numba_args, theta_out
from .result import HyperGrad

CHOLESKY_MAX = 2000  # p above this: CG on HVPs instead of forming the p x p Hessian


def implicit(pb, backend, tol, info):
    """Eq. (4): s = H^-1 grad A, grad_Xp = -d/dXp (g . s), grad_lam = -d/dlam (g . s)."""
    X = np.concatenate([pb.Xc, pb.Xp])
    y = np.concatenate([pb.yc, pb.yp])
    if backend == "torch":
        from .reference import train
        theta, step = train(pb)
    else:
        from ..kernels.cpu import hypergrad as kernel
        args = numba_args(pb)
        theta, _, step = kernel.train(*args[:2], *args[4:13], args[-1])
        theta = theta_out(pb, theta)
    info["diverged_at"] = int(step)
    if step >= 0:  # no stationary point to differentiate at: nan, reported by hypergrad()
        k, dt = pb.Xp.shape[0], pb.Xc.dtype
        return HyperGrad(math.nan, np.full((k, pb.d), np.nan, dt), math.nan, theta, info)
    common = dict(loss=pb.loss, fit_intercept=pb.fit_intercept, backend=backend)
    _, g = ops.loss_grad(theta, X, y, lam=pb.lam, **common)
    info["grad_norm"] = float(np.linalg.norm(g))
    if info["grad_norm"] > tol:
        warnings.warn(f"implicit hypergradient at a non-stationary point: ||grad L(theta_T)|| = "
                      f"{info['grad_norm']:.3g} > tol={tol:g}; raise T or alpha (or use "
                      "mode='trajectory').", RuntimeWarning, stacklevel=3)
    value, gA = ops.loss_grad(theta, pb.Xv, pb.yv, **common)
    p = theta.shape[0]
    if p <= CHOLESKY_MAX:
        from scipy.linalg import cho_solve
        info["solver"] = "cholesky"
        s = cho_solve(_cholesky(pb, _hessian(pb, theta, X)), gA.astype(np.float64))
    else:
        from scipy.sparse.linalg import LinearOperator, cg
        info["solver"] = "cg"
        H = LinearOperator((p, p), dtype=np.float64, matvec=lambda v: ops.hvp(
            theta, np.ascontiguousarray(v.ravel(), dtype=X.dtype), X, y, lam=pb.lam, **common))
        s, fail = cg(H, gA.astype(np.float64), rtol=1e-10 if X.dtype == np.float64 else 1e-6)
        if fail:
            raise SingularHessianError(
                f"mode='implicit': CG did not converge on the {p} x {p} training Hessian at "
                f"theta_T ({fail} iterations): it is singular or ill-conditioned; raise lam "
                f"(now {pb.lam:g}) or use mode='trajectory'.")
    rows = np.arange(pb.Xc.shape[0], X.shape[0])
    dX, dlam = ops.mixed(theta, np.ascontiguousarray(s, dtype=X.dtype), X, y, rows,
                         lam=pb.lam, **common)
    return HyperGrad(float(value), -np.asarray(dX), -float(dlam), theta, info)


def _cholesky(pb, H):
    """cho_factor of the training Hessian H, or SingularHessianError when H is
    not numerically positive definite (condition >= 1/eps by the factor's diagonal)."""
    from scipy.linalg import cho_factor
    try:
        factor = cho_factor(H)
        r = np.abs(np.diag(factor[0]))
        cond = (r.max() / r.min()) ** 2 if r.min() > 0 else math.inf
    except np.linalg.LinAlgError:
        cond = math.inf
    if not cond < 1 / np.finfo(np.float64).eps:
        why = "singular (not positive definite)" if cond == math.inf else \
            f"too ill-conditioned to solve (condition >= {cond:.3g})"
        raise SingularHessianError(
            f"mode='implicit': the {H.shape[0]} x {H.shape[0]} training Hessian at theta_T is "
            f"{why}: exp(lam) = {math.exp(pb.lam):.3g} (lam={pb.lam:g}) adds too little "
            "curvature for these data; raise lam, or use mode='trajectory', which needs no "
            "Hessian solve.")
    return factor


def _hessian(pb, theta, X):
    """Training-objective Hessian in float64: [X 1]^T diag(l'') [X 1] / n + exp(lam) [I 0; 0 0]."""
    d = pb.d
    A = np.hstack([X, np.ones((X.shape[0], 1))]) if pb.fit_intercept else X.astype(np.float64)
    z = A @ theta.astype(np.float64)
    if pb.loss == "logistic":
        sig = 0.5 * (1.0 + np.tanh(0.5 * z))  # stable sigmoid
        c = sig * (1.0 - sig)
    else:
        c = np.ones_like(z)
    H = (A.T * c) @ A / X.shape[0]
    H[np.arange(d), np.arange(d)] += np.exp(pb.lam)
    return H
