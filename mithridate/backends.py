"""Backend registry: which module implements each hot path on each backend, and selection.

``REGISTRY`` maps (hot path, backend) to the module holding that
implementation, imported only when :func:`implementation` asks for it.

``select(path, "auto", *arrays)`` picks by where the data lives: the first
available backend of ``AUTO[path]`` for host data (numpy arrays, CPU
tensors) or for CUDA tensors (or ``gpu=True``: host data the caller moves to
the GPU), with a debug log line when it passes over an unavailable one. ``MITHRIDATE_BACKEND`` overrides ``auto`` for the paths its
backend implements (and is ignored, with a debug line, for the others: one
setting serves every path). An explicit backend that cannot run here raises
RuntimeError (why, and what to use instead); a backend without that path
raises ValueError listing the ones that have it.
"""
import functools
import importlib
import importlib.util
import logging
import os

from ._validation import is_torch

log = logging.getLogger(__name__)

REGISTRY = {
    ("linear", "numba"): "mithridate.kernels.cpu.linear",
    ("linear", "triton"): "mithridate.kernels.gpu.linear",
    ("linear", "torch"): "mithridate.reference.linear",
    ("lipschitz", "numba"): "mithridate.kernels.cpu.lipschitz",
    ("lipschitz", "triton"): "mithridate.kernels.gpu.lipschitz",
    ("lipschitz", "torch"): "mithridate.reference.lipschitz",
    ("hypergrad", "numba"): "mithridate.hypergrad.fused",
    ("hypergrad", "cpp"): "mithridate.hypergrad.native",
    ("hypergrad", "cuda"): "mithridate.hypergrad.native",
    ("hypergrad", "torch"): "mithridate.hypergrad.reference",
    ("fixed_point", "numba"): "mithridate.kernels.cpu.fixed_point",
    ("fixed_point", "cpp"): "mithridate._C",
    ("fixed_point", "cuda"): "mithridate._C_cuda",
    ("mlp", "numba"): "mithridate.kernels.cpu.mlp",
    ("mlp", "triton"): "mithridate.kernels.gpu.mlp",
    ("mlp", "torch"): "mithridate.reference.mlp",
}
NAMES = ("numba", "cpp", "cuda", "triton", "torch")
BACKENDS = NAMES + ("auto",)
PATHS = tuple(dict.fromkeys(path for path, _ in REGISTRY))
# path -> (preference for host data, for CUDA tensors): indexed by "on GPU". Host
# fixed point prefers the compiled extension, which it has always used.
AUTO = {
    "linear": (("numba", "torch"), ("triton", "torch")),
    "lipschitz": (("numba", "torch"), ("triton", "torch")),
    "hypergrad": (("numba", "cpp", "torch"), ("cuda", "torch")),
    "fixed_point": (("cpp", "numba"), ("cuda",)),
    "mlp": (("numba", "torch"), ("triton", "torch")),
}
# Compiled extensions: the backend needs this module to import.
_EXTENSION = {"cpp": "mithridate._C", "cuda": "mithridate._C_cuda"}


@functools.lru_cache(maxsize=None)
def _installed(mod):
    return importlib.util.find_spec(mod) is not None


@functools.lru_cache(maxsize=None)
def _import_error(mod):
    """None if extension `mod` imports, else the error (fixed for the life of the process)."""
    try:
        importlib.import_module(mod)
    except ImportError as err:
        return str(err)
    return None


@functools.lru_cache(maxsize=None)
def cuda_available():
    """A CUDA device is visible to torch (fixed for the life of the process)."""
    if not _installed("torch"):
        return False
    import torch
    return torch.cuda.is_available()


def unavailable_reason(name):
    """None if backend `name` can run here, else why not (and what to install)."""
    if name == "numba":  # first: auto's usual choice, on every ops call
        return None if _installed("numba") else "numba is not installed (pip install numba)"
    if name not in NAMES:
        raise ValueError(f"backend={name!r} is unknown; choose one of {list(NAMES)}.")
    if name in _EXTENSION:
        err = _import_error(_EXTENSION[name])
        if err:
            return (f"the compiled extension {_EXTENSION[name]} does not import ({err}); reinstall "
                    "with a C++ compiler" + (" and nvcc (MITHRIDATE_CUDA=1)" if name == "cuda" else ""))
        return None if name == "cpp" or cuda_available() else "no CUDA GPU is visible to torch"
    if not _installed("torch"):
        return f"backend {name!r} needs torch (pip install 'mithridate[gpu]')"
    if name == "triton":
        if not _installed("triton"):
            return "triton is not installed (pip install 'mithridate[gpu]')"
        if os.environ.get("TRITON_INTERPRET") != "1" and not cuda_available():
            return "triton needs a CUDA GPU (or TRITON_INTERPRET=1 for tests on tiny shapes)"
    return None


def implemented(path):
    """Backends with an implementation of `path`, in ``NAMES`` order."""
    if path not in AUTO:
        raise ValueError(f"hot path {path!r} is unknown; choose one of {list(PATHS)}.")
    return tuple(b for b in NAMES if (path, b) in REGISTRY)


def available(path):
    """Backends that implement `path` and can run here."""
    return tuple(b for b in implemented(path) if unavailable_reason(b) is None)


def _check_implements(path, backend):
    if (path, backend) not in REGISTRY:
        raise ValueError(f"backend={backend!r}: {path} has no {backend} implementation; implemented: "
                         f"{', '.join(implemented(path))}.")


def select(path, backend="auto", *arrays, gpu=False):
    """The backend name that runs `path` for data `arrays` ("auto" or a name in ``BACKENDS``);
    ``gpu``: the caller puts the data on the GPU (auto then prefers as for CUDA tensors)."""
    origin = "backend"
    if backend == "auto":
        env = os.environ.get("MITHRIDATE_BACKEND", "auto")
        if env not in BACKENDS:
            raise ValueError(f"MITHRIDATE_BACKEND={env!r} is unknown; choose one of {list(BACKENDS)} "
                             "or unset it.")
        if (path, env) not in REGISTRY:
            if env != "auto":
                implemented(path)
                log.debug("MITHRIDATE_BACKEND=%r has no %s implementation; choosing automatically",
                          env, path)
            return _auto(path, arrays, gpu)
        backend, origin = env, "MITHRIDATE_BACKEND"
    elif (path, backend) not in REGISTRY:
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r} is unknown; choose one of {list(BACKENDS)}.")
        _check_implements(path, backend)
    reason = unavailable_reason(backend)
    if reason:
        others = [b for b in available(path) if b != backend]
        raise RuntimeError(f"{path} on {origin}={backend!r} is unavailable: {reason}. Available "
                           f"here for {path}: {', '.join(others) or 'none'} (or 'auto').")
    return backend


def _auto(path, arrays, gpu=False):
    prefs = AUTO.get(path)
    if prefs is None:
        implemented(path)  # raises: unknown path
    on_gpu = gpu
    for a in arrays:
        if is_torch(a) and a.is_cuda:
            on_gpu = True
            break
    choices = prefs[on_gpu]
    if unavailable_reason(choices[0]) is None:  # the usual case: no log, no list
        return choices[0]
    reasons = []
    for name in choices:
        reason = unavailable_reason(name)
        if reason is None:
            log.debug("backend auto for %s: %s; using %s", path, "; ".join(reasons), name)
            return name
        reasons.append(f"{name} unavailable ({reason})")
    where = "CUDA tensors" if on_gpu else "host data"
    raise RuntimeError(f"no backend can run {path} on {where} here: {'; '.join(reasons)}.")


_modules = {}


def implementation(path, backend):
    """The module implementing `path` on `backend` (a name, not "auto"), imported on first use."""
    mod = _modules.get((path, backend))
    if mod is None:
        if (path, backend) not in REGISTRY:
            implemented(path)
            if backend not in NAMES:
                raise ValueError(f"backend={backend!r} is unknown; choose one of {list(NAMES)}.")
            _check_implements(path, backend)
        mod = _modules[(path, backend)] = importlib.import_module(REGISTRY[(path, backend)])
    return mod
