"""The network model (mithridate.models.MLP), its numba kernels
(kernels/cpu/mlp.py) and its torch reference (mithridate.reference.mlp):
kernels vs torch on odd shapes, the model's closed forms vs torch autograd and
finite differences, in both dtypes, depth 1..3; bad input."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mithridate.kernels.cpu import mlp as kernels
from mithridate.models import MLP

torch = pytest.importorskip("torch")
from mithridate.reference import mlp as ref  # noqa: E402  (needs torch)

DTYPES = (np.float64, np.float32)
TOL = {np.float64: 1e-12, np.float32: 2e-5}  # relative to the largest entry
SHAPES = ((1, 1), (7, 3), (13, 5), (33, 17))
NETS = ((5, 1), (5, 4, 1), (6, 7, 3, 1), (3, 9, 2, 5, 1))  # depth 1..4


def close(a, b, dtype, what="", floor=1e-3):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(np.abs(b).max(initial=0.0), floor)
    assert np.abs(a - b).max(initial=0.0) <= TOL[dtype] * scale, (what, a, b)


def data(layers, dtype, n=11, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, layers[0])).astype(dtype)
    y = (rng.random(n) < 0.5).astype(dtype)
    return X, y


def tensor(a):
    return torch.from_numpy(np.asarray(a, np.float64))


def autograd(model, theta, u, X, y, rows):
    """(loss, grad, H u, d/dX[rows] (grad . u)) by torch autograd in float64."""
    th, Xt = tensor(theta).requires_grad_(True), tensor(X).requires_grad_(True)
    value = ref.loss(model, th, Xt, tensor(y))
    (g,) = torch.autograd.grad(value, th, create_graph=True)
    hu, dX = torch.autograd.grad(g @ tensor(u), (th, Xt))
    return float(value.detach()), g.detach().numpy(), hu.numpy(), dX.numpy()[rows]


# -- kernels vs torch -------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_bias_act_is_torch_leaky_relu_and_its_derivative(shape, dtype):
    rng = np.random.default_rng(1)
    Z = rng.standard_normal(shape).astype(dtype)
    b = rng.standard_normal(shape[1]).astype(dtype)
    Z[0, 0] = -b[0]  # a pre-activation of exactly 0: torch's derivative there is the slope
    A, D = Z.copy(), np.empty_like(Z)
    kernels.bias_act(A, b, dtype(0.1), D)
    z = torch.from_numpy(Z + b).requires_grad_(True)
    a = torch.nn.functional.leaky_relu(z, 0.1)
    (d,) = torch.autograd.grad(a.sum(), z)
    assert (A == a.detach().numpy()).all() and (D == d.numpy()).all()
    assert D[0, 0] == dtype(0.1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_masked_is_the_rop_step(shape, dtype):
    rng = np.random.default_rng(2)
    P, D = (rng.standard_normal(shape).astype(dtype) for _ in range(2))
    b = rng.standard_normal(shape[1]).astype(dtype)
    with_b, without = P.copy(), P.copy()
    kernels.masked(with_b, D, b)
    kernels.masked(without, D, np.empty(0, dtype))
    tP, tD = torch.from_numpy(P), torch.from_numpy(D)
    close(with_b, (tD * (tP + torch.from_numpy(b))).numpy(), dtype)
    assert (without == (tD * tP).numpy()).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", (1, 7, 1000))
def test_add_scaled_is_numpy_plus_the_l2_term(n, dtype):
    """g + c x in place, the same bits as numpy's g + L2.hvp(x) (c x rounded to g's dtype)."""
    rng = np.random.default_rng(3)
    g, x = (rng.standard_normal(n).astype(dtype) for _ in range(2))
    c = np.exp(np.array([-1.3]))
    term = np.zeros_like(x)
    term[:] = c * x  # L2.hvp's float64 product, stored in x's dtype
    out = g.copy()
    kernels.add_scaled(out, x, c[0])
    assert out.tobytes() == (g + term).tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", (1, 6, 31))
def test_head_is_torch_logistic_loss(n, dtype):
    rng = np.random.default_rng(3)
    z = (rng.standard_normal(n) * 30).astype(dtype)  # |z| up to ~100: no overflow
    y = (rng.random(n) < 0.5).astype(dtype)
    dl, ddl = np.empty_like(z), np.empty_like(z)
    total = kernels.head(z, dtype(0.25), y, dl, ddl)
    zt = tensor(z + dtype(0.25)).requires_grad_(True)
    loss = -torch.nn.functional.logsigmoid(-zt) - tensor(y) * zt
    (g,) = torch.autograd.grad(loss.sum(), zt, create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), zt)
    close(total, loss.sum().item(), dtype)
    close(dl, g.detach().numpy(), dtype)
    close(ddl, h.numpy(), dtype)


# -- the reference vs finite differences --------------------------------------------

def test_reference_against_finite_differences():
    model = MLP(layers=(4, 5, 3, 1))
    X, y = data(model.layers, np.float64)
    theta = model.init(4, random_state=0)
    th = tensor(theta).requires_grad_(True)
    (g,) = torch.autograd.grad(ref.loss(model, th, tensor(X), tensor(y)), th)
    f = lambda t: ref.loss(model, tensor(t), tensor(X), tensor(y)).item()  # noqa: E731
    h = 1e-6
    for j in np.random.default_rng(0).choice(theta.size, 12, replace=False):
        e = np.eye(theta.size)[j] * h
        assert abs((f(theta + e) - f(theta - e)) / (2 * h) - g[j].item()) <= 1e-8


# -- the model vs autograd and finite differences ----------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layers", NETS)
def test_closed_forms_against_autograd(layers, dtype):
    model = MLP(layers=layers)
    X, y = data(layers, dtype)
    rng = np.random.default_rng(4)
    theta = (model.init(layers[0], random_state=1) + rng.normal(0, 0.3, model.layout(
        layers[0]).size)).astype(dtype)
    u = rng.standard_normal(theta.size).astype(dtype)
    rows = np.array([2, 9, 10])
    value, g, hu, dX = autograd(model, theta, u, X, y, rows)
    v, grad = model.loss_grad(theta, X, y)
    assert grad.dtype == dtype and isinstance(v, float)
    close(v, value, dtype, "value")
    close(grad, g, dtype, "grad")
    H = model.loss_hvp(theta, u, X, y)
    assert H.dtype == dtype
    close(H, hu, dtype, "hvp")
    M = model.mixed_rows(theta, u, X, y, rows)
    assert M.shape == (3, layers[0]) and M.dtype == dtype
    close(M, dX, dtype, "mixed_rows")
    lam = np.linspace(-1, 0.5, model.n_layers)
    b_hvp, b_mixed = model.back(theta, u, X, y, lam, rows)
    assert (b_mixed == M).all()
    close(b_hvp, model.hvp(theta, u, X, y, lam), dtype, "back")
    close(model.logits(theta, X), ref.logits(model, tensor(theta), tensor(X)).numpy(), dtype)


def test_hvp_and_mixed_against_finite_differences():
    model = MLP(layers=(4, 6, 3, 1), negative_slope=0.2)
    X, y = data(model.layers, np.float64, seed=5)
    rng = np.random.default_rng(6)
    theta = model.init(4, random_state=2) + rng.normal(0, 0.2, model.layout(4).size)
    u = rng.standard_normal(theta.size)
    h = 1e-6
    g = lambda t, Xa: model.loss_grad(t, Xa, y)[1]  # noqa: E731
    fd = (g(theta + h * u, X) - g(theta - h * u, X)) / (2 * h)
    close(model.loss_hvp(theta, u, X, y), fd, np.float32, "hvp")  # FD error ~h^2
    M = model.mixed_rows(theta, u, X, y, [0, 7])
    for i, r in enumerate([0, 7]):
        for j in range(4):
            up, down = X.copy(), X.copy()
            up[r, j] += h
            down[r, j] -= h
            fdx = (g(theta, up) @ u - g(theta, down) @ u) / (2 * h)
            assert abs(fdx - M[i, j]) <= 1e-7 * max(1.0, abs(fdx))


@settings(max_examples=25, deadline=None)
@given(widths=st.lists(st.integers(1, 6), min_size=0, max_size=3), d=st.integers(1, 6),
       n=st.integers(1, 9), slope=st.floats(0, 1), bias=st.booleans(), data_seed=st.integers(0, 99))
def test_any_network_against_autograd(widths, d, n, slope, bias, data_seed):
    layers = (d, *widths, 1)
    model = MLP(layers=layers, negative_slope=slope, penalize_bias=bias)
    X, y = data(layers, np.float64, n=n, seed=data_seed)
    rng = np.random.default_rng(data_seed)
    theta = rng.standard_normal(model.layout(d).size)
    u = rng.standard_normal(theta.size)
    rows = np.arange(n)[n // 2:]
    value, g, hu, dX = autograd(model, theta, u, X, y, rows)
    # random N(0, 1) weights can saturate the head (|l'| ~ 1e-5) while the rounding of
    # l' = sigmoid(z) - y stays ~1e-16: errors scale with the unsaturated terms, O(1)
    close(model.loss_grad(theta, X, y)[1], g, np.float64, "grad", floor=1.0)
    Hu, M = model.back(theta, u, X, y, np.zeros(model.n_layers), rows)
    close(model.loss_hvp(theta, u, X, y), hu, np.float64, "hvp", floor=1.0)
    close(M, dX, np.float64, "mixed", floor=1.0)


def test_layout_lam_and_hessian():
    model = MLP(layers=(3, 4, 1))
    lay = model.layout(3)
    assert lay.groups == (("W1", 12), ("b1", 4), ("W2", 4), ("b2", 1))
    assert lay.penalised == ("W1", "W2") and model.features(21) == 3
    biased = MLP(layers=(3, 4, 1), penalize_bias=True).layout(3)
    assert biased.groups == (("W1", 16), ("W2", 5)) and biased.n_lam == 2
    X, y = data(model.layers, np.float64)
    theta = model.init(3, random_state=0)
    lam = np.array([-1.0, 0.3])
    th = tensor(theta).requires_grad_(True)
    want = torch.autograd.functional.hessian(
        lambda t: model.torch_objective(t, tensor(X), tensor(y), tensor(lam)), th).numpy()
    close(model.hessian(theta, X, y, lam), want, np.float64, "hessian")
    close(model.objective(theta, X, y, lam),
          model.torch_objective(th, tensor(X), tensor(y), tensor(lam)).item(), np.float64)
    with pytest.raises(ValueError, match="p <= 4096; this network has p=4225"):
        MLP(layers=(64, 64, 1)).loss_hessian(np.zeros(4225), np.zeros((2, 64)), np.zeros(2))


def test_init_is_xavier_and_seeded():
    model = MLP(layers=(50, 30, 20, 1))
    a, b = model.init(50, random_state=7), model.init(50, random_state=7)
    assert a.dtype == np.float64 and (a == b).all()
    assert not (a == model.init(50, random_state=8)).all()
    (W1, b1), (W2, _), (W3, b3) = model._params(a)
    assert (b1 == 1e-2).all() and (b3 == 1e-2).all()
    assert np.abs(W1).max() <= np.sqrt(6 / 80) and np.abs(W1).max() > 0.9 * np.sqrt(6 / 80)
    assert np.abs(W2).max() <= np.sqrt(6 / 50)


def test_bad_input():
    for layers, match in [((3,), "tuple of >= 2 positive"), ((3, 0, 1), "positive integer"),
                          ((3, -2, 1), "positive integer"), ((3, 2.5, 1), "positive integer"),
                          ("abc", "tuple of"), ((3, 4, 2), "output width 1")]:
        with pytest.raises(ValueError, match=match):
            MLP(layers=layers)
    with pytest.raises(ValueError, match="activation='tanh' is not one of"):
        MLP(layers=(3, 1), activation="tanh")
    with pytest.raises(ValueError, match="negative_slope=-0.1 must be"):
        MLP(layers=(3, 1), negative_slope=-0.1)
    model = MLP(layers=(3, 4, 1))
    with pytest.raises(ValueError, match=r"train data: layers=\(3, 4, 1\) starts with width 3 "
                                         r"but the data has 5 features; pass layers=\(5, 4, 1\)"):
        model.check_data(np.zeros((4, 5)), np.zeros(4), "train")
    with pytest.raises(ValueError, match="labels"):
        model.check_data(np.zeros((4, 3)), np.full(4, 2.0), "train")
    with pytest.raises(ValueError, match="starts with width 3 but the data has 5"):
        model.layout(5)
    with pytest.raises(ValueError, match="has 7 parameters but MLP"):
        model.features(7)
    with pytest.raises(ValueError, match=r"this model has 2 hyperparameter"):
        model.grad(np.zeros(21), np.zeros((2, 3)), np.zeros(2), np.zeros(3))
