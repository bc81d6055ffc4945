"""The errors mithridate raises beyond TypeError/ValueError, defined once.

Each names what the user passed and how to fix it; none is a raw numpy,
scipy or allocator error.
"""
import numpy as np

__all__ = ["DivergenceError", "DivergenceWarning", "InsufficientMemoryError",
           "SingularHessianError"]


class DivergenceError(FloatingPointError):
    """The inner training diverged on finite inputs: its gradient became nan
    or inf, or its norm grew far past any stable run's (kernels/cpu/hypergrad.py).

    ``step``: the first inner step t whose iterate theta_t showed it (0 is the
    start, T the final iterate); ``problem``: the index in a batched call
    (None for one problem); ``details``: the settings and the curvature
    estimate behind the message (see mithridate.hypergrad.divergence)."""

    def __init__(self, message, step=None, problem=None, details=None):
        super().__init__(message)
        self.step, self.problem, self.details = step, problem, details or {}


class DivergenceWarning(RuntimeWarning):
    """``on_divergence="warn"``: the inner training diverged; the returned
    values are those of the diverged run (nan, inf or very large)."""


class InsufficientMemoryError(MemoryError):
    """A call would need more memory than the machine has available; raised
    before anything is allocated."""


class SingularHessianError(np.linalg.LinAlgError):
    """The training Hessian at the inner solution is singular (or too
    ill-conditioned to solve) in implicit mode."""
