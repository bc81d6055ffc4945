"""ops.lipschitz: numba against the torch reference, the reference against the
math (brute-force ratios, attained constants, finite differences), bad input."""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("numba")

from mithridate import ops  # noqa: E402
from mithridate.kernels.cpu.lipschitz import dual_norm  # noqa: E402
from mithridate.testing import TOLERANCES, assert_verbose_allclose, lipschitz_data as make  # noqa: E402

LOSSES = ("squared", "absolute", "logistic")
NORMS = (1, 2, math.inf, 3.0)


def dual(p):
    return math.inf if p == 1 else 1.0 if p == math.inf else p / (p - 1)


def scores(theta, X, y, loss, q, intercept):
    """float64 per-row dual norms (B, n) of grad_(x,y) loss, straight from the math."""
    th = theta.astype(np.float64)
    d = X.shape[1]
    w = th[:, :d]
    z = w @ X.T.astype(np.float64) + (th[:, d:] if intercept else 0.0)
    n_w = np.array([np.linalg.norm(v, q) for v in w])[:, None]
    n_wy = np.array([np.linalg.norm(np.append(v, 1.0), q) for v in w])[:, None]
    if loss == "squared":
        return np.abs(z - y) * n_wy
    if loss == "absolute":
        return np.repeat(n_wy, X.shape[0], axis=1)
    a = 1 / (1 + np.exp(-z)) - y
    return np.linalg.norm(np.stack([np.abs(a) * n_w, np.abs(z)]), q, axis=0)


def unique_argmax(s, rel):
    top = np.sort(s, axis=1)
    return top[:, -1] - (top[:, -2] if s.shape[1] > 1 else -np.inf) > rel * np.abs(top[:, -1])


def compare(theta, X, y, loss, norm, bound, intercept):
    dt = X.dtype.name
    rtol, atol = TOLERANCES[dt]
    kw = dict(loss=loss, norm=norm, bound=bound, fit_intercept=intercept)
    v, g = ops.lipschitz(theta, X, y, backend="numba", **kw)
    rv, rg = ops.lipschitz(torch.from_numpy(theta), torch.from_numpy(X), torch.from_numpy(y),
                           backend="torch", **kw)
    assert v.dtype == X.dtype and g.dtype == X.dtype and g.shape == theta.shape
    assert_verbose_allclose(v, rv, rtol, atol, name="value")
    ok = np.ones(theta.shape[0], bool)
    if bound == "tight" and loss != "absolute":
        ok = unique_argmax(scores(theta, X, y, loss, dual(norm), intercept), 1e-3 if dt == "float32" else 1e-9)
    scale = np.abs(rg.numpy()).max(axis=1, keepdims=True) + 1
    assert_verbose_allclose(g[ok] / scale[ok], rg.numpy()[ok] / scale[ok], rtol * 10, atol * 10,
                            name="subgrad")


SHAPES = [(1, 1), (7, 33), (33, 7), (257, 1), (1, 257), (257, 257), (257, 33)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("B", [1, 3, 64])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_shapes(shape, B, loss, dtype):
    theta, X, y = make(*shape, B, dtype, loss)
    for bound in ("tight", "paper"):
        compare(theta, X, y, loss, 2, bound, True)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("intercept", [True, False])
@pytest.mark.parametrize("bound", ["tight", "paper"])
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("loss", LOSSES)
def test_options(loss, norm, bound, intercept, dtype):
    theta, X, y = make(33, 7, 3, dtype, loss, intercept, seed=1)
    compare(theta, X, y, loss, norm, bound, intercept)


def test_long_data_many_chunks_and_extreme_z():
    theta, X, y = make(5000, 9, 5, "float64", "logistic", seed=2)
    theta *= 40  # |z| up to hundreds: stable sigmoid
    for loss in ("squared", "logistic"):
        compare(theta, X, y, loss, 2, "tight", True)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("loss", LOSSES)
def test_reference_against_math(loss, norm):
    """Tight constant = max of the per-row dual norms; it bounds the loss
    ratio over pairs of training rows and their mixtures, and a small step
    from the argmax row along the dual direction attains it."""
    theta, X, y = make(40, 5, 4, "float64", loss, seed=3)
    T, Xt, yt = map(torch.from_numpy, (theta, X, y))
    L = ops.lipschitz(T, Xt, yt, loss=loss, norm=norm, backend="torch")[0].numpy()
    S = scores(theta, X, y, loss, dual(norm), True)
    np.testing.assert_allclose(L, S.max(axis=1), rtol=1e-12)

    def ell(th, x, yy):
        z = x @ th[:-1] + th[-1]
        return {"squared": 0.5 * (z - yy) ** 2, "absolute": np.abs(z - yy),
                "logistic": np.logaddexp(0, z) - yy * z}[loss]

    rng = np.random.default_rng(4)
    i, j = rng.integers(0, 40, 500), rng.integers(0, 40, 500)
    lam = rng.random(500)[:, None]
    P = np.c_[X, y]
    Q = lam * P[i] + (1 - lam) * P[j]  # mixtures stay in the convex hull
    for b in range(4):
        for A, C in ((P[i], P[j]), (Q, P[j])):
            cost = np.linalg.norm(A - C, norm, axis=1)
            keep = cost > 1e-9
            ratio = np.abs(ell(theta[b], A[:, :-1], A[:, -1]) - ell(theta[b], C[:, :-1], C[:, -1]))
            assert (ratio[keep] <= L[b] * (1 + 1e-9) * cost[keep]).all()
        k = int(S[b].argmax())
        w, c = theta[b, :-1], theta[b, -1]
        z = X[k] @ w + c
        grad = {"squared": (z - y[k]) * np.append(w, -1.0),
                "absolute": np.sign(z - y[k]) * np.append(w, -1.0),
                "logistic": np.append((1 / (1 + np.exp(-z)) - y[k]) * w, -z)}[loss]
        u = dual_norm(grad[None], dual(norm))[1][0]  # unit p-norm step maximising <grad, u>
        np.testing.assert_allclose(np.linalg.norm(u, norm), 1.0, rtol=1e-12)
        t = 1e-6
        step = P[k] + t * u
        ratio = abs(ell(theta[b], step[:-1], step[-1]) - ell(theta[b], X[k], y[k])) / t
        np.testing.assert_allclose(ratio, L[b], rtol=1e-4)


@pytest.mark.parametrize("intercept", [True, False])
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("loss", LOSSES)
def test_paper_closed_forms(loss, norm, intercept):
    theta, X, y = make(30, 4, 2, "float64", loss, intercept, seed=5)
    Xb = np.linalg.norm(X, norm, axis=1).max()
    Yb = np.abs(y).max()
    t = np.array([np.linalg.norm(v, dual(norm)) for v in theta])
    e = float(intercept)
    want = {"squared": (Xb + e) * t ** 2 + Yb * t, "absolute": t,
            "logistic": (Yb + Xb + 1 + e) * t}[loss]
    for backend in ("numba", "torch"):
        v = ops.lipschitz(theta, X, y, loss=loss, norm=norm, bound="paper",
                          fit_intercept=intercept, backend=backend)[0]
        np.testing.assert_allclose(v, want, rtol=1e-12)
        given = ops.lipschitz(theta, X, y, loss=loss, norm=norm, bound="paper", fit_intercept=intercept,
                              data_bounds=(2 * Xb, 3 * Yb), backend=backend)[0]
        assert np.all(given >= v - 1e-12)


@pytest.mark.parametrize("backend", ["numba", "torch"])
@pytest.mark.parametrize("bound", ["tight", "paper"])
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("loss", LOSSES)
def test_subgradient_finite_differences(loss, norm, bound, backend):
    theta, X, y = make(25, 4, 1, "float64", loss, seed=6)
    th = theta[0]
    kw = dict(loss=loss, norm=norm, bound=bound, backend=backend)
    g = ops.lipschitz(th, X, y, **kw)[1]
    h = 1e-6
    fd = np.array([(ops.lipschitz(th + h * e, X, y, **kw)[0] - ops.lipschitz(th - h * e, X, y, **kw)[0])
                   / (2 * h) for e in np.eye(th.size)])
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-6)


def test_single_theta_and_torch_types():
    theta, X, y = make(20, 3, 2, "float32", "squared")
    v, g = ops.lipschitz(theta[0], X, y, loss="squared")
    assert v.shape == () and g.shape == (4,) and v.dtype == np.float32
    vt, gt = ops.lipschitz(torch.from_numpy(theta), torch.from_numpy(X), torch.from_numpy(y),
                           loss="squared", norm=np.inf)
    assert isinstance(vt, torch.Tensor) and vt.shape == (2,) and gt.dtype == torch.float32


def test_deterministic_across_thread_counts():
    import numba
    theta, X, y = make(9000, 20, 6, "float32", "logistic", seed=7)
    first = ops.lipschitz(theta, X, y, loss="logistic", backend="numba")
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        again = ops.lipschitz(theta, X, y, loss="logistic", backend="numba")
    finally:
        numba.set_num_threads(old)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))


@pytest.mark.parametrize("kw, match", [
    (dict(norm=0.5), "norm"), (dict(norm="2"), "norm"), (dict(norm=math.nan), "norm"),
    (dict(bound="exact"), "bound"), (dict(loss="hinge"), "loss"),
    (dict(data_bounds=(1.0, 1.0)), "data_bounds"),
    (dict(bound="paper", data_bounds=(-1.0, 1.0)), "data_bounds"),
    (dict(bound="paper", data_bounds=(1.0,)), "data_bounds"),
    (dict(fit_intercept=False), "theta"), (dict(backend="cuda"), "backend"),
    (dict(norm=-1), "norm"), (dict(norm=0), "norm"), (dict(norm=True), "norm"),
    (dict(bound="paper", data_bounds=(1.0, math.nan)), "data_bounds"),
    (dict(bound="paper", data_bounds=(math.inf, 1.0)), "data_bounds"),
    (dict(bound="paper", data_bounds="ab"), "data_bounds"),
])
def test_bad_input(kw, match):
    theta, X, y = make(10, 3, 2, "float64", "squared")
    args = dict(loss="squared") | kw
    with pytest.raises(ValueError, match=match):
        ops.lipschitz(theta, X, y, **args)


def test_bad_arrays_and_backends(monkeypatch):
    theta, X, y = make(10, 3, 2, "float64", "squared")
    with pytest.raises(ValueError, match="y"):
        ops.lipschitz(theta, X, y[:5], loss="squared")
    with pytest.raises(TypeError, match="theta"):
        ops.lipschitz(theta.astype(np.float32), X, y, loss="squared")
    with pytest.raises(TypeError, match="X"):
        ops.lipschitz(theta, X.astype(np.int64), y, loss="squared")
    with pytest.raises(ValueError, match="y must hold labels"):
        ops.lipschitz(theta, X, y, loss="logistic")
    with pytest.raises(ValueError, match="y must hold labels"):
        ops.lipschitz(theta, X, np.sign(y), loss="logistic")  # {-1, 1}: map to {0, 1}
    with pytest.raises(ValueError, match="theta has 5 columns"):
        ops.lipschitz(np.c_[theta, theta[:, :1]], X, y, loss="squared")
    for name, shape in (("theta", (2, 2, 4)), ("X", (10,)), ("X", (2, 10, 3))):
        args = dict(theta=theta, X=X, y=y) | {name: np.zeros(shape)}
        with pytest.raises(ValueError, match=name):
            ops.lipschitz(**args, loss="squared")
    for name, bad in (("theta", np.nan), ("theta", np.inf), ("y", np.nan), ("y", -np.inf)):
        args = dict(theta=theta.copy(), X=X, y=y.copy())
        args[name].reshape(-1)[1] = bad
        with pytest.raises(ValueError, match=f"{name} contains nan or inf"):
            ops.lipschitz(**args, loss="squared")
    if not torch.cuda.is_available():  # triton without a GPU or the interpreter
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(RuntimeError, match="triton needs a CUDA GPU"):
            ops.lipschitz(theta, X, y, loss="squared", backend="triton")
    for bad in (np.nan, np.inf):
        for loss, bound in (("squared", "tight"), ("logistic", "tight"), ("absolute", "tight"),
                            ("squared", "paper")):
            Xn = X.copy()
            Xn[4, 1] = bad
            yl = (y > 0).astype(X.dtype) if loss == "logistic" else y
            with pytest.raises(ValueError, match="row 4"):
                ops.lipschitz(theta, Xn, yl, loss=loss, bound=bound)
            with pytest.raises(ValueError, match="row 4"):  # X not read for its bounds
                ops.lipschitz(theta, Xn, yl, loss=loss, bound="paper", data_bounds=(1.0, 1.0))


@pytest.mark.parametrize("norm", [1.0, 2.0, 3.0, np.inf])
@pytest.mark.parametrize("bound", ["tight", "paper"])
def test_zero_theta_gives_finite_subgradient(norm, bound):
    """At theta = 0 the dual norm is 0 and its subgradient must be finite (0 is one)."""
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((50, 4)), (rng.random(50) < 0.5).astype(float)
    for backend in ("numba", "torch"):
        value, grad = ops.lipschitz(np.zeros((2, 5)), X, y, loss="squared", norm=norm,
                                    bound=bound, backend=backend)
        assert np.isfinite(np.asarray(value)).all() and np.isfinite(np.asarray(grad)).all()
