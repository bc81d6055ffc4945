"""Hypergradients through paper 000's Wasserstein-robust objective (issue 11, the engine):
models.wasserstein's component and Robust model against torch autograd of their
torch_objective, every generic-engine mode against the torch unrolled reference
(hypergrad.reference.unrolled_model) and finite differences, odd shapes, both dtypes,
reversible recovering theta_0 bit for bit, and the bad input."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

torch = pytest.importorskip("torch")
pytest.importorskip("numba")

from mithridate.hypergrad import Engine, hypergrad  # noqa: E402
from mithridate.hypergrad.reference import unrolled_model  # noqa: E402
from mithridate.models import LinearModel  # noqa: E402
from mithridate.models.wasserstein import SMOOTHING, Robust, Wasserstein  # noqa: E402
from mithridate.testing import TOLERANCES, assert_verbose_allclose  # noqa: E402

TOL = {np.float64: 1e-9, np.float32: 3e-4}  # of the largest entry; float32: T steps of rounding
NORMS = [(2, None), (2, 0.05), (1, 0.05), (math.inf, 0.05), (1.5, None), (3, 0.05)]
NORM_IDS = ["l2", "l2-smooth", "l1-smooth", "linf-smooth", "p1.5-exact", "p3-smooth"]


def data(dtype, n=13, k=3, nv=11, d=7, loss="logistic", seed=0):
    rng = np.random.default_rng(seed)
    X = lambda m: rng.standard_normal((m, d)).astype(dtype)  # noqa: E731
    lab = lambda m: ((rng.random(m) < 0.5) if loss == "logistic"  # noqa: E731
                     else rng.standard_normal(m)).astype(dtype)
    out = dict(Xc=X(n), yc=lab(n), Xp=X(k), yp=lab(k), Xv=X(nv), yv=lab(nv))
    if loss == "logistic":
        out["yv"][:2] = (0, 1)
    return out


def robust(arrays, loss="logistic", norm=2, smoothing=None, l2=True, fit_intercept=True, **kw):
    W = Wasserstein.paper(arrays["Xc"], arrays["yc"], loss=loss, norm=norm,
                          fit_intercept=fit_intercept, smoothing=smoothing, **kw)
    return Robust(LinearModel(loss, fit_intercept), W, l2=l2)


def problem(arrays, lam, theta0, T=8, alpha=0.3, gamma=0.0):
    return SimpleNamespace(**arrays, lam=lam, theta0=theta0, T=T, alpha=alpha, gamma=gamma)


def close(a, b, dtype, what):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(np.abs(b).max(initial=0.0), 1e-3)
    assert np.abs(a - b).max(initial=0.0) <= TOL[dtype] * scale, (what, a, b)


def run(model, arrays, lam, theta0, mode, T=8, alpha=0.3, gamma=0.0, **kw):
    return hypergrad(arrays["Xc"], arrays["yc"], arrays["Xp"], arrays["yp"], arrays["Xv"],
                     arrays["yv"], lam=lam, w0=theta0, T=T, alpha=alpha, gamma=gamma,
                     model=model, mode=mode, **kw)


# -- the component and the model's primitives --------------------------------------------

@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("loss", ["logistic", "squared"])
@pytest.mark.parametrize("norm,mu", NORMS, ids=NORM_IDS)
@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (13, 40)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_primitives_match_torch_autograd(shape, norm, mu, loss, dtype):
    n, d = shape
    arrays = data(dtype, n=n, k=1, nv=2, d=d, loss=loss)
    model = robust(arrays, loss, norm, mu)
    X, y = arrays["Xc"], arrays["yc"]
    rng = np.random.default_rng(1)
    p = model.layout(d).size
    theta, u = rng.normal(0, 0.5, p).astype(dtype), rng.normal(size=p).astype(dtype)
    lam = np.array([-1.3, -2.1])
    th = torch.tensor(theta.astype(np.float64), requires_grad=True)
    lt = torch.tensor(lam, requires_grad=True)
    Xt, yt = torch.tensor(X.astype(np.float64)), torch.tensor(y.astype(np.float64))
    f = model.torch_objective(th, Xt, yt, lt)
    (g,) = torch.autograd.grad(f, th, create_graph=True)
    hv, dlam = torch.autograd.grad((g * torch.tensor(u.astype(np.float64))).sum(), (th, lt))
    H = torch.autograd.functional.hessian(lambda t: model.torch_objective(t, Xt, yt, lt.detach()),
                                          th.detach())
    tangent = torch.autograd.functional.jacobian(
        lambda lm: torch.autograd.grad(model.torch_objective(th, Xt, yt, lm), th,
                                       create_graph=True)[0], lt.detach())
    rtol, atol = TOLERANCES[dtype]
    scale = max(1.0, float(np.abs(X).max()) ** 2)
    ok = lambda a, e, what: assert_verbose_allclose(a, e, rtol, atol * scale, name=what)  # noqa
    ok(model.objective(theta, X, y, lam), f, "objective")
    ok(model.grad(theta, X, y, lam), g, "grad")
    ok(model.hvp(theta, u, X, y, lam), hv, "hvp")
    ok(model.mixed_lam(theta, u, lam), dlam, "mixed_lam")
    ok(model.lam_tangent(theta, lam), tangent.T, "lam_tangent")
    ok(model.hessian(theta, X, y, lam), H, "hessian")
    for out in (model.grad(theta, X, y, lam), model.hvp(theta, u, X, y, lam)):
        assert out.dtype == X.dtype and out.shape == theta.shape


def test_component_values_and_smoothing_bounds():
    """R = rho (a t^2 + b t) with the paper's (a, b); each smoothed norm within its bound."""
    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(9, 4)), rng.normal(size=9)
    Xb, Yb = np.linalg.norm(X, axis=1).max(), np.abs(y).max()
    W = Wasserstein.paper(X, y, loss="squared")
    assert W.a == pytest.approx(Xb + 1) and W.b == pytest.approx(Yb)
    assert Wasserstein.paper(X, y > 0, loss="logistic").b == pytest.approx(
        np.abs(y > 0).max() + Xb + 2)
    assert (Wasserstein.paper(X, y, loss="squared", c1=0.3).a, Wasserstein.paper(
        X, y, loss="squared", c1=0.3).b) == (0.3, 0.0)
    theta = rng.normal(size=5)
    mu = 0.01
    for norm, q, slack in ((2, 2, mu), (1, math.inf, mu * math.log(10)), (math.inf, 1, 5 * mu)):
        t = Wasserstein(0.0, 1.0, q, mu).value(theta, [0.0])
        exact = np.linalg.norm(theta, q)
        assert exact - slack - 1e-12 <= t <= exact + 1e-12, (norm, t, exact)
    rho = 0.37
    exact = Wasserstein(W.a, W.b, 2.0).value(theta, [math.log(rho)])
    t = np.linalg.norm(theta)
    assert exact == pytest.approx(rho * (W.a * t * t + W.b * t), rel=1e-14)
    # exact 2-norm at theta = 0: the subgradient 0, a zero Hessian
    W2 = Wasserstein(1.0, 1.0, 2.0)
    assert not W2.grad(np.zeros(3), [0.0]).any() and not W2.hvp_at(
        np.zeros(3), np.ones(3), [0.0]).any()


@pytest.mark.parametrize("norm,mu", NORMS, ids=NORM_IDS)
def test_batched_component_is_the_loop(norm, mu):
    """theta (B, p) with lam (B, 1) (the trainers' call) equals B one-problem calls (the
    exact 2-norm's one-problem path is its own BLAS-1 form), a zero row included."""
    from mithridate.models.wasserstein import dual
    rng = np.random.default_rng(4)
    W = Wasserstein(0.7, 1.3, dual(norm), mu)
    theta, u = rng.normal(size=(4, 6)), rng.normal(size=(4, 6))
    theta[2] = 0.0
    lam = rng.uniform(-2, 0, (4, 1))
    for name, args in (("value", ()), ("grad", ()), ("hvp_at", (u,)), ("mixed_lam", (u,)),
                       ("lam_tangent", ())):
        batch = getattr(W, name)(theta, *args, lam)
        for b in range(4):
            one = getattr(W, name)(theta[b], *(a[b] for a in args), lam[b])
            np.testing.assert_allclose(batch[b], one, rtol=1e-13, atol=1e-14, err_msg=name)


def test_layout_names_and_lam_vector():
    arrays = data(np.float64)
    model = robust(arrays)
    lay = model.layout(7)
    assert lay.n_lam == 2 and lay.names == ("lam_w", "log_rho") and lay.size == 8
    only = robust(arrays, l2=False)
    assert only.layout(7).n_lam == 1 and only.layout(7).names == ("log_rho",)
    pen = Robust(LinearModel(penalize_intercept=True), model.wasserstein)
    assert pen.layout(7).names == ("lam_w", "lam_b", "log_rho")
    assert model.fused is None and model.loss_factor(None, None, None) is None


# -- the engine's modes against the torch unrolled reference ---------------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("norm,mu", NORMS, ids=NORM_IDS)
@pytest.mark.parametrize("loss,l2", [("logistic", True), ("squared", True), ("logistic", False)],
                         ids=["logistic", "squared", "logistic-no-l2"])
def test_every_mode_against_the_unrolled_reference(loss, l2, norm, mu, dtype):
    arrays = data(dtype, loss=loss, n=11, k=2, d=5)
    model = robust(arrays, loss, norm, mu, l2=l2)
    p = model.layout(5).size
    theta0 = np.random.default_rng(1).normal(0, 0.3, p).astype(dtype)
    lam = np.array([-1.0, -2.5]) if l2 else -2.5
    gamma = 0.5
    value, gX, glam, theta_T = unrolled_model(model, problem(arrays, lam, theta0, gamma=gamma),
                                              torch.float64)
    glam = glam if l2 else glam[0]
    for mode in ("trajectory", "checkpoint", "reversible"):
        r = run(model, arrays, lam, theta0, mode, gamma=gamma)
        assert r.theta_T.dtype == dtype and r.info["backend"] == "generic"
        close(r.value, value, dtype, (mode, "value"))
        close(r.theta_T, theta_T, dtype, (mode, "theta_T"))
        close(r.grad_Xp, gX, dtype if mode != "reversible" else np.float32, (mode, "Xp"))
        close(r.grad_lam, glam, dtype if mode != "reversible" else np.float32, (mode, "lam"))
        assert np.shape(r.grad_lam) == np.shape(lam)
        if mode == "reversible":
            assert r.info["w0_recovered"] is True


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("norm,mu", NORMS, ids=NORM_IDS)
def test_forward_mode(norm, mu, dtype):
    """Forward mode's tangents for lam_w and log_rho (Model.lam_tangent)."""
    arrays = data(dtype, n=11, k=2, d=5)
    model = robust(arrays, norm=norm, smoothing=mu)
    theta0 = np.random.default_rng(1).normal(0, 0.3, 6).astype(dtype)
    lam = np.array([-1.0, -2.5])
    _, _, glam, _ = unrolled_model(model, problem(arrays, lam, theta0), torch.float64)
    r = run(model, arrays, lam, theta0, "forward")
    assert r.grad_Xp is None
    close(r.grad_lam, glam, dtype, "forward lam")


def test_finite_differences_from_zero():
    """The attack's start theta_0 = 0 (the exact 2-norm's kink: the first step takes the
    subgradient 0): d value / d log_rho, d lam and d Xp by central differences."""
    arrays = data(np.float64, n=15, k=2, d=4, seed=3)
    model = robust(arrays)
    theta0, lam, T = np.zeros(5), np.array([-1.0, -2.0]), 12
    r = run(model, arrays, lam, theta0, "trajectory", T=T)
    value = lambda a, lm: run(model, a, lm, theta0, "trajectory", T=T).value  # noqa: E731
    h = 1e-6
    for j in range(2):
        e = np.eye(2)[j] * h
        fd = (value(arrays, lam + e) - value(arrays, lam - e)) / (2 * h)
        assert fd == pytest.approx(r.grad_lam[j], rel=1e-6, abs=1e-9)
    for i, j in ((0, 0), (1, 3)):
        up, down = dict(arrays), dict(arrays)
        up["Xp"], down["Xp"] = arrays["Xp"].copy(), arrays["Xp"].copy()
        up["Xp"][i, j] += h
        down["Xp"][i, j] -= h
        fd = (value(up, lam) - value(down, lam)) / (2 * h)
        assert fd == pytest.approx(r.grad_Xp[i, j], rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("norm,mu", [(2, None), (math.inf, 0.5)], ids=["l2", "linf-smooth"])
def test_implicit_at_the_optimum(norm, mu):
    """Eq. (4) at a stationary theta_T (many steps; the smoothed norm's curvature rho b / mu
    kept under 2 / alpha) equals the trajectory RMD of the same long run."""
    arrays = data(np.float64, n=30, k=3, d=4, seed=4)
    model = robust(arrays, norm=norm, smoothing=mu)
    lam, theta0 = np.array([-2.0, -5.0]), np.zeros(5)  # rho b < |mean loss gradient at 0|
    kw = dict(T=1500, alpha=0.5, gamma=0.0)
    ref = run(model, arrays, lam, theta0, "trajectory", **kw)
    imp = run(model, arrays, lam, theta0, "implicit", tol=1e-8, **kw)
    assert imp.info["grad_norm"] < 1e-8
    np.testing.assert_allclose(imp.grad_Xp, ref.grad_Xp, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(imp.grad_lam, ref.grad_lam, rtol=1e-5, atol=1e-8)


def test_batched_engine_equals_single_calls():
    arrays = data(np.float64, n=11, k=2, d=5)
    model = robust(arrays)
    eng = Engine(arrays["Xc"], arrays["yc"], arrays["Xv"], arrays["yv"], model=model, T=6,
                 alpha=0.3, mode="trajectory")
    rng = np.random.default_rng(3)
    Xp = rng.normal(size=(3, 2, 5))
    yp = np.ones((3, 2))
    lams = np.array([[-1.0, -2.0], [0.0, -3.0], [-2.0, -1.0]])
    out = eng.run(Xp, yp, lams)
    for b in range(3):
        one = eng.run(Xp[b], yp[b], lams[b])
        np.testing.assert_array_equal(out.grad_Xp[b], one.grad_Xp)
        np.testing.assert_array_equal(out.grad_lam[b], one.grad_lam)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(2, 9), k=st.integers(1, 3), d=st.integers(1, 6), T=st.integers(1, 6),
       log_rho=st.floats(-6, 0), norm=st.sampled_from(range(len(NORMS))), seed=st.integers(0, 2 ** 16),
       gamma=st.sampled_from([0.0, 0.5, 0.9]))
def test_hypothesis_trajectory_against_reference(n, k, d, T, log_rho, norm, seed, gamma):
    arrays = data(np.float64, n=n, k=k, nv=3, d=d, seed=seed)
    p, mu = NORMS[norm]
    model = robust(arrays, "logistic", p, mu)
    theta0 = np.random.default_rng(seed + 1).normal(0, 0.5, d + 1)
    lam = np.array([-1.0, log_rho])
    value, gX, glam, _ = unrolled_model(model, problem(arrays, lam, theta0, T=T, alpha=0.2,
                                                       gamma=gamma), torch.float64)
    r = run(model, arrays, lam, theta0, "trajectory", T=T, alpha=0.2, gamma=gamma)
    close(r.value, value, np.float64, "value")
    close(r.grad_Xp, gX, np.float64, "Xp")
    close(r.grad_lam, glam, np.float64, "lam")


# -- bad input ---------------------------------------------------------------------------------

def test_bad_input_is_refused_before_any_work():
    arrays = data(np.float64)
    X, y = arrays["Xc"], arrays["yc"]
    for norm in (1, math.inf):
        with pytest.raises(ValueError, match=r"pass smoothing=mu > 0"):
            Wasserstein.paper(X, y, loss="logistic", norm=norm)
        assert Wasserstein.paper(X, y, loss="logistic", norm=norm, smoothing=SMOOTHING).mu == \
            SMOOTHING
    with pytest.raises(ValueError, match="norm=3: .*pass smoothing"):
        Wasserstein.paper(X, y, loss="logistic", norm=3)  # q = 1.5: unbounded curvature at 0
    with pytest.raises(ValueError, match="norm=0.5 must be a number p >= 1"):
        Wasserstein.paper(X, y, loss="logistic", norm=0.5)
    assert Wasserstein.paper(X, y, loss="logistic", norm=1.5).q == pytest.approx(3.0)
    with pytest.raises(ValueError, match="smoothing=0"):
        Wasserstein.paper(X, y, loss="logistic", smoothing=0)
    with pytest.raises(ValueError, match="c1=-1"):
        Wasserstein.paper(X, y, loss="logistic", c1=-1)
    with pytest.raises(TypeError, match="Robust"):
        Robust(robust(arrays), robust(arrays).wasserstein)
    model = robust(arrays)
    with pytest.raises(ValueError, match="hyperparameters, one per"):
        run(model, arrays, -1.0, None, "trajectory")  # lam needs (lam_w, log_rho)
    with pytest.raises(ValueError, match="lam\\[1\\]"):
        run(model, arrays, np.array([-1.0, math.nan]), None, "trajectory")
    with pytest.raises(ValueError, match="backend='numba'.*generic engine"):
        run(model, arrays, np.array([-1.0, -1.0]), None, "trajectory", backend="numba")
    with pytest.raises(ValueError, match="prox=True"):
        from mithridate.models.training import gradient_descent
        gradient_descent(model, X, y, np.array([-1.0, -1.0]), T=2, alpha=0.1, prox=True)


# -- poisoning labels (regression): rows [features | y] --------------------------------------

def labelled(arrays):
    """The arrays with each row set's label appended as its last feature."""
    out = dict(arrays)
    for X, y in (("Xc", "yc"), ("Xp", "yp"), ("Xv", "yv")):
        out[X] = np.ascontiguousarray(np.column_stack([arrays[X], arrays[y]]))
    return out


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("wasserstein", [True, False], ids=["robust", "l2"])
def test_label_gradients_against_the_unrolled_reference(wasserstein, dtype):
    from mithridate.models import LabelFeature
    arrays = data(dtype, n=11, k=2, d=4, loss="squared")
    base = LabelFeature(LinearModel("squared"))
    model = Robust(base, robust(arrays, "squared").wasserstein) if wasserstein else base
    rows = labelled(arrays)
    theta0 = np.random.default_rng(1).normal(0, 0.3, 5).astype(dtype)
    lam = np.array([-1.0, -3.0]) if wasserstein else -1.0
    value, gX, glam, _ = unrolled_model(model, problem(rows, lam, theta0, gamma=0.5),
                                        torch.float64)
    for mode in ("trajectory", "checkpoint", "reversible"):
        r = run(model, rows, lam, theta0, mode, gamma=0.5)
        assert r.grad_Xp.shape == (2, 5)  # the last column: d value / d yp
        tol = dtype if mode != "reversible" else np.float32
        close(r.value, value, dtype, (mode, "value"))
        close(r.grad_Xp, gX, tol, (mode, "Xp and yp"))
        close(r.grad_lam, glam if wasserstein else glam[0], tol, (mode, "lam"))


def test_label_gradient_finite_differences_and_fused_features():
    from mithridate.models import LabelFeature
    arrays = data(np.float64, n=15, k=2, d=4, loss="squared", seed=5)
    rows = labelled(arrays)
    model = LabelFeature(LinearModel("squared"))
    r = run(model, rows, -1.0, np.zeros(5), "trajectory", T=10)
    h = 1e-6
    for i in range(2):
        up, down = dict(arrays), dict(arrays)
        up["yp"], down["yp"] = arrays["yp"].copy(), arrays["yp"].copy()
        up["yp"][i] += h
        down["yp"][i] -= h
        fd = (run(model, labelled(up), -1.0, np.zeros(5), "trajectory", T=10).value
              - run(model, labelled(down), -1.0, np.zeros(5), "trajectory", T=10).value) / (2 * h)
        assert fd == pytest.approx(r.grad_Xp[i, -1], rel=1e-6, abs=1e-10)
    fused = run(LinearModel("squared"), arrays, -1.0, np.zeros(5), "trajectory", T=10)
    np.testing.assert_allclose(r.grad_Xp[:, :-1], fused.grad_Xp, rtol=1e-10, atol=1e-14)
    assert r.value == pytest.approx(fused.value, rel=1e-12)


def test_label_optimisation_refused_for_a_classifier():
    from mithridate.models import LabelFeature
    with pytest.raises(ValueError, match="classifier.*squared"):
        LabelFeature(LinearModel("logistic"))
    with pytest.raises(TypeError, match="LinearModel"):
        LabelFeature(robust(data(np.float64)))
    model = LabelFeature(LinearModel("squared"))
    X = np.ones((3, 4))
    with pytest.raises(ValueError, match=r"y must equal X\[:, -1\]"):
        model.check_data(X, np.zeros(3), "train")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("mode", ["trajectory", "checkpoint", "reversible"])
def test_a_zero_wasserstein_term_leaves_the_l2_model_bitwise(mode, dtype):
    """Robust(base, R = 0) runs the base model's generic route bit for bit (the L2 component
    and the engine's calls are unchanged), and Model.lam_tangent is the generic engine's
    per-group L2 tangent bit for bit."""
    from mithridate.models import L2, Layout
    arrays = data(dtype, n=11, k=2, d=5)
    base = LinearModel(penalize_intercept=True)  # n_lam = 2: the generic route
    model = Robust(base, Wasserstein(0.0, 0.0, 2.0))
    theta0 = np.random.default_rng(1).normal(0, 0.3, 6).astype(dtype)
    lam = np.array([-1.0, 0.5])
    a = run(base, arrays, lam, theta0, mode, gamma=0.5)
    b = run(model, arrays, np.r_[lam, -2.0], theta0, mode, gamma=0.5)
    np.testing.assert_array_equal(a.grad_Xp, b.grad_Xp)
    np.testing.assert_array_equal(a.grad_lam, b.grad_lam[:2])
    np.testing.assert_array_equal(a.theta_T, b.theta_T)
    assert a.value == b.value and b.grad_lam[2] == 0.0
    layout = base.layout(5)
    theta = theta0.astype(np.float64)
    per_group = np.stack([L2(Layout(layout.groups, (g,))).grad(theta, lam[j:j + 1])
                          for j, g in enumerate(layout.penalised)])
    np.testing.assert_array_equal(base.lam_tangent(theta, lam), per_group)
