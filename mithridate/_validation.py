"""Input checks shared by the public API. Every check runs before any kernel
and raises a TypeError/ValueError that names the argument and the fix."""
import math
import numbers

import numpy as np

LOSSES = ("logistic", "squared", "absolute")
FLOAT_DTYPES = ("float32", "float64")


def is_torch(a):
    # Detect torch tensors without importing torch (import mithridate stays light).
    return type(a).__module__.split(".")[0] == "torch"


def check_no_grad(name, a, where):
    """Refuse a torch tensor that requires grad: `where` returns values
    without an autograd graph, which would silently detach it."""
    if is_torch(a) and a.requires_grad:
        import torch
        if torch.is_grad_enabled():
            raise TypeError(f"{name} requires grad, but {where} returns values without an "
                            "autograd graph (the gradient would be silently lost); use "
                            "mithridate.torch for differentiable results, or pass "
                            f"{name}.detach().")


def _scalar(value):
    """value as a Python scalar if it is a number (Python, numpy scalar of any
    byte order, 0-d array or 0-d tensor), else None."""
    if is_torch(value) and value.ndim == 0:
        value = value.detach().cpu().item()
    elif isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        return None
    return value


def as_number(name, value, hint="", finite=True):
    """A real number (int, float, numpy scalar, 0-d array or tensor) as a
    float; bools, strings, complex and arrays are refused naming `name`."""
    x = _scalar(value)
    if x is None:
        raise TypeError(f"{name}={value!r} ({type(value).__name__}) must be a real number"
                        f"{'; ' + hint if hint else ''}.")
    x = float(x)
    if finite and not math.isfinite(x):
        raise ValueError(f"{name}={value!r} must be a finite number{'; ' + hint if hint else ''}.")
    return x


def as_int(name, value, low, hint=""):
    """An integer >= low (int, numpy integer, 0-d integer array or tensor) as an int."""
    x = _scalar(value)
    if x is None or not isinstance(x, numbers.Integral):
        raise TypeError(f"{name}={value!r} ({type(value).__name__}) must be an integer"
                        f"{'; ' + hint if hint else ''}.")
    if x < low:
        what = "a positive integer" if low == 1 else f"an integer >= {low}"
        raise ValueError(f"{name}={value!r} must be {what}{'; ' + hint if hint else ''}.")
    return int(x)


def as_bool(name, value):
    """True/False (or numpy.bool_) as a bool; anything else, the string
    "False" included, is refused."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}={value!r} ({type(value).__name__}) must be True or False.")
    return bool(value)


def dtype_name(a):
    return str(a.dtype)[6:] if is_torch(a) else a.dtype.name  # "torch.float32" -> "float32"


def check_array(name, a, ndims, dtype=None):
    """A float array/tensor of one of `ndims` dimensions, C-contiguous, non-empty."""
    if not (isinstance(a, np.ndarray) or is_torch(a)):
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(a).__name__}; "
                        f"convert it with numpy.asarray({name}).")
    dt = dtype_name(a)
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{name} has dtype {dt}; use float32 or float64 "
                        f"(e.g. {name}.astype(numpy.float64)).")
    if not is_torch(a) and not a.dtype.isnative:
        raise TypeError(f"{name} has non-native byte order ({a.dtype.str}); convert it with "
                        f"{name}.astype({name}.dtype.newbyteorder('=')).")
    if dtype is not None and dt != dtype:
        raise TypeError(f"{name} has dtype {dt} but X has dtype {dtype}; cast {name} to {dtype}.")
    if a.ndim not in ndims:
        want = " or ".join(f"{k}-D" for k in ndims)
        raise ValueError(f"{name} must be {want}, got shape {tuple(a.shape)}.")
    contiguous = a.is_contiguous() if is_torch(a) else a.flags.c_contiguous
    if not contiguous:
        raise ValueError(f"{name} is not C-contiguous; pass numpy.ascontiguousarray({name}) "
                         f"(or {name}.contiguous() for a tensor).")
    if any(s == 0 for s in a.shape):
        raise ValueError(f"{name} is empty (shape {tuple(a.shape)}); it needs at least one element per axis.")
    return a


def first_bad(a, rule):
    """Flat index of the first element of `a` breaking `rule` ("finite",
    "labels01", "nonneg"), or -1. One pass; numpy arrays go through numba."""
    if is_torch(a):
        import torch
        f = a.detach().reshape(-1)
        bad = {"finite": lambda: ~torch.isfinite(f),
               "labels01": lambda: (f != 0) & (f != 1),
               "nonneg": lambda: ~(torch.isfinite(f) & (f >= 0))}[rule]()
        idx = torch.nonzero(bad)
        return int(idx[0, 0]) if idx.numel() else -1
    from .kernels.cpu.checks import first_bad as numba_first_bad
    return numba_first_bad(np.ascontiguousarray(a), rule)


def check_finite(name, a):
    i = first_bad(a, "finite")
    if i >= 0:
        raise ValueError(f"{name} contains nan or inf (first at flat index {i}); "
                         "remove or impute those values first.")


def check_shape(name, a, shape):
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(a.shape)}, expected {tuple(shape)}.")


def check_labels(y, loss):
    """Finite values, and labels {0, 1} for the logistic loss."""
    if loss != "logistic":
        return check_finite("y", y)
    i = first_bad(y, "labels01")
    if i >= 0:
        value = float(y.reshape(-1)[i])
        raise ValueError(f"y must hold labels in {{0, 1}} for the logistic loss; found {value} at flat "
                         f"index {i}. Map labels with (y > 0).astype(X.dtype) or similar.")


def check_weights(sample_weight):
    i = first_bad(sample_weight, "nonneg")
    if i >= 0:
        value = float(sample_weight.reshape(-1)[i])
        raise ValueError(f"sample_weight has {value} at flat index {i}; weights must be finite and >= 0.")


def check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {list(choices)}.")


def check_finite_X(X, rows=None):
    """X (numpy, 2-D or 3-D; or its rows `rows` only) holds no nan/inf; the
    error names the problem and row of the first bad value."""
    i = first_bad(X, "finite")
    if i >= 0:
        first = np.unravel_index(i, X.shape)
        row = int(first[-2]) if rows is None else int(rows[first[-2]])
        where = f"row {row}" if X.ndim == 2 else f"problem {int(first[0])}, row {row}"
        raise ValueError(f"X has nan or inf at {where}; remove or impute those values first.")


def available_memory():
    """Bytes this process can still allocate: MemAvailable (Linux) capped by
    the cgroup's limit less its usage; os.sysconf's free pages elsewhere;
    None when neither is known."""
    found = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                          "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit) as a, open(usage) as b:
                cap = a.read().strip()
                if cap != "max":
                    found.append(int(cap) - int(b.read().strip()))
        except (OSError, ValueError):
            pass
    if not found:
        import os
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (AttributeError, ValueError, OSError):
            return None
    return max(0, min(found))


def check_memory(need, what, fix):
    """Raise InsufficientMemoryError before allocating `need` bytes for
    `what` when the machine has less available; `fix` says what to change."""
    free = available_memory()
    if free is not None and need > free:
        from .errors import InsufficientMemoryError
        raise InsufficientMemoryError(
            f"{what} needs about {need / 2**30:.3g} GiB but {free / 2**30:.3g} GiB of memory is "
            f"available; {fix}.")
