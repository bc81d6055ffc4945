"""Test helpers: a verbose allclose that says where values differ, and the
per-dtype tolerances every kernel test uses."""
import numpy as np

# (rtol, atol) per dtype for kernels against the torch reference.
TOLERANCES = {"float64": (1e-10, 1e-12), "float32": (2e-4, 1e-5)}


def _np(a):
    if type(a).__module__.split(".")[0] == "torch":
        return a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=np.float64)


def assert_verbose_allclose(actual, expected, rtol, atol, max_print=5, name="values"):
    """Like numpy's assert_allclose, but reports the worst offending indices."""
    a, e = _np(actual), _np(expected)
    if a.shape != e.shape:
        raise AssertionError(f"{name}: shape {a.shape} != expected {e.shape}")
    diff = np.abs(a - e)
    bad = ~(diff <= atol + rtol * np.abs(e))
    bad |= np.isnan(a) != np.isnan(e)
    if not bad.any():
        return
    idx = np.argwhere(bad)
    order = np.argsort(-diff[bad], kind="stable")[:max_print]
    lines = [f"{name}: {bad.sum()} of {a.size} elements differ (rtol={rtol}, atol={atol}); "
             f"max abs diff {np.nanmax(diff):.3e}"]
    for k in order:
        i = tuple(int(t) for t in idx[k])
        lines.append(f"  at {i}: actual {a[i]!r}, expected {e[i]!r}, diff {diff[i]:.3e}")
    raise AssertionError("\n".join(lines))


def bilevel_data(n=30, k=3, nv=20, d=5, dtype=np.float64, seed=0):
    """Random (Xc, yc, Xp, yp, Xv, yv) of a poisoning problem for the hypergradient
    tests: normal features, alternating {0, 1} labels (both classes everywhere)."""
    rng = np.random.default_rng(seed)
    Xc, Xp, Xv = (rng.normal(size=(m, d)).astype(dtype) for m in (n, k, nv))
    yc, yp, yv = ((np.arange(m) % 2 == 0).astype(dtype) for m in (n, k, nv))
    return Xc, yc, Xp, yp, Xv, yv


def hypergrad_fd(D, opts, eps=1e-6):
    """Central differences of ``hypergrad(*D, **opts).value`` wrt every entry of
    Xp and wrt lam: the oracle the hypergradients are checked against."""
    from .hypergrad import hypergrad

    Xc, yc, Xp, yp, Xv, yv = D
    f = lambda Xp_, lam: hypergrad(Xc, yc, Xp_, yp, Xv, yv, **{**opts, "lam": lam}).value
    gX = np.zeros_like(Xp)
    for idx in np.ndindex(Xp.shape):
        e = np.zeros_like(Xp)
        e[idx] = eps
        gX[idx] = (f(Xp + e, opts["lam"]) - f(Xp - e, opts["lam"])) / (2 * eps)
    glam = (f(Xp, opts["lam"] + eps) - f(Xp, opts["lam"] - eps)) / (2 * eps)
    return gX, glam


def lipschitz_data(n, d, B, dtype, loss, intercept=True, seed=0):
    """Random (theta (B, p), X (n, d), y (n,)) for the Lipschitz-constant tests:
    normal features, {0, 1} labels for "logistic", normal targets otherwise."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(dtype)
    y = (rng.random(n) < 0.5) if loss == "logistic" else rng.normal(size=n)
    theta = (rng.normal(size=(B, d + intercept)) / np.sqrt(d)).astype(dtype)
    return theta, X, np.ascontiguousarray(y, dtype=dtype)
