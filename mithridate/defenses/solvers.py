"""Smooth epigraph reformulations of the Wasserstein-DRO objectives (8), solved by SLSQP.

Used where ``barrier`` does not apply: the nonconvex tight squared/logistic forms, and
norms p outside {1, 2, inf} (their dual-norm cone has no barrier there).

Every nonsmooth piece (a dual norm, |r_i|, a max over rows) becomes a
variable bounded by smooth inequalities, so SLSQP sees a smooth problem with
the same optimum; runtime needs scipy only (cvxpy is the test oracle).

Variables: theta = [w; b] (p), then blocks added per term:
  absolute data term    u_i >= +-r_i                       (n variables, 2n rows)
  norm epigraph         T >= ||(v, c)||_q, v a slice of theta, c in {0, 1}:
                        q = inf: T >= +-v_j;  q = 1: a_j >= +-v_j, T >= sum a + c;
                        1 < q < inf: T >= ||(v, c)||_q (smooth except at v = 0, c = 0)
  paper   (11/13/15)    T >= ||theta||_q,  regulariser a T^2 + b T (increasing, so tight)
  tight absolute        V >= ||(w, 1)||_q, regulariser rho V
  tight squared         V >= ||(w, 1)||_q, s >= +-r_i V,  regulariser rho s
  tight logistic        T >= ||w||_q, s >= ||((sigmoid(z_i) - y_i) T, z_i)||_q,  regulariser rho s
Paper forms and tight absolute are convex: SLSQP's KKT point is the global
optimum. Tight squared/logistic are products/compositions that are not convex
in theta: the result is a local optimum (best of two starts). Cost: dense
SLSQP with O(n + d) variables and O(n) rows per tight/absolute term, i.e.
O((n + d)^3) per iteration, fine to a few thousand rows.
"""
import math

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit

from .. import ops


class _Program:
    """Variables, bounds and inequality rows g(z) >= 0 with their Jacobians."""

    def __init__(self, p):
        self.size, self.x0, self.bounds, self.rows = p, [0.0] * p, [(None, None)] * p, []

    def var(self, k, x0, lb=None):
        start = self.size
        self.size += k
        self.x0 += [float(x0)] * k
        self.bounds += [(lb, None)] * k
        return slice(start, start + k)

    def ineq(self, fun, jac):
        self.rows.append({"type": "ineq", "fun": fun, "jac": jac})

    def linear(self, pieces, const):
        """Rows sum_k A_k z[slice_k] + const >= 0; pieces = [(slice_k, A_k)]. The
        matrix is built on first use, when every variable exists."""
        built = []

        def jac(z):
            if not built:
                M = np.zeros((len(const), self.size))
                for sl, Ak in pieces:
                    M[:, sl] += Ak
                built.append(M)
            return built[0]
        self.ineq(lambda z: jac(z) @ z + const, jac)


def norm_epigraph(prog, v, c, q):
    """Add T >= ||(theta[v], c)||_q; returns T's slice."""
    k = v.stop - v.start
    if q == math.inf:
        T = prog.var(1, max(c, 1.0) + 1.0, lb=c)
        one = np.ones((k, 1))
        prog.linear([(T, np.vstack([one, one])), (v, np.vstack([-np.eye(k), np.eye(k)]))],
                    np.zeros(2 * k))
    elif q == 1:
        a = prog.var(k, 1.0, lb=0.0)
        T = prog.var(1, k + c + 1.0, lb=c)
        prog.linear([(a, np.vstack([np.eye(k), np.eye(k)])),
                     (v, np.vstack([-np.eye(k), np.eye(k)]))], np.zeros(2 * k))
        prog.linear([(T, np.ones((1, 1))), (a, -np.ones((1, k)))], np.array([-float(c)]))
    else:
        T = prog.var(1, c + 1.0, lb=c)

        def fun(z):
            return np.array([z[T][0] - np.linalg.norm(np.r_[z[v], c], q)])

        def jac(z):  # gradient of the norm; 0 (a subgradient) at the origin
            g = np.zeros((1, prog.size))
            g[0, T] = 1.0
            nrm = np.linalg.norm(np.r_[z[v], c], q)
            if nrm > 0:
                g[0, v] = -(np.abs(z[v]) / nrm) ** (q - 1) * np.sign(z[v])
            return g
        prog.ineq(fun, jac)
    return T


def paper_coefficients(X, y, loss, norm, fit_intercept, data_bounds, backend):
    """(a, b) with L = a t^2 + b t, read off ops.lipschitz at theta = e_1 (t = 1):
    L(e_1) = a + b and dL/dtheta_1(e_1) = 2a + b."""
    e1 = np.zeros(X.shape[1] + fit_intercept)
    e1[0] = 1.0
    val, grad = ops.lipschitz(e1, X, y, loss=loss, norm=norm, bound="paper",
                              fit_intercept=fit_intercept, data_bounds=data_bounds,
                              backend=backend)
    return float(grad[0] - val), float(2 * val - grad[0])


def solve(X, y, *, loss, q, regularizer, reg_weights, fit_intercept, tol, max_iter,
          backend, theta0):
    """Minimise mean loss + regulariser; returns (theta, scipy result).

    reg_weights: (a, b) of the paper form a T^2 + b T (already times rho), or
    rho for the tight forms.
    """
    n, d = X.shape
    p = d + fit_intercept
    Xa = np.hstack([X, np.ones((n, 1))]) if fit_intercept else X
    prog = _Program(p)
    prog.x0[:p] = theta0
    th, w = slice(0, p), slice(0, d)
    lin = []  # linear objective terms (slice, coefficient)
    quad = None  # (slice, a): a T^2

    if loss == "absolute":
        u = prog.var(n, float(np.max(np.abs(Xa @ theta0 - y))) + 1.0, lb=0.0)
        prog.linear([(u, np.vstack([np.eye(n), np.eye(n)])), (th, np.vstack([-Xa, Xa]))],
                    np.concatenate([y, -y]))
        lin.append((u, np.full(n, 1.0 / n)))

    if regularizer == "paper":
        a, b = reg_weights
        T = norm_epigraph(prog, th, 0.0, q)
        prog.x0[T.start] += float(np.linalg.norm(theta0, q))
        lin.append((T, np.array([b])))
        quad = (T, a)
    else:
        rho = reg_weights
        T = norm_epigraph(prog, w, 0.0 if loss == "logistic" else 1.0, q)
        prog.x0[T.start] += float(np.linalg.norm(theta0[:d], q))
        if loss == "absolute":
            lin.append((T, np.array([rho])))
        else:
            s = prog.var(1, 0.0, lb=0.0)
            lin.append((s, np.array([rho])))
            _tight_rows(prog, Xa, y, loss, q, th, T, s)
            prog.x0[s.start] = float(-np.min(prog.rows[-1]["fun"](np.array(prog.x0)))) + 1.0

    def objective(z):
        g = np.zeros(prog.size)
        f = 0.0
        if loss != "absolute":
            f, g[th] = ops.loss_grad(np.ascontiguousarray(z[th]), X, y, loss=loss,
                                     fit_intercept=fit_intercept, backend=backend)
            f = float(f)
        for sl, cf in lin:
            f += float(cf @ z[sl])
            g[sl] += cf
        if quad is not None:
            f += quad[1] * z[quad[0]][0] ** 2
            g[quad[0]] += 2 * quad[1] * z[quad[0]]
        return f, g

    res = minimize(objective, np.array(prog.x0), jac=True, method="SLSQP", bounds=prog.bounds,
                   constraints=prog.rows, options={"ftol": tol, "maxiter": max_iter})
    return res.x[th].copy(), res


def _tight_rows(prog, Xa, y, loss, q, th, T, s):
    """s >= per-row dual norm of grad_(x,y) loss (the max over rows, eq. (10))."""
    n = len(y)

    if loss == "squared":  # s >= +-r_i V
        def parts(z):
            r = Xa @ z[th] - y
            V = z[T][0]
            return np.concatenate([z[s][0] - r * V, z[s][0] + r * V]), r, V

        def jac(z):
            _, r, V = parts(z)
            J = np.zeros((2 * n, prog.size))
            J[:, s] = 1.0
            J[:n, th], J[n:, th] = -V * Xa, V * Xa
            J[:n, T.start], J[n:, T.start] = -r, r
            return J
        prog.ineq(lambda z: parts(z)[0], jac)
        return

    # logistic: s >= ||(a_i T, z_i)||_q with a_i = sigmoid(z_i) - y_i
    def terms(z):
        zz = Xa @ z[th]
        sig = expit(zz)
        return (sig - y) * z[T][0], zz, sig * (1 - sig) * z[T][0], sig - y

    if q in (1, math.inf):
        signs = [(1, 1), (1, -1), (-1, 1), (-1, -1)] if q == 1 else [(1, 0), (-1, 0), (0, 1), (0, -1)]

        def fun(z):
            at, zz, _, _ = terms(z)
            return np.concatenate([z[s][0] - sa * at - sz * zz for sa, sz in signs])

        def jac(z):
            _, _, dat, a = terms(z)
            J = np.zeros((4 * n, prog.size))
            J[:, s] = 1.0
            for k, (sa, sz) in enumerate(signs):
                rows = slice(k * n, (k + 1) * n)
                J[rows, th] = -(sa * dat + sz)[:, None] * Xa
                J[rows, T.start] = -sa * a
            return J
    else:
        def fun(z):
            at, zz, _, _ = terms(z)
            return z[s][0] ** q - np.abs(at) ** q - np.abs(zz) ** q

        def jac(z):
            at, zz, dat, a = terms(z)
            J = np.zeros((n, prog.size))
            J[:, s] = q * z[s][0] ** (q - 1)
            ga = q * np.abs(at) ** (q - 1) * np.sign(at)
            gz = q * np.abs(zz) ** (q - 1) * np.sign(zz)
            J[:, th] = -(ga * dat + gz)[:, None] * Xa
            J[:, T.start] = -ga * a
            return J
    prog.ineq(fun, jac)
