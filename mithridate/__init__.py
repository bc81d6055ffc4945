"""mithridate: fast engine for data-poisoning research.

Importing the package stays light: torch and triton load only when a torch
or triton backend is used.
"""
from . import ops
from .errors import (DivergenceError, DivergenceWarning, InsufficientMemoryError,
                     SingularHessianError)

__version__ = "0.1.0"
__all__ = ["ops", "DivergenceError", "DivergenceWarning", "InsufficientMemoryError",
           "SingularHessianError", "__version__"]
