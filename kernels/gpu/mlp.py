"""The network (mithridate.models.MLP's math) on torch tensors: fused elementwise
kernels on the GPU (triton) and ``Net``, the network's passes for B problems
(gradient, R-op Hessian-vector product with the mixed product wrt the
poisoning rows) on cuBLAS batched GEMMs (torch.bmm) with these kernels between
them; mithridate.hypergrad.mlp_torch runs its hypergradients on Net.

Layout as models/mlp.py: h_l = f(h_{l-1} W_l + b_l), W_l (d_{l-1}, d_l)
row-major in theta, groups W1, b1, W2, b2, ...; leaky ReLU f on the hidden
layers, the logistic loss on the single output. f'' = 0 off the kink (a
measure-zero set), so the R-op's mask is the forward's D.

The kernels, for B problems per launch (a leading batch axis: grid axis 1 is
the problem):

- ``bias_act``: A = f(Z + b), D = f'(Z + b) for leaky ReLU f (slope 1 for
  z > 0, negative_slope otherwise: torch's derivative at exactly 0);
- ``masked``: D * (Z + b) (b optional): the R-op's elementwise step
  RA = D * (RZ + Rb), the output head's Rdz = l'' * (Rz + Rb), and the
  backward mask delta = D * (delta W^T) (f'' = 0 off the kink);
- ``head``: z = Z + b, then the logistic loss l(z, y), l'(z, y), l''(z);
- the exact fixed-point heavy-ball step over all parameters of B problems:
  ``exact_forward``, ``exact_reverse_theta``, ``exact_reverse``: the integer
  semantics of kernels/cpu/heavy_ball.exact_* (increment rint(scale g) of one
  rounded product, int64 theta_q, v_q, v_q multiplied by num/den with the lost
  digits in the limb-major uint32 buffer of kernels/cpu/fixed_point.py,
  (B, W, p) here, held as int32 of the same bits: torch's uint32 lacks
  CUDA kernels such as any(); numpy's .view(np.uint32) is the numba buffer).
  Launched with enable_fp_fusion=False: an FMA would round scale g + 2^52
  once instead of twice, i.e. rint the exact product.

Each kernel has its torch reference here (``*_reference``); the exact ones'
reference is the numba code itself (tests compare bit for bit). Float scalars
reach the kernels as one-element tensors in the data's dtype (triton passes
Python floats as float32, which would round negative_slope, scale and alpha).
"""
import numpy as np
import torch
import triton
import triton.language as tl

from .linear import _curvature, _loss_terms

OPS = ("triton", "torch")  # Net's elementwise passes: these kernels, or their references
BLOCK = 1024          # elements per program of the elementwise kernels
EXACT_BLOCK = 256     # parameters per program of the fixed-point kernels
# kernels/cpu/fixed_point.py's status codes and heavy_ball.py's theta factor
OK, INT64, NOT_FINITE, RANGE = (tl.constexpr(c) for c in (0, 2, 3, 4))
ELEMENT_BAD_THETA = tl.constexpr(8)
_TWO52 = tl.constexpr(4503599627370496.0)
_TWO63 = tl.constexpr(9223372036854775808.0)
_I64_MAX = tl.constexpr(9223372036854775807)


# ---- network passes ---------------------------------------------------------

@triton.jit
def _bias_act_kernel(Z, Bias, Slope, A, D, size, h, BLOCK: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < size
    z = tl.load(Z + b * size + offs, mask=m, other=0.0)
    z += tl.load(Bias + b * h + offs % h, mask=m, other=0.0)
    slope = tl.load(Slope)
    pos = z > 0.0
    tl.store(A + b * size + offs, tl.where(pos, z, z * slope), mask=m)
    tl.store(D + b * size + offs, tl.where(pos, 1.0, slope).to(z.dtype), mask=m)


@triton.jit
def _masked_kernel(Z, Bias, D, OUT, size, h, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < size
    z = tl.load(Z + b * size + offs, mask=m, other=0.0)
    if HAS_BIAS:
        z += tl.load(Bias + b * h + offs % h, mask=m, other=0.0)
    tl.store(OUT + b * size + offs, tl.load(D + b * size + offs, mask=m, other=0.0) * z, mask=m)


@triton.jit
def _head_kernel(Z, Bias, Y, LOSS_OUT, G, C, n, BLOCK: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    z = tl.load(Z + b * n + offs, mask=m, other=0.0) + tl.load(Bias + b)
    y = tl.load(Y + b * n + offs, mask=m, other=0.0)
    loss, grad = _loss_terms(z, y, 0)
    tl.store(LOSS_OUT + b * n + offs, loss, mask=m)
    tl.store(G + b * n + offs, grad, mask=m)
    tl.store(C + b * n + offs, _curvature(z, 0), mask=m)


def _grid(Z):
    B = Z.shape[0]
    return (triton.cdiv(Z[0].numel(), BLOCK), B)


def _scalar(x, like):
    return torch.full((1,), x, dtype=like.dtype, device=like.device)


def bias_act(Z, b, negative_slope):
    """Z (B, n, h), b (B, h) -> (A, D) = (f(Z + b), f'(Z + b)), leaky ReLU f."""
    Z, b = Z.contiguous(), b.contiguous()
    A, D = torch.empty_like(Z), torch.empty_like(Z)
    _bias_act_kernel[_grid(Z)](Z, b, _scalar(negative_slope, Z), A, D, Z[0].numel(),
                               Z.shape[-1], BLOCK=BLOCK)
    return A, D


def masked(Z, D, b=None):
    """D * (Z + b) (b (B, h) or None); Z, D (B, n, h)."""
    Z, D = Z.contiguous(), D.contiguous()
    b = None if b is None else b.contiguous()
    out = torch.empty_like(Z)
    _masked_kernel[_grid(Z)](Z, Z if b is None else b, D, out, Z[0].numel(), Z.shape[-1],
                             HAS_BIAS=b is not None, BLOCK=BLOCK)
    return out


def head(z, b, y):
    """z (B, n) logits before the bias b (B, 1), y (B, n) in {0, 1}: (l, l', l'') (B, n) each."""
    z, b, y = z.contiguous(), b.contiguous(), y.contiguous()
    loss, g, c = torch.empty_like(z), torch.empty_like(z), torch.empty_like(z)
    _head_kernel[_grid(z)](z, b, y, loss, g, c, z.shape[-1], BLOCK=BLOCK)
    return loss, g, c


def bias_act_reference(Z, b, negative_slope):
    z = Z + b[:, None, :]
    pos = z > 0
    return torch.where(pos, z, z * negative_slope), torch.where(
        pos, torch.ones_like(z), torch.full_like(z, negative_slope))


def masked_reference(Z, D, b=None):
    return D * (Z if b is None else Z + b[:, None, :])


def head_reference(z, b, y):
    z = z + b.reshape(-1, 1)
    s = torch.sigmoid(z)
    # -logsigmoid(-z) = softplus(z) exactly (torch's softplus is linear above 20)
    return -torch.nn.functional.logsigmoid(-z) - y * z, s - y, s * (1 - s)


# ---- the network's passes: cuBLAS GEMMs between the kernels above -----------

class Net:
    """The network's passes for B problems: theta (B, p), X (B, n, d), y (B, n)."""

    def __init__(self, layers, negative_slope=0.1, penalize_bias=False, ops="triton"):
        layers = tuple(layers)
        if len(layers) < 2 or any(isinstance(w, bool) or not isinstance(w, (int, np.integer))
                                  or w <= 0 for w in layers):
            raise ValueError(f"layers={layers!r} must be >= 2 positive int widths (d, ..., 1).")
        if layers[-1] != 1:
            raise ValueError(f"layers={layers!r}: the output width must be 1 (logistic loss).")
        if not negative_slope >= 0:
            raise ValueError(f"negative_slope={negative_slope!r} must be >= 0.")
        if ops not in OPS:
            raise ValueError(f"ops={ops!r} is not one of {list(OPS)}.")
        self.layers, self.slope, self.penalize_bias = layers, float(negative_slope), penalize_bias
        self.n_lam = len(layers) - 1
        self.bias_act, self.masked, self.head = (bias_act, masked, head) if ops == "triton" \
            else (bias_act_reference, masked_reference, head_reference)
        self.slices, start = [], 0  # (W slice, b slice) per layer, theta's layout
        for a, b in zip(layers[:-1], layers[1:]):
            self.slices.append((slice(start, start + a * b), slice(start + a * b, start + a * b + b)))
            start += a * b + b
        self.p = start

    def split(self, theta):
        """[(W (B, d_in, d_out), b (B, d_out))] views of theta (B, p)."""
        B = theta.shape[0]
        return [(theta[:, sw].view(B, a, b), theta[:, sb])
                for (sw, sb), a, b in zip(self.slices, self.layers[:-1], self.layers[1:])]

    def groups(self, device):
        """(n_lam, p) float64 0/1: the entries each layer's lam penalises."""
        G = torch.zeros((self.n_lam, self.p), dtype=torch.float64, device=device)
        for j, (sw, sb) in enumerate(self.slices):
            G[j, sw] = 1.0
            if self.penalize_bias:
                G[j, sb] = 1.0
        return G

    def mean_loss(self, theta, X, y):
        """Mean logistic loss per problem (B,) in plain torch ops, differentiable
        (mithridate.hypergrad.mlp_torch.unrolled's objective)."""
        h = X
        params = self.split(theta)
        for l, (W, b) in enumerate(params):
            h = torch.baddbmm(b.unsqueeze(1), h, W)
            if l < len(params) - 1:
                h = torch.nn.functional.leaky_relu(h, self.slope)
        return torch.nn.functional.binary_cross_entropy_with_logits(
            h.squeeze(-1), y, reduction="none").mean(1)

    def _forward(self, params, X):
        """Hidden activations [X, A_1, ...], masks [D_1, ...] and the output's
        pre-bias logits (B, n)."""
        A, D = [X], []
        for W, b in params[:-1]:
            a, dmask = self.bias_act(torch.bmm(A[-1], W), b, self.slope)
            A.append(a)
            D.append(dmask)
        return A, D, torch.bmm(A[-1], params[-1][0]).squeeze(-1)

    def loss_grad(self, theta, X, y):
        """Mean loss (B,) float64 and its gradient (B, p) in X's dtype."""
        params = self.split(theta)
        A, D, z = self._forward(params, X)
        loss, g, _ = self.head(z, params[-1][1], y)
        n = X.shape[1]
        delta = (g / n).unsqueeze(-1)
        out = [None] * len(params)
        for l in range(len(params) - 1, -1, -1):
            out[l] = (torch.bmm(A[l].transpose(1, 2), delta).flatten(1), delta.sum(1))
            if l:
                delta = self.masked(torch.bmm(delta, params[l][0].transpose(1, 2)), D[l - 1])
        flat = torch.cat([t for pair in out for t in pair], dim=1)
        return loss.double().sum(1) / n, flat

    def hvp_rows(self, theta, u, X, y, k, want_grad=False):
        """(g_data or None, H_data u (B, p), d/dX[-k:] (g_data . u) (B, k, d) or None
        for k = 0), in X's dtype, from one R-op pass. g_data (want_grad: the reverse
        sweep of reversible mode needs it at the same theta) comes from the same
        calls as loss_grad's, so it has the same bits."""
        params, dirs = self.split(theta), self.split(u)
        n = X.shape[1]
        A, D, RA = [X], [], [None]
        for (W, b), (V, c) in zip(params[:-1], dirs[:-1]):
            a, dmask = self.bias_act(torch.bmm(A[-1], W), b, self.slope)
            rz = torch.bmm(A[-1], V) if RA[-1] is None else \
                torch.baddbmm(torch.bmm(A[-1], V), RA[-1], W)
            RA.append(self.masked(rz, dmask, c))
            A.append(a)
            D.append(dmask)
        (W, b), (V, c) = params[-1], dirs[-1]
        z = torch.bmm(A[-1], W).squeeze(-1)
        rz = torch.bmm(A[-1], V) if RA[-1] is None else torch.baddbmm(torch.bmm(A[-1], V), RA[-1], W)
        _, g, curv = self.head(z, b, y)
        delta = (g / n).unsqueeze(-1)
        rdelta = self.masked(rz, curv.unsqueeze(-1), c) / n
        out, grads = [None] * len(params), [None] * len(params)
        rows = None
        for l in range(len(params) - 1, -1, -1):
            if want_grad:
                grads[l] = (torch.bmm(A[l].transpose(1, 2), delta).flatten(1), delta.sum(1))
            hw = torch.bmm(A[l].transpose(1, 2), rdelta)
            if RA[l] is not None:
                hw = torch.baddbmm(hw, RA[l].transpose(1, 2), delta)
            out[l] = (hw.flatten(1), rdelta.sum(1))
            W, V = params[l][0], dirs[l][0]
            if l:
                p_ = torch.bmm(delta, W.transpose(1, 2))
                rp = torch.baddbmm(torch.bmm(rdelta, W.transpose(1, 2)), delta, V.transpose(1, 2))
                delta, rdelta = self.masked(p_, D[l - 1]), self.masked(rp, D[l - 1])
            elif k:
                rows = torch.baddbmm(torch.bmm(rdelta[:, -k:], W.transpose(1, 2)),
                                     delta[:, -k:], V.transpose(1, 2))
        g = torch.cat([t for pair in grads for t in pair], dim=1) if want_grad else None
        return g, torch.cat([t for pair in out for t in pair], dim=1), rows


# ---- exact fixed-point heavy-ball step --------------------------------------

@triton.jit
def _rint(x):
    # round half to even for float64: below 2^52, adding 2^52 leaves no fraction
    # bits (2^52 is even, so ties go to the even integer); above, x is integral.
    a = tl.abs(x)
    r = tl.where(a < _TWO52, (a + _TWO52) - _TWO52, a)
    return tl.where(x < 0.0, -r, r)


@triton.jit
def _to_int(y):
    """(code, q): heavy_ball.to_int of an integral float64 y."""
    ok = (y >= -_TWO63) & (y < _TWO63)
    q = tl.where(ok, y, 0.0).to(tl.int64)
    code = tl.where(ok, OK, tl.where(y != y, NOT_FINITE, RANGE))
    return code, q


@triton.jit
def _fits(a, q):
    """heavy_ball.fits: a + q fits int64."""
    return ((q > 0) & (a <= _I64_MAX - q)) | ((q <= 0) & (a >= -_I64_MAX - 1 - q))


@triton.jit
def _floor_divmod(x, d):
    # triton's // and % truncate (C); floor semantics as fixed_point.floor_divmod
    q = x // d
    r = x - q * d
    neg = r < 0
    return tl.where(neg, q - 1, q), tl.where(neg, r + d, r)


@triton.jit
def _limb(x):
    """A buffer word (int32 storage of the uint32 limb) as its value, int64."""
    return x.to(tl.uint32, bitcast=True).to(tl.int64)


@triton.jit
def _as_int32(x):
    """The low 32 bits of int64 x as the int32 storage of a uint32 limb."""
    return x.to(tl.uint32).to(tl.int32, bitcast=True)


@triton.jit
def _mul_lanes(x, buf_ptr, mask, p, w, m, d):
    """fixed_point.step_apply on a block of elements: x * m / d, the digit popped
    from and the remainder pushed to the buffer's first w limbs (stride p)."""
    hi, lo = _floor_divmod(x, d)
    rem = tl.zeros_like(x)
    for k in range(0, w):  # pop: B div m, most significant limb first
        ptr = buf_ptr + (w - 1 - k) * p
        cur = (rem << 32) | _limb(tl.load(ptr, mask=mask, other=0))
        tl.store(ptr, _as_int32(cur // m), mask=mask)
        rem = cur % m
    y = lo * m + rem
    out = hi * m + y // d  # int64 wraps as mul_add's uint64 does
    rem = y % d
    for i in range(0, w):  # push: B = B d + carry
        ptr = buf_ptr + i * p
        cur = _limb(tl.load(ptr, mask=mask, other=0)) * d + rem
        tl.store(ptr, _as_int32(cur), mask=mask)  # the low 32 bits
        rem = cur >> 32
    return out


@triton.jit
def _increment(g, scale):
    return _to_int(_rint(scale * g.to(tl.float64)))


@triton.jit
def _exact_forward_kernel(THQ, VQ, BUF, G, SCALE, ALPHA, CODES, p, W, w, num, den,
                          BLOCK: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)
    j = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = j < p
    at = b * p + j
    code_i, incr = _increment(tl.load(G + at, mask=m, other=0.0), tl.load(SCALE))
    vq = _mul_lanes(tl.load(VQ + at, mask=m, other=0), BUF + b * W * p + j, m, p, w, num, den)
    code_v = tl.where(code_i != OK, code_i, tl.where(_fits(vq, incr), OK, INT64))
    vq += tl.where(code_v == OK, incr, 0)
    code_t, dth = _to_int(_rint(tl.load(ALPHA) * vq.to(tl.float64)))
    thq = tl.load(THQ + at, mask=m, other=0)
    code_t = tl.where((code_t != OK) | _fits(thq, dth), code_t, INT64)
    thq += tl.where(code_t == OK, dth, 0)
    tl.store(VQ + at, vq, mask=m)
    tl.store(THQ + at, thq, mask=m)
    tl.store(CODES + at, tl.where(code_v != OK, code_v, ELEMENT_BAD_THETA * code_t), mask=m)


@triton.jit
def _exact_reverse_theta_kernel(THQ, VQ, ALPHA, size, BLOCK: tl.constexpr):
    j = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = j < size
    dth = _rint(tl.load(ALPHA) * tl.load(VQ + j, mask=m, other=0).to(tl.float64)).to(tl.int64)
    tl.store(THQ + j, tl.load(THQ + j, mask=m, other=0) - dth, mask=m)


@triton.jit
def _exact_reverse_kernel(VQ, BUF, G, SCALE, p, W, w, num, den, BLOCK: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)
    j = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = j < p
    at = b * p + j
    _, incr = _increment(tl.load(G + at, mask=m, other=0.0), tl.load(SCALE))
    vq = tl.load(VQ + at, mask=m, other=0) - incr
    tl.store(VQ + at, _mul_lanes(vq, BUF + b * W * p + j, m, p, w, den, num), mask=m)


def _exact_grid(thq):
    return (triton.cdiv(thq.shape[1], EXACT_BLOCK), thq.shape[0])


def _f64(x, device):
    return torch.full((1,), x, dtype=torch.float64, device=device)


def exact_forward(thq, vq, buf, g, scale, w, num, den, alpha):
    """One exact step of B problems in place: thq, vq (B, p) int64, buf (B, W, p)
    int32 holding the uint32 limbs (first w used), g (B, p) the float gradients, scale =
    -(1 - gamma) 2^f. Returns codes (B, p) int32: heavy_ball.exact_forward's
    per-element status (0 everywhere when the step is valid)."""
    B, p = thq.shape
    codes = torch.empty((B, p), dtype=torch.int32, device=thq.device)
    _exact_forward_kernel[_exact_grid(thq)](
        thq, vq, buf, g, _f64(scale, g.device), _f64(alpha, g.device), codes, p,
        buf.shape[1], w, num, den, BLOCK=EXACT_BLOCK, enable_fp_fusion=False)
    return codes


def exact_reverse_theta(thq, vq, alpha):
    """The first half of the inverse in place: thq -= rint(alpha vq)."""
    _exact_reverse_theta_kernel[(triton.cdiv(thq.numel(), EXACT_BLOCK),)](
        thq, vq, _f64(alpha, thq.device), thq.numel(), BLOCK=EXACT_BLOCK,
        enable_fp_fusion=False)


def exact_reverse(vq, buf, g, scale, w, num, den):
    """The second half in place, g the gradient at the recovered theta_t:
    vq = unmul(vq - rint(scale g)), the forward's w."""
    B, p = vq.shape
    _exact_reverse_kernel[_exact_grid(vq)](
        vq, buf, g, _f64(scale, g.device), p, buf.shape[1], w, num, den,
        BLOCK=EXACT_BLOCK, enable_fp_fusion=False)
