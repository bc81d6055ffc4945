"""Simple poisoning attacks of paper 000: label flipping and data modification.

Conventions shared by every function:

- The number of poisoned rows is ``k = floor(beta * n + 1/2)`` (beta * n
  rounded half up, in float64); beta must lie in [0, 1].
- The poisoned rows are the first ``k`` entries of
  ``numpy.random.default_rng(seed).permutation(n)``: uniform without
  replacement, and *nested*: for one seed, the rows poisoned at a smaller beta
  are also poisoned, with the same values, at every larger beta.
- Data modification then draws ``rng.standard_normal((k, d))`` from the same
  generator; row ``perm[i]`` gets noise row ``i`` times ``sqrt(variance)``,
  cast to X's dtype.
- Inputs are never modified. Single-config functions return new arrays;
  ``*_batch`` functions return a grid over ``betas x seeds`` (arrays of shape
  ``(len(betas), len(seeds), n, ...)``) where the part an attack leaves
  unchanged (X for label attacks, y for data modification) is a read-only
  broadcast view of the input, not a copy. A batch refuses to allocate more
  than ``max_bytes`` (default 2 GiB: outputs, mask and noise buffer); loop
  over the single-config function then.
"""
from typing import NamedTuple

import numpy as np

MAX_BYTES = 2 ** 31


class Poisoned(NamedTuple):
    """Poisoned features, labels, and the boolean mask of poisoned rows."""
    X: np.ndarray
    y: np.ndarray
    mask: np.ndarray


def n_poisoned(n, beta):
    """Number of poisoned rows out of ``n`` at fraction ``beta``: floor(beta * n + 1/2)."""
    return int(np.floor(float(beta) * n + 0.5))


def label_set(X, y, beta, value, *, seed=0):
    """Set the labels of a ``beta`` fraction of rows to ``value`` (paper 000, Wine attack b: 10)."""
    return _single(X, y, beta, seed, "set", value)


def label_flip(X, y, beta, *, seed=0, labels="auto"):
    """Flip the binary labels of a ``beta`` fraction of rows.

    ``labels``: ``"01"`` (y -> 1 - y), ``"pm1"`` (y -> -y), or ``"auto"``:
    ``"01"`` when y takes values in {0, 1}, ``"pm1"`` when in {-1, 1}; labels
    that are all 1 are ambiguous and need an explicit choice.
    """
    return _single(X, y, beta, seed, "flip", labels)


def data_modification(X, y, beta, *, variance, seed=0):
    """Replace the features of a ``beta`` fraction of rows by N(0, variance) noise
    (paper 000: variance 4 on Wine, 100 on Boston)."""
    return _single(X, y, beta, seed, "noise", variance)


def label_set_batch(X, y, betas, seeds, value, *, max_bytes=MAX_BYTES):
    """:func:`label_set` on the grid ``betas x seeds``; see the module docstring."""
    return _batch(X, y, betas, seeds, "set", value, max_bytes)


def label_flip_batch(X, y, betas, seeds, *, labels="auto", max_bytes=MAX_BYTES):
    """:func:`label_flip` on the grid ``betas x seeds``; see the module docstring."""
    return _batch(X, y, betas, seeds, "flip", labels, max_bytes)


def data_modification_batch(X, y, betas, seeds, *, variance, max_bytes=MAX_BYTES):
    """:func:`data_modification` on the grid ``betas x seeds``; see the module docstring."""
    return _batch(X, y, betas, seeds, "noise", variance, max_bytes)


def _single(X, y, beta, seed, kind, param):
    _check_beta("beta", beta)
    _check_seed("seed", seed)
    param = _check_inputs(X, y, kind, param)
    out = _grid(X, y, [beta], [seed], kind, param)
    return Poisoned(np.array(out.X[0, 0]), np.array(out.y[0, 0]), out.mask[0, 0])


def _batch(X, y, betas, seeds, kind, param, max_bytes):
    betas, seeds = _as_list("betas", betas), _as_list("seeds", seeds)
    for b in betas:
        _check_beta("betas", b)
    for s in seeds:
        _check_seed("seeds", s)
    param = _check_inputs(X, y, kind, param)
    n, d = X.shape
    cells = len(betas) * len(seeds) * n
    size = cells * (1 + y.itemsize) if kind != "noise" else (cells + len(seeds) * n * d) * X.itemsize + cells
    if size > max_bytes:
        raise ValueError(f"the batch would hold {size / 2**30:.2f} GiB (> max_bytes = {max_bytes / 2**30:.2f} GiB); "
                         "use fewer betas/seeds per call, loop over the single-config function, "
                         "or raise max_bytes.")
    return _grid(X, y, betas, seeds, kind, param)


def _grid(X, y, betas, seeds, kind, param):
    """The attack on every (beta, seed); inputs already validated."""
    n, d = X.shape
    ks = np.array([n_poisoned(n, b) for b in betas])
    rngs = [np.random.default_rng(s) for s in seeds]
    perms = np.stack([rng.permutation(n) for rng in rngs])  # (S, n)
    ranks = np.empty_like(perms)
    np.put_along_axis(ranks, perms, np.arange(n), axis=1)   # position of each row in its permutation
    mask = ranks[None] < ks[:, None, None]                   # (B, S, n), nested in beta
    shape = mask.shape
    if kind == "noise":
        noise = np.zeros((len(seeds), n, d), X.dtype)
        kmax = ks.max()
        for i, rng in enumerate(rngs):
            noise[i, perms[i, :kmax]] = rng.standard_normal((kmax, d)) * np.sqrt(param)
        Xp = np.where(mask[..., None], noise[None], X)
        return Poisoned(Xp, _view(y, shape), mask)
    new = np.asarray(param, y.dtype) if kind == "set" else (1 - y if param == "01" else -y).astype(y.dtype)
    return Poisoned(_view(X, shape + (d,)), np.where(mask, new, y), mask)


def _view(a, shape):
    return np.broadcast_to(a, shape)  # read-only: the unchanged input shared by every config


def _as_list(name, values):
    values = list(np.atleast_1d(np.asarray(values, dtype=object)))
    if not values:
        raise ValueError(f"{name} is empty; pass at least one value.")
    return values


def _check_beta(name, beta):
    if isinstance(beta, (bool, np.bool_)) or not isinstance(beta, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must hold real numbers in [0, 1], got {beta!r}.")
    if not 0 <= beta <= 1:
        raise ValueError(f"{name} must lie in [0, 1] (a fraction of rows), got {beta!r}.")


def _check_seed(name, seed):
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"{name} must hold non-negative integers, got {seed!r}.")
    if seed < 0:
        raise ValueError(f"{name} must hold non-negative integers, got {seed!r}.")


def _check_inputs(X, y, kind, param):
    """Validate X, y and the attack parameter; return the parameter normalised."""
    for name, a, ndim in (("X", X, 2), ("y", y, 1)):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name} must be a numpy array, got {type(a).__name__}; "
                            f"convert it with numpy.asarray({name}).")
        if a.dtype.kind not in "iuf":
            raise TypeError(f"{name} has dtype {a.dtype}; use a numeric dtype "
                            f"(e.g. {name}.astype(numpy.float64)).")
        if a.ndim != ndim:
            raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}"
                             + ("; reshape a single feature with X.reshape(-1, 1)." if ndim == 2 else "."))
        if a.size == 0:
            raise ValueError(f"{name} is empty (shape {a.shape}); it needs at least one row and column.")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise ValueError(f"{name} contains nan or inf; remove or impute those values first.")
    if len(y) != len(X):
        raise ValueError(f"y has {len(y)} entries but X has {len(X)} rows; they must match.")
    if kind == "noise":
        if X.dtype.kind != "f":
            raise TypeError(f"X has dtype {X.dtype}; Gaussian noise needs floats, use X.astype(numpy.float64).")
        if isinstance(param, bool) or not isinstance(param, (int, float, np.integer, np.floating)) \
                or not np.isfinite(param) or param < 0:
            raise ValueError(f"variance must be a finite number >= 0, got {param!r}.")
        return float(param)
    if kind == "set":
        if isinstance(param, bool) or not isinstance(param, (int, float, np.integer, np.floating)) \
                or not np.isfinite(param):
            raise ValueError(f"value must be a finite number, got {param!r}.")
        if y.dtype.kind in "iu" and (not float(param).is_integer()
                                     or not np.iinfo(y.dtype).min <= param <= np.iinfo(y.dtype).max):
            raise TypeError(f"value {param!r} does not fit y's dtype {y.dtype}; use y.astype(numpy.float64).")
        return param
    return _convention(y, param)


def _convention(y, labels):
    """"01" or "pm1": the binary convention of y, detected when labels="auto"."""
    if labels not in ("auto", "01", "pm1"):
        raise ValueError(f"labels must be 'auto', '01' or 'pm1', got {labels!r}.")
    values = set(np.unique(y).tolist())
    allowed = {"01": {0, 1}, "pm1": {-1, 1}}
    if labels == "auto":
        if values == {1}:
            raise ValueError("y holds only the label 1, which fits both {0, 1} and {-1, 1}; "
                             "pass labels='01' or labels='pm1'.")
        labels = next((c for c, ok in allowed.items() if values <= ok), None)
        if labels is None:
            raise ValueError(f"label flipping needs binary labels in {{0, 1}} or {{-1, 1}}, found values "
                             f"{sorted(values)[:5]}; map them first or use label_set.")
    elif not values <= allowed[labels]:
        raise ValueError(f"labels={labels!r} needs y in {sorted(allowed[labels])}, found values "
                         f"{sorted(values)[:5]}; map y first or use labels='auto'.")
    return labels
