"""Exact reversible int64 fixed-point arithmetic (Maclaurin, Duvenaud & Adams 2015).

Values are int64 ``q = round(x * 2**frac_bits)``. ``mul(q, num, den, buffer)``
sets ``q = floor((q*num + s) / den)`` in place, where the digit s (base num) is
popped from a per-element big-integer ``buffer`` (uint32 limbs, shape
``q.shape + (n_words,)``) and the remainder (base den) pushed back into it. So
``|q' - q*num/den| < max(1, num/den)`` and ``unmul`` restores q and the buffer
bit for bit. ``required_words`` sizes the buffer for a number of steps in
advance; a step that would overflow the buffer or int64 raises
:class:`FixedPointOverflow` before anything is written.

Arrays are numpy arrays or torch tensors; CUDA tensors run on ``mithridate._C_cuda``.
"""
import numpy as np

from . import _C
from ._validation import is_torch

__all__ = ["FixedPointOverflow", "encode", "decode", "required_words", "new_buffer", "mul", "unmul"]

_K = _C.fixed_point
MAX_FRAC_BITS = 62
MAX_BASE = 2**31 - 1  # num, den < 2^31 keep every limb product inside uint64
MAX_STEPS = 2**53


class FixedPointOverflow(OverflowError, ValueError):
    """A value or a buffer would not fit; the arrays were left unchanged."""


def encode(x, frac_bits):
    """Return int64 ``round(x * 2**frac_bits)`` (ties to even); x must be finite and fit."""
    _check_int("frac_bits", frac_bits, 0, MAX_FRAC_BITS)
    if is_torch(x) and x.is_cuda:
        import torch
        xs = x.detach().to(torch.float64).contiguous()
        q = torch.empty_like(xs, dtype=torch.int64)
        code, i = _cuda().encode(xs.data_ptr(), q.data_ptr(), xs.numel(), frac_bits, *_where(xs))
    else:
        xs = np.asarray(x.detach().cpu() if is_torch(x) else x)
        if xs.dtype.kind not in "fiu":
            raise TypeError(f"x has dtype {xs.dtype}; pass real numbers (e.g. x.astype(numpy.float64)).")
        xs = np.ascontiguousarray(xs, dtype=np.float64)
        q = np.empty(xs.shape, np.int64)
        code, i = _K.encode(xs, q, frac_bits)
        if is_torch(x):
            q = _to_torch(q)
    if code == _K.NOT_FINITE:
        raise ValueError(f"x{_at(xs, i)} is nan or inf; only finite values can be encoded.")
    if code == _K.RANGE:
        e = 63 - frac_bits
        raise FixedPointOverflow(
            f"x{_at(xs, i)} = {float(xs.reshape(-1)[i])!r} does not fit int64 fixed point with "
            f"frac_bits={frac_bits}: the allowed range is [-2**{e}, 2**{e}); lower frac_bits or rescale x.")
    return q


def decode(q, frac_bits):
    """Return float64 ``q / 2**frac_bits`` (rounded to nearest when ``|q| > 2**53``)."""
    _check_int("frac_bits", frac_bits, 0, MAX_FRAC_BITS)
    _check_array("q", q, "int64", writeable=False)
    if is_torch(q) and q.is_cuda:
        import torch
        x = torch.empty(q.shape, dtype=torch.float64, device=q.device)
        _cuda().decode(q.data_ptr(), x.data_ptr(), q.numel(), frac_bits, *_where(q))
        return x
    x = np.empty(q.shape, np.float64)
    _K.decode(_numpy(q), x, frac_bits)
    return _to_torch(x) if is_torch(q) else x


def required_words(n_steps, num, den):
    """uint32 words per element that ``n_steps`` muls by num/den from an empty buffer never overflow.

    Bits = log2(den) + log2(n_steps) + (n_steps-1) * max(0, log2(den/num)) + 1;
    the proof is in csrc/include/fixed_point.h.
    """
    _check_int("n_steps", n_steps, 0, MAX_STEPS)
    _check_int("num", num, 1, MAX_BASE)
    _check_int("den", den, 1, MAX_BASE)
    return _K.required_words(int(n_steps), int(num), int(den))


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


def mul(q, num, den, buffer):
    """In place: ``q = floor((q*num + s)/den)`` (s popped from ``buffer``), the remainder pushed into it."""
    _step(q, num, den, buffer, "mul")


def unmul(q, num, den, buffer):
    """In place: undo ``mul(q, num, den, buffer)`` bit for bit (q and buffer)."""
    _step(q, num, den, buffer, "unmul")


def _step(q, num, den, buffer, op):
    _check_int("num", num, 1, MAX_BASE)
    _check_int("den", den, 1, MAX_BASE)
    _check_array("q", q, "int64", writeable=True)
    _check_buffer(q, buffer)
    num, den, w = int(num), int(den), int(buffer.shape[-1])
    # unmul by num/den is the step by den/num (see csrc/include/fixed_point.h).
    a, b = (num, den) if op == "mul" else (den, num)
    if is_torch(q) and q.is_cuda:
        code, i = _cuda().mul(q.data_ptr(), buffer.data_ptr(), q.numel(), w, a, b, *_where(q))
    else:
        code, i = _K.mul(_numpy(q), _numpy(buffer), w, a, b)
    if code == _K.CAPACITY:
        raise FixedPointOverflow(
            f"{op} by {num}/{den} would overflow buffer (n_words={w}) at q{_at(q, i)}; nothing was "
            f"changed. Allocate n_words=required_words(n_steps, {num}, {den}) for all your steps.")
    if code == _K.INT64:
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


def _cuda():
    try:
        from . import _C_cuda
    except ImportError as e:
        raise RuntimeError("CUDA tensors need mithridate._C_cuda, which is not built; reinstall with "
                           "nvcc available (MITHRIDATE_CUDA=1 makes its absence an error).") from e
    return _C_cuda.fixed_point
