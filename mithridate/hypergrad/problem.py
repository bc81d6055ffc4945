"""The bilevel problem of one hypergradient call, validated before any work.

Every check names the argument and the fix, so a sweep fails at once rather
than after T steps.
"""
import math
from dataclasses import dataclass

import numpy as np

from .._validation import check_array, check_choice, check_finite, check_labels, check_shape

LOSSES = ("logistic", "squared")  # absolute: zero curvature, no useful hypergradient
MODES = ("trajectory", "forward", "implicit")
BACKENDS = ("numba", "torch")


@dataclass(frozen=True)
class Problem:
    """Training rows X = [Xc; Xp] (poisoning rows last), validation rows, and
    the inner loop's settings. theta0 is (p,), p = d + fit_intercept."""
    Xc: np.ndarray
    yc: np.ndarray
    Xp: np.ndarray
    yp: np.ndarray
    Xv: np.ndarray
    yv: np.ndarray
    lam: float
    theta0: np.ndarray
    T: int
    alpha: float
    gamma: float
    loss: str
    fit_intercept: bool

    @property
    def d(self):
        return self.Xc.shape[1]


def _number(name, value, hint):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value):
        raise ValueError(f"{name}={value!r} must be a finite number; {hint}.")
    return float(value)


def make_problem(Xc, yc, Xp, yp, Xv, yv, lam, w0, T, alpha, gamma, loss, fit_intercept,
                 mode, backend):
    """Check everything and return a Problem (numpy arrays of X's dtype)."""
    check_choice("loss", loss, LOSSES)
    check_choice("mode", mode, MODES)
    check_choice("backend", backend, BACKENDS)
    if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T <= 0:
        raise ValueError(f"T={T!r} must be a positive integer (the number of inner steps).")
    alpha = _number("alpha", alpha, "it is the inner step size")
    if alpha <= 0:
        raise ValueError(f"alpha={alpha} must be > 0 (the inner step size).")
    gamma = _number("gamma", gamma, "it is the momentum")
    if not 0 <= gamma < 1:
        raise ValueError(f"gamma={gamma} must lie in [0, 1) (0: plain gradient descent).")
    lam = _number("lam", lam, "it is log(L2 strength)")
    arrays = dict(Xc=Xc, yc=yc, Xp=Xp, yp=yp, Xv=Xv, yv=yv)
    for name, a in arrays.items():
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name} must be a numpy array, got {type(a).__name__}; "
                            f"pass numpy.asarray({name}) (tensor.numpy() for a CPU tensor).")
    check_array("Xc", Xc, (2,))
    dt = Xc.dtype.name
    d = Xc.shape[1]
    for X, y, rows in (("Xc", "yc", "clean"), ("Xp", "yp", "poisoning"), ("Xv", "yv", "validation")):
        check_array(X, arrays[X], (2,), dt)
        if arrays[X].shape[1] != d:
            raise ValueError(f"{X} has {arrays[X].shape[1]} features but Xc has {d}; "
                             f"all {rows} rows need the same d.")
        check_finite(X, arrays[X])
        check_array(y, arrays[y], (1,), dt)
        check_shape(y, arrays[y], arrays[X].shape[:1])
        try:
            check_labels(arrays[y], loss)
        except ValueError as err:
            raise ValueError(f"{y}: {err}") from None
    if loss == "logistic" and np.unique(yv).size < 2:
        raise ValueError(f"yv holds one class only ({yv[0]}); the validation set needs both "
                         "labels 0 and 1 for the logistic loss.")
    p = d + bool(fit_intercept)
    if w0 is None:
        w0 = np.zeros(p, dtype=Xc.dtype)
    else:
        check_array("w0", w0, (1,), dt)
        check_shape("w0", w0, (p,))
        check_finite("w0", w0)
    return Problem(Xc, yc, Xp, yp, Xv, yv, lam, w0, int(T), alpha, gamma, loss, bool(fit_intercept))
