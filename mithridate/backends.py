"""Backend registry and selection.

``auto`` picks by where the data lives: numpy arrays and CPU tensors go to
``numba``, CUDA tensors to ``triton``. ``MITHRIDATE_BACKEND`` overrides
``auto``. An explicitly requested backend that cannot run raises; an automatic
choice that cannot run falls back to ``numba`` (CPU data) or ``torch`` with a
debug log line.
"""
import functools
import importlib
import importlib.util
import logging
import os

from ._validation import is_torch

log = logging.getLogger(__name__)

# backend -> (module holding the linear-model kernels, what it runs on)
LINEAR = {
    "numba": "mithridate.kernels.cpu.linear",
    "triton": "mithridate.kernels.gpu.linear",
    "torch": "mithridate.reference.linear",
}
BACKENDS = tuple(LINEAR) + ("auto",)


@functools.lru_cache(maxsize=None)
def _installed(mod):
    return importlib.util.find_spec(mod) is not None


@functools.lru_cache(maxsize=None)
def cuda_available():
    """A CUDA device is visible to torch (fixed for the life of the process)."""
    if not _installed("torch"):
        return False
    import torch
    return torch.cuda.is_available()


def unavailable_reason(name):
    """None if backend `name` can run here, else why not."""
    if name == "numba":
        return None if _installed("numba") else "numba is not installed (pip install numba)"
    if not _installed("torch"):
        return f"backend {name!r} needs torch (pip install 'mithridate[gpu]')"
    if name == "triton":
        if not _installed("triton"):
            return "triton is not installed (pip install 'mithridate[gpu]')"
        if os.environ.get("TRITON_INTERPRET") != "1" and not cuda_available():
            return "triton needs a CUDA GPU (or TRITON_INTERPRET=1 for tests on tiny shapes)"
    return None


def select(backend, *arrays):
    """Resolve `backend` ('auto' or a name) for data `arrays`; returns a name."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is unknown; choose one of {list(BACKENDS)}.")
    if backend == "auto":
        backend = os.environ.get("MITHRIDATE_BACKEND", "auto")
        if backend not in BACKENDS:
            raise ValueError(f"MITHRIDATE_BACKEND={backend!r} is unknown; choose one of {list(BACKENDS)}.")
    if backend != "auto":
        reason = unavailable_reason(backend)
        if reason:
            raise RuntimeError(f"backend {backend!r} is unavailable: {reason}.")
        return backend
    on_gpu = any(is_torch(a) and a.is_cuda for a in arrays if a is not None)
    choice = "triton" if on_gpu else "numba"
    reason = unavailable_reason(choice)
    if reason:
        fallback = "torch" if on_gpu else "numba"
        log.debug("backend auto: %s unavailable (%s); using %s", choice, reason, fallback)
        return fallback
    return choice


def linear_module(name):
    return importlib.import_module(LINEAR[name])


# backend -> module holding the batched Lipschitz regularisers
LIPSCHITZ = {
    "numba": "mithridate.kernels.cpu.lipschitz",
    "triton": "mithridate.kernels.gpu.lipschitz",
    "torch": "mithridate.reference.lipschitz",
}


def lipschitz_module(name):
    if name not in LIPSCHITZ:
        raise RuntimeError(f"backend {name!r} has no Lipschitz kernel; use one of {list(LIPSCHITZ)}.")
    return importlib.import_module(LIPSCHITZ[name])
