"""asv benchmarks of mithridate, parameterised by the backend registry
(mithridate.backends): each hot path's parameter list is the backends that
implement it, and ``setup`` raises NotImplementedError (asv: skipped) for a
(path, backend) this machine cannot run, as numpy's and scipy's suites do."""
from mithridate import backends
from mithridate.bench import GPU_BACKENDS, skip_reason


def implementing(path, exclude=()):
    """The backends that implement hot path `path` (the registry's order), less `exclude`."""
    return [b for b in backends.implemented(path) if b not in exclude]


def require(path, backend):
    """Raise NotImplementedError with the reason unless `backend` runs `path` here."""
    if (path, backend) not in backends.REGISTRY:
        raise NotImplementedError(f"{path} has no {backend} implementation")
    reason = skip_reason(backend)
    if reason:
        raise NotImplementedError(reason)


def preload(path):
    """Import `path`'s host implementations now: asv forks every measurement
    from a server that has imported the benchmark files, which saves each fork
    the import (numba kernels, torch: ~1 s). GPU backends are left alone: CUDA
    must not be touched before a fork."""
    for name in implementing(path, GPU_BACKENDS):
        if backends.unavailable_reason(name) is None:
            backends.implementation(path, name)
