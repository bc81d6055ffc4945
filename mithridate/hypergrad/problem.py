"""The bilevel problems of a hypergradient call, validated before any work.

Validation comes in two halves so that an Engine checks its clean and
validation rows once (``check_fixed``) and, per call, only the poisoning rows,
lam and w0 (``check_call``). Every check names the argument (and, in a batch,
the problem index) and the fix, so a sweep fails at once rather than after T
steps.
"""
from dataclasses import dataclass

import numpy as np

from .. import backends
from .._validation import (as_int, as_number, check_array, check_choice, check_finite,
                           check_labels, check_shape, is_torch)

LOSSES = ("logistic", "squared")  # absolute: zero curvature, no useful hypergradient
MODES = ("trajectory", "forward", "implicit", "checkpoint", "reversible")


@dataclass(frozen=True)
class Problem:
    """Training rows [Xc; Xp] (poisoning rows last), validation rows, and the
    inner loop's settings. theta0 is (p,), p = d + fit_intercept. X, y: the
    packed training rows where an engine holds them (``rows``)."""
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
    model: object = None
    X: np.ndarray = None
    y: np.ndarray = None

    @property
    def d(self):
        return self.Xc.shape[1]

    def rows(self):
        """(X, y) = ([Xc; Xp], [yc; yp]): the engine's packed buffer, else a new one."""
        if self.X is not None:
            return self.X, self.y
        return np.concatenate([self.Xc, self.Xp]), np.concatenate([self.yc, self.yp])


@dataclass(frozen=True)
class Fixed:
    """The clean and validation rows, checked: Xc (nc, d) or (B, nc, d), Xv
    (nv, d) or (B, nv, d); B is None when both are shared by every problem."""
    Xc: np.ndarray
    yc: np.ndarray
    Xv: np.ndarray
    yv: np.ndarray
    B: int = None

    @property
    def d(self):
        return self.Xc.shape[-1]

    @property
    def dtype(self):
        return self.Xc.dtype

    def take(self, name, b):
        """Problem b's rows `name` (the shared array itself when it is shared)."""
        a = getattr(self, name)
        return a if a.ndim == (2 if name[0] == "X" else 1) else a[b]


def backend_modes(backend, *arrays):
    """(name, modes): the registry's choice of backend for `arrays` and the
    modes it runs (its module's MODES)."""
    name = backends.select("hypergrad", backend, *arrays)
    return name, backends.implementation("hypergrad", name).MODES


def check_mode(mode, backend, modes):
    check_choice("mode", mode, MODES)
    if mode not in modes:
        raise ValueError(f"mode={mode!r} does not run on backend={backend!r}, which supports "
                         f"modes {list(modes)}; backend='numba' runs every mode.")


def check_settings(T, alpha, gamma):
    """Scalar settings shared by every problem of a call; returns (T, alpha, gamma)."""
    T = as_int("T", T, 1, "the number of inner steps")
    alpha = as_number("alpha", alpha, "it is the inner step size")
    if alpha <= 0:
        raise ValueError(f"alpha={alpha} must be > 0 (the inner step size).")
    gamma = as_number("gamma", gamma, "it is the momentum")
    if not 0 <= gamma < 1:
        raise ValueError(f"gamma={gamma} must lie in [0, 1) (0: plain gradient descent).")
    return int(T), alpha, gamma


def _numpy(name, a):
    if is_torch(a) and a.requires_grad:
        raise TypeError(f"{name} is a torch tensor that requires grad; hypergrad works on "
                        "numpy arrays and returns no autograd graph. Use mithridate.torch "
                        f"for a differentiable hypergradient, or pass {name}.detach().numpy().")
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(a).__name__}; "
                        f"pass numpy.asarray({name}) (tensor.numpy() for a CPU tensor).")


def _check_rows(X, y, Xa, ya, d, dt, loss, where=""):
    """One problem's row set (2-D X named X, 1-D y named y) against d and dtype."""
    rows = {"Xc": "clean", "Xp": "poisoning", "Xv": "validation"}[X]
    try:
        check_array(X, Xa, (2,), dt)
        if Xa.shape[1] != d:
            raise ValueError(f"{X} has {Xa.shape[1]} features but Xc has {d}; "
                             f"all {rows} rows need the same d.")
        check_finite(X, Xa)
        check_array(y, ya, (1,), dt)
        check_shape(y, ya, Xa.shape[:1])
        try:
            check_labels(ya, loss)
        except ValueError as err:
            raise ValueError(f"{y}: {err}") from None
        if X == "Xv" and loss == "logistic" and np.unique(ya).size < 2:
            raise ValueError(f"yv holds one class only ({ya[0]}); the validation set "
                             "needs both labels 0 and 1 for the logistic loss.")
    except (ValueError, TypeError) as err:
        raise type(err)(f"{where}{err}") from None


def _check_set(X, y, Xa, ya, d, dt, loss, B):
    """A row set shared (2-D X) or batched (3-D X, problem by problem)."""
    if Xa.ndim == 2:
        return _check_rows(X, y, Xa, ya, d, dt, loss)
    _numpy(y, ya)
    if ya.ndim != 2:
        raise ValueError(f"{X} is batched but {y} is not; give both a leading B axis or neither.")
    if ya.shape[0] != B:
        raise ValueError(f"{y} has {ya.shape[0]} problems on axis 0 but {X} has {B}; "
                         "give every batched array the same leading B.")
    for b in range(B):
        _check_rows(X, y, Xa[b], ya[b], d, dt, loss, f"problem {b}: ")


def check_fixed(Xc, yc, Xv, yv, loss):
    """The clean and validation rows of every later call, checked once."""
    for name, a in (("Xc", Xc), ("yc", yc), ("Xv", Xv), ("yv", yv)):
        _numpy(name, a)
    check_array("Xc", Xc, (2, 3))
    dt, d = Xc.dtype.name, Xc.shape[-1]
    B = Xc.shape[0] if Xc.ndim == 3 else None
    check_array("Xv", Xv, (2, 3), dt)
    if Xv.ndim == 3:
        if B is not None and Xv.shape[0] != B:
            raise ValueError(f"Xv has {Xv.shape[0]} problems on axis 0 but Xc has {B}; "
                             "give every batched array the same leading B.")
        B = Xv.shape[0]
    for X, y, Xa, ya in (("Xc", "yc", Xc, yc), ("Xv", "yv", Xv, yv)):
        if Xa.ndim == 2 and isinstance(ya, np.ndarray) and ya.ndim == 2:
            raise ValueError(f"{X} is shared but {y} is not; give both a leading B axis or neither.")
        _check_set(X, y, Xa, ya, d, dt, loss, Xa.shape[0])
    return Fixed(Xc, yc, Xv, yv, B)


def check_w0(w0, p, dt):
    _numpy("w0", w0)
    check_array("w0", w0, (1,), dt)
    check_shape("w0", w0, (p,))
    check_finite("w0", w0)


def _lam(lam, n_lam):
    """One problem's lam: a float (one hyperparameter), else (n_lam,) float64."""
    hint = "it is log(L2 strength)"
    if n_lam == 1:
        if isinstance(lam, np.ndarray) and lam.shape == (1,):
            lam = lam[0]
        return as_number("lam", lam, hint)
    lam = np.asarray(lam, dtype=np.float64)
    if lam.shape != (n_lam,):
        raise ValueError(f"lam has shape {lam.shape}; the model has {n_lam} "
                         f"hyperparameters, one per penalised group: give ({n_lam},).")
    for j, value in enumerate(lam):
        as_number(f"lam[{j}]", value, hint)
    return lam


def _lams(lam, B, n_lam):
    """lam of a batched call: one problem's lam for all, or one per problem:
    (B,) float64 for one hyperparameter, else (B, n_lam)."""
    one = () if n_lam == 1 else (n_lam,)
    if is_torch(lam) or not isinstance(lam, (np.ndarray, list, tuple)) or np.shape(lam) == one:
        return np.broadcast_to(np.asarray(_lam(lam, n_lam), np.float64), (B,) + one)
    lams = np.asarray(lam)
    if lams.dtype.kind not in "iuf":
        raise TypeError(f"lam has dtype {lams.dtype}; give a number or one number per problem.")
    if lams.shape != (B,) + one:
        want = (f"a number or one value per problem ({B},)" if n_lam == 1 else
                f"({n_lam},) for every problem or ({B}, {n_lam}) (one per penalised group)")
        raise ValueError(f"lam has shape {lams.shape}; give {want}.")
    for b in range(B):
        try:
            _lam(lams[b], n_lam)
        except (ValueError, TypeError) as err:
            raise type(err)(f"problem {b}: {err}") from None
    return lams.astype(np.float64)


def _first_problem(err, B, check):
    """Re-raise `err` (a check of a whole batched array) naming the problem
    `check(b)` fails for."""
    for b in range(B):
        try:
            check(b)
        except (ValueError, TypeError) as e:
            raise type(e)(f"problem {b}: {e}") from None
    raise err


def check_call(fixed, Xp, yp, lam, w0, p, loss, n_lam=1):
    """The per-call arrays against the fixed rows: (B or None, lam, w0), with
    lam as ``_lam`` (single) or ``_lams`` (batched), w0 (p,) or (B, p) (zeros
    when None)."""
    _numpy("Xp", Xp)
    _numpy("yp", yp)
    dt, d = fixed.dtype.name, fixed.d
    if Xp.ndim != 3:
        if fixed.B is not None:
            raise ValueError(f"Xp must be 3-D (B, k, d): Xc or Xv carries a leading axis of "
                             f"{fixed.B} problems; got shape {Xp.shape}.")
        _check_rows("Xp", "yp", Xp, yp, d, dt, loss)
        lam = _lam(lam, n_lam)
        if w0 is None:
            return None, lam, np.zeros(p, dtype=fixed.dtype)
        check_w0(w0, p, dt)
        return None, lam, w0
    check_array("Xp", Xp, (3,), dt)
    B, k = Xp.shape[:2]
    if fixed.B is not None and fixed.B != B:
        name = "Xc" if fixed.Xc.ndim == 3 else "Xv"
        raise ValueError(f"{name} has {fixed.B} problems on axis 0 but Xp has {B}; "
                         "give every batched array the same leading B.")
    if Xp.shape[2] != d:
        raise ValueError(f"Xp has {Xp.shape[2]} features but Xc has {d}; all poisoning rows "
                         "need the same d.")
    check_array("yp", yp, (2,), dt)
    check_shape("yp", yp, (B, k))
    try:  # one pass over the batch; the problem is found on failure only
        check_finite("Xp", Xp)
        check_labels(yp, loss)
    except ValueError as err:
        _first_problem(err, B, lambda b: _check_rows("Xp", "yp", Xp[b], yp[b], d, dt, loss))
    lams = _lams(lam, B, n_lam)
    if w0 is None:
        return B, lams, np.zeros((B, p), dtype=fixed.dtype)
    _numpy("w0", w0)
    if w0.ndim != 2:
        check_w0(w0, p, dt)
        return B, lams, np.broadcast_to(w0, (B, p))
    check_array("w0", w0, (2,), dt)
    check_shape("w0", w0, (B, p))
    try:
        check_finite("w0", w0)
    except ValueError as err:
        _first_problem(err, B, lambda b: check_finite("w0", w0[b]))
    return B, lams, w0


def problems(fixed, Xp, yp, B, lam, w0, settings, X=None, y=None):
    """The Problems of one call (checked by check_call): one, or B sharing the
    fixed rows' very arrays (kernels detect sharing by identity). settings =
    (T, alpha, gamma, loss, fit_intercept, model); X, y: packed training rows
    ((n, d), or (B, n, d)) to hand on."""
    if B is None:
        return [Problem(fixed.Xc, fixed.yc, Xp, yp, fixed.Xv, fixed.yv, lam, w0, *settings, X, y)]
    take = fixed.take
    return [Problem(take("Xc", b), take("yc", b), Xp[b], yp[b], take("Xv", b), take("yv", b),
                    lam[b] if lam.ndim == 2 else float(lam[b]), w0[b], *settings,
                    None if X is None else X[b], None if y is None else y[b]) for b in range(B)]


def make_problems(Xc, yc, Xp, yp, Xv, yv, lam, w0, T, alpha, gamma, loss, fit_intercept,
                  mode, backend):
    """Every check of one linear-model call, as an Engine makes them: a list of
    Problems (one for a 2-D Xp, B for Xp (B, k, d))."""
    check_choice("loss", loss, LOSSES)
    check_mode(mode, *backend_modes(backend, Xc, Xp, Xv))
    T, alpha, gamma = check_settings(T, alpha, gamma)
    fixed = check_fixed(Xc, yc, Xv, yv, loss)
    B, lam, w0 = check_call(fixed, Xp, yp, lam, w0, fixed.d + bool(fit_intercept), loss)
    return problems(fixed, Xp, yp, B, lam, w0, (T, alpha, gamma, loss, bool(fit_intercept), None))


def make_problem(*args):
    """The Problem of a single call (arguments as make_problems)."""
    return make_problems(*args)[0]
