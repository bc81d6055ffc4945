"""Interior-point (log-barrier Newton) solver for the convex Wasserstein-DRO problems, batched.

Every convex form of ``wdro`` with a dual norm q in {1, 2, inf} is

    minimise  data(theta, t) + a t^2 + b t   subject to   t >= ||(theta[sel], c)||_q,

theta = [w; b] (p), ``sel`` the entries under the norm (all of theta, or w), c a constant
(0, 1 or 1/kappa), and data one of
  squared    1/n sum 0.5 r_i^2                  r = z - y, z = Xa theta
  logistic   1/n sum softplus(z_i) - y_i z_i    labels {0, 1}
  rmse       sqrt(1/n sum r_i^2)
  absolute   1/n sum s_i,  s_i >= +-r_i
  flip       1/n sum s_i,  s_i >= l(z_i, y_i),  s_i >= l(z_i, 1 - y_i) - kappa t   (t free >= norm)
The norm's epigraph is a cone (q = 2), 2k + 1 half-spaces in (v, t) (q = inf) or
u_j >= +-v_j with t = sum u + |c| (q = 1). The barrier method (Boyd & Vandenberghe ch. 11)
minimises F_mu = objective + mu * (sum of -log of the constraint slacks) by damped Newton
(backtracking, the first trial capped at 0.99 of the step to the norm block's boundary),
then divides mu by 30 (by 3 with row slacks: a primal barrier needs O(nu) damped steps
after a long stage). The point centred for mu is within nu * mu of the optimum (nu = the
barrier parameter), so the last stage (nu * mu <= tol * (1 + |objective|)) centres to a
Newton decrement lam^2 / 2 <= 0.1 tol (1 + |objective|): the gap is certified, not
estimated. Earlier stages stop at lam^2 <= mu / 4 (quadratic convergence region).
The row slacks s (absolute, flip) enter the Hessian diagonally and are eliminated
(Schur complement), so each Newton step is one (p + m)-sized linear system per problem
plus passes over its data: X'diag(h)X for all problems of one training set at once.

Problems are batched as (S, G): S training sets (Xa (S, n, p)), G settings each; every
problem has its own mu schedule and stops on its own; settings whose problems have all
stopped leave the batch.
"""
import copy

import numpy as np
from scipy.special import expit
from threadpoolctl import threadpool_limits

# mu divisor per stage; the forms with n row slacks (nu ~ 2n) take short stages
MU_FACTOR, MU_FACTOR_ROWS = 30.0, 3.0
ARMIJO = 0.25


class _Problem:
    def __init__(self, Xa, y, kind, q, sel, c, a, b, kappa):
        self.Xa, self.y, self.kind, self.q, self.sel = Xa, y, kind, q, sel
        self.n, self.p = Xa.shape[1], Xa.shape[2]
        self.k = len(sel)
        self.m = self.k if q == 1 else 1
        self.c, self.a, self.b = c, a, b
        self.kappa = kappa if kind == "flip" else np.zeros_like(c)
        self.norm_on = (a > 0) | (b > 0)  # without a price on t the norm block is dropped
        self.rows = kind in ("absolute", "flip")
        self.c1 = np.abs(c) if q == 1 else np.zeros_like(c)
        nu_norm = {1: 2 * self.k, 2: 3, np.inf: 2 * self.k + 1}[q]
        self.nu = np.where(self.norm_on, nu_norm, 0) + (2 * self.n if self.rows else 0) + 1e-300
        if kind in ("rmse", "squared"):  # their data Hessians are multiples of X'X
            self.XtX = np.matmul(Xa.transpose(0, 2, 1), Xa)[:, None]

    def t_of(self, e):
        return e.sum(-1) + self.c1

    def start(self, theta):
        v = theta[..., self.sel]
        if self.q == 1:
            e = np.abs(v) + 1.0
        elif self.q == 2:
            e = np.sqrt((v * v).sum(-1) + self.c ** 2)[..., None] + 1.0
        else:
            e = np.maximum(np.abs(v).max(-1), np.abs(self.c))[..., None] + 1.0
        s = None
        if self.rows:
            phi, _, _, kap = self._rows(self._z(theta), self.t_of(e))
            s = np.max([f - k for f, k in zip(phi, kap)], axis=0) + 1.0
        return e, s

    def _z(self, theta):  # (S, G, n): one matrix-matrix product per training set
        return np.matmul(theta, self.Xa.transpose(0, 2, 1))

    def _rows(self, z, t):
        """Row constraints s >= phi_k(z) - kap_k: values, phi', phi'', kap."""
        y = self.y[:, None, :]
        if self.kind == "absolute":
            r = z - y
            zero = np.zeros_like(r)
            return (r, -r), (1.0, -1.0), (0.0, 0.0), (zero, zero)
        sig = expit(z)
        sp = _softplus(z)
        curv = sig * (1 - sig)
        kt = (self.kappa * t)[..., None]
        return (sp - y * z, sp - (1 - y) * z), (sig - y, sig - (1 - y)), (curv, curv), \
            (np.zeros_like(kt), kt)

    def data(self, theta, t, s, z=None):
        """Data term, and the slacks' barrier -sum log (nan where infeasible)."""
        z = self._z(theta) if z is None else z
        y = self.y[:, None, :]
        if self.kind == "squared":
            return 0.5 * np.mean((z - y) ** 2, -1), 0.0
        if self.kind == "logistic":
            return np.mean(_softplus(z) - y * z, -1), 0.0
        if self.kind == "rmse":
            return np.sqrt(np.mean((z - y) ** 2, -1)), 0.0
        phi, _, _, kap = self._rows(z, t)
        slack = [s - f + k for f, k in zip(phi, kap)]
        return s.mean(-1), _neglog(slack)

    def norm_barrier(self, theta, e):
        v = theta[..., self.sel]
        if self.q == 2:
            t = e[..., 0]
            return _neglog([t * t - (v * v).sum(-1) - self.c ** 2]) + _neglog([t])
        if self.q == 1:
            return _neglog([e - v, e + v])
        t = e[..., 0]
        return _neglog([t[..., None] - v, t[..., None] + v, t - np.abs(self.c)])

    def merit(self, theta, e, s, mu):
        t = self.t_of(e)
        f, bar = self.data(theta, t, s)
        phi = f + self.a * t * t + self.b * t
        bar = bar + np.where(self.norm_on, self.norm_barrier(theta, e), 0.0)
        return phi + mu * bar, phi

    def newton(self, theta, e, s, mu):
        """Newton step (dtheta, de, ds) of F_mu and the squared decrement."""
        S, G, p, m, n = *theta.shape[:2], self.p, self.m, self.n
        N = p + m
        H = np.zeros((S, G, N, N))
        g = np.zeros((S, G, N))
        t = self.t_of(e)
        z = self._z(theta)
        Xa = self.Xa[:, None]  # (S, 1, n, p)
        hz = gz = None
        ht = np.zeros((S, G))
        gt = np.zeros((S, G))
        hzt = None
        extra = 0.0
        y = self.y[:, None, :]
        if self.kind in ("squared", "logistic"):
            if self.kind == "squared":
                gz = (z - y) / n
                H[..., :p, :p] += self.XtX / n
            else:
                sig = expit(z)
                gz, hz = (sig - y) / n, sig * (1 - sig) / n
        elif self.kind == "rmse":
            r = z - y
            f = np.sqrt(np.mean(r * r, -1))
            gth = np.matmul(r[..., None, :], Xa)[..., 0, :] / (n * f[..., None])
            g[..., :p] += gth
            H[..., :p, :p] += self.XtX / (n * f[..., None, None]) \
                - gth[..., :, None] * gth[..., None, :] / f[..., None, None]
        else:
            phi, d1, d2, kap = self._rows(z, t)
            inv = [1.0 / (s - f + k) for f, k in zip(phi, kap)]
            kk = (0.0, self.kappa[..., None])
            gs = 1.0 / n - mu[..., None] * (inv[0] + inv[1])
            gz = mu[..., None] * sum(d * i for d, i in zip(d1, inv))
            gtr = -mu[..., None] * sum(k * i for k, i in zip(kk, inv))
            hss = mu[..., None] * sum(i * i for i in inv)
            hsz = -mu[..., None] * sum(d * i * i for d, i in zip(d1, inv))
            hst = mu[..., None] * sum(k * i * i for k, i in zip(kk, inv))
            hz = mu[..., None] * sum(d * d * i * i + c2 * i for d, c2, i in zip(d1, d2, inv))
            hzt = -mu[..., None] * sum(d * k * i * i for d, k, i in zip(d1, kk, inv))
            htt = mu[..., None] * sum(k * k * i * i for k, i in zip(kk, inv))
            # eliminate s: reduced (z, t) blocks per row
            gz = gz - hsz * gs / hss
            gtr = gtr - hst * gs / hss
            hz = hz - hsz * hsz / hss
            hzt = hzt - hsz * hst / hss
            htt = htt - hst * hst / hss
            gt += gtr.sum(-1)
            ht += htt.sum(-1)
            extra = (gs * gs / hss).sum(-1)
        if gz is not None:
            g[..., :p] += np.matmul(gz[..., None, :], Xa)[..., 0, :]
        if hz is not None:
            H[..., :p, :p] += np.matmul(Xa.transpose(0, 1, 3, 2) * hz[..., None, :], Xa)
        on = self.norm_on
        gt += np.where(on, 2 * self.a * t + self.b, 0.0)
        ht += np.where(on, 2 * self.a, 0.0)
        g[..., p:] += gt[..., None]
        H[..., p:, p:] += ht[..., None, None]
        if hzt is not None:
            col = np.matmul(hzt[..., None, :], Xa)[..., 0, :]
            H[..., :p, p:] += col[..., None]
            H[..., p:, :p] += col[..., None, :]
        self._norm_derivs(theta, e, mu * on, g, H)
        H[..., p:, p:] += np.where(on, 0.0, 1.0)[..., None, None] * np.eye(m)
        ridge = 1e-13 * np.abs(np.diagonal(H, axis1=-2, axis2=-1)).max(-1) + 1e-300
        step = -np.linalg.solve(H + ridge[..., None, None] * np.eye(N), g[..., None])[..., 0]
        dth, de = step[..., :p], step[..., p:]
        lam2 = -(g * step).sum(-1)
        ds = None
        if self.rows:
            dz = self._z(dth)
            ds = -(gs + hsz * dz + hst * (de.sum(-1))[..., None]) / hss
            lam2 = lam2 + extra
        return dth, de, ds, lam2

    def _norm_derivs(self, theta, e, w, g, H):
        """Add w * (gradient, Hessian) of the norm-epigraph barrier in (theta[sel], e)."""
        p, sel = self.p, self.sel
        v = theta[..., sel]
        W = w[..., None]
        Hv = np.zeros(v.shape + (v.shape[-1],))
        if self.q == 2:
            t = e[..., 0]
            D = t * t - (v * v).sum(-1) - self.c ** 2
            gv, gtt = 2 * v / D[..., None], -2 * t / D - 1 / t
            Hv = 4 * v[..., :, None] * v[..., None, :] / (D * D)[..., None, None] \
                + 2 * np.eye(self.k) / D[..., None, None]
            hvt = -4 * v * (t / (D * D))[..., None]
            htt = 4 * t * t / (D * D) - 2 / D + 1 / (t * t)
            g[..., sel] += W * gv
            g[..., p] += w * gtt
            H[..., sel[:, None], sel[None, :]] += W[..., None] * Hv
            H[..., sel, p] += W * hvt
            H[..., p, sel] += W * hvt
            H[..., p, p] += w * htt
            return
        if self.q == 1:
            A, Bm = e - v, e + v
            ia, ib = 1 / A, 1 / Bm
            diag = ia * ia + ib * ib
            cross = -ia * ia + ib * ib
            g[..., sel] += W * (ia - ib)
            g[..., p:] += W * (-ia - ib)
            k = np.arange(self.k)
            H[..., sel, sel] += W * diag
            H[..., sel, p + k] += W * cross
            H[..., p + k, sel] += W * cross
            H[..., p + k, p + k] += W * diag
            return
        t = e[..., 0]
        A, Bm, C = t[..., None] - v, t[..., None] + v, t - np.abs(self.c)
        ia, ib = 1 / A, 1 / Bm
        g[..., sel] += W * (ia - ib)
        g[..., p] += w * (-(ia + ib).sum(-1) - 1 / C)
        H[..., sel, sel] += W * (ia * ia + ib * ib)
        cross = -ia * ia + ib * ib
        H[..., sel, p] += W * cross
        H[..., p, sel] += W * cross
        H[..., p, p] += w * ((ia * ia + ib * ib).sum(-1) + 1 / (C * C))

    def max_step(self, theta, e, dth, de):
        """Largest alpha keeping the norm block's slacks positive (inf if unbounded); the
        row slacks are left to the line search (steps to their boundary slow it down)."""
        parts = []  # (slack, its rate of change) pairs of linear constraints
        v, dv = theta[..., self.sel], dth[..., self.sel]
        if self.q == 1:
            parts += [(e - v, de - dv), (e + v, de + dv)]
        elif self.q == np.inf:
            t, dt = e[..., :1], de[..., :1]
            parts += [(t - v, dt - dv), (t + v, dt + dv), (t - np.abs(self.c)[..., None], dt)]
        alpha = np.full(theta.shape[:2], np.inf)
        for g, dg in parts:
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(dg < 0, -g / dg, np.inf)
            alpha = np.minimum(alpha, ratio.reshape(alpha.shape + (-1,)).min(-1))
        if self.q == 2:  # smallest positive root of (t + a dt)^2 - ||v + a dv||^2 - c^2
            t, dt = e[..., 0], de[..., 0]
            A = dt * dt - (dv * dv).sum(-1)
            B = 2 * (t * dt - (v * dv).sum(-1))
            C = t * t - (v * v).sum(-1) - self.c ** 2
            with np.errstate(divide="ignore", invalid="ignore"):
                disc = np.sqrt(np.maximum(B * B - 4 * A * C, 0.0))
                roots = np.stack([(-B - disc) / (2 * A), (-B + disc) / (2 * A),
                                  np.where(dt < 0, -t / dt, np.inf)])
            roots = np.where(np.isfinite(roots) & (roots > 0), roots, np.inf)
            alpha = np.minimum(alpha, roots.min(0))
        return np.where(self.norm_on, alpha, np.inf)

    def take(self, cols):
        """The problems of settings ``cols`` only (same training sets)."""
        sub = copy.copy(self)
        for name in ("c", "a", "b", "kappa", "norm_on", "c1", "nu"):
            setattr(sub, name, getattr(self, name)[:, cols])
        return sub

    def norm_value(self, theta):
        v = np.concatenate([theta[..., self.sel], np.broadcast_to(self.c[..., None], theta.shape[:-1] + (1,))], -1)
        return np.linalg.norm(v, self.q, axis=-1)


def _softplus(z):
    """log(1 + e^z), stably (numpy's logaddexp is slower)."""
    return np.maximum(z, 0.0) + np.log1p(np.exp(-np.abs(z)))


def _neglog(parts):
    """-sum log of the entries of each (S, G, ...) part; nan where one is <= 0 (infeasible)."""
    total = 0.0
    for x in parts:
        with np.errstate(divide="ignore", invalid="ignore"):
            lx = np.log(np.where(x > 0, x, np.nan))
        total = total - lx.reshape(lx.shape[:2] + (-1,)).sum(-1)
    return total


def solve(Xa, y, *, kind, q, sel, c, a, b, kappa, tol, max_iter):
    """Minimise the problems (S, G); see the module docstring.

    Xa (S, n, p) with the ones column last when there is an intercept; y (S, n);
    c, a, b, kappa (S, G). Returns theta (S, G, p), the objective (S, G) evaluated
    exactly at theta (slacks replaced by the max they bound; for ``flip`` at t the
    solver's lambda), Newton steps n_iter (S, G) and converged (S, G): gap <= tol.
    """
    # One BLAS thread: the products here are small, and OpenBLAS's spinning threads
    # slow them down several times on a busy machine (see experiments/quickstart.py).
    with threadpool_limits(1, user_api="blas"):
        return _solve(Xa, y, kind, q, sel, c, a, b, kappa, tol, max_iter)


def _solve(Xa, y, kind, q, sel, c, a, b, kappa, tol, max_iter):
    S, G = c.shape
    pb = _Problem(Xa, y, kind, q, np.asarray(sel), c, a, b, kappa)
    theta = np.zeros((S, G, pb.p))
    e, s = pb.start(theta)
    F, phi = pb.merit(theta, e, s, np.zeros((S, G)))
    mu = (1.0 + np.abs(phi)) / pb.nu
    done = np.zeros((S, G), bool)
    n_iter = np.zeros((S, G), int)
    stuck = np.zeros((S, G), bool)
    factor = MU_FACTOR_ROWS if pb.rows else MU_FACTOR
    for _ in range(max_iter * 4):
        # work on the settings (columns) with a problem still running: iteration counts
        # differ mostly between settings, and finished ones would cost as much as live ones
        cols = np.flatnonzero(~(done | (n_iter >= max_iter)).all(0))
        if cols.size == 0:
            break
        sub = pb if cols.size == G else pb.take(cols)
        th, ee, ss, m = theta[:, cols], e[:, cols], None if s is None else s[:, cols], mu[:, cols]
        dn, st, it = done[:, cols], stuck[:, cols], n_iter[:, cols]
        off = ~sub.norm_on
        if off.any():  # t is free and unpriced there: keep it feasible, out of the step
            ee = np.where(off[..., None], sub.start(th)[0], ee)
        F, phi = sub.merit(th, ee, ss, m)
        dth, de, ds, lam2 = sub.newton(th, ee, ss, m)
        # stages before the last stop at a scaled decrement lam2 / mu <= 1/4 (the
        # quadratic-convergence region); the last one centres to 0.1 tol
        last = sub.nu * m <= tol * (1 + np.abs(phi))
        dn = dn | (last & ((lam2 / 2 <= 0.1 * tol * (1 + np.abs(phi))) | st))
        shrink = ~last & ((lam2 <= 0.25 * m) | st)
        m = np.where(shrink, m / factor, m)
        move = ~shrink & ~dn & (it < max_iter)
        alpha = np.where(move, np.minimum(1.0, 0.99 * sub.max_step(th, ee, dth, de)), 0.0)
        pending = move.copy()
        for _ in range(60 if move.any() else 0):
            F_new, _ = sub.merit(th + alpha[..., None] * dth, ee + alpha[..., None] * de,
                                 None if ss is None else ss + alpha[..., None] * ds, m)
            ok = np.isfinite(F_new) & (F_new <= F - ARMIJO * alpha * lam2)
            pending &= ~ok
            if not pending.any():
                break
            alpha = np.where(pending, alpha / 2, alpha)
        alpha = np.where(pending, 0.0, alpha)  # no decrease found: treat as stuck
        theta[:, cols] = th + alpha[..., None] * dth
        e[:, cols] = ee + alpha[..., None] * de
        if s is not None:
            s[:, cols] = ss + alpha[..., None] * ds
        mu[:, cols], done[:, cols], n_iter[:, cols] = m, dn, it + move
        stuck[:, cols] = move & (alpha == 0)  # no decrease at roundoff level: count as centred
    t = pb.t_of(e) if kind == "flip" else pb.norm_value(theta)  # flip: lambda is free
    objective = _objective(pb, theta, t)
    return theta, objective, n_iter, done


def _objective(pb, theta, t):
    z = pb._z(theta)
    if pb.rows:
        phi, _, _, kap = pb._rows(z, t)
        data = np.max([f - k for f, k in zip(phi, kap)], axis=0).mean(-1)
    else:
        data, _ = pb.data(theta, t, None, z)
    return data + pb.a * t * t + pb.b * t
