"""Torch (autograd) reference of every hot path: the test oracle and the
baseline column of the benchmarks. Readable first, fast second."""
from .linear import hvp, loss_grad, mixed
from .lipschitz import lipschitz

__all__ = ["loss_grad", "hvp", "mixed", "lipschitz"]
