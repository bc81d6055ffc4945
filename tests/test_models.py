"""The models layer: every LinearModel primitive against torch autograd of its
torch_objective (grad; hvp by double backward; mixed_rows and mixed_lam as
derivatives of grad . u; the Hessian), torch against finite differences, the L2
component and Layout, and the trainers against verbatim copies of the functions
they replace (attacks.optimal.train_gd / train_sgd, experiments.paper002._gd_batch).
"""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

torch = pytest.importorskip("torch")
pytest.importorskip("numba")

from mithridate.models import L2, Layout, LinearModel  # noqa: E402
from mithridate.models import heavy_ball  # noqa: E402
from mithridate.models.training import gradient_descent, sgd  # noqa: E402
from mithridate.testing import TOLERANCES, assert_verbose_allclose  # noqa: E402

DTYPES = ["float64", "float32"]
SHAPES = [(1, 1), (7, 3), (13, 40), (64, 9)]
MODELS = {
    "logistic": dict(loss="logistic"),
    "logistic_no_b": dict(loss="logistic", fit_intercept=False),
    "logistic_pen_b": dict(loss="logistic", penalize_intercept=True),
    "squared": dict(loss="squared"),
    "absolute": dict(loss="absolute"),
    "logistic_weighted": dict(loss="logistic", weights=True),
    "squared_weighted_pen_b": dict(loss="squared", penalize_intercept=True, weights=True),
}


def make(name, n, d, dtype, seed=0):
    opts = dict(MODELS[name])
    weighted = opts.pop("weights", False)
    rng = np.random.default_rng(seed)
    model = LinearModel(**opts)
    if weighted:
        model = model.with_weights(rng.uniform(0.1, 2.0, n))
    X = rng.normal(size=(n, d)).astype(dtype)
    y = (rng.random(n) > 0.5).astype(dtype) if model.loss == "logistic" else \
        rng.normal(size=n).astype(dtype)
    layout = model.layout(d)
    theta = (rng.normal(size=layout.size) * 0.5).astype(dtype)
    u = rng.normal(size=layout.size).astype(dtype)
    lam = rng.uniform(-2, 1, layout.n_lam)
    return model, X, y, theta, u, lam


def torch_derivatives(model, X, y, theta, u, lam, rows):
    """Objective, gradient, H u, d/dX[rows] (g . u), d/dlam (g . u) and the Hessian, by autograd."""
    Xt = torch.tensor(X)
    Xk = Xt[rows].clone().requires_grad_(True)
    Xfull = Xt.index_copy(0, torch.as_tensor(rows), Xk)
    th = torch.tensor(theta, requires_grad=True)
    lt = torch.tensor(lam, requires_grad=True)
    ut = torch.tensor(u)
    f = model.torch_objective(th, Xfull, torch.tensor(y), lt)
    (g,) = torch.autograd.grad(f, th, create_graph=True)
    gu = (g * ut).sum()
    hv, dX, dlam = torch.autograd.grad(gu, (th, Xk, lt), allow_unused=True)
    zero = lambda a, like: torch.zeros_like(like) if a is None else a  # noqa: E731
    H = torch.autograd.functional.hessian(
        lambda t: model.torch_objective(t, Xt, torch.tensor(y), torch.tensor(lam)), torch.tensor(theta))
    return (f.item(), g.detach().numpy(), zero(hv, th).numpy(), zero(dX, Xk).detach().numpy(),
            zero(dlam, lt).numpy(), H.numpy())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", list(MODELS))
def test_primitives_match_torch_autograd(name, shape, dtype):
    n, d = shape
    model, X, y, theta, u, lam = make(name, n, d, dtype)
    rows = np.arange(n - min(n, 3), n)
    f, g, hv, dX, dlam, H = torch_derivatives(model, X, y, theta, u, lam, rows)
    rtol, atol = TOLERANCES[dtype]
    scale = max(1.0, float(np.abs(X).max()) ** 2)
    ok = lambda a, e, what: assert_verbose_allclose(a, e, rtol, atol * scale, name=what)  # noqa: E731
    ok(model.objective(theta, X, y, lam), f, "objective")
    ok(model.grad(theta, X, y, lam), g, "grad")
    ok(model.hvp(theta, u, X, y, lam), hv, "hvp")
    ok(model.mixed_rows(theta, u, X, y, rows), dX, "mixed_rows")
    ok(model.mixed_lam(theta, u, lam), dlam, "mixed_lam")
    Hm = model.hessian(theta, X, y, lam)
    assert Hm.dtype == np.float64 and Hm.shape == (theta.size,) * 2
    ok(Hm, H, "hessian")
    R = model.loss_factor(theta, X, y)  # loss Hessian R^T R / n (None: absolute loss)
    reg = model.regularizer(d).diagonal(lam)
    ok(np.zeros_like(Hm) if R is None else R.T @ R / n, H - np.diag(reg), "loss_factor")
    for out in (model.grad(theta, X, y, lam), model.hvp(theta, u, X, y, lam)):
        assert out.dtype == X.dtype and out.shape == theta.shape


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(MODELS))
def test_direct_kernel_calls_equal_the_checked_path(name, dtype):
    """On numba the primitives call the kernel past ops' checks; ops' checked path (forced
    here through backend="numba" on ops itself) gives the same bits, and a torch-backend
    model (ops' path) agrees to tolerance."""
    from mithridate import ops
    n, d = 19, 7
    model, X, y, theta, u, lam = make(name, n, d, dtype, seed=2)
    rows = np.array([2, 17, 18])
    opts = model._options(X, True)
    v, g = ops.loss_grad(theta, X, y, **dict(opts, backend="numba"))
    assert model.loss_grad(theta, X, y)[0] == float(v)
    np.testing.assert_array_equal(model.loss_grad(theta, X, y)[1], g)
    np.testing.assert_array_equal(model.loss_hvp(theta, u, X, y),
                                  ops.hvp(theta, u, X, y, **dict(opts, backend="numba")))
    np.testing.assert_array_equal(model.mixed_rows(theta, u, X, y, rows),
                                  ops.mixed(theta, u, X, y, rows, **dict(opts, backend="numba"))[0])
    v0, g0 = ops.loss_grad(theta, X, y, **dict(model._options(X, False), backend="numba"))
    assert model.data_loss_grad(theta, X, y)[0] == float(v0)
    np.testing.assert_array_equal(model.data_loss_grad(theta, X, y)[1], g0)
    other = LinearModel(model.loss, model.fit_intercept, model.penalize_intercept, "torch")
    if model.sample_weight is not None:
        other = other.with_weights(model.sample_weight)
    rtol, atol = TOLERANCES[dtype]
    for a, b, what in ((model.loss_grad(theta, X, y)[1], other.loss_grad(theta, X, y)[1], "grad"),
                       (model.loss_hvp(theta, u, X, y), other.loss_hvp(theta, u, X, y), "hvp"),
                       (model.mixed_rows(theta, u, X, y, rows),
                        other.mixed_rows(theta, u, X, y, rows), "mixed_rows")):
        assert a.dtype == X.dtype
        assert_verbose_allclose(a, b, rtol, atol * 10, name=what)


@pytest.mark.parametrize("name", ["logistic_weighted", "squared_weighted_pen_b"])
def test_outer_objective_is_unweighted_mean_loss(name):
    model, X, y, theta, _, lam = make(name, 9, 4, "float64")
    plain = LinearModel(model.loss, model.fit_intercept)
    v, g = model.data_loss_grad(theta, X, y)
    v0, g0 = plain.loss_grad(theta, X, y)
    assert v == pytest.approx(v0, rel=1e-14) and np.allclose(g, g0, rtol=1e-14, atol=0)
    assert model.data_loss(theta, X, y) == v
    assert model.loss_grad(theta, X, y)[0] != pytest.approx(v0, rel=1e-6)  # the weights act on training


@pytest.mark.parametrize("name", list(MODELS))
def test_torch_objective_against_finite_differences(name):
    model, X, y, theta, u, lam = make(name, 11, 5, "float64", seed=3)
    f = lambda th, lm=lam: model.torch_objective(  # noqa: E731
        torch.tensor(th), torch.tensor(X), torch.tensor(y), torch.tensor(lm)).item()
    th = torch.tensor(theta, requires_grad=True)
    (g,) = torch.autograd.grad(model.torch_objective(th, torch.tensor(X), torch.tensor(y),
                                                     torch.tensor(lam)), th)
    h = 1e-6
    fd = np.array([(f(theta + h * e) - f(theta - h * e)) / (2 * h) for e in np.eye(theta.size)])
    np.testing.assert_allclose(g.numpy(), fd, rtol=1e-6, atol=1e-7)
    fd_lam = np.array([(f(theta, lam + h * e) - f(theta, lam - h * e)) / (2 * h)
                       for e in np.eye(lam.size)])
    reg = model.regularizer(X.shape[1])
    # d/dlam_g objective = exp(lam_g)/2 ||theta_g||^2
    np.testing.assert_allclose(fd_lam, [0.5 * math.exp(lam[i]) * (theta[sl] ** 2).sum()
                                        for i, sl in enumerate(reg.slices)], rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("B", [2, 17])
def test_loss_grad_batch_is_the_loop(B, shared, dtype):
    model, X, y, _, _, _ = make("logistic_weighted", 23, 33, dtype)
    rng = np.random.default_rng(1)
    theta = rng.normal(size=(B, 34)).astype(dtype)
    Xb = X if shared else np.ascontiguousarray(X + rng.normal(size=(B, 1, 1)).astype(dtype))
    v, g = model.loss_grad_batch(theta, Xb, y)
    for b in range(B):
        vb, gb = model.loss_grad(theta[b], X if shared else Xb[b], y)
        rtol, atol = TOLERANCES[dtype]
        assert_verbose_allclose(v[b], vb, rtol, atol, name="value")
        assert_verbose_allclose(g[b], gb, rtol, atol * 10, name="grad")


def test_layout_and_model_description():
    from mithridate.kernels.cpu.linear import LOSS_CODES
    lay = LinearModel(penalize_intercept=True).layout(5)
    assert lay.groups == (("w", 5), ("b", 1)) and lay.penalised == ("w", "b")
    assert lay.size == 6 and lay.n_lam == 2 and lay.slice("b") == slice(5, 6)
    assert LinearModel(fit_intercept=False).layout(3).groups == (("w", 3),)
    for loss, code in LOSS_CODES.items():
        assert LinearModel(loss).loss_code == code
    assert LinearModel().fused == "linear"
    assert LinearModel(penalize_intercept=True).fused is None
    assert LinearModel().with_weights(np.ones(3)).fused is None
    assert LinearModel().features(7) == 6 and LinearModel(fit_intercept=False).features(7) == 7
    with pytest.raises(KeyError, match="no group 'c'"):
        lay.slice("c")
    with pytest.raises(ValueError, match="distinct names"):
        Layout((("w", 2), ("w", 1)), ())
    with pytest.raises(ValueError, match="must name distinct groups"):
        Layout((("w", 2),), ("b",))


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="loss='hinge'"):
        LinearModel("hinge")
    with pytest.raises(ValueError, match="backend='gpu' is not one of"):
        LinearModel(backend="gpu")
    with pytest.raises(ValueError, match="needs fit_intercept=True"):
        LinearModel(fit_intercept=False, penalize_intercept=True)
    with pytest.raises(ValueError, match="sample_weight has -1.0"):
        LinearModel().with_weights(np.array([1.0, -1.0]))
    model, X, y, theta, u, _ = make("logistic_pen_b", 6, 3, "float64")
    with pytest.raises(ValueError, match=r"2 hyperparameter\(s\) \(groups \['w', 'b'\]\)"):
        model.grad(theta, X, y, np.zeros(1))
    with pytest.raises(ValueError, match="^train data: y must hold labels"):
        model.check_data(X, y + 2, "train")
    with pytest.raises(TypeError, match="^validation data: y has dtype float32"):
        model.check_data(X, y.astype(np.float32), "validation")
    with pytest.raises(ValueError, match="^train data: sample_weight has shape"):
        LinearModel().with_weights(np.ones(4)).check_data(X, y, "train")


@given(st.lists(st.integers(1, 4), min_size=1, max_size=4), st.data())
@settings(max_examples=30, deadline=None)
def test_l2_matches_torch(sizes, data):
    groups = tuple((f"g{i}", s) for i, s in enumerate(sizes))
    pen = tuple(data.draw(st.sets(st.sampled_from([g for g, _ in groups]))))
    lay = Layout(groups, pen)
    reg = L2(lay)
    rng = np.random.default_rng(len(sizes))
    theta, u = rng.normal(size=(2, lay.size))
    lam = rng.uniform(-3, 2, lay.n_lam)
    if not pen:  # nothing penalised: a zero regulariser
        assert reg.value(theta, lam) == 0 and not reg.grad(theta, lam).any()
        assert reg.mixed_lam(theta, u, lam).shape == (0,)
        return
    from mithridate.reference.linear import l2
    th, lt = torch.tensor(theta, requires_grad=True), torch.tensor(lam, requires_grad=True)
    (g,) = torch.autograd.grad(l2(th, lt, reg.slices), th, create_graph=True)
    outs = torch.autograd.grad((g * torch.tensor(u)).sum(), (th, lt), allow_unused=True)
    f = l2(th, lt, reg.slices)
    assert reg.value(theta, lam) == pytest.approx(f.item(), rel=1e-14, abs=0)
    np.testing.assert_allclose(reg.grad(theta, lam), g.detach().numpy(), rtol=1e-14)
    hv = np.zeros_like(u) if outs[0] is None else outs[0].numpy()
    np.testing.assert_allclose(reg.hvp(u, lam), hv, rtol=1e-14)
    np.testing.assert_allclose(reg.diagonal(lam) * u, hv, rtol=1e-14)
    np.testing.assert_allclose(reg.mixed_lam(theta, u, lam), outs[1].numpy(), rtol=1e-13)
    # prox: the stationary point of ||x - theta||^2 / (2 step) + value(x)
    x = reg.prox(theta, lam, 0.3)
    np.testing.assert_allclose((x - theta) / 0.3 + reg.grad(x, lam), 0, atol=1e-13)
    # a leading batch axis
    T2, L2_ = np.stack([theta, u]), np.stack([lam, lam + 1])
    np.testing.assert_allclose(reg.grad(T2, L2_)[1], reg.grad(u, lam + 1), rtol=1e-15)
    np.testing.assert_allclose(reg.value(T2, L2_)[0], reg.value(theta, lam), rtol=1e-15)


def test_heavy_ball_step_numpy_and_torch():
    theta, v, g = np.array([1.0, 2.0]), np.array([0.5, -1.0]), np.array([0.2, 0.4])
    th, vv = heavy_ball.step(theta, v, g, 0.1, 0.9)
    np.testing.assert_array_equal(vv, 0.9 * v - 0.1 * g)
    np.testing.assert_array_equal(th, theta + 0.1 * vv)
    tt, tv = heavy_ball.step(*(torch.tensor(a) for a in (theta, v, g)), 0.1, 0.9)
    assert torch.equal(tt, torch.tensor(th)) and torch.equal(tv, torch.tensor(vv))
    np.testing.assert_array_equal(heavy_ball.step(theta, v, g, 0.1, 0.0)[0], theta - 0.1 * g)


# ---- verbatim copies of the functions the trainers replace (argument checks dropped) ----------

def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def train_sgd(X, y, lam, *, lr=0.01, batch_size=64, epochs=200, random_state=None):
    n, d = X.shape
    reg = math.exp(lam) / n
    rng = np.random.default_rng(random_state)
    w, b = np.zeros(d), 0.0
    for _ in range(epochs):
        order = rng.permutation(n)
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            r = _sigmoid(X[idx] @ w + b) - y[idx]
            w -= lr * (X[idx].T @ r / len(idx) + reg * w)
            b -= lr * r.mean()
    return np.append(w, b)


def train_gd(X, y, lams, *, T, eta, gamma=0.0):
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n, d = X.shape
    reg = np.exp(np.asarray(lams, dtype=np.float64)) / n
    W, b = np.zeros((len(reg), d)), np.zeros(len(reg))
    vW, vb = np.zeros_like(W), np.zeros_like(b)
    for _ in range(T):
        r = _sigmoid(W @ X.T + b[:, None]) - y
        gW, gb = r @ X / n + reg[:, None] * W, r.mean(1)
        vW, vb = gamma * vW - (1 - gamma) * gW, gamma * vb - (1 - gamma) * gb
        W, b = W + eta * vW, b + eta * vb
    return np.hstack([W, b[:, None]])


def _gd_batch(X, y, lam, *, eta, epochs, prox=False):
    P, n, d = X.shape
    reg = np.exp(lam) / n
    w, b = np.zeros((P, d)), np.zeros(P)
    for _ in range(epochs):
        r = 0.5 * (1 + np.tanh(0.5 * (np.einsum("pnd,pd->pn", X, w) + b[:, None]))) - y
        gw = np.einsum("pn,pnd->pd", r, X) / n
        if prox:
            w = (w - eta * gw) / (1 + eta * reg)[:, None]
        else:
            w = w - eta * (gw + reg[:, None] * w)
        b = b - eta * r.mean(1)
    return w, b


def paper_data(n, d, seed=0, dtype="float64"):
    rng = np.random.default_rng(seed)
    X = (rng.normal(size=(n, d)) / math.sqrt(d)).astype(dtype)
    return X, (rng.random(n) > 0.5).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gamma", [0.0, 0.7])
@pytest.mark.parametrize("B", [1, 3, 19])
def test_gradient_descent_matches_train_gd(B, gamma, dtype):
    n, d = 37, 40
    X, y = paper_data(n, d, dtype=dtype)
    lams = np.linspace(-8, 1, B)
    want = train_gd(X, y, lams, T=60, eta=0.5, gamma=gamma)
    got = gradient_descent(LinearModel(), X, y, lams - math.log(n), T=60, alpha=0.5, gamma=gamma)
    assert got.shape == (B, d + 1) and got.dtype == X.dtype
    rtol, atol = TOLERANCES[dtype]
    assert_verbose_allclose(got, want, rtol * 100, atol * 100, name="theta")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("prox", [False, True])
def test_gradient_descent_matches_gd_batch(prox, dtype):
    P, n, d = 5, 21, 2
    X, y = paper_data(n, d, seed=2, dtype=dtype)
    Xs = np.ascontiguousarray(np.repeat(X[None], P, 0))
    Xs[:, 0] = np.random.default_rng(3).normal(size=(P, d))
    lam = np.linspace(-3, 2, P)
    w, b = _gd_batch(Xs.astype(np.float64), y.astype(np.float64), lam, eta=0.5, epochs=200, prox=prox)
    got = gradient_descent(LinearModel(), Xs, y, lam - math.log(n), T=200, alpha=0.5, prox=prox)
    rtol, atol = TOLERANCES[dtype]
    assert_verbose_allclose(got, np.hstack([w, b[:, None]]), rtol * 100, atol * 100, name="theta")


@pytest.mark.parametrize("dtype", DTYPES)
def test_sgd_matches_train_sgd(dtype):
    n, d = 150, 9
    X, y = paper_data(n, d, seed=4, dtype=dtype)
    want = train_sgd(X.astype(np.float64), y.astype(np.float64), -1.0, lr=0.05, batch_size=64,
                     epochs=20, random_state=7)
    got = sgd(LinearModel(), X, y, -1.0 - math.log(n), lr=0.05, batch_size=64, epochs=20,
              random_state=7)
    rtol, atol = TOLERANCES[dtype]
    assert got.shape == (d + 1,) and got.dtype == X.dtype
    assert_verbose_allclose(got, want, rtol * 100, atol * 100, name="theta")


def test_gradient_descent_many_hyperparameters_and_theta0():
    """A two-hyperparameter model (penalised intercept), one problem and a batch, from theta0."""
    X, y = paper_data(30, 4, seed=5)
    model = LinearModel(penalize_intercept=True)
    lam = np.array([-1.0, 0.5])
    theta0 = np.full(5, 0.1)
    got = gradient_descent(model, X, y, lam, T=40, alpha=0.3, gamma=0.5, theta0=theta0)
    theta, v = theta0.copy(), np.zeros(5)
    for _ in range(40):
        theta, v = heavy_ball.step(theta, v, model.grad(theta, X, y, lam), 0.3, 0.5)
    np.testing.assert_allclose(got, theta, rtol=1e-13, atol=1e-15)
    both = gradient_descent(model, X, y, np.stack([lam, lam + 1]), T=40, alpha=0.3, gamma=0.5,
                            theta0=theta0)
    assert both.shape == (2, 5)
    np.testing.assert_allclose(both[0], got, rtol=1e-13, atol=1e-15)


def test_trainer_arguments_are_checked():
    X, y = paper_data(10, 3)
    m = LinearModel()
    with pytest.raises(ValueError, match="prox=True takes plain proximal steps"):
        gradient_descent(m, X, y, 0.0, T=3, alpha=0.1, gamma=0.5, prox=True)
    with pytest.raises(ValueError, match=r"lam has shape \(3, 1\) for 2 problems"):
        gradient_descent(m, np.stack([X, X]), y, np.zeros(3), T=3, alpha=0.1)
    with pytest.raises(ValueError, match=r"theta0 has shape \(3,\)"):
        gradient_descent(m, X, y, 0.0, T=3, alpha=0.1, theta0=np.zeros(3))
    with pytest.raises(ValueError, match="^train data: y must hold labels"):
        gradient_descent(m, X, y + 3, 0.0, T=3, alpha=0.1)
    with pytest.raises(ValueError, match=">= 2: the regulariser's SGD steps diverge"):
        sgd(m, X, y, 5.0, lr=1.0, batch_size=4, epochs=1)
    with pytest.raises(ValueError, match="sgd does not weight"):
        sgd(m.with_weights(np.ones(10)), X, y, 0.0, lr=0.1, batch_size=4, epochs=1)


def test_small_steps_run_on_one_thread_with_the_same_bits():
    import numba
    from mithridate.models import training
    X, y = paper_data(70, 6, seed=6)
    before = numba.get_num_threads()
    small = gradient_descent(LinearModel(), X, y, -3.0, T=20, alpha=0.1, gamma=0.5)
    assert numba.get_num_threads() == before  # restored
    old, training.SERIAL_WORK = training.SERIAL_WORK, 0  # every step on all threads
    try:
        full = gradient_descent(LinearModel(), X, y, -3.0, T=20, alpha=0.1, gamma=0.5)
    finally:
        training.SERIAL_WORK = old
    np.testing.assert_array_equal(small, full)
