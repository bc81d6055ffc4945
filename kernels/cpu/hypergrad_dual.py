"""The Gram (dual) form of the linear hypergradient loops, for problems with fewer
training rows than features (paper 002's 512 x 784 MNIST sets).

From theta_0 = 0 every heavy-ball iterate keeps its weights in the span of the
training rows: w_t = X^T a_t, v_t = X^T p_t (the velocity), since each step adds
X^T l'(z) / n + e w. So a step needs z = K a + b with K = X X^T (n x n), one
product with K instead of the primal's two passes over X (n x d): the primal step
costs 2 n d multiply-adds, this one n^2, and K's clean block is formed once per
prepared engine (mithridate/hypergrad/dual.py). The recursions, per problem:

    q = l'(z) / n + e a          (g_w = X^T q;  g_b = sum l'(z) / n)
    p = gamma p - (1 - gamma) q,  a += alpha p      (the same for the intercept)
    z += alpha (K p + v_b)       (K p by the same recursion over K q)
    G_t = ||g||^2 = q . K q + g_b^2                 (the divergence check)

The reverse sweep's adjoints lie in the span of the training and validation rows:
theta_bar_w = X^T beta + s Xv^T c, with c = l'_v / nv the validation gradient's
coefficients, which the step only rescales (s), so X u needs one product K beta
plus s K_v^T c. The mixed products with the poisoning rows come out as
coefficients A (k, n), S (k): d/dXp = A X + S (Xv^T c) (one BLAS product
afterwards, in dual.py). Forward mode carries the tangent a' with K [q, q'] in
one read of K.

K is read in X's dtype by the primal's row-dot kernels (kernels/cpu/linear.py);
the state is float64. Problems sharing their clean rows go
together: K's clean block is read once per step for all of them. Results equal
the primal loops' up to rounding (another summation order): tests/test_hypergrad_dual.py.
"""
import numpy as np
from numba import njit

from ._math import JIT
from .hypergrad import _watch, new_watch
from .hypergrad_shared import _dots
from .linear import _terms

VALUE, FORWARD, REVERSE = 0, 1, 2  # what `run` computes


@njit(**JIT)
def _dot(row, v, n):
    """row[:n] . v[:n], summed in their dtype as linear._dot_rows does."""
    acc = row.dtype.type(0)
    for c in range(n):
        acc += row[c] * v[c]
    return np.float64(acc)


@njit(**JIT)
def _kmv(Kcc, Kpc, Kpp, V, out):
    """out[c, :n] = K_b v_c for every vector c (problem b = c % G), K_b = [[Kcc, Kpc_b^T],
    [Kpc_b, Kpp_b]] (clean rows first). V (M, n + 1) in K's dtype holds
    [v_clean, 0, v_poisoning] (the 0 where hypergrad_shared._dots reads a bias); out
    (M, n) float64. The clean block four vectors per read of Kcc (_dots)."""
    M = V.shape[0]
    G, k, nc = Kpc.shape
    _dots(Kcc, 0, nc, V, 0, M, out)
    for q in range(M):
        b = q % G
        o = out[q]
        vq = V[q]
        for r in range(k):
            prow = Kpc[b, r]
            vr = np.float64(vq[nc + 1 + r])
            for i in range(nc):
                o[i] += vr * prow[i]
            o[nc + r] = _dot(prow, vq, nc) + _dot(Kpp[b, r], vq[nc + 1:], k)


@njit(**JIT)
def _step(b, p, a, Kp, z, vb, bt, q, Kq, qb, alpha, gamma):
    """Problem b's heavy-ball step in coefficients (module docstring): p, a, K p, z
    and the intercept's vb, bt from q, K q and the intercept's gradient qb. The
    tangents of forward mode take the same step."""
    s1 = 1.0 - gamma
    vb[b] = gamma * vb[b] - s1 * qb
    bt[b] += alpha * vb[b]
    for i in range(p.shape[1]):
        p[b, i] = gamma * p[b, i] - s1 * q[b, i]
        a[b, i] += alpha * p[b, i]
        Kp[b, i] = gamma * Kp[b, i] - s1 * Kq[i]
        z[b, i] += alpha * (Kp[b, i] + vb[b])


@njit(**JIT)
def _kv(Kvc, Kvp, a, bt, zv):
    """zv = K_v a + bt: the validation logits of w = X^T a (K_v = [Kvc, Kvp])."""
    nv, nc = Kvc.shape
    k = Kvp.shape[1]
    for i in range(nv):
        s = bt
        for c in range(nc):
            s += Kvc[i, c] * a[c]
        for r in range(k):
            s += Kvp[i, r] * a[nc + r]
        zv[i] = s


@njit(**JIT)
def _val(Kvc, Kvp, yv, code, a, bt, zv, c1, t, bits):
    """Mean validation loss at w = X^T a, intercept bt; c1 = l'(zv) / nv."""
    nv = Kvc.shape[0]
    _kv(Kvc, Kvp, a, bt, zv)
    total = _terms(code, zv, yv, None, nv, c1, None, t, bits)
    for i in range(nv):
        c1[i] /= nv
    return total / nv


@njit(**JIT)
def run(what, Kcc, Kpc, Kpp, Kvc, Kvp, yc, yp, yv, code, fit_b, alpha, gamma, e, T, kg,
        out, A, S, C, a_T):
    """Value, forward mode or trajectory RMD of G problems from theta_0 = 0.

    Kcc (nc, nc) = Xc Xc^T; Kpc (G, k, nc) = Xp Xc^T; Kpp (G, k, k) = Xp Xp^T;
    Kvc (nv, nc) = Xv Xc^T; Kvp (G, nv, k) = Xv Xp^T (all in X's dtype); yc (nc,),
    yp (G, k), yv (nv,); e (G,) = exp(lam). Writes out (G, 3) = (value, dlam,
    first diverged step or -1), a_T (G, n + 1) (theta_T's coefficients, the
    intercept last) and, for REVERSE, A (G, kg, n), S (G, kg), C (G, nv): the
    trailing kg poisoning rows' gradients are A X + S (Xv^T C)."""
    G, k = yp.shape
    nc = Kcc.shape[0]
    n = nc + k
    nv = yv.shape[0]
    dt = Kcc.dtype
    m = 2 if what == FORWARD else 1
    Vx = np.zeros((2, G, n + 1), dtype=dt)  # the vectors K multiplies (_kmv's layout)
    KV = np.empty((2, G, n))
    a = np.zeros((G, n))
    p = np.zeros((G, n))
    z = np.zeros((G, n))
    Kp = np.zeros((G, n))
    bt = np.zeros(G)
    vb = np.zeros(G)
    da = np.zeros((G, n))                   # forward mode: the tangents d/dlam
    dp = np.zeros((G, n))
    dz = np.zeros((G, n))
    dKp = np.zeros((G, n))
    dbt = np.zeros(G)
    dvb = np.zeros(G)
    keep = T if what == REVERSE else 0
    traj_a = np.empty((keep, G, n))
    traj_z = np.empty((keep, G, n))
    traj_b = np.empty((keep, G))
    y = np.empty(n)
    c1 = np.empty(max(n, nv))
    c2 = np.empty(max(n, nv))
    tt = np.empty(max(n, nv))
    bits = np.empty(max(n, nv), dtype=np.int64)
    q = np.empty((G, n))
    qb = np.zeros(G)
    dq = np.empty((G, n))
    dqb = np.zeros(G)
    watch = np.empty((G, 2))
    for b in range(G):
        watch[b] = new_watch()
    y[:nc] = yc
    for t in range(T + (what == VALUE)):  # value mode also checks the gradient at theta_T
        if keep:
            traj_a[t] = a
            traj_z[t] = z
            traj_b[t] = bt
        for b in range(G):
            y[nc:] = yp[b]
            _terms(code, z[b], y, None, n, c1, c2 if what == FORWARD else None, tt, bits)
            sb = 0.0
            dsb = 0.0
            for i in range(n):
                q[b, i] = c1[i] / n + e[b] * a[b, i]
                Vx[0, b, i + (i >= nc)] = q[b, i]
                sb += c1[i]
                if what == FORWARD:  # the tangent of q: l'' z' / n + e (a' + a)
                    h = c2[i] * dz[b, i] / n
                    dq[b, i] = h + e[b] * (da[b, i] + a[b, i])
                    Vx[1, b, i + (i >= nc)] = dq[b, i]
                    dsb += h
            qb[b] = sb / n if fit_b else 0.0
            dqb[b] = dsb if fit_b else 0.0
        _kmv(Kcc, Kpc, Kpp, Vx[:m].reshape(m * G, n + 1), KV[:m].reshape(m * G, n))
        for b in range(G):
            gg = qb[b] * qb[b]
            for i in range(n):
                gg += q[b, i] * KV[0, b, i]
            _watch(gg, gamma, t, watch[b])
            if t == T:
                continue
            _step(b, p, a, Kp, z, vb, bt, q, KV[0, b], qb[b], alpha, gamma)
            if what == FORWARD:
                _step(b, dp, da, dKp, dz, dvb, dbt, dq, KV[1, b], dqb[b], alpha, gamma)
    zv = np.empty(nv)
    for b in range(G):
        out[b, 0] = _val(Kvc, Kvp[b], yv, code, a[b], bt[b], zv, c1, tt, bits)
        out[b, 1] = 0.0
        out[b, 2] = watch[b, 1]
        a_T[b, :n] = a[b]
        a_T[b, n] = bt[b]
        C[b] = c1[:nv]
        if what == FORWARD:  # dvalue/dlam = (l'_v / nv) . (K_v a' + b')
            _kv(Kvc, Kvp[b], da[b], dbt[b], zv)
            for i in range(nv):
                out[b, 1] += C[b, i] * zv[i]
    if what != REVERSE:
        return
    _reverse(Kcc, Kpc, Kpp, Kvc, Kvp, yc, yp, code, fit_b, alpha, gamma, e, T, kg, traj_a,
             traj_z, traj_b, Vx, KV, y, c1, c2, tt, bits, out, A, S, C)


@njit(**JIT)
def _reverse(Kcc, Kpc, Kpp, Kvc, Kvp, yc, yp, code, fit_b, alpha, gamma, e, T, kg, traj_a,
             traj_z, traj_b, Vx, KV, y, c1, c2, tt, bits, out, A, S, C):
    """The reverse sweep of `run` (module docstring): adjoint coefficients
    theta_bar = X^T beta + s Xv^T c (+ intercept), u the adjoint of v_{t+1}."""
    G, k = yp.shape
    nc = Kcc.shape[0]
    n = nc + k
    nv = Kvc.shape[0]
    s1 = 1.0 - gamma
    uc = np.zeros((G, n))  # K_v^T c: the validation part of X u per unit of s
    for b in range(G):
        for j in range(nv):
            cj = C[b, j]
            for i in range(nc):
                uc[b, i] += Kvc[j, i] * cj
            for r in range(k):
                uc[b, nc + r] += Kvp[b, j, r] * cj
    beta = np.zeros((G, n))  # theta_bar
    s_th = np.ones(G)
    tb_b = np.zeros(G)
    for b in range(G):
        if fit_b:
            for j in range(nv):
                tb_b[b] += C[b, j]
    bv = np.zeros((G, n))    # v_bar
    s_v = np.zeros(G)
    vb_b = np.zeros(G)
    bu = np.zeros((G, n))    # u = v_bar + alpha theta_bar
    s_u = np.zeros(G)
    u_b = np.zeros(G)
    A[:] = 0.0
    S[:] = 0.0
    first = k - kg
    y[:nc] = yc
    for t in range(T - 1, -1, -1):
        for b in range(G):
            s_u[b] = s_v[b] + alpha * s_th[b]
            u_b[b] = vb_b[b] + alpha * tb_b[b]
            for i in range(n):
                bu[b, i] = bv[b, i] + alpha * beta[b, i]
                Vx[0, b, i + (i >= nc)] = bu[b, i]
        _kmv(Kcc, Kpc, Kpp, Vx[0], KV[0])
        for b in range(G):
            y[nc:] = yp[b]
            _terms(code, traj_z[t, b], y, None, n, c1, c2, tt, bits)
            at = traj_a[t, b]
            wu = 0.0
            hb = 0.0
            for i in range(n):  # X u on the training rows, then <w_t, u_w> = a_t . (K beta_u)
                mi = KV[0, b, i] + s_u[b] * uc[b, i]
                wu += at[i] * mi
                KV[0, b, i] = mi + u_b[b]
            out[b, 1] -= s1 * e[b] * wu
            for r in range(kg):  # mixed products d/dx_r (g . u), coefficients
                i = nc + first + r
                f2 = s1 * c2[i] * KV[0, b, i] / n
                f1 = s1 * c1[i] / n
                Ar = A[b, r]
                for j in range(n):
                    Ar[j] -= f2 * at[j] + f1 * bu[b, j]
                S[b, r] -= f1 * s_u[b]
            for i in range(n):  # theta_bar -= (1 - gamma) H u; v_bar = gamma u
                h = c2[i] * KV[0, b, i] / n
                hb += h
                beta[b, i] -= s1 * (h + e[b] * bu[b, i])
                bv[b, i] = gamma * bu[b, i]
            s_th[b] -= s1 * e[b] * s_u[b]
            if fit_b:
                tb_b[b] -= s1 * hb
            s_v[b] = gamma * s_u[b]
            vb_b[b] = gamma * u_b[b]
