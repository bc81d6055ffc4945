"""Fused linear-model kernels on the GPU (triton).

Backend contract: see :mod:`mithridate.reference.linear`. Each call makes ONE
pass over X. A program owns a set of row tiles (BLOCK_N rows, taken with a
grid stride) and a block of BLOCK_B parameter vectors. Per tile it computes
z = X w + b (and u = X v for the HVP) over d in BLOCK_D chunks, evaluates the
loss terms c in registers, then reads the same tile again (now in L2) to add
X^T c into its own row of a (B, n_programs, p) partial buffer. The partials
are summed afterwards in float64: no atomics, so results are deterministic,
and the number of programs depends on the shape only, not on the GPU.

Independent problems (X of shape (B, n, d)) put one problem per program on
the grid's second axis, X offset by problem. Many thetas against one X take
the matrix-matrix route: BLOCK_B = 16 thetas per program, Z^T = Theta X^T and
G = C X by ``tl.dot`` (IEEE precision: TF32 would break the float32
tolerance), so X is read once for all the thetas of the block.

Arithmetic is in X's dtype (float32 or float64) inside the kernels; the
regulariser and the final reductions are float64.
"""
import torch
import triton
import triton.language as tl

LOSS_CODES = {"logistic": 0, "squared": 1, "absolute": 2}
DOT_MIN_BATCH = 4    # shared X with at least this many thetas: tl.dot route
DOT_BLOCK_B = 16     # thetas per program on that route (tl.dot needs >= 16)
MAX_PROGRAMS = 1024  # row programs x theta blocks: several waves on an H100
BLOCK_N = 64         # rows per tile
MAX_BLOCK_D = 64     # columns per chunk; wider d is looped over


@triton.jit
def _log1p_unit(t):
    # log(1 + t) for t in [0, 1] to full precision with log alone (Goldberg):
    # u - 1 is exact, and log(u) / (u - 1) corrects the rounding of 1 + t.
    u = 1.0 + t
    du = u - 1.0
    return tl.where(du == 0.0, t, tl.log(u) * (t / tl.where(du == 0.0, 1.0, du)))


@triton.jit
def _loss_terms(z, y, LOSS: tl.constexpr):
    """(l(z, y), l'(z, y)) elementwise; logistic stable for any z."""
    if LOSS == 0:
        t = tl.exp(-tl.abs(z))  # in (0, 1], never overflows
        inv = 1.0 / (1.0 + t)
        loss = tl.maximum(z, 0.0) + _log1p_unit(t) - y * z
        grad = tl.where(z >= 0.0, inv, t * inv) - y
    elif LOSS == 1:
        r = z - y
        loss = 0.5 * r * r
        grad = r
    else:
        r = z - y
        loss = tl.abs(r)
        grad = (r > 0.0).to(r.dtype) - (r < 0.0).to(r.dtype)
    return loss, grad


@triton.jit
def _curvature(z, LOSS: tl.constexpr):
    """l''(z): sigmoid'(z) for logistic, 1 for squared, 0 for absolute."""
    if LOSS == 0:
        t = tl.exp(-tl.abs(z))
        inv = 1.0 / (1.0 + t)
        return t * inv * inv
    elif LOSS == 1:
        return tl.zeros_like(z) + 1.0
    else:
        return tl.zeros_like(z)


@triton.jit
def _times_xt(a, x, USE_DOT: tl.constexpr):
    """a (BB, BD) @ x (BN, BD)^T -> (BB, BN)."""
    if USE_DOT:
        return tl.dot(a, tl.trans(x), input_precision="ieee", out_dtype=x.dtype)
    else:  # BB == 1: a broadcast multiply-reduce (a GEMV)
        return tl.sum(a[:, None, :] * x[None, :, :], axis=2)


@triton.jit
def _times_x(c, x, USE_DOT: tl.constexpr):
    """c (BB, BN) @ x (BN, BD) -> (BB, BD)."""
    if USE_DOT:
        return tl.dot(c, x, input_precision="ieee", out_dtype=x.dtype)
    else:
        return tl.sum(c[:, :, None] * x[None, :, :], axis=1)


@triton.jit
def _rows_kernel(X, Y, S, W, V, LOSS_OUT, G_OUT, n, d, p, n_thetas, n_prog,
                 stride_xb, stride_yb,
                 LOSS: tl.constexpr, FIT_B: tl.constexpr, HAS_S: tl.constexpr,
                 WANT_HVP: tl.constexpr, USE_DOT: tl.constexpr,
                 BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """Row sums for thetas [pid_b * BLOCK_B, ...) over row tiles pid_n, pid_n + n_prog, ...

    loss_grad: LOSS_OUT[t, pid_n] = sum s l, G_OUT[t, pid_n] = X^T (s l').
    hvp: G_OUT[t, pid_n] = X^T (s l''(z) (X v_w + v_b)).
    """
    pid_n = tl.program_id(0)
    pid_b = tl.program_id(1)
    thetas = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    tmask = thetas < n_thetas
    # independent problems (stride_xb > 0) have BLOCK_B == 1: pid_b is the problem
    X += pid_b.to(tl.int64) * stride_xb
    Y += pid_b.to(tl.int64) * stride_yb
    S += pid_b.to(tl.int64) * stride_yb
    w_rows = W + thetas[:, None].to(tl.int64) * p
    v_rows = V + thetas[:, None].to(tl.int64) * p
    g_rows = G_OUT + (thetas[:, None].to(tl.int64) * n_prog + pid_n) * p
    dt = X.dtype.element_ty
    NEED_Z: tl.constexpr = not (WANT_HVP and LOSS == 1)  # squared HVP: l'' = 1
    if FIT_B:
        bias = tl.load(w_rows + d, mask=tmask[:, None], other=0.0)
        v_b = tl.load(v_rows + d, mask=tmask[:, None], other=0.0)
    total = tl.zeros((BLOCK_B,), dt)
    for tile in range(pid_n, tl.cdiv(n, BLOCK_N), n_prog):
        rows = tile * BLOCK_N + tl.arange(0, BLOCK_N)
        rmask = rows < n
        x_rows = X + rows[:, None].to(tl.int64) * d
        z = tl.zeros((BLOCK_B, BLOCK_N), dt)
        u = tl.zeros((BLOCK_B, BLOCK_N), dt)
        for j0 in range(0, d, BLOCK_D):
            cols = j0 + tl.arange(0, BLOCK_D)
            cmask = cols[None, :] < d
            x = tl.load(x_rows + cols[None, :], mask=rmask[:, None] & cmask, other=0.0)
            if NEED_Z:
                w = tl.load(w_rows + cols[None, :], mask=tmask[:, None] & cmask, other=0.0)
                z += _times_xt(w, x, USE_DOT)
            if WANT_HVP:
                v = tl.load(v_rows + cols[None, :], mask=tmask[:, None] & cmask, other=0.0)
                u += _times_xt(v, x, USE_DOT)
        if FIT_B:
            z += bias
            u += v_b
        keep = tmask[:, None] & rmask[None, :]
        if WANT_HVP:
            c = _curvature(z, LOSS) * u
        else:
            y = tl.load(Y + rows, mask=rmask, other=0.0)[None, :]
            loss, c = _loss_terms(z, y, LOSS)
        if HAS_S:
            s = tl.load(S + rows, mask=rmask, other=0.0)[None, :]
            c *= s
            if not WANT_HVP:
                loss *= s
        c = tl.where(keep, c, 0.0)
        if not WANT_HVP:
            total += tl.sum(tl.where(keep, loss, 0.0), axis=1)
        # second read of the tile (L2-resident): this program's partial X^T c
        for j0 in range(0, d, BLOCK_D):
            cols = j0 + tl.arange(0, BLOCK_D)
            cmask = cols[None, :] < d
            x = tl.load(x_rows + cols[None, :], mask=rmask[:, None] & cmask, other=0.0)
            g_ptr = g_rows + cols[None, :]
            gmask = tmask[:, None] & cmask
            tl.store(g_ptr, tl.load(g_ptr, mask=gmask) + _times_x(c, x, USE_DOT), mask=gmask)
        if FIT_B:
            g_ptr = g_rows + d
            tl.store(g_ptr, tl.load(g_ptr, mask=tmask[:, None]) + tl.sum(c, axis=1)[:, None],
                     mask=tmask[:, None])
    if not WANT_HVP:
        tl.store(LOSS_OUT + thetas.to(tl.int64) * n_prog + pid_n, total, mask=tmask)


@triton.jit
def _mixed_kernel(X, Y, S, W, V, ROWS, OUT, n, d, p, n_rows, stride_xb, stride_yb,
                  LOSS: tl.constexpr, FIT_B: tl.constexpr, HAS_S: tl.constexpr,
                  BLOCK_D: tl.constexpr):
    """OUT[b, k] = (s_i / n) (l''(z_i) (x_i . v_w + v_b) w + l'(z_i) v_w), i = ROWS[k]."""
    k = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    i = tl.load(ROWS + k)
    x_row = X + b * stride_xb + i * d
    w_row = W + b * p
    v_row = V + b * p
    dt = X.dtype.element_ty
    z = tl.zeros((BLOCK_D,), dt)
    u = tl.zeros((BLOCK_D,), dt)
    for j0 in range(0, d, BLOCK_D):
        cols = j0 + tl.arange(0, BLOCK_D)
        m = cols < d
        x = tl.load(x_row + cols, mask=m, other=0.0)
        z += x * tl.load(w_row + cols, mask=m, other=0.0)
        u += x * tl.load(v_row + cols, mask=m, other=0.0)
    z = tl.sum(z, axis=0)
    u = tl.sum(u, axis=0)
    if FIT_B:
        z += tl.load(w_row + d)
        u += tl.load(v_row + d)
    _, g1 = _loss_terms(z, tl.load(Y + b * stride_yb + i), LOSS)
    g2 = _curvature(z, LOSS) * u
    if HAS_S:
        s = tl.load(S + b * stride_yb + i)
        g1 *= s
        g2 *= s
    a = g2 / n
    e = g1 / n
    out_row = OUT + (b * n_rows + k) * d
    for j0 in range(0, d, BLOCK_D):
        cols = j0 + tl.arange(0, BLOCK_D)
        m = cols < d
        w = tl.load(w_row + cols, mask=m, other=0.0)
        v = tl.load(v_row + cols, mask=m, other=0.0)
        tl.store(out_row + cols, a * w + e * v, mask=m)


def _block_d(d):
    return max(16, min(MAX_BLOCK_D, triton.next_power_of_2(d)))


def _data_terms(theta, X, y, s, code, want_hvp, v):
    """Sums over rows (not yet divided by n), float64: loss (B,), X^T c (B, p)."""
    n, d = X.shape[-2:]
    B, p = theta.shape
    use_dot = X.dim() == 2 and B >= DOT_MIN_BATCH
    block_b = DOT_BLOCK_B if use_dot else 1
    n_blocks = triton.cdiv(B, block_b)
    # fixed by the shape alone, so the summation order never depends on the GPU
    n_prog = max(1, min(triton.cdiv(n, BLOCK_N), MAX_PROGRAMS // n_blocks))
    losses = torch.zeros((B, n_prog), dtype=X.dtype, device=X.device)
    parts = torch.zeros((B, n_prog, p), dtype=X.dtype, device=X.device)
    independent = X.dim() == 3
    _rows_kernel[(n_prog, n_blocks)](
        X, y, y if s is None else s, theta, theta if v is None else v, losses, parts,
        n, d, p, B, n_prog, n * d if independent else 0, n if independent else 0,
        LOSS=code, FIT_B=p > d, HAS_S=s is not None, WANT_HVP=want_hvp, USE_DOT=use_dot,
        BLOCK_B=block_b, BLOCK_N=BLOCK_N, BLOCK_D=_block_d(d))
    return losses.double().sum(dim=1), parts.double().sum(dim=1)


def _reg(theta, lam, d, penalize_b):
    """exp(lam) * theta in float64, the intercept masked unless penalised: (B, p)."""
    r = theta.double() * torch.exp(lam.to(theta.device, torch.float64))[:, None]
    if not penalize_b and theta.shape[1] > d:
        r[:, d] = 0.0
    return r


def loss_grad(theta, X, y, sample_weight, lam, loss, fit_intercept, penalize_intercept):
    n, d = X.shape[-2:]
    total, g = _data_terms(theta, X, y, sample_weight, LOSS_CODES[loss], False, None)
    value, grad = total / n, g / n
    if lam is not None:
        reg = _reg(theta, lam, d, penalize_intercept)
        value = value + 0.5 * (reg * theta.double()).sum(dim=1)
        grad = grad + reg
    return value.to(X.dtype), grad.to(X.dtype)


def hvp(theta, v, X, y, sample_weight, lam, loss, fit_intercept, penalize_intercept):
    n, d = X.shape[-2:]
    if loss == "absolute":  # piecewise linear: the data term has zero curvature
        out = torch.zeros(theta.shape, dtype=torch.float64, device=X.device)
    else:
        out = _data_terms(theta, X, y, sample_weight, LOSS_CODES[loss], True, v)[1] / n
    if lam is not None:
        out = out + _reg(v, lam, d, penalize_intercept)
    return out.to(X.dtype)


def mixed(theta, v, X, y, sample_weight, lam, rows, loss, fit_intercept, penalize_intercept):
    n, d = X.shape[-2:]
    B, K = theta.shape[0], rows.shape[0]
    independent = X.dim() == 3
    out = torch.empty((B, K, d), dtype=X.dtype, device=X.device)
    _mixed_kernel[(K, B)](
        X, y, y if sample_weight is None else sample_weight, theta, v, rows, out,
        n, d, theta.shape[1], K, n * d if independent else 0, n if independent else 0,
        LOSS=LOSS_CODES[loss], FIT_B=fit_intercept, HAS_S=sample_weight is not None,
        BLOCK_D=_block_d(d))
    if lam is None:
        dlam = torch.zeros(B, dtype=torch.float64, device=X.device)
    else:
        dlam = (_reg(theta, lam, d, penalize_intercept) * v.double()).sum(dim=1)
    return out, dlam.to(X.dtype)
