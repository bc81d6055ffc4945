"""Batched logistic fits of paper 000's convex forms for the Adult figure.

Adult's training half has ~24k rows; the label-flip attack changes labels only,
so every (beta, rho) problem of one seed shares X. Here all of them are one
L-BFGS run over the concatenated parameters whose loss and gradient are two
matrix products per step (Z = X Theta^T, X^T (sigmoid(Z) - Y) W), instead of
one interior-point run per problem (about 1 s each at this size). It solves

    min_theta  sum_i w_i l(z_i, y_i) + a ||theta[sel]||_2^2 + c ||theta[sel]||_2

per column (w the column's row weights, summing to 1), which is the estimators'
paper form (15) (c1 = a, c2 = c, or a, c = rho times its coefficients) and
the exact form with labels fixed (sel = w, a = 0, c = rho); tests check it
against ``WassersteinRobustClassifier``. The norm is not differentiable at 0, so
columns whose optimum has theta[sel] = 0 are found first by the optimality
condition ||grad_sel f(theta_0)||_2 <= c at theta_0 = (0, best intercept) and
kept out of the L-BFGS run (one such column would stall the shared line search).
"""
import numpy as np
from scipy.optimize import minimize
from scipy.special import expit
from threadpoolctl import threadpool_limits

GTOL, MAXITER = 1e-7, 5000


def _zero_start(Xa, Y, W, sel):
    """theta_0 per column: 0 on sel, the weighted-mean logit intercept off sel (if any)."""
    T = np.zeros((Y.shape[1], Xa.shape[1]))
    free = ~sel
    if free.any():  # the unpenalised entry is the intercept column of ones
        mean = np.clip(np.sum(W * Y, axis=0), 1e-12, 1 - 1e-12)
        T[:, free] = np.log(mean / (1 - mean))[:, None]
    return T


def fit_logistic(groups, a, c, sel):
    """groups: list of (Xa (n, p), Y (n, G), W (n, G)); a, c: lists of (G,) weights;
    sel: bool (p,) entries under the norm (at most the intercept left out). Returns per
    group (theta (G, p), objective (G,), grad_norm (G,)) and the L-BFGS iteration count."""
    if (~sel).sum() > 1 or (~sel).any() and not sel[:-1].all():
        raise ValueError("sel may leave out the intercept (last entry) only")
    starts = [_zero_start(Xa, Y, W, sel) for Xa, Y, W in groups]
    # columns optimal at theta_0: ||grad_sel f(theta_0)|| <= c (the subdifferential of c t at 0)
    zero = []
    for (Xa, Y, W), T, ck in zip(groups, starts, c):
        G = (Xa.T @ (W * (expit(Xa @ T.T) - Y))).T
        zero.append(np.linalg.norm(G[:, sel], axis=1) <= ck)
    live = [np.flatnonzero(~z) for z in zero]
    shapes = [(len(lv), Xa.shape[1]) for lv, (Xa, _, _) in zip(live, groups)]
    offsets = np.cumsum([0] + [g * p for g, p in shapes])

    def parts(flat, cols):
        out = []
        for k, (Xa, Y, W) in enumerate(groups):
            T = flat[offsets[k]:offsets[k + 1]].reshape(shapes[k]) if cols is live \
                else starts[k]
            Yk, Wk = Y[:, cols[k]], W[:, cols[k]]
            ak, ck = a[k][cols[k]], c[k][cols[k]]
            Z = Xa @ T.T
            e = np.exp(-np.abs(Z))  # one exp for both softplus and sigmoid
            val = np.einsum("ng,ng->g", Wk, np.maximum(Z, 0.0) + np.log1p(e) - Yk * Z)
            sig = np.where(Z >= 0, 1.0, e)
            sig /= 1.0 + e
            grad = (Xa.T @ (Wk * (sig - Yk))).T
            Ts = T[:, sel]
            t = np.linalg.norm(Ts, axis=1)
            val = val + ak * t ** 2 + ck * t
            unit = np.divide(Ts, t[:, None], out=np.zeros_like(Ts), where=t[:, None] > 0)
            grad[:, sel] += 2 * ak[:, None] * Ts + ck[:, None] * unit
            out.append((T, val, grad))
        return out

    def fun(flat):
        ps = parts(flat, live)
        return float(sum(v.sum() for _, v, _ in ps)), np.concatenate([g.ravel() for _, _, g in ps])

    x0 = np.concatenate([T[lv].ravel() for T, lv in zip(starts, live)])
    # One BLAS thread: the products are small, and spinning BLAS threads fight the
    # other sweep workers for the two cores.
    with threadpool_limits(1, user_api="blas"):
        res = minimize(fun, x0, jac=True, method="L-BFGS-B",
                       options={"maxiter": MAXITER, "maxcor": 30, "gtol": GTOL, "ftol": 0.0})
        final = parts(res.x, live)
        at_zero = parts(None, [np.arange(Y.shape[1]) for _, Y, _ in groups])
    out = []
    for (T, val, grad), (T0, val0, _), lv in zip(final, at_zero, live):
        Tk, vk, gk = T0.copy(), val0.copy(), np.zeros(len(T0))
        Tk[lv], vk[lv], gk[lv] = T, val, np.abs(grad).max(1) if len(lv) else 0.0
        out.append((Tk, vk, gk))
    return out, int(res.nit)
