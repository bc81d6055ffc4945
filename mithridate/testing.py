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
