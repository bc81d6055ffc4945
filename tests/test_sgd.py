"""The compiled SGD epochs (kernels/cpu/sgd.py, models.training.sgd's LinearModel route)
against the generic loop (model.loss_grad_batch per batch) and against torch autograd of
the model's torch_objective, stepped over the same numpy permutations; odd shapes, both
dtypes, every loss, with and without an (own-lam) intercept, from zeros and from theta0."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

torch = pytest.importorskip("torch")
pytest.importorskip("numba")

from mithridate.models import LinearModel  # noqa: E402
from mithridate.models import training  # noqa: E402
from mithridate.models.training import sgd  # noqa: E402
from mithridate.testing import TOLERANCES, assert_verbose_allclose  # noqa: E402

DTYPES = ["float64", "float32"]
# (n, d, batch): batch 1, a short last batch, one batch > n, narrow and wide rows,
# a block boundary inside the batch (d = 700: 46 float64 rows per block).
SHAPES = [(1, 1, 1), (37, 5, 8), (13, 40, 5), (64, 9, 64), (30, 3, 100), (50, 700, 48)]
MODELS = {
    "logistic": dict(loss="logistic"),
    "logistic_no_b": dict(loss="logistic", fit_intercept=False),
    "logistic_pen_b": dict(loss="logistic", penalize_intercept=True),
    "squared": dict(loss="squared"),
    "absolute": dict(loss="absolute"),
}


def _data(n, d, dtype, seed=0):
    rng = np.random.default_rng(seed)
    X = (rng.normal(size=(n, d)) / math.sqrt(d)).astype(dtype)
    return X, (rng.random(n) > 0.5).astype(dtype)


def _lam(model):
    return np.array([-1.0, 0.3])[:model.regularizer(1).layout.n_lam]


def _loop(model, X, y, lam, lr, batch, epochs, seed, theta0=None):
    """The generic route on the same permutations (numpy default_rng(seed) per epoch)."""
    reg, lam, theta, _ = training._problems(model, X, y, lam, theta0)
    rng = np.random.default_rng(seed)
    orders = np.stack([rng.permutation(X.shape[0]) for _ in range(epochs)])
    return training._sgd_steps(model, X, y, reg, lam, theta, orders, lr, batch)[0]


def _torch_sgd(model, X, y, lam, lr, batch, epochs, seed, theta0=None):
    """Plain autograd SGD on model.torch_objective in float64."""
    n, d = X.shape
    p = model.layout(d).size
    Xt, yt = torch.from_numpy(X.astype(np.float64)), torch.from_numpy(y.astype(np.float64))
    lamt = torch.as_tensor(np.atleast_1d(lam), dtype=torch.float64)
    theta = torch.zeros(p, dtype=torch.float64) if theta0 is None else \
        torch.tensor(theta0, dtype=torch.float64)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = torch.from_numpy(rng.permutation(n))
        for i in range(0, n, batch):
            idx = order[i:i + batch]
            t = theta.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(model.torch_objective(t, Xt[idx], yt[idx], lamt), t)
            theta = theta - lr * g
    return theta.numpy()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("n,d,batch", SHAPES)
def test_compiled_sgd_matches_the_loop_and_torch(n, d, batch, name, dtype):
    model = LinearModel(**MODELS[name])
    X, y = _data(n, d, dtype, seed=n + d)
    lam = _lam(model)
    got = sgd(model, X, y, lam, lr=0.1, batch_size=batch, epochs=3, random_state=5)
    assert training._compiled_sgd(model, X)
    assert got.shape == (model.layout(d).size,) and got.dtype == X.dtype
    rtol, atol = TOLERANCES[dtype]
    loop = _loop(model, X, y, lam, 0.1, batch, 3, 5)
    assert_verbose_allclose(got, loop, rtol, atol * 10, name="theta vs loop")
    ref = _torch_sgd(model, X, y, lam, 0.1, batch, 3, 5)
    assert_verbose_allclose(got, ref, rtol * 10, atol * 10, name="theta vs torch")


@pytest.mark.parametrize("dtype", DTYPES)
def test_paper_size_many_epochs(dtype):
    """Table 3's victim: 512 x 784, batch 64, 200 epochs at lr 0.01."""
    n, d = 512, 784
    rng = np.random.default_rng(1)
    X = rng.random((n, d)).astype(dtype)
    y = (rng.random(n) > 0.5).astype(dtype)
    model = LinearModel()
    lam = -3.0 - math.log(n)
    got = sgd(model, X, y, lam, lr=0.01, batch_size=64, epochs=200, random_state=2)
    rtol, atol = TOLERANCES[dtype]
    assert_verbose_allclose(got, _loop(model, X, y, lam, 0.01, 64, 200, 2), rtol, atol * 10,
                            name="theta vs loop")


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.integers(1, 50), st.integers(1, 3),
       st.sampled_from(list(MODELS)), st.sampled_from(DTYPES), st.integers(0, 2**32 - 1))
def test_compiled_sgd_matches_the_loop_for_any_shape(n, d, batch, epochs, name, dtype, seed):
    model = LinearModel(**MODELS[name])
    X, y = _data(n, d, dtype, seed=seed)
    lam = _lam(model)
    got = sgd(model, X, y, lam, lr=0.2, batch_size=batch, epochs=epochs, random_state=seed)
    rtol, atol = TOLERANCES[dtype]
    assert_verbose_allclose(got, _loop(model, X, y, lam, 0.2, batch, epochs, seed), rtol,
                            atol * 10, name="theta")


@pytest.mark.parametrize("dtype", DTYPES)
def test_theta0_on_both_routes(dtype):
    """theta0 starts the compiled route and the generic one (a torch-backend model)."""
    n, d = 29, 6
    X, y = _data(n, d, dtype, seed=3)
    theta0 = np.random.default_rng(4).normal(size=d + 1)
    lam = -0.5
    compiled = sgd(LinearModel(), X, y, lam, lr=0.1, batch_size=7, epochs=4, random_state=1,
                   theta0=theta0)
    generic_model = LinearModel(backend="torch")
    assert not training._compiled_sgd(generic_model, X)
    generic = sgd(generic_model, X, y, lam, lr=0.1, batch_size=7, epochs=4, random_state=1,
                  theta0=theta0)
    ref = _torch_sgd(LinearModel(), X, y, lam, 0.1, 7, 4, 1, theta0=theta0)
    rtol, atol = TOLERANCES[dtype]
    assert_verbose_allclose(compiled, ref, rtol * 10, atol * 10, name="compiled vs torch")
    assert_verbose_allclose(generic, ref, rtol * 10, atol * 10, name="generic vs torch")
    zeros = sgd(LinearModel(), X, y, lam, lr=0.1, batch_size=7, epochs=4, random_state=1)
    assert np.abs(compiled - zeros).max() > 1e-3  # theta0 was used
    with pytest.raises(ValueError, match=r"theta0 has shape \(3,\)"):
        sgd(LinearModel(), X, y, lam, lr=0.1, batch_size=7, epochs=1, theta0=np.zeros(3))


def test_torch_sgd_against_finite_differences():
    """The torch oracle's step direction: its autograd gradient equals central differences."""
    model = LinearModel(penalize_intercept=True)
    X, y = _data(11, 4, "float64", seed=8)
    lam = torch.tensor([-1.0, 0.3], dtype=torch.float64)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    theta = torch.from_numpy(np.random.default_rng(9).normal(size=5)).requires_grad_(True)
    (g,) = torch.autograd.grad(model.torch_objective(theta, Xt, yt, lam), theta)
    h, fd = 1e-6, np.empty(5)
    for j in range(5):
        e = torch.zeros(5, dtype=torch.float64)
        e[j] = h
        fd[j] = (model.torch_objective(theta.detach() + e, Xt, yt, lam)
                 - model.torch_objective(theta.detach() - e, Xt, yt, lam)).item() / (2 * h)
    np.testing.assert_allclose(g.numpy(), fd, rtol=1e-7, atol=1e-9)
