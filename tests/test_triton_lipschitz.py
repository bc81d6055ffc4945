"""Triton backend of ops.lipschitz against the torch reference and the numba kernel.

On a machine without a GPU the kernels run under TRITON_INTERPRET=1 (set by
conftest.py), so the shapes stay tiny. Subgradients are compared where the
argmax row is unique beyond the dtype's rounding (in float32 two near-tied
rows may swap); exact ties go to the lowest row, as in the numba kernel.
"""
import math
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")
pytest.importorskip("numba")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("triton needs a GPU or TRITON_INTERPRET=1", allow_module_level=True)

from mithridate import backends, ops  # noqa: E402
from mithridate.kernels.gpu import linear as gpu_linear  # noqa: E402
from mithridate.testing import TOLERANCES, assert_verbose_allclose, lipschitz_data as make  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = [(1, 1), (7, 3), (33, 7), (65, 33)]
LOSSES = ("squared", "absolute", "logistic")
NORMS = (1, 2, math.inf, 3.0)
# 1: one theta per program (GEMV); 5: one tl.dot block; 17: two blocks, the second ragged
BATCHES = (1, 5, 17)
assert 5 >= gpu_linear.DOT_MIN_BATCH and 17 > gpu_linear.DOT_BLOCK_B


def unique_argmax(theta, X, y, loss, norm, intercept, rel):
    """Per theta: the top row's constant (float64, straight from the math)
    beats the runner-up by more than rel."""
    th, X = theta.astype(np.float64), X.astype(np.float64)
    q = math.inf if norm == 1 else 1.0 if norm == math.inf else norm / (norm - 1)
    d = X.shape[1]
    w = th[:, :d]
    z = w @ X.T + (th[:, d:] if intercept else 0.0)
    n_w = np.linalg.norm(w, q, axis=1)[:, None]
    if loss == "squared":
        rows = np.abs(z - y) * np.linalg.norm(np.c_[w, np.ones(len(w))], q, axis=1)[:, None]
    else:
        a = 0.5 + 0.5 * np.tanh(0.5 * z) - y  # sigmoid(z) - y
        rows = np.linalg.norm(np.stack([np.abs(a) * n_w, np.abs(z)]), q, axis=0)
    top = np.sort(rows, axis=1)
    second = top[:, -2] if rows.shape[1] > 1 else -np.inf
    return top[:, -1] - second > rel * np.abs(top[:, -1])


def run(backend, theta, X, y, **kw):
    if backend == "numba":
        return ops.lipschitz(theta, X, y, backend="numba", **kw)
    on = [torch.from_numpy(a).to(DEVICE) for a in (theta, X, y)]
    value, grad = ops.lipschitz(*on, backend=backend, **kw)
    assert value.device.type == DEVICE and grad.dtype == on[0].dtype
    return value.cpu().numpy(), grad.cpu().numpy()


def check(theta, X, y, loss, norm=2, bound="tight", fit_intercept=True):
    kw = dict(loss=loss, norm=norm, bound=bound, fit_intercept=fit_intercept)
    rtol, atol = TOLERANCES[X.dtype.name]
    v, g = run("triton", theta, X, y, **kw)
    assert v.shape == theta.shape[:1] and g.shape == theta.shape
    ok = np.ones(theta.shape[0], bool)
    if bound == "tight" and loss != "absolute":
        ok = unique_argmax(theta, X, y, loss, norm, fit_intercept,
                           1e-3 if X.dtype == np.float32 else 1e-9)
    for other in ("torch", "numba"):
        rv, rg = run(other, theta, X, y, **kw)
        assert_verbose_allclose(v, rv, rtol, atol, name=f"value vs {other}")
        scale = np.abs(rg).max(axis=1, keepdims=True) + 1
        assert_verbose_allclose(g[ok] / scale[ok], rg[ok] / scale[ok], rtol * 10, atol * 10,
                                name=f"subgrad vs {other}")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_shapes(shape, B, loss, dtype):
    theta, X, y = make(*shape, B, dtype, loss)
    for bound in ("tight", "paper"):
        check(theta, X, y, loss, bound=bound)


@pytest.mark.parametrize("intercept", [True, False])
@pytest.mark.parametrize("bound", ["tight", "paper"])
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("loss", LOSSES)
def test_options(loss, norm, bound, intercept):
    for B in (1, 5):
        theta, X, y = make(33, 7, B, "float64", loss, intercept, seed=1)
        check(theta, X, y, loss, norm, bound, intercept)


@pytest.mark.parametrize("B", [1, 17])
@pytest.mark.parametrize("loss", ["squared", "logistic"])
def test_tile_loops(monkeypatch, loss, B):
    """Small tiles and two programs: the grid-stride loop over row tiles, the
    loop over column chunks and the merge of the programs' partials all run."""
    monkeypatch.setattr(gpu_linear, "BLOCK_N", 16)
    monkeypatch.setattr(gpu_linear, "MAX_BLOCK_D", 16)
    monkeypatch.setattr(gpu_linear, "MAX_PROGRAMS", 2 * math.ceil(B / gpu_linear.DOT_BLOCK_B))
    theta, X, y = make(65, 33, B, "float64", loss, seed=2)
    for norm in (2, 3.0):
        for bound in ("tight", "paper"):
            check(theta, X, y, loss, norm, bound)


@pytest.mark.parametrize("B", [1, 5])
def test_ties_go_to_the_lowest_row(monkeypatch, B):
    """Rows 20 and 40 tie for the max (|r| = 3, r of opposite signs, so their
    subgradients differ). With tiles of 16 rows and two programs, row 40 is
    program 0's and row 20 program 1's: the merge must still pick row 20."""
    monkeypatch.setattr(gpu_linear, "BLOCK_N", 16)
    monkeypatch.setattr(gpu_linear, "MAX_PROGRAMS", 2)
    X = np.zeros((50, 2))
    y = np.zeros(50)
    X[40, 0], y[40] = 3.0, 0.0        # z = 3, r = 3
    X[20, 1], y[20] = 5.0, 3.0        # z = 0, r = -3
    theta = np.tile([1.0, 0.0, 0.0], (B, 1))
    for backend in ("triton", "numba"):
        v, g = run(backend, theta, X, y, loss="squared", norm=2)
        np.testing.assert_allclose(v, 3.0 * math.sqrt(2.0))
        np.testing.assert_allclose(g, np.tile(-math.sqrt(2.0) * np.array([0.0, 5.0, 1.0])
                                              + 3.0 * np.array([1.0, 0.0, 0.0]) / math.sqrt(2.0), (B, 1)))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("loss", ["squared", "logistic"])
def test_extreme_margins(loss, dtype):
    """|z| up to 1e4: stable sigmoid, no overflow in the score."""
    theta, X, y = make(10, 2, 5, dtype, loss, seed=3)
    X[:, 0] = np.array([-1e4, -1e3, -40.0, -1e-3, 0.0, 1e-3, 40.0, 1e3, 1e4, 2.5])
    theta[:, 0] = np.linspace(0.5, 0.9, 5)  # no tie with the label's 1 in ||(w, 1)||_inf
    for norm in NORMS:
        check(theta, X, y, loss, norm)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # inf * 0 in the interpreter
@pytest.mark.parametrize("bound", ["tight", "paper"])
@pytest.mark.parametrize("loss", ["squared", "logistic"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_nonfinite_X_names_the_row(bad, loss, bound):
    theta, X, y = make(33, 3, 5, "float64", loss, seed=4)
    X[17, 2] = bad
    with pytest.raises(ValueError, match="row 17"):
        run("triton", theta, X, y, loss=loss, bound=bound)


def test_deterministic():
    theta, X, y = make(65, 7, 17, "float32", "logistic", seed=5)
    first = run("triton", theta, X, y, loss="logistic", norm=3.0)
    again = run("triton", theta, X, y, loss="logistic", norm=3.0)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))


def test_single_theta_and_numpy_inputs():
    theta, X, y = make(20, 3, 1, "float32", "squared", seed=6)
    v, g = ops.lipschitz(theta[0], X, y, loss="squared", backend="triton")
    assert np.ndim(v) == 0 and v.dtype == np.float32 and isinstance(g, np.ndarray) and g.shape == (4,)
    np.testing.assert_allclose(v, ops.lipschitz(theta[0], X, y, loss="squared", backend="numba")[0],
                               rtol=TOLERANCES["float32"][0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="auto picks triton for CUDA tensors only")
def test_auto_picks_triton_on_cuda(monkeypatch):
    theta, X, y = (torch.from_numpy(a).cuda() for a in make(20, 3, 5, "float64", "logistic", seed=7))
    calls = []
    real = backends.implementation
    monkeypatch.setattr(backends, "implementation",
                        lambda path, name: calls.append(name) or real(path, name))
    ops.lipschitz(theta, X, y, loss="logistic")
    assert calls == ["triton"]
