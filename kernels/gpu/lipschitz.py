"""Batched Lipschitz regularisers on the GPU (triton).

Backend contract and math: :mod:`mithridate.reference.lipschitz` and
:func:`mithridate.ops.lipschitz`. The tight bound of the squared and logistic
losses is a max over rows of a function of z_i = x_i . w + b. A program owns
a block of thetas and a set of row tiles (grid stride, tiles and program
counts shared with :mod:`.linear`): per tile Z = W X_tile^T (``tl.dot`` for
blocks of 16 thetas), the per-row score in registers, then a running max and
argmax per theta. The B x n matrix is never stored. Each program writes its
partial (max, argmax, nan count); the final reduction takes the lowest row
among the programs' maxima, so ties go to the lowest row as in the numba
kernel, whatever the grid. The value and subgradient are then recomputed in
float64 from the argmax row alone, by the reference's own formula, so the
subgradient follows the reference's conventions (where the dual norm itself
ties, e.g. two largest |entries| for q = inf, autograd splits the gradient
between them while the numba kernel gives it to the first).

Scores are computed in X's dtype: in float32 two rows within rounding of each
other may swap (either is a valid argmax). The paper bound and the absolute
loss do not read X: they are the reference's closed forms on the device.
"""
import functools
import math

import torch
import triton
import triton.language as tl

from ...reference.lipschitz import _value as reference_value, lipschitz as reference_lipschitz
from . import linear
from .linear import _block_d, _times_xt

Q_KINDS = {1.0: 0, 2.0: 1, math.inf: 2}  # anything else: general q (3)


@triton.jit
def _score(z, y, nw, q, LOGISTIC: tl.constexpr, Q_KIND: tl.constexpr):
    """Monotone proxy of the row's dual norm: squared |z - y|; logistic
    ||(|sigmoid(z) - y| nw, |z|)||_q, scaled by its larger entry (no overflow)."""
    if LOGISTIC:
        t = tl.exp(-tl.abs(z))  # sigmoid from exp(-|z|): stable for any z
        sig = tl.where(z >= 0.0, 1.0 / (1.0 + t), t / (1.0 + t))
        u = tl.abs(sig - y) * nw
        v = tl.abs(z)
        if Q_KIND == 0:
            s = u + v
        else:
            hi = tl.maximum(u, v)
            if Q_KIND == 2:
                s = hi
            else:
                lo = tl.minimum(u, v) / tl.where(hi > 0.0, hi, 1.0)
                if Q_KIND == 1:
                    s = hi * tl.sqrt(1.0 + lo * lo)
                else:
                    lo_q = tl.where(lo > 0.0, tl.exp(q * tl.log(tl.where(lo > 0.0, lo, 1.0))), 0.0)
                    s = hi * tl.exp(tl.log(1.0 + lo_q) / q)
    else:
        s = tl.abs(z - y)
    return s


@triton.jit
def _tight_kernel(X, Y, W, NW, QP, BEST, ARG, BAD, n, d, p, n_thetas, n_prog,
                  LOGISTIC: tl.constexpr, Q_KIND: tl.constexpr, FIT_B: tl.constexpr,
                  USE_DOT: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr,
                  BLOCK_D: tl.constexpr):
    """BEST[t, pid_n], ARG[t, pid_n]: max score of theta t over the row tiles
    pid_n, pid_n + n_prog, ... and its lowest row; BAD[t, pid_n]: nan scores."""
    pid_n = tl.program_id(0)
    pid_b = tl.program_id(1)
    thetas = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    tmask = thetas < n_thetas
    w_rows = W + thetas[:, None].to(tl.int64) * p
    dt = X.dtype.element_ty
    q = tl.load(QP)
    nw = tl.load(NW + thetas, mask=tmask, other=0.0)[:, None]
    if FIT_B:
        bias = tl.load(w_rows + d, mask=tmask[:, None], other=0.0)
    best = tl.full((BLOCK_B,), -1.0, dt)  # scores are >= 0
    arg = tl.zeros((BLOCK_B,), tl.int64)
    bad = tl.zeros((BLOCK_B,), tl.int32)
    for tile in range(pid_n, tl.cdiv(n, BLOCK_N), n_prog):
        rows = (tile * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
        rmask = rows < n
        x_rows = X + rows[:, None] * d
        z = tl.zeros((BLOCK_B, BLOCK_N), dt)
        for j0 in range(0, d, BLOCK_D):
            cols = j0 + tl.arange(0, BLOCK_D)
            cmask = cols[None, :] < d
            x = tl.load(x_rows + cols[None, :], mask=rmask[:, None] & cmask, other=0.0)
            w = tl.load(w_rows + cols[None, :], mask=tmask[:, None] & cmask, other=0.0)
            z += _times_xt(w, x, USE_DOT)
        if FIT_B:
            z += bias
        y = tl.load(Y + rows, mask=rmask, other=0.0)[None, :]
        s = _score(z, y, nw, q, LOGISTIC, Q_KIND)
        keep = tmask[:, None] & rmask[None, :]
        bad += tl.sum((keep & (s != s)).to(tl.int32), axis=1)
        s = tl.where(keep & (s == s), s, -1.0)
        top = tl.max(s, axis=1)
        first = tl.min(tl.where(s == top[:, None], rows[None, :], n), axis=1)
        better = top > best  # strict: earlier tiles (lower rows) keep ties
        best = tl.where(better, top, best)
        arg = tl.where(better, first, arg)
    out = thetas.to(tl.int64) * n_prog + pid_n
    tl.store(BEST + out, best, mask=tmask)
    tl.store(ARG + out, arg, mask=tmask)
    tl.store(BAD + out, bad, mask=tmask)


@triton.jit
def _row_norms_kernel(X, PP, OUT, BAD, n, d, n_prog, P_KIND: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """OUT[pid] = max over the program's rows of ||x_i||_p**p (max |x_ij| for
    p = inf) in float64; BAD[pid] = its nan entries."""
    pid = tl.program_id(0)
    p = tl.load(PP)
    hi = tl.zeros((BLOCK_N,), tl.float64)
    bad = tl.zeros((BLOCK_N,), tl.int32)
    for tile in range(pid, tl.cdiv(n, BLOCK_N), n_prog):
        rows = (tile * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
        rmask = rows < n
        acc = tl.zeros((BLOCK_N,), tl.float64)
        for j0 in range(0, d, BLOCK_D):
            cols = j0 + tl.arange(0, BLOCK_D)
            m = rmask[:, None] & (cols[None, :] < d)
            a = tl.abs(tl.load(X + rows[:, None] * d + cols[None, :], mask=m, other=0.0).to(tl.float64))
            bad += tl.sum((a != a).to(tl.int32), axis=1)
            if P_KIND == 0:
                acc += tl.sum(a, axis=1)
            elif P_KIND == 1:
                acc += tl.sum(a * a, axis=1)
            elif P_KIND == 2:
                acc = tl.maximum(acc, tl.max(tl.where(a == a, a, 0.0), axis=1))
            else:
                acc += tl.sum(tl.where(a > 0.0, tl.exp(p * tl.log(tl.where(a > 0.0, a, 1.0))), 0.0), axis=1)
        hi = tl.maximum(hi, tl.where(acc == acc, acc, 0.0))
    tl.store(OUT + pid, tl.max(hi, axis=0))
    tl.store(BAD + pid, tl.sum(bad, axis=0))


def _n_programs(n, n_blocks):
    # fixed by the shape alone, so the reduction never depends on the GPU
    return max(1, min(triton.cdiv(n, linear.BLOCK_N), linear.MAX_PROGRAMS // n_blocks))


def data_bounds(X, y, p):
    """(max_i ||x_i||_p, max_i |y_i|) as floats (nan if X holds a nan), one pass over X."""
    n, d = X.shape
    n_prog = _n_programs(n, 1)
    out = torch.empty(n_prog, dtype=torch.float64, device=X.device)
    bad = torch.empty(n_prog, dtype=torch.int32, device=X.device)
    pp = torch.tensor([p], dtype=torch.float64, device=X.device)
    _row_norms_kernel[(n_prog,)](X, pp, out, bad, n, d, n_prog, P_KIND=Q_KINDS.get(p, 3),
                                 BLOCK_N=linear.BLOCK_N, BLOCK_D=_block_d(d))
    hi = math.nan if bool(bad.any()) else float(out.max())
    hi = hi if p in (1.0, math.inf) else math.sqrt(hi) if p == 2.0 else hi ** (1.0 / p)
    return hi, float(y.abs().max())


@functools.lru_cache(maxsize=None)
def _row_constant(loss, q, fit_intercept):
    """theta (p,), x (d,), y () -> the tight constant of that single row,
    the reference's formula; vmapped over thetas."""
    def one(theta, x, y):
        return reference_value(theta[None], x[None], y[None], loss, q, "tight", fit_intercept, None)[0]
    return torch.func.vmap(one)


def _tight(theta, X, y, loss, q, fit_intercept):
    n, d = X.shape
    B = theta.shape[0]
    use_dot = B >= linear.DOT_MIN_BATCH
    block_b = linear.DOT_BLOCK_B if use_dot else 1
    n_blocks = triton.cdiv(B, block_b)
    n_prog = _n_programs(n, n_blocks)
    nw = torch.linalg.vector_norm(theta[:, :d].double(), ord=q, dim=1).to(X.dtype)  # ||w||_*
    best = torch.empty((B, n_prog), dtype=X.dtype, device=X.device)
    arg = torch.empty((B, n_prog), dtype=torch.int64, device=X.device)
    bad = torch.empty((B, n_prog), dtype=torch.int32, device=X.device)
    qp = torch.tensor([q], dtype=X.dtype, device=X.device)
    _tight_kernel[(n_prog, n_blocks)](
        X, y, theta, nw, qp, best, arg, bad, n, d, theta.shape[1], B, n_prog,
        LOGISTIC=loss == "logistic", Q_KIND=Q_KINDS.get(q, 3), FIT_B=bool(fit_intercept),
        USE_DOT=use_dot, BLOCK_B=block_b, BLOCK_N=linear.BLOCK_N, BLOCK_D=_block_d(d))
    top = best.max(dim=1, keepdim=True).values
    k = torch.where(best == top, arg, n).min(dim=1).values  # lowest row among the programs' maxima
    th = theta.detach().double().requires_grad_(True)
    value = _row_constant(loss, q, bool(fit_intercept))(th, X[k].double(), y[k].double())
    (grad,) = torch.autograd.grad(value.sum(), th)
    value = torch.where(bad.sum(dim=1) > 0, math.nan, value.detach())  # the caller names the row
    return value, grad


def lipschitz(theta, X, y, loss, q, bound, fit_intercept, bounds):
    """(value (B,), subgrad (B, p)) in X's dtype; values are nan when a row of X
    gave a nan score (as the reference's max does), so the caller can name the row."""
    if bound == "paper" or loss == "absolute":  # closed forms in theta alone
        value, grad = reference_lipschitz(theta.double(), X, y, loss, q, bound, fit_intercept, bounds)
    else:
        value, grad = _tight(theta, X, y, loss, q, fit_intercept)
    return value.to(X.dtype), grad.to(X.dtype)
