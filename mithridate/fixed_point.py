"""Exact reversible int64 fixed-point arithmetic (Maclaurin, Duvenaud & Adams 2015).

Values are int64 ``q = round(x * 2**frac_bits)``. ``mul(q, num, den, buffer)``
sets ``q = floor((q*num + s) / den)`` in place, where the digit s (base num) is
popped from a per-element big-integer ``buffer`` (uint32 limbs, shape
``q.shape + (n_words,)``) and the remainder (base den) pushed back into it. So
``|q' - q*num/den| < max(1, num/den)`` and ``unmul`` restores q and the buffer
bit for bit. ``required_words`` sizes the buffer for a number of steps in
advance; a step that would overflow the buffer or int64 raises
:class:`FixedPointOverflow` before anything is written.

Arrays are numpy arrays or torch tensors. ``backend`` (registry path
``fixed_point``): ``cpp`` (``mithridate._C``) or ``numba`` (its port in
kernels/cpu/fixed_point.py, the same bits) for host arrays and CPU tensors,
``cuda`` (``mithridate._C_cuda``) for CUDA tensors; ``auto`` picks by where the
data lives (cpp on the host).
"""
import numpy as np

from . import backends
from ._validation import is_torch

__all__ = ["FixedPointOverflow", "encode", "decode", "required_words", "new_buffer", "mul", "unmul"]

MAX_FRAC_BITS = 62
MAX_BASE = 2**31 - 1  # num, den < 2^31 keep every limb product inside uint64
MAX_STEPS = 2**53


class FixedPointOverflow(OverflowError, ValueError):
    """A value or a buffer would not fit; the arrays were left unchanged."""


def encode(x, frac_bits, *, backend="auto"):
    """Return int64 ``round(x * 2**frac_bits)`` (ties to even); x must be finite and fit."""
    _check_int("frac_bits", frac_bits, 0, MAX_FRAC_BITS)
    name, K = _kernels(backend, "x", x)
    if name == "cuda":
        import torch
        xs = x.detach().to(torch.float64).contiguous()
        q = torch.empty_like(xs, dtype=torch.int64)
        code, i = K.encode(xs.data_ptr(), q.data_ptr(), xs.numel(), frac_bits, *_where(xs))
    else:
        xs = np.asarray(x.detach() if is_torch(x) else x)
        if xs.dtype.kind not in "fiu":
            raise TypeError(f"x has dtype {xs.dtype}; pass real numbers (e.g. x.astype(numpy.float64)).")
        xs = np.ascontiguousarray(xs, dtype=np.float64)
        q = np.empty(xs.shape, np.int64)
        code, i = K.encode(xs.reshape(-1), q.reshape(-1), frac_bits)
        if is_torch(x):
            q = _to_torch(q)
    if code == K.NOT_FINITE:
        raise ValueError(f"x{_at(xs, i)} is nan or inf; only finite values can be encoded.")
    if code == K.RANGE:
        e = 63 - frac_bits
        raise FixedPointOverflow(
            f"x{_at(xs, i)} = {float(xs.reshape(-1)[i])!r} does not fit int64 fixed point with "
            f"frac_bits={frac_bits}: the allowed range is [-2**{e}, 2**{e}); lower frac_bits or rescale x.")
    return q


def decode(q, frac_bits, *, backend="auto"):
    """Return float64 ``q / 2**frac_bits`` (rounded to nearest when ``|q| > 2**53``)."""
    _check_int("frac_bits", frac_bits, 0, MAX_FRAC_BITS)
    _check_array("q", q, "int64", writeable=False)
    name, K = _kernels(backend, "q", q)
    if name == "cuda":
        import torch
        x = torch.empty(q.shape, dtype=torch.float64, device=q.device)
        K.decode(q.data_ptr(), x.data_ptr(), q.numel(), frac_bits, *_where(q))
        return x
    x = np.empty(q.shape, np.float64)
    K.decode(_numpy(q).reshape(-1), x.reshape(-1), frac_bits)
    return _to_torch(x) if is_torch(q) else x


def required_words(n_steps, num, den):
    """uint32 words per element that ``n_steps`` muls by num/den from an empty buffer never overflow.

    Bits = log2(den) + log2(n_steps) + (n_steps-1) * max(0, log2(den/num)) + 1;
    the proof is in csrc/include/fixed_point.h.
    """
    _check_int("n_steps", n_steps, 0, MAX_STEPS)
    _check_int("num", num, 1, MAX_BASE)
    _check_int("den", den, 1, MAX_BASE)
    # Data-free arithmetic, the same in every port (cuda has none): the host's,
    # whatever MITHRIDATE_BACKEND says, so that planning a cuda run works.
    host = "cpp" if backends.unavailable_reason("cpp") is None else "numba"
    return _kernels(host, "n_steps", None)[1].required_words(int(n_steps), int(num), int(den))


def new_buffer(shape, n_words, device=None):
    """A zero buffer of shape ``(*shape, n_words)``: numpy, or a torch tensor on ``device``."""
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    _check_int("n_words", n_words, 1, 2**31 - 1)
    for s in shape:
        _check_int("shape", s, 0, 2**62)
    if device is None:
        return np.zeros(shape + (int(n_words),), np.uint32)
    import torch  # few ops support uint32 tensors: zero as int32, then reinterpret
    return torch.zeros(shape + (int(n_words),), dtype=torch.int32, device=device).view(torch.uint32)


def mul(q, num, den, buffer, *, backend="auto"):
    """In place: ``q = floor((q*num + s)/den)`` (s popped from ``buffer``), the remainder pushed into it."""
    _step(q, num, den, buffer, "mul", backend)


def unmul(q, num, den, buffer, *, backend="auto"):
    """In place: undo ``mul(q, num, den, buffer)`` bit for bit (q and buffer)."""
    _step(q, num, den, buffer, "unmul", backend)


def _step(q, num, den, buffer, op, backend):
    _check_int("num", num, 1, MAX_BASE)
    _check_int("den", den, 1, MAX_BASE)
    _check_array("q", q, "int64", writeable=True)
    _check_buffer(q, buffer)
    name, K = _kernels(backend, "q", q)
    num, den, w = int(num), int(den), int(buffer.shape[-1])
    # unmul by num/den is the step by den/num (see csrc/include/fixed_point.h).
    a, b = (num, den) if op == "mul" else (den, num)
    if name == "cuda":
        code, i = K.mul(q.data_ptr(), buffer.data_ptr(), q.numel(), w, a, b, *_where(q))
    elif name == "cpp":
        code, i = K.mul(_numpy(q), _numpy(buffer), w, a, b)
    else:  # the numba port takes flat rows: q (n,), buffer (n, w)
        code, i = K.mul(_numpy(q).reshape(-1), _numpy(buffer).reshape(-1, w), a, b)
    if code == K.CAPACITY:
        raise FixedPointOverflow(
            f"{op} by {num}/{den} would overflow buffer (n_words={w}) at q{_at(q, i)}; nothing was "
            f"changed. Allocate n_words=required_words(n_steps, {num}, {den}) for all your steps.")
    if code == K.INT64:
        raise FixedPointOverflow(
            f"{op} by {num}/{den} would overflow int64 at q{_at(q, i)}; nothing was changed. "
            "Encode with fewer frac_bits or keep |q| * num/den below 2**63.")


# ---- validation -------------------------------------------------------------

def _check_int(name, v, lo, hi):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(v).__name__} {v!r}.")
    if not lo <= v <= hi:
        raise ValueError(f"{name}={v} is out of range; it must be in [{lo}, {hi}].")


def _dtype(a):
    return str(a.dtype).replace("torch.", "")


def _check_array(name, a, dtype, writeable):
    if not (isinstance(a, np.ndarray) or is_torch(a)):
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(a).__name__}; "
                        f"use numpy.asarray({name}, dtype=numpy.{dtype}).")
    if is_torch(a) and a.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name} is on {a.device}; use a CPU or CUDA tensor.")
    if _dtype(a) != dtype:
        raise TypeError(f"{name} has dtype {_dtype(a)}; it must be {dtype} (e.g. {name}.astype(numpy.{dtype})).")
    if not (a.is_contiguous() if is_torch(a) else a.flags.c_contiguous):
        raise ValueError(f"{name} is not C-contiguous; pass numpy.ascontiguousarray({name}) "
                         f"(or {name}.contiguous() for a tensor).")
    if writeable and isinstance(a, np.ndarray) and not a.flags.writeable:
        raise ValueError(f"{name} is read-only; it is updated in place, pass a writeable copy.")
    if is_torch(a) and a.requires_grad:
        raise ValueError(f"{name} requires grad; pass {name}.detach().")


def _check_buffer(q, buffer):
    _check_array("buffer", buffer, "uint32", writeable=True)
    if is_torch(q) != is_torch(buffer) or (is_torch(q) and q.device != buffer.device):
        raise ValueError("q and buffer must both be numpy arrays or both tensors on the same device.")
    if buffer.ndim != q.ndim + 1 or tuple(buffer.shape[:-1]) != tuple(q.shape) or buffer.shape[-1] < 1:
        raise ValueError(f"buffer has shape {tuple(buffer.shape)}; it must be q.shape + (n_words,) = "
                         f"{tuple(q.shape) + ('n_words',)} with n_words >= 1; see new_buffer().")
    if _overlap(q, buffer):
        raise ValueError("q and buffer share memory; give the buffer its own storage (new_buffer()).")


def _overlap(a, b):
    if not is_torch(a):
        return np.may_share_memory(a, b)
    ends = [(t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()) for t in (a, b)]
    return ends[0][0] < ends[1][1] and ends[1][0] < ends[0][1]


# ---- helpers ------------------------------------------------------------------

def _at(a, i):
    """Index text of flat element i of a, e.g. '[2, 0]'."""
    if not a.shape:
        return ""
    return "[" + ", ".join(str(int(k)) for k in np.unravel_index(int(i), tuple(a.shape))) + "]"


def _numpy(a):
    return a.numpy() if is_torch(a) else a  # CPU tensor: a view sharing memory, so in place works


def _to_torch(arr):
    import torch
    return torch.from_numpy(arr)


def _where(t):
    import torch
    return t.device.index, torch.cuda.current_stream(t.device).cuda_stream


def _kernels(backend, name, a):
    """(backend name, its kernels) for array `a` (argument `name`), after
    checking that the backend runs where `a` lives (the ops work in place)."""
    chosen = backends.select("fixed_point", backend, a)
    on_gpu = is_torch(a) and a.is_cuda
    if on_gpu != (chosen == "cuda"):
        where = "a CUDA tensor" if on_gpu else "on the host"
        fix = "backend='cuda' or 'auto'" if on_gpu else "backend='cpp', 'numba' or 'auto'"
        raise ValueError(f"{name} is {where} but backend={chosen!r} runs "
                         f"{'on CUDA tensors' if chosen == 'cuda' else 'on the host'}; use {fix}.")
    mod = backends.implementation("fixed_point", chosen)
    return chosen, mod if chosen == "numba" else mod.fixed_point
