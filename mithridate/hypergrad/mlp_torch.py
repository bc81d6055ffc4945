"""Hypergradients of the network (mithridate.models.MLP's math) on torch
tensors, for B problems at once (repetitions x lam settings): CUDA tensors in
production, CPU tensors in tests. The network's passes are kernels/gpu/mlp.Net
(cuBLAS batched GEMMs + its Triton kernels; under TRITON_INTERPRET=1 on the
host, or their torch references with ``ops="torch"``).

Objective = mean logistic loss + sum_l exp(lam_l)/2 ||W_l||^2 (and the layer's
bias with penalize_bias), models/mlp.py's. The inner loop is T
heavy-ball steps from theta_0, v_0 = 0 on the rows [Xc; Xp] (poisoning rows
last); the outer objective is the mean loss on (Xv, yv). Modes, as
mithridate.hypergrad.generic's:

- ``trajectory`` / ``checkpoint``: exact RMD walking a schedule.Schedule
  (trajectory: every theta_t stored, float64; checkpoint: schedule.plan(T,
  checkpoints), the segments recomputed), the step back at theta_t,
  u = vb + alpha tb: tb -= (1 - gamma) H u, vb = gamma u, dXp -= (1 - gamma)
  d/dXp (g . u), dlam -= (1 - gamma) d/dlam (g . u). H u and d/dXp (g . u) come
  from one R-op pass (Pearlmutter; f'' = 0 off the kink, so the mask is fixed).
- ``reversible``: theta, v in int64 fixed point, the exact step of
  kernels/cpu/heavy_ball.py (kernels/gpu/mlp.exact_* on the GPU, the numba
  functions themselves with ops="torch" on the host); the reverse recomputes
  the gradient at the recovered theta_t bit for bit (deterministic GEMMs), and
  theta_0, v_0 = 0 and the empty buffer must come back (asserted).
- ``forward``: one tangent per layer lam, memory independent of T (grad_Xp None).
- ``value``: the training and the outer value only (grad_Xp, grad_lam None).

``run_problems`` is the engine's route (mithridate.hypergrad.Engine with
model=MLP(...) and backend "torch" or "triton"): the engine's checked numpy
Problems as one batched call, a list of HyperGrads back. Divergence: the
squared norm of every first-pass training gradient is kept on the device (no
sync per step) and checked at the end by the CPU engines' growth watch
(info["diverged_at"], one entry per problem, -1 where stable).

``unrolled`` is the torch reference: autograd through the unrolled loop
(create_graph) of the same objective in plain torch ops, batched the same way:
the oracle of the tests and the baseline of benchmarks/gpu_mlp.py.

Network calls take theta in X's dtype; the state, adjoints and sums are float64.
Determinism: torch.use_deterministic_algorithms(True) for the call, and
CUBLAS_WORKSPACE_CONFIG=:4096:8 set here unless already set (it must be set
before the process's first cuBLAS call to take effect; export it yourself if
CUDA is initialised earlier). All B problems share T, alpha and gamma.
"""
import contextlib
import math
import os
from typing import NamedTuple, Optional

import numpy as np
import torch

from .. import fixed_point
from ..kernels.gpu.mlp import Net
from ..models.heavy_ball import step
from . import reversible as rev, schedule as schedules
from .schedule import ADVANCE, RESTORE, SAVE, VALUE

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

MODES = ("trajectory", "checkpoint", "reversible", "forward")
ROUTE_MODES = MODES + ("value",)  # the engine's need="value" too


class BatchHyperGrad(NamedTuple):
    value: torch.Tensor              # (B,) outer objective at theta_T, float64
    grad_Xp: Optional[torch.Tensor]  # (B, k, d) in X's dtype; None in forward mode
    grad_lam: torch.Tensor           # (B, n_lam) float64
    theta_T: torch.Tensor            # (B, p) float64
    info: dict


class _Problems:
    """B problems' rows, lam and settings, checked; the model calls in float64 state."""

    def __init__(self, net, Xc, yc, Xp, yp, Xv, yv, lam, theta0, T, alpha, gamma):
        if not torch.is_tensor(theta0) or theta0.dim() != 2 or theta0.shape[1] != net.p:
            raise ValueError(f"theta0 must be a (B, p={net.p}) tensor for layers={net.layers}, got "
                             f"{getattr(theta0, 'shape', type(theta0).__name__)}.")
        if not torch.is_tensor(Xc):
            raise TypeError(f"Xc must be a torch tensor, got {type(Xc).__name__}.")
        B = theta0.shape[0]
        dev, dtype = theta0.device, Xc.dtype
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"Xc has dtype {dtype}; pass float32 or float64.")
        d = net.layers[0]

        def rows(name, X, yname, y):
            if not torch.is_tensor(X) or X.dim() not in (2, 3) or X.shape[-1] != d:
                raise ValueError(f"{name} must be a (n, {d}) or (B, n, {d}) tensor: layers[0]={d} "
                                 f"must equal its width; got {getattr(X, 'shape', None)}.")
            if X.dtype != dtype or X.device != dev:
                raise ValueError(f"{name} must have Xc's dtype {dtype} and theta0's device {dev}.")
            X = X.expand(B, *X.shape[-2:])
            y = torch.as_tensor(y, dtype=dtype, device=dev).expand(B, X.shape[1])
            if not ((y == 0) | (y == 1)).all():
                raise ValueError(f"{yname} must hold labels in {{0, 1}} (logistic loss).")
            return X, y

        Xc, yc = rows("Xc", Xc, "yc", yc)
        Xp, yp = rows("Xp", Xp, "yp", yp)
        self.Xv, self.yv = rows("Xv", Xv, "yv", yv)
        self.X = torch.cat([Xc, Xp], dim=1).contiguous()
        self.y = torch.cat([yc, yp], dim=1).contiguous()
        self.Xv, self.yv = self.Xv.contiguous(), self.yv.contiguous()
        lam = torch.as_tensor(lam, dtype=torch.float64, device=dev)
        if lam.dim() > 2 or (lam.dim() >= 1 and lam.shape[-1] not in (1, net.n_lam)) or \
                (lam.dim() == 2 and lam.shape[0] != B):
            raise ValueError(f"lam has shape {tuple(lam.shape)}; pass a scalar, ({net.n_lam},) "
                             f"(one per layer) or ({B}, {net.n_lam}).")
        self.lam = lam.reshape(-1, lam.shape[-1] if lam.dim() else 1).expand(B, net.n_lam)
        if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T <= 0:
            raise ValueError(f"T={T!r} must be a positive integer (the number of inner steps).")
        self.net, self.B, self.k, self.dtype = net, B, Xp.shape[1], dtype
        self.T, self.alpha, self.gamma = int(T), float(alpha), float(gamma)
        self.theta0 = theta0.to(torch.float64)
        self.G = net.groups(dev)
        self.reg = torch.exp(self.lam) @ self.G  # (B, p): exp(lam_l) on penalised entries

    def grad(self, theta):
        """The training objective's gradient (B, p) float64 at float64 theta."""
        g = self.net.loss_grad(theta.to(self.dtype), self.X, self.y)[1]
        return g.double() + self.reg * theta

    def outer(self, theta):
        value, g = self.net.loss_grad(theta.to(self.dtype), self.Xv, self.yv)
        return value, g.double()

    def back(self, theta, tb, vb, dXp, dlam, want_grad=False):
        """The step back at theta_t (module docstring): the new (tb, vb), and with
        want_grad the training gradient at theta_t (grad's bits) from the same pass."""
        s = 1.0 - self.gamma
        u = vb + self.alpha * tb
        g, hu, rows = self.net.hvp_rows(theta.to(self.dtype), u.to(self.dtype), self.X, self.y,
                                        self.k, want_grad)
        if self.k:
            dXp -= s * rows.double()
        dlam -= s * ((self.reg * theta * u) @ self.G.T)
        g = None if g is None else g.double() + self.reg * theta
        return tb - s * (hu.double() + self.reg * u), self.gamma * u, g

    def result(self, value, dXp, dlam, theta_T, info):
        gX = None if dXp is None else dXp.to(self.dtype)
        return BatchHyperGrad(value, gX, dlam, theta_T, info)


@contextlib.contextmanager
def _deterministic():
    """Deterministic algorithms for the call, without their NaN fill of every
    torch.empty (each kernel writes all of its outputs)."""
    import torch.utils.deterministic as det
    before, fill = torch.are_deterministic_algorithms_enabled(), det.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True)
    det.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)
        det.fill_uninitialized_memory = fill


def hypergrad(layers, Xc, yc, Xp, yp, Xv, yv, lam, theta0, *, T, alpha, gamma=0.0,
              mode="trajectory", negative_slope=0.1, penalize_bias=False, checkpoints="sqrt",
              max_states=None, frac_bits=None, max_buffer_bytes=None, ops=None):
    """BatchHyperGrad of B problems (B = theta0.shape[0]). Xc (n, d) shared or
    (B, n, d); Xp (k, d) or (B, k, d); Xv likewise; y's (n,) or (B, n) in {0, 1};
    lam a scalar, (n_lam,) or (B, n_lam); checkpoints, max_states: schedule.plan's
    ("sqrt", "binomial" or a count) for mode="checkpoint"; frac_bits and
    max_buffer_bytes (per problem; default the trajectory's size) as
    mithridate.hypergrad's, for mode="reversible". ops: "triton" (default on CUDA or
    under TRITON_INTERPRET=1) or "torch" (the kernels' torch references). Every check
    runs before any work. A diverged run shows as non-finite values and in
    info["diverged_at"] (FixedPointOverflow in reversible mode)."""
    if mode not in ROUTE_MODES:
        raise ValueError(f"mode={mode!r} is not one of {list(ROUTE_MODES)}.")
    for name, value in (("frac_bits", frac_bits), ("max_buffer_bytes", max_buffer_bytes)):
        if value is not None and mode != "reversible":
            raise ValueError(f"{name}={value!r} applies to mode='reversible' only; leave it None "
                             f"for mode={mode!r}.")
    if (checkpoints != "sqrt" or max_states is not None) and mode != "checkpoint":
        raise ValueError(f"checkpoints and max_states apply to mode='checkpoint' only; leave "
                         f"them for {mode!r}.")
    if ops is None:
        ops = "triton" if theta0.is_cuda or os.environ.get("TRITON_INTERPRET") == "1" else "torch"
    net = Net(layers, negative_slope, penalize_bias, ops)
    pb = _Problems(net, Xc, yc, Xp, yp, Xv, yv, lam, theta0, T, alpha, gamma)
    sched = None
    if mode in ("trajectory", "checkpoint"):
        sched = schedules.plan(pb.T, pb.T if mode == "trajectory" else checkpoints, max_states)
    return _run(pb, mode, sched, ops, frac_bits, max_buffer_bytes)


def _run(pb, mode, sched, ops, frac_bits, max_buffer_bytes):
    plan = _fixed_point_plan(pb, frac_bits, max_buffer_bytes, ops) if mode == "reversible" \
        else None
    with _deterministic(), torch.no_grad():
        if mode in ("trajectory", "checkpoint"):
            return _rmd(pb, sched, mode)
        if mode in ("forward", "value"):
            return _forward(pb, mode == "forward")
        return _reversible(pb, ops, *plan)


def check_route(ops, device, mode):
    """The engine's checks of this route at construction: (torch device, ops)."""
    if device not in (None, "cpu", "cuda"):
        raise ValueError(f"device={device!r} must be None, 'cpu' or 'cuda'.")
    from .. import backends
    if device == "cuda" and not backends.cuda_available():
        raise RuntimeError("device='cuda': no CUDA GPU is visible to torch; pass device='cpu' "
                           "(or None).")
    device = device or ("cuda" if backends.cuda_available() else "cpu")
    if mode == "reversible" and ops == "torch" and device == "cuda":
        raise ValueError("mode='reversible' with backend='torch' on device='cuda': the exact "
                         "step's torch form is the host's numba code; use backend='triton' or "
                         "device='cpu'.")
    return torch.device(device)


def run_problems(model, pbs, mode, *, ops, device, schedule=None, frac_bits=None,
                 max_buffer_bytes=None, cache=None):
    """list[HyperGrad] (numpy, X's dtype; info as the generic engine's, state_bytes per
    problem) of the engine's checked Problems ``pbs`` for ``model`` (an MLP), as one
    batched call on ``device``. ``cache``: a dict keeping the device copies of the
    arrays every call shares (the engine's clean and validation rows)."""
    from .result import HyperGrad
    pb0, B, cache = pbs[0], len(pbs), {} if cache is None else cache

    def dev(a):
        return torch.from_numpy(np.ascontiguousarray(a)).to(device)

    def rows(name):
        first = getattr(pb0, name)
        if all(getattr(pb, name) is first for pb in pbs):  # shared by every problem
            key = (id(first), name)
            if key not in cache:
                cache[key] = (first, dev(first))  # the array itself keeps the id valid
            return cache[key][1]
        return dev(np.stack([getattr(pb, name) for pb in pbs]))
    lam = np.stack([np.atleast_1d(np.asarray(pb.lam, np.float64)) for pb in pbs])
    theta0 = dev(np.stack([np.asarray(pb.theta0, np.float64) for pb in pbs]))
    net = Net(model.layers, model.negative_slope, model.penalize_bias, ops)
    pb = _Problems(net, rows("Xc"), rows("yc"), dev(np.stack([p.Xp for p in pbs])),
                   dev(np.stack([p.yp for p in pbs])), rows("Xv"), rows("yv"), dev(lam), theta0,
                   pb0.T, pb0.alpha, pb0.gamma)
    res = _run(pb, mode, schedule, ops, frac_bits, max_buffer_bytes)
    dt, one = pb0.Xc.dtype, net.n_lam == 1
    value = res.value.cpu().numpy()
    gX = None if res.grad_Xp is None else res.grad_Xp.cpu().numpy().astype(dt, copy=False)
    glam = None if res.grad_lam is None else res.grad_lam.cpu().numpy()
    theta = res.theta_T.cpu().numpy().astype(dt)
    out = []
    for b in range(B):
        info = dict(res.info, state_bytes=res.info["state_bytes"] // B,
                    diverged_at=res.info["diverged_at"][b])
        out.append(HyperGrad(float(value[b]), None if gX is None else gX[b],
                             None if glam is None else (float(glam[b, 0]) if one else glam[b]),
                             theta[b], info))
    return out


def state_bytes(model, pbs, mode, schedule=None, frac_bits=None, max_buffer_bytes=None):
    """Bytes a run_problems call allocates, about: every problem's rows [Xc; Xp] (one
    batched copy) and the states `mode` keeps (reversible: its plan's checks first)."""
    pb, B = pbs[0], len(pbs)
    p = model.layout(pb.d).size
    rows = B * (pb.Xc.shape[0] + pb.Xp.shape[0]) * pb.d * pb.Xc.itemsize
    if mode == "reversible":
        gamma = pb.gamma
        rev.check_frac_bits(frac_bits)
        rev.check_max_buffer_bytes(max_buffer_bytes)
        num, den = rev.gamma_fraction(gamma)
        words = fixed_point.required_words(pb.T, num, den)
        _check_buffer(p * words * 4, p, pb.T, gamma, num, den, words, max_buffer_bytes)
        return rows + B * p * (16 + 4 * words)
    if mode in ("trajectory", "checkpoint"):
        return rows + B * schedule.state_bytes(p)
    tangents = model.n_layers if mode == "forward" else 0
    return rows + B * 8 * p * 2 * (1 + tangents)


def unrolled(layers, Xc, yc, Xp, yp, Xv, yv, lam, theta0, *, T, alpha, gamma=0.0,
             negative_slope=0.1, penalize_bias=False):
    """The reference: autograd through the T unrolled heavy-ball steps (create_graph),
    arithmetic in X's dtype. Same arguments and result as ``hypergrad``."""
    net = Net(layers, negative_slope, penalize_bias, ops="torch")
    pb = _Problems(net, Xc, yc, Xp, yp, Xv, yv, lam, theta0, T, alpha, gamma)
    n, k = pb.X.shape[1], pb.k
    with torch.enable_grad():
        Xp = pb.X[:, n - k:].clone().requires_grad_()
        lam = pb.lam.clone().requires_grad_()
        X = torch.cat([pb.X[:, :n - k], Xp], dim=1)
        scale = (torch.exp(lam) @ pb.G).to(pb.dtype)
        theta = pb.theta0.to(pb.dtype).requires_grad_()
        v = torch.zeros_like(theta)
        for _ in range(pb.T):
            objective = net.mean_loss(theta, X, pb.y) + 0.5 * (scale * theta * theta).sum(1)
            (g,) = torch.autograd.grad(objective.sum(), theta, create_graph=True)
            theta, v = step(theta, v, g, pb.alpha, pb.gamma)
        value = net.mean_loss(theta, pb.Xv, pb.yv)
        dXp, dlam = torch.autograd.grad(value.sum(), (Xp, lam), allow_unused=True)
    info = dict(mode="unrolled", backend="torch autograd", T=pb.T)
    return BatchHyperGrad(value.detach().double(), torch.zeros_like(Xp) if dXp is None else dXp,
                          dlam, theta.detach().double(), info)


def _rmd(pb, sched, mode):
    """Trajectory or checkpoint RMD: walk the schedule (generic.py's walker)."""
    theta, v = pb.theta0, torch.zeros_like(pb.theta0)
    slots = [None] * sched.n_slots
    dXp = torch.zeros((pb.B, pb.k, pb.X.shape[2]), dtype=torch.float64, device=theta.device)
    dlam = torch.zeros((pb.B, pb.net.n_lam), dtype=torch.float64, device=theta.device)
    norms, first = [], True  # the first pass's squared gradient norms (the watch)
    for op, arg in sched.actions:
        if op == ADVANCE:
            for _ in range(arg):
                g = pb.grad(theta)
                if first:
                    norms.append((g * g).sum(1))
                theta, v = step(theta, v, g, pb.alpha, pb.gamma)
        elif op == SAVE:  # step returns new tensors: references are copies
            slots[arg] = (theta, None if sched.theta_only[arg] else v)
        elif op == RESTORE:
            theta, v = slots[arg]
        elif op == VALUE:
            value, tb = pb.outer(theta)
            vb, theta_T, first = torch.zeros_like(tb), theta, False
        else:
            tb, vb, _ = pb.back(theta, tb, vb, dXp, dlam)
    info = dict(mode=mode, backend="mlp_torch", T=pb.T, diverged_at=_watch(norms, pb.gamma),
                state_bytes=pb.B * sched.state_bytes(pb.net.p), recomputed=sched.recomputed)
    return pb.result(value, dXp, dlam, theta_T, info)


def _forward(pb, tangents=True):
    """One tangent (dtheta/dlam_j, dv/dlam_j) per layer, the B x n_lam tangents as
    one batch of HVPs: dg_j = H dtheta_j + exp(lam_j) theta on group j; without
    ``tangents`` the training and the value only (mode "value")."""
    B, L, p = pb.B, pb.net.n_lam, pb.net.p
    X, y = pb.X.repeat_interleave(L, 0), pb.y.repeat_interleave(L, 0)
    theta, v = pb.theta0, torch.zeros_like(pb.theta0)
    dth = torch.zeros((B, L, p), dtype=torch.float64, device=theta.device)
    dv = torch.zeros_like(dth)
    norms = []
    for _ in range(pb.T):
        if not tangents:
            g = pb.grad(theta)
        else:
            th = theta.to(pb.dtype).repeat_interleave(L, 0)
            g, hd, _ = pb.net.hvp_rows(th, dth.reshape(B * L, p).to(pb.dtype), X, y, 0, True)
            g = g.view(B, L, p)[:, 0].double() + pb.reg * theta  # the same pass's gradient
            dg = hd.double().view(B, L, p) + pb.reg[:, None] * dth + \
                (pb.reg * theta)[:, None] * pb.G[None]
            dth, dv = step(dth, dv, dg, pb.alpha, pb.gamma)
        norms.append((g * g).sum(1))
        theta, v = step(theta, v, g, pb.alpha, pb.gamma)
    value, gv = pb.outer(theta)
    mode, n = ("forward", L) if tangents else ("value", 0)
    info = dict(mode=mode, backend="mlp_torch", T=pb.T, diverged_at=_watch(norms, pb.gamma),
                state_bytes=8 * p * 2 * (1 + n) * B)
    glam = torch.einsum("blp,bp->bl", dth, gv) if tangents else None
    return BatchHyperGrad(value, None, glam, theta, info)


def _fixed_point_plan(pb, frac_bits, max_buffer_bytes, ops):
    """Every check of reversible mode before any work: (frac_bits, num, den, words)."""
    if ops == "torch" and pb.theta0.is_cuda:
        raise ValueError("mode='reversible' on CUDA tensors needs ops='triton' (the exact step "
                         "with ops='torch' is the host's numba code).")
    frac_bits = rev.check_frac_bits(frac_bits)
    rev.check_max_buffer_bytes(max_buffer_bytes)
    num, den = rev.gamma_fraction(pb.gamma)
    words = [fixed_point.required_words(t, num, den) for t in range(pb.T + 1)]
    p = pb.net.p
    _check_buffer(p * words[pb.T] * 4, p, pb.T, pb.gamma, num, den, words[pb.T],
                  max_buffer_bytes)
    for w0 in pb.theta0.cpu().numpy():
        rev.check_w0_fits(w0, frac_bits)
    return frac_bits, num, den, words


def check_device_memory(need, what, fix, device):
    """InsufficientMemoryError before the call where the GPU has less than `need` free."""
    free = torch.cuda.mem_get_info(device)[0]
    if need > free:
        from ..errors import InsufficientMemoryError
        raise InsufficientMemoryError(
            f"{what} needs about {need / 2**30:.3g} GiB but {free / 2**30:.3g} GiB of GPU memory "
            f"is free on {device}; {fix}.")


def _check_buffer(buffer_bytes, p, T, gamma, num, den, words, max_buffer_bytes):
    """generic.py's rule and message, per problem: the bit buffer within the budget."""
    cap = (T + 1) * p * 8 if max_buffer_bytes is None else max_buffer_bytes
    if buffer_bytes > cap:
        raise ValueError(
            f"mode='reversible' with T={T} and gamma={gamma!r} (= {num}/{den}) needs a "
            f"{buffer_bytes}-byte bit buffer per problem ({words} words per parameter), "
            f"over max_buffer_bytes={cap}"
            f"{' (the trajectory it replaces)' if max_buffer_bytes is None else ''}; use "
            "mode='checkpoint', a larger gamma, or raise max_buffer_bytes.")


def _watch(norms, gamma):
    """The first diverged step of each problem (-1: none) from the (T, B) squared
    gradient norms of the first pass: kernels/cpu/hypergrad.py's growth watch."""
    from ..kernels.cpu.hypergrad import _watch as watch, new_watch
    if not norms:
        return []
    gg = torch.stack(norms).cpu().numpy()
    out = []
    for b in range(gg.shape[1]):
        record = new_watch()
        for t in range(gg.shape[0]):
            watch(float(gg[t, b]), gamma, t, record)
        out.append(int(record[1]))
    return out


def _exact_steps(ops):
    """(forward, reverse_theta, reverse) on (B, p) int64 state and (B, W, p) buffer."""
    if ops == "triton":
        from ..kernels.gpu import mlp as K
        return K.exact_forward, K.exact_reverse_theta, K.exact_reverse
    from ..kernels.cpu import heavy_ball as hb

    def forward(thq, vq, buf, g, scale, w, num, den, alpha):
        codes = np.zeros(thq.shape, np.int64)
        incr, rem, hi = (np.empty(thq.shape[1], np.int64) for _ in range(3))
        for b, (th, v, bu, gb) in enumerate(zip(thq.numpy(), vq.numpy(),
                                                buf.numpy().view(np.uint32), g.numpy())):
            hb.exact_increment(gb, scale, incr, codes[b])
            hb.exact_forward(th, v, bu, incr, codes[b], w, num, den, alpha, rem, hi)
        return torch.from_numpy(codes)

    def reverse_theta(thq, vq, alpha):
        for th, v in zip(thq.numpy(), vq.numpy()):
            hb.exact_reverse_theta(th, v, alpha)

    def reverse(vq, buf, g, scale, w, num, den):
        codes = np.empty(vq.shape[1], np.int64)
        incr, rem, hi = (np.empty(vq.shape[1], np.int64) for _ in range(3))
        for v, bu, gb in zip(vq.numpy(), buf.numpy().view(np.uint32), g.numpy()):
            hb.exact_increment(gb, scale, incr, codes)
            hb.exact_reverse(v, bu, incr, w, num, den, rem, hi)
    return forward, reverse_theta, reverse


def _reversible(pb, ops, frac_bits, num, den, words):
    exact_forward, exact_reverse_theta, exact_reverse = _exact_steps(ops)
    B, p, T, dev = pb.B, pb.net.p, pb.T, pb.theta0.device
    scale = -(1.0 - pb.gamma) * math.ldexp(1.0, frac_bits)
    inv = math.ldexp(1.0, -frac_bits)
    q0 = torch.round(pb.theta0 * math.ldexp(1.0, frac_bits)).to(torch.int64)  # exact: 2^f
    thq, vq = q0.clone(), torch.zeros_like(q0)
    buf = torch.zeros((B, words[T], p), dtype=torch.int32, device=dev)  # uint32 limbs' bits
    norms = []
    for t in range(T):
        g = pb.grad(thq.double() * inv)
        norms.append((g * g).sum(1))
        codes = exact_forward(thq, vq, buf, g, scale, words[t + 1], num, den, pb.alpha)
        if codes.any():
            b, j = (int(i) for i in torch.nonzero(codes)[0])
            c = int(codes[b, j])
            name, c = ("v", c) if c < 8 else ("theta", c // 8)
            e = 63 - frac_bits
            what = "is not finite" if c == 3 else f"left the fixed-point range [-2**{e}, 2**{e})"
            raise fixed_point.FixedPointOverflow(
                f"mode='reversible' (problem {b}): {name}[{j}] at step {t + 1} of {T} {what} "
                f"with frac_bits={frac_bits}; lower frac_bits, or alpha if training diverges, "
                "or rescale the data. No result was returned.")
    theta_T = thq.double() * inv
    value, tb = pb.outer(theta_T)
    vb = torch.zeros_like(tb)
    dXp = torch.zeros((B, pb.k, pb.X.shape[2]), dtype=torch.float64, device=dev)
    dlam = torch.zeros((B, pb.net.n_lam), dtype=torch.float64, device=dev)
    for t in range(T - 1, -1, -1):
        exact_reverse_theta(thq, vq, pb.alpha)
        theta = thq.double() * inv
        tb, vb, g = pb.back(theta, tb, vb, dXp, dlam, want_grad=True)  # one pass at theta_t
        exact_reverse(vq, buf, g, scale, words[t + 1], num, den)
    if not (torch.equal(thq, q0) and not vq.any() and not buf.any()):
        raise RuntimeError("mode='reversible': the reverse sweep did not recover theta_0, v_0 bit "
                           "for bit (a nondeterministic GEMM?), so the hypergradient is not "
                           "trustworthy; use mode='trajectory'.")
    info = dict(mode="reversible", backend="mlp_torch", T=T, w0_recovered=True,
                diverged_at=_watch(norms, pb.gamma),
                frac_bits=frac_bits, gamma_fraction=(num, den), buffer_words=words[T],
                state_bytes=B * p * (16 + 4 * words[T]))
    return pb.result(value, dXp, dlam, theta_T, info)
