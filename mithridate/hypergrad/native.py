"""Hypergradients by the compiled fused loops of csrc/ (``backend="cpp"`` on
the host, ``"cuda"`` on a GPU): every inner step, the reverse sweep and the
validation pass of a problem in one call, a batch of problems per call.

Modes: ``trajectory`` (RMD storing theta_0..theta_T), ``forward`` (lam only),
``value`` (the engine's need="value": training and the validation value,
trajectory's bits, no tangent or sweep) and ``reversible``: Maclaurin,
Duvenaud & Adams (2015) with the exact int64 fixed point of
:mod:`mithridate.fixed_point`. theta and v are kept as ``round(x *
2**frac_bits)``; gamma is the simplest fraction num/den within 1e-12 of it,
and each multiplication by gamma moves its lost digit into a per-coordinate
buffer of ``required_words(T, num, den)`` words, so the reverse sweep
recomputes theta_t and v_t bit for bit from theta_T and v_T instead of storing
them: memory O(d) instead of O(T d). It must end at encode(w0) with v = 0 and
an empty buffer (checked: ``info["w0_recovered"]``).

Default ``frac_bits = 40``: steps of 2**-40 ~ 1e-12 (far below the float64
rounding of the trajectory modes relative to O(1) weights) and room for
|theta|, |v| < 2**23 ~ 8e6 before int64 overflows (FixedPointOverflow).

The host loop runs problems in parallel (OpenMP) when the batch has at least
as many problems as threads, else the row chunks of each problem; the row
chunks and their order are fixed by the shape, so the result does not depend
on the thread count (OMP_NUM_THREADS). A single problem opens two parallel
regions per inner step; on a machine whose cores are shared with other work,
OMP_WAIT_POLICY=passive or OMP_NUM_THREADS=1 avoids threads spinning for
cores that are busy elsewhere. On the GPU each problem is one thread block.
"""
from dataclasses import dataclass

import numpy as np

from .. import fixed_point
from . import divergence
from .problem import Problem
from .reversible import check_frac_bits, check_max_buffer_bytes, plan

MODES = ("trajectory", "forward", "reversible")  # the modes hypergrad(mode=...) runs here
CODES = {"trajectory": 0, "forward": 1, "reversible": 2, "value": 3}  # Mode of csrc/include/hypergrad.h
BACKENDS = ("cpp", "cuda")
_LOSS = {"logistic": 0, "squared": 1}
# Status codes of csrc/include/hypergrad.h (0 is success). _DIVERGED: the objective
# check of kernels/cpu/hypergrad.py flagged `step` (the run went on to the end).
_CAPACITY, _INT64, _NOT_FINITE, _RANGE, _NOT_RECOVERED, _NO_MEMORY, _DIVERGED = 1, 2, 3, 4, 5, 6, 7


def run(problems, mode, backend, frac_bits=None, max_buffer_bytes=None):
    """Hypergradients of a batch of Problems with the compiled loops; one HyperGrad each."""
    from .result import HyperGrad

    if mode not in CODES:
        raise ValueError(f"mode={mode!r} is not one of {tuple(CODES)} for the compiled backends.")
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {BACKENDS}.")
    problems = list(problems)
    if not problems or not all(isinstance(pb, Problem) for pb in problems):
        raise TypeError("problems must be a non-empty list of Problem (see make_problem).")
    if (frac_bits is not None or max_buffer_bytes is not None) and mode != "reversible":
        raise ValueError("frac_bits and max_buffer_bytes apply to mode='reversible' only; drop them.")
    f = check_frac_bits(frac_bits)
    check_max_buffer_bytes(max_buffer_bytes)
    module = _module(backend)
    packed = [_pack(pb, mode, f, max_buffer_bytes) for pb in problems]  # every check first
    groups = {}
    for i, pb in enumerate(problems):
        groups.setdefault(pb.Xc.dtype.name, []).append(i)
    diverged = [-1] * len(problems)
    for idx in groups.values():
        statuses = module.hypergrad.run(CODES[mode], [packed[i][0] for i in idx])
        for i, (code, step, j) in zip(idx, statuses):
            if code == _DIVERGED:
                diverged[i] = step
            elif code:
                _raise(code, step, j, i, problems[i], mode, packed[i][1], f)
    out = []
    for i, (pb, (args, info), bad) in enumerate(zip(problems, packed, diverged)):
        theta, dXp, (value, glam, recovered) = args.theta_T, args.dXp, args.scalars
        dt = pb.Xc.dtype
        info = dict(mode=mode, backend=backend, T=pb.T, **info, diverged_at=bad)
        if mode == "reversible":
            info["w0_recovered"] = bool(recovered)
        gX = None if mode in ("forward", "value") else divergence.to_dtype(dXp, dt, f"problem {i}")
        out.append(HyperGrad(float(value), gX, None if mode == "value" else float(glam),
                             theta[:pb.d + pb.fit_intercept].astype(dt), info))
    return out


@dataclass
class LinearSpec:
    """The linear model as the compiled loops read it (the attributes csrc reads
    from any model description: loss_code, fit_intercept)."""
    loss_code: int
    fit_intercept: bool


@dataclass
class NativeProblem:
    """One problem as csrc/include/hypergrad_args.h reads it, by attribute name:
    rows, theta0, the model description, the inner loop, the reversible fixed
    point (num/den = gamma, words per coordinate, frac_bits), and the outputs
    theta_T (d + 1,), dXp (k, d), scalars [value, grad_lam, w0_recovered]."""
    Xc: np.ndarray
    yc: np.ndarray
    Xp: np.ndarray
    yp: np.ndarray
    Xv: np.ndarray
    yv: np.ndarray
    theta0: np.ndarray
    model: object
    T: int
    alpha: float
    gamma: float
    e: float
    num: int
    den: int
    words: int
    frac_bits: int
    theta_T: np.ndarray
    dXp: np.ndarray
    scalars: np.ndarray


def _model(pb):
    """The problem's model description: its model object where it carries one."""
    model = getattr(pb, "model", None)
    return model if model is not None else LinearSpec(_LOSS[pb.loss], bool(pb.fit_intercept))


def _pack(pb, mode, f, max_buffer_bytes):
    """The NativeProblem of `pb` (outputs allocated) and the info entries."""
    d, k = pb.d, pb.Xp.shape[0]
    theta0 = np.zeros(d + 1)
    theta0[:pb.theta0.shape[0]] = pb.theta0
    gamma, num, den, words, info = pb.gamma, 1, 1, 1, {}
    if mode == "reversible":
        num, den, words, state_bytes = plan(pb, f, max_buffer_bytes)
        gamma = num / den
        info = dict(frac_bits=f, gamma_fraction=(num, den), buffer_words=words,
                    state_bytes=state_bytes)
    elif mode == "trajectory":
        info = dict(state_bytes=(pb.T + 1) * (d + 1) * 8)
    rows = [np.ascontiguousarray(a) for a in (pb.Xc, pb.yc, pb.Xp, pb.yp, pb.Xv, pb.yv)]
    return NativeProblem(*rows, theta0, _model(pb), pb.T, pb.alpha, gamma, float(np.exp(pb.lam)),
                         num, den, words, f, np.empty(d + 1), np.zeros((k, d)), np.zeros(3)), info


def _raise(code, step, j, i, pb, mode, info, f):
    where = f"problem {i}: " + (f"step {step}, coordinate {j}" if step >= 0 else f"coordinate {j}")
    if code in (_CAPACITY, _INT64, _RANGE):
        raise fixed_point.FixedPointOverflow(
            f"{where}: theta or v left the int64 fixed-point range [-2**{63 - f}, 2**{63 - f}) of "
            f"frac_bits={f}; lower frac_bits (e.g. frac_bits={max(f - 8, 1)}), or alpha if "
            "training diverges, or rescale the data.")
    if code == _NOT_FINITE:
        raise fixed_point.FixedPointOverflow(
            f"{where}: the training gradient is nan or inf, the inner loop diverged; lower alpha "
            f"(now {pb.alpha}).")
    if code == _NOT_RECOVERED:
        raise RuntimeError(f"problem {i}: the reversible sweep did not restore w0, v = 0 and an empty "
                           "buffer bit for bit (non-deterministic gradient?); use mode='trajectory'.")
    if code == _NO_MEMORY:
        raise MemoryError(f"problem {i}: out of memory for mode={mode!r} (T={pb.T}, d={pb.d}); "
                          "use mode='reversible' (O(d) memory) or smaller batches.")
    raise RuntimeError(f"problem {i}: the compiled loop failed with code {code}.")


def _module(backend):
    if backend == "cpp":
        from .. import _C
        return _C
    try:
        from .. import _C_cuda
    except ImportError as e:
        raise RuntimeError("backend='cuda' needs mithridate._C_cuda, which is not built; reinstall "
                           "with nvcc available (MITHRIDATE_CUDA=1), or use backend='cpp'.") from e
    return _C_cuda
