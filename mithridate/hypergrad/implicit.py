"""Implicit mode: eq. (4) of paper 002 at theta_T (exact only at a stationary point).

With H the training objective's Hessian at theta_T and A the outer objective,
s = H^-1 grad A, grad_X[rows] = -d/dX[rows] (grad . s), grad_lam = -d/dlam (grad . s).
The implicit function theorem needs H nonsingular, not positive definite: a
saddle point of a network's training objective is as good as a minimum. For
a network, theta_T must be a stationary point (train long enough:
info["grad_norm"] is warned about above tol) where H is nonsingular; after a
finite T it usually is neither (the trajectory modes are exact there).

The solve, for any Model (:func:`implicit_model`):
- conjugate gradients on the HVP, stopped at ||H s - b|| <=
  rtol ||b||, within a budget of iterations that costs less than forming and
  factoring H (tried where that budget is at least MIN_CG iterations); at
  paper 002's size (529 x 785) it converges in about ten HVPs against
  n p^2 + p^3/3 flops for the direct solve. Where the model has a loss factor
  R (loss Hessian R^T R / n: the linear models) the HVP is two BLAS products
  with R, built once (measured 2x faster than the fused kernel, which makes
  two passes over X per call, and far steadier on a loaded machine); else the
  model's fused HVP;
- abandoned as soon as its rate of convergence projects past that budget;
- accepted only where the regulariser's smallest curvature exp(min lam) is at
  least sqrt(eps) times the largest curvature CG saw (its Lanczos estimate):
  then H is far from singular. Otherwise, or past the budget, one Cholesky
  (:func:`direct`): of the n x n Woodbury capacitance matrix where the model
  has a loss factor (H = D + R^T R / n) and n < p, else of the p x p float64
  Hessian (one symmetric BLAS product R^T R for the linear model);
  it certifies positive definiteness, SingularHessianError when it fails;
- past CHOLESKY_MAX parameters, CG alone (no budget), SingularHessianError when
  it does not converge;
- H indefinite (a model without a loss factor, e.g. a network: CG meets
  negative curvature, or the Cholesky fails): MINRES (scipy) on the same HVP,
  accepted where its true residual ||H s - b|| / ||b|| is at most
  MINRES_ACCEPT (within REFINE solves of at most MINRES_MAX iterations) and
  the lower bound ||H|| ||s|| / ||b|| of cond(H) stays below 1/eps;
  SingularHessianError otherwise (H numerically singular along
  grad A). A null space orthogonal to grad A is invisible to a Krylov solver
  (it does not change s: the minimum-norm solution is returned).
"""
import math
import warnings

import numpy as np

from ..errors import SingularHessianError
from .result import HyperGrad

CHOLESKY_MAX = 2000  # p above this: CG on HVPs only, the p x p Hessian is never formed
RTOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-6}
HVP_PER_DIRECT = 5   # a BLAS-3 flop is about this much cheaper than an HVP's (measured)
MIN_CG = 10          # CG is tried only where the direct solve costs at least this many HVPs
PROJECT_EVERY = 8    # CG iterations between projections of the iterations it needs
# MINRES's accepted relative residual (its own stop is a backward error, weaker than this)
MINRES_ACCEPT = {np.dtype(np.float64): 1e-8, np.dtype(np.float32): 1e-4}
REFINE = 3           # MINRES solves at most: the first and two on its residual
MINRES_MAX = 2000    # iterations per MINRES solve at most (an HVP each): bounds a refusal's cost


def implicit(pb, backend, tol, info):
    """The linear model of hypergrad Problem ``pb`` (scalar lam): trains theta_T on
    ``backend`` (torch: the reference loop; else the numba kernel), then
    :func:`implicit_model`."""
    from ..models import LinearModel
    if backend == "torch":
        from .reference import train
        X, y = np.concatenate([pb.Xc, pb.Xp]), np.concatenate([pb.yc, pb.yp])
        theta, step = train(pb)
    else:
        from ..kernels.cpu import hypergrad as kernel
        from .fused import numba_args, theta_out
        args = numba_args(pb)
        X, y = args[:2]
        theta, _, step = kernel.train(*args[:2], *args[4:13], args[-1])
        theta = theta_out(pb, theta)
    info["diverged_at"] = int(step)
    if step >= 0:  # no stationary point to differentiate at: nan, reported by the engine
        k, dt = pb.Xp.shape[0], pb.Xc.dtype
        return HyperGrad(math.nan, np.full((k, pb.d), np.nan, dt), math.nan, theta, info)
    model = LinearModel(pb.loss, pb.fit_intercept, backend="torch" if backend == "torch" else "numba")
    rows = np.arange(pb.Xc.shape[0], X.shape[0])
    return implicit_model(model, theta, X, y, rows, pb.Xv, pb.yv, np.array([pb.lam]), tol, info)


def implicit_model(model, theta, X, y, rows, Xv, yv, lam, tol, info):
    """Eq. (4) for ``model`` at ``theta`` (theta_T, trained by the caller) on the training
    rows (X, y), the poisoning rows being ``rows`` of X, outer objective
    model.data_loss on (Xv, yv), hyperparameters lam (n_lam,).

    Returns HyperGrad(value, grad_X (len(rows), d) in X's dtype, grad_lam (a float
    for one hyperparameter, else (n_lam,)), theta, info); info gets grad_norm
    (||grad L(theta)||, warned about when > tol), solver ("cg", "woodbury",
    "cholesky" or "minres"), cg_iterations (where CG ran), minres_iterations and
    residual (||H s - b|| / ||b||) where MINRES ran. Raises SingularHessianError when
    H is numerically singular (positive definite for a model with a loss factor).
    """
    lam = np.asarray(lam, dtype=np.float64)
    info["grad_norm"] = float(np.linalg.norm(model.grad(theta, X, y, lam)))
    if info["grad_norm"] > tol:
        warnings.warn(f"implicit hypergradient at a non-stationary point: ||grad L(theta_T)|| = "
                      f"{info['grad_norm']:.3g} > tol={tol:g}; raise T or alpha (or use "
                      "mode='trajectory').", RuntimeWarning, stacklevel=3)
    value, gA = model.data_loss_grad(theta, Xv, yv)
    s = solve(model, theta, X, y, lam, gA, info).astype(X.dtype)
    dX = -np.asarray(model.mixed_rows(theta, s, X, y, rows))
    dlam = -model.mixed_lam(theta, s, lam)
    return HyperGrad(float(value), dX, float(dlam[0]) if dlam.shape == (1,) else dlam, theta, info)


def solve(model, theta, X, y, lam, b, info):
    """s = H^-1 b (float64) for the training Hessian H at theta (see the module docstring)."""
    p, n = theta.shape[0], X.shape[0]
    b = np.asarray(b, dtype=np.float64)
    rtol = RTOL[np.dtype(X.dtype)]
    if p > CHOLESKY_MAX:
        hvp = _fused_hvp(model, theta, X, y, lam)
        s, iters, curvature, ok = cg(hvp, b, rtol, 10 * p)
        info.update(solver="cg", cg_iterations=iters)
        if ok:
            return s
        if curvature == math.inf:  # negative curvature: indefinite, maybe nonsingular
            return _minres(hvp, b, 10 * p, X.dtype, lam, info)
        raise SingularHessianError(
            f"mode='implicit': CG did not converge on the {p} x {p} training Hessian at "
            f"theta_T ({iters} iterations): it is singular or ill-conditioned; raise lam "
            f"(now {_lams(lam)}) or use mode='trajectory'.")
    D = model.regularizer(X.shape[1]).diagonal(lam)
    R = model.loss_factor(theta, X, y)
    budget = int((n * p * p + p ** 3 / 3) / (4 * n * p) / HVP_PER_DIRECT)
    if budget >= MIN_CG:
        hvp = _fused_hvp(model, theta, X, y, lam) if R is None else \
            lambda v: R.T @ (R @ v) / n + D * v  # noqa: E731  (two BLAS products)
        s, iters, curvature, ok = cg(hvp, b, rtol, budget, project=True)
        info["cg_iterations"] = iters
        floor = D[D > 0].min() if (D > 0).any() else 0.0  # nothing penalised: no guarantee
        if ok and floor >= math.sqrt(np.finfo(np.float64).eps) * curvature:
            info["solver"] = "cg"
            return s
        if R is None and curvature == math.inf:  # no loss factor: H may be indefinite
            return _minres(hvp, b, 10 * p, X.dtype, lam, info)
    return direct(model, theta, X, y, lam, b, info, R, D)


def _minres(hvp, b, maxiter, dtype, lam, info):
    """MINRES on the symmetric, possibly indefinite H (scipy), accepted as the module
    docstring says; records the solver, its HVPs and the true residual. MINRES stops
    at a backward error ||r|| <= rtol ||H|| ||s||, weaker than ||r|| <= rtol ||b|| where
    s is large: up to REFINE rounds of refinement on the residual recover the rest."""
    from scipy.sparse.linalg import LinearOperator, minres
    p, accept = b.shape[0], MINRES_ACCEPT[np.dtype(dtype)]
    seen = [0.0, 0]  # the largest ||H q|| / ||q|| over MINRES's vectors (<= ||H||), calls

    def matvec(q):
        q = np.ravel(q)
        Hq = hvp(q)
        norm = np.linalg.norm(q)
        seen[0], seen[1] = max(seen[0], np.linalg.norm(Hq) / norm if norm else 0.0), seen[1] + 1
        return Hq
    H = LinearOperator((p, p), matvec=matvec, dtype=np.float64)
    nb = np.linalg.norm(b)
    s, r, residual = np.zeros_like(b), b, 1.0
    for _ in range(REFINE):
        s = s + minres(H, r, rtol=RTOL[np.dtype(dtype)], maxiter=min(maxiter, MINRES_MAX))[0]
        r = b - hvp(s)
        last, residual = residual, float(np.linalg.norm(r) / nb) if nb else 0.0
        if residual <= accept or residual >= last / 2:  # done, or refinement does not help
            break
    cond = seen[0] * np.linalg.norm(s) / nb if nb else 0.0
    info.update(solver="minres", minres_iterations=seen[1], residual=residual)
    if residual <= accept and cond < 1 / np.finfo(np.float64).eps:
        return s
    why = (f"MINRES reached a relative residual of {residual:.3g} only ({seen[1]} HVPs)"
           if residual > accept else f"its condition number is at least {cond:.3g}")
    raise SingularHessianError(
        f"mode='implicit': the {p} x {p} training Hessian at theta_T is indefinite and "
        f"numerically singular along grad A ({why}): theta_T is not a nondegenerate "
        f"stationary point. Train to a stationary point (larger T), raise lam (now "
        f"{_lams(lam)}), or use mode='trajectory', which needs no Hessian solve.")


def _fused_hvp(model, theta, X, y, lam):
    return lambda v: model.hvp(theta, v.astype(X.dtype), X, y, lam).astype(np.float64)


def direct(model, theta, X, y, lam, b, info, R, D):
    """One Cholesky: of the n x n capacitance matrix (Woodbury) where the model has a
    loss factor R (H = diag(D) + R^T R / n) and n + (unpenalised parameters) < p, else
    of the p x p Hessian (R^T R / n + diag(D), one syrk, or model.hessian). Where a
    model without a loss factor has a Hessian that is not positive definite: its
    eigenvalues certify it nonsingular (else SingularHessianError), then MINRES on it."""
    from scipy.linalg import cho_solve
    p, n = theta.shape[0], X.shape[0]
    if R is not None and n + np.count_nonzero(D == 0) < p:
        info["solver"] = "woodbury"
        return _woodbury(R, D, b, lam)
    info["solver"] = "cholesky"
    if R is None:
        H = model.hessian(theta, X, y, lam)
    else:
        H = R.T @ R
        H /= n
        H[np.diag_indices(p)] += D
    factor = _cholesky(H, lam, indefinite_ok=R is None)
    if factor is not None:
        return cho_solve(factor, b)
    ev = np.abs(np.linalg.eigvalsh(H))
    _check_condition(ev.max() / ev.min() if ev.min() > 0 else math.inf, p, lam, "indefinite")
    return _minres(lambda v: H @ v, b, 10 * p, X.dtype, lam, info)


def _woodbury(R, D, b, lam):
    """Solve (diag(D) + R^T R / n) s = b. On the penalised coordinates P (D > 0),
    A^-1 = D^-1 - D^-1 R_P^T K^-1 R_P D^-1 with K = n I + G G^T, G = R_P D^-1/2
    (one syrk, one n x n Cholesky); the unpenalised Z by their m x m Schur complement.
    cond(A) is max(D) / min(D) + ||G||_F^2 / (n min D) within the rank (A's smallest
    eigenvalue is min(D) exactly when n < |P| and D is constant), checked as _cholesky does."""
    from scipy.linalg import cho_factor, cho_solve
    n = R.shape[0]
    P, Z = D > 0, D == 0
    Dp = D[P]
    G = R[:, P] / np.sqrt(Dp)
    K = G @ G.T
    K[np.diag_indices(n)] += n
    cond = (Dp.max() + np.einsum("ij,ij->", G, G) * Dp.max() / n) / Dp.min()
    _check_condition(cond, R.shape[1], lam)
    K = cho_factor(K)
    Rp = R[:, P]

    def A_inv(V):  # V (|P|, k)
        W = V / Dp[:, None]
        return W - (Rp.T @ cho_solve(K, Rp @ W)) / Dp[:, None]

    s = np.empty_like(b)
    if not Z.any():
        s[P] = A_inv(b[P, None])[:, 0]
        return s
    Rz = R[:, Z]
    Bm = Rp.T @ Rz / n
    Y = A_inv(np.column_stack([b[P], Bm]))
    S = Rz.T @ Rz / n - Bm.T @ Y[:, 1:]  # Schur complement of the unpenalised coordinates
    s[Z] = cho_solve(_cholesky(S, lam, R.shape[1]), b[Z] - Bm.T @ Y[:, 0])
    s[P] = Y[:, 0] - Y[:, 1:] @ s[Z]
    return s


def cg(hvp, b, rtol, maxiter, project=False):
    """Conjugate gradients from 0 on H s = b. Returns (s, iterations, largest Ritz value
    of H on the Krylov space, converged: ||H s - b|| <= rtol ||b||). ``project``:
    give up early (every PROJECT_EVERY iterations) when the mean residual decrease so far
    projects past maxiter (CG speeds up, if anything, so this errs toward giving up)."""
    s, r = np.zeros_like(b), b.copy()
    d, rr = r.copy(), r @ r
    rr0, stop = rr, (rtol * math.sqrt(rr)) ** 2
    diag, off, prev = [], [], None  # the Lanczos tridiagonal, from CG's coefficients
    for it in range(maxiter):
        if rr <= stop:
            return s, it, _ritz_max(diag, off), True
        if project and it and it % PROJECT_EVERY == 0 and \
                it * math.log(stop / rr0) / math.log(rr / rr0) > maxiter:
            return s, it, _ritz_max(diag, off), False
        Hd = hvp(d)
        dHd = d @ Hd
        if not dHd > 0:  # not positive definite along d
            return s, it, math.inf, False
        a = rr / dHd
        s += a * d
        r -= a * Hd
        rr_new = r @ r
        beta = rr_new / rr
        diag.append(1 / a + (0.0 if prev is None else prev[1] / prev[0]))
        off.append(math.sqrt(beta) / a)
        prev = (a, beta)
        d = r + beta * d
        rr = rr_new
    return s, maxiter, _ritz_max(diag, off), rr <= stop


def _ritz_max(diag, off):
    if not diag:
        return 0.0
    from scipy.linalg import eigvalsh_tridiagonal
    return float(eigvalsh_tridiagonal(np.array(diag), np.array(off[:-1]))[-1])


def _lams(lam):
    return f"{lam[0]:g}" if lam.size == 1 else np.array2string(lam, precision=3)


def _cholesky(H, lam, p=None, indefinite_ok=False):
    """cho_factor of H (the training Hessian, or a block of it: p its size), or
    SingularHessianError when H is not numerically positive definite (condition
    >= 1/eps by the factor's diagonal); None instead where the factorisation fails
    and ``indefinite_ok`` (H may be indefinite: MINRES follows)."""
    from scipy.linalg import cho_factor
    try:
        factor = cho_factor(H)
        r = np.abs(np.diag(factor[0]))
        cond = (r.max() / r.min()) ** 2 if r.min() > 0 else math.inf
    except np.linalg.LinAlgError:
        if indefinite_ok:
            return None
        cond = math.inf
    _check_condition(cond, p or H.shape[0], lam)
    return factor


def _check_condition(cond, p, lam, kind="not positive definite"):
    if not cond < 1 / np.finfo(np.float64).eps:
        why = f"singular ({kind})" if cond == math.inf else \
            f"{'' if kind.startswith('not') else kind + ' and '}too ill-conditioned to solve " \
            f"(condition >= {cond:.3g})"
        raise SingularHessianError(
            f"mode='implicit': the {p} x {p} training Hessian at theta_T is "
            f"{why}: exp(lam) = {_lams(np.exp(lam))} (lam={_lams(lam)}) adds too little "
            "curvature for these data; raise lam, or use mode='trajectory', which needs no "
            "Hessian solve.")
