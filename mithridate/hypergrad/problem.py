"""The bilevel problems of one hypergradient call, validated before any work.

Every check names the argument (and, in a batch, the problem index) and the
fix, so a sweep fails at once rather than after T steps.
"""
from dataclasses import dataclass

import numpy as np

from .._validation import (as_bool, as_int, as_number, check_array, check_choice, check_finite,
                           check_labels, check_shape, is_torch)

LOSSES = ("logistic", "squared")  # absolute: zero curvature, no useful hypergradient
MODES = ("trajectory", "forward", "implicit", "checkpoint", "reversible")
BACKENDS = ("numba", "torch", "cpp", "cuda")
# Modes each in-package backend runs; cpp/cuda: mithridate.hypergrad.native.MODES.
SUPPORTED = {"numba": MODES, "torch": ("trajectory", "forward", "implicit", "checkpoint")}
NATIVE = ("cpp", "cuda")


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


def supported_modes(backend):
    """Modes `backend` runs; raises RuntimeError if a native backend is not built."""
    if backend not in NATIVE:
        return SUPPORTED[backend]
    try:
        from .native import MODES as native_modes
    except ImportError as err:
        raise RuntimeError(f"backend {backend!r} is unavailable: {err}. Use backend='numba'.") \
            from None
    return native_modes


def check_settings(T, alpha, gamma, loss, mode, backend):
    """Scalar settings shared by every problem of a call; returns (T, alpha, gamma)."""
    check_choice("loss", loss, LOSSES)
    check_choice("mode", mode, MODES)
    check_choice("backend", backend, BACKENDS)
    modes = supported_modes(backend)
    if mode not in modes:
        raise ValueError(f"mode={mode!r} does not run on backend={backend!r}, which supports "
                         f"modes {list(modes)}; backend='numba' runs every mode.")
    T = as_int("T", T, 1, "the number of inner steps")
    alpha = as_number("alpha", alpha, "it is the inner step size")
    if alpha <= 0:
        raise ValueError(f"alpha={alpha} must be > 0 (the inner step size).")
    gamma = as_number("gamma", gamma, "it is the momentum")
    if not 0 <= gamma < 1:
        raise ValueError(f"gamma={gamma} must lie in [0, 1) (0: plain gradient descent).")
    return int(T), alpha, gamma


def _check_rows(arrays, d, dt, loss, names):
    """Row sets `names` of `arrays` (2-D X, 1-D y) against d and dtype."""
    for X, y, rows in (("Xc", "yc", "clean"), ("Xp", "yp", "poisoning"), ("Xv", "yv", "validation")):
        if X not in names:
            continue
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
        if X == "Xv" and loss == "logistic" and np.unique(arrays[y]).size < 2:
            raise ValueError(f"yv holds one class only ({arrays[y][0]}); the validation set "
                             "needs both labels 0 and 1 for the logistic loss.")


def _check_w0(w0, p, dt):
    if not isinstance(w0, np.ndarray):
        raise TypeError(f"w0 must be a numpy array, got {type(w0).__name__}; pass numpy.asarray(w0).")
    check_array("w0", w0, (1,), dt)
    check_shape("w0", w0, (p,))
    check_finite("w0", w0)


def _arrays(Xc, yc, Xp, yp, Xv, yv):
    arrays = dict(Xc=Xc, yc=yc, Xp=Xp, yp=yp, Xv=Xv, yv=yv)
    for name, a in arrays.items():
        if is_torch(a) and a.requires_grad:
            raise TypeError(f"{name} is a torch tensor that requires grad; hypergrad works on "
                            "numpy arrays and returns no autograd graph. Use mithridate.torch "
                            f"for a differentiable hypergradient, or pass {name}.detach().numpy().")
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name} must be a numpy array, got {type(a).__name__}; "
                            f"pass numpy.asarray({name}) (tensor.numpy() for a CPU tensor).")
    return arrays


def make_problem(Xc, yc, Xp, yp, Xv, yv, lam, w0, T, alpha, gamma, loss, fit_intercept,
                 mode, backend):
    """Check everything and return a Problem (numpy arrays of X's dtype)."""
    T, alpha, gamma = check_settings(T, alpha, gamma, loss, mode, backend)
    lam = as_number("lam", lam, "it is log(L2 strength)")
    fit_intercept = as_bool("fit_intercept", fit_intercept)
    arrays = _arrays(Xc, yc, Xp, yp, Xv, yv)
    check_array("Xc", Xc, (2,))
    dt, d = Xc.dtype.name, Xc.shape[1]
    _check_rows(arrays, d, dt, loss, ("Xc", "Xp", "Xv"))
    p = d + bool(fit_intercept)
    if w0 is None:
        w0 = np.zeros(p, dtype=Xc.dtype)
    else:
        _check_w0(w0, p, dt)
    return Problem(Xc, yc, Xp, yp, Xv, yv, lam, w0, T, alpha, gamma, loss, fit_intercept)


def make_problems(Xc, yc, Xp, yp, Xv, yv, lam, w0, T, alpha, gamma, loss, fit_intercept,
                  mode, backend):
    """Batched form: Xp (B, k, d), yp (B, k); Xc, yc, Xv, yv, w0 either shared
    (the single-problem shape) or with a leading B axis; lam a number or (B,).
    Checks every problem before any work; returns a list of B Problems, whose
    shared arrays are the very same objects (kernels detect sharing by identity)."""
    T, alpha, gamma = check_settings(T, alpha, gamma, loss, mode, backend)
    fit_intercept = as_bool("fit_intercept", fit_intercept)
    arrays = _arrays(Xc, yc, Xp, yp, Xv, yv)
    check_array("Xp", Xp, (3,))
    B, dt, d = Xp.shape[0], Xp.dtype.name, Xp.shape[2]
    shared = set()
    for name, a in arrays.items():
        base = 1 if name[0] == "y" else 2
        if a.ndim == base and name not in ("Xp", "yp"):
            shared.add(name)
        elif a.ndim != base + 1:
            extra = "" if name in ("Xp", "yp") else f" ({base}-D when shared by all problems)"
            raise ValueError(f"{name} must be {base + 1}-D{extra} in a batched call "
                             f"(Xp is (B, k, d)), got shape {a.shape}.")
        elif a.shape[0] != B:
            raise ValueError(f"{name} has {a.shape[0]} problems on axis 0 but Xp has {B}; "
                             "give every batched array the same leading B.")
    for X, y in (("Xc", "yc"), ("Xv", "yv")):
        if (X in shared) != (y in shared):
            raise ValueError(f"{X} is {'shared' if X in shared else 'batched'} but {y} is not; "
                             f"give both a leading B axis or neither.")
    if is_torch(lam) or not isinstance(lam, (np.ndarray, list, tuple)) or np.ndim(lam) == 0:
        lam = as_number("lam", lam, "it is log(L2 strength)")
    lams = np.asarray(lam)
    if lams.dtype.kind not in "iuf":
        raise TypeError(f"lam has dtype {lams.dtype}; give a number or one number per problem.")
    if lams.ndim == 0:
        lams = np.full(B, as_number("lam", lam, "it is log(L2 strength)"))
    elif lams.shape != (B,):
        raise ValueError(f"lam has shape {lams.shape}; give a number or one value per problem ({B},).")
    p = d + bool(fit_intercept)
    if w0 is not None and (not isinstance(w0, np.ndarray) or w0.ndim != 2):
        _check_w0(w0, p, dt)
    elif w0 is not None:
        check_array("w0", w0, (2,), dt)
        check_shape("w0", w0, (B, p))
    take = lambda name, b: arrays[name] if name in shared else arrays[name][b]
    _check_rows({name: take(name, 0) for name in arrays}, d, dt, loss, shared)  # once
    problems = []
    for b in range(B):
        one = {name: take(name, b) for name in arrays}
        try:
            lam_b = as_number("lam", lams[b], "it is log(L2 strength)")
            _check_rows(one, d, dt, loss, {"Xc", "Xp", "Xv"} - shared)
            if w0 is None:
                w0_b = np.zeros(p, dtype=Xp.dtype)
            else:
                w0_b = w0 if w0.ndim == 1 else w0[b]
                if w0.ndim == 2:
                    check_finite("w0", w0_b)
        except (ValueError, TypeError) as err:
            raise type(err)(f"problem {b}: {err}") from None
        problems.append(Problem(one["Xc"], one["yc"], one["Xp"], one["yp"], one["Xv"], one["yv"],
                                lam_b, w0_b, T, alpha, gamma, loss, bool(fit_intercept)))
    return problems
