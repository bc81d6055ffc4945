"""Implicit mode over the models layer (hypergrad/implicit.py): implicit_model at a
converged theta against finite differences of the exactly re-solved bilevel
problem and against a dense float64 solve, through each of its routes (CG on
the HVP, Woodbury n x n, p x p Cholesky, CG alone past CHOLESKY_MAX), odd
shapes, both dtypes, one or two hyperparameters and sample weights; the CG
routine itself; singular Hessians as clear errors on every route."""
import math

import numpy as np
import pytest

pytest.importorskip("numba")

from mithridate.errors import SingularHessianError  # noqa: E402
from mithridate.hypergrad import implicit as imp  # noqa: E402
from mithridate.models import LinearModel  # noqa: E402

ROUTES = ["cg", "direct", "cg_only"]  # direct: Woodbury when n + (unpenalised) < p, else Cholesky


def force(monkeypatch, route):
    """Make `route` the one implicit_model takes on small problems."""
    if route == "cg":
        monkeypatch.setattr(imp, "MIN_CG", 0)
        monkeypatch.setattr(imp, "HVP_PER_DIRECT", 1e-3)  # a budget of many iterations
    elif route == "cg_only":
        monkeypatch.setattr(imp, "CHOLESKY_MAX", 0)
    else:
        monkeypatch.setattr(imp, "MIN_CG", 10 ** 9)  # straight to the direct solve


def model_of(name, n, rng):
    m = {"logistic": LinearModel(), "squared": LinearModel("squared"),
         "pen_b": LinearModel(penalize_intercept=True), "no_b": LinearModel(fit_intercept=False),
         "weighted": LinearModel().with_weights(rng.uniform(0.2, 2.0, n))}[name]
    return m


def problem(name, n, k, d, dtype, lam=-1.0, seed=0):
    rng = np.random.default_rng(seed)
    model = model_of(name, n, rng)
    X = rng.normal(size=(n, d)).astype(dtype)
    labels = lambda m: (rng.random(m) > 0.5).astype(dtype) if model.loss == "logistic" \
        else rng.normal(size=m).astype(dtype)  # noqa: E731
    y = labels(n)
    Xv = rng.normal(size=(7, d)).astype(dtype)
    yv = labels(7)
    lam = np.full(model.layout(d).n_lam, lam) + 0.3 * np.arange(model.layout(d).n_lam)
    return model, X, y, np.arange(n - k, n), Xv, yv, lam


def argmin(model, X, y, lam):
    """The training optimum by Newton's method in float64."""
    X64, y64 = X.astype(np.float64), y.astype(np.float64)
    theta = np.zeros(model.layout(X.shape[1]).size)
    for _ in range(100):
        g = model.grad(theta, X64, y64, lam)
        if np.linalg.norm(g) < 1e-14:
            break
        theta = theta - np.linalg.solve(model.hessian(theta, X64, y64, lam), g)
    return theta


def dense(model, theta, X, y, rows, Xv, yv, lam):
    """Eq. (4) by a dense float64 solve."""
    s = np.linalg.solve(model.hessian(theta, X, y, lam), model.data_loss_grad(theta, Xv, yv)[1])
    s = s.astype(X.dtype)
    return -model.mixed_rows(theta, s, X, y, rows), -model.mixed_lam(theta, s, lam)


# (model, n, k, d): n < p takes Woodbury, n >= p the p x p Cholesky
CASES = [("logistic", 9, 2, 20), ("logistic", 30, 3, 5), ("squared", 11, 1, 13),
         ("pen_b", 8, 2, 11), ("no_b", 6, 2, 9), ("weighted", 12, 3, 17), ("weighted", 25, 2, 4)]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_matches_finite_differences_of_the_exact_optimum(monkeypatch, case, route):
    name, n, k, d = case
    model, X, y, rows, Xv, yv, lam = problem(name, n, k, d, np.float64)
    force(monkeypatch, route)
    info = {}
    hg = imp.implicit_model(model, argmin(model, X, y, lam), X, y, rows, Xv, yv, lam, 1e-10, info)
    free = model.fit_intercept and not model.penalize_intercept
    direct = "woodbury" if n + free < model.layout(d).size else "cholesky"
    assert info["solver"] == ("cg" if route != "direct" else direct)
    assert hg.grad_Xp.shape == (k, d) and hg.grad_Xp.dtype == X.dtype

    def outer(Xk=None, lm=lam):
        Xp = X.copy()
        if Xk is not None:
            Xp[rows] = Xk
        return model.data_loss(argmin(model, Xp, y, lm), Xv, yv)

    h = 1e-6
    fd = np.zeros((k, d))
    for i in range(k):
        for j in range(d):
            E = np.zeros((k, d))
            E[i, j] = h
            fd[i, j] = (outer(X[rows] + E) - outer(X[rows] - E)) / (2 * h)
    np.testing.assert_allclose(hg.grad_Xp, fd, rtol=1e-5, atol=1e-8)
    fd_lam = [(outer(lm=lam + h * e) - outer(lm=lam - h * e)) / (2 * h) for e in np.eye(lam.size)]
    np.testing.assert_allclose(np.atleast_1d(hg.grad_lam), fd_lam, rtol=1e-5, atol=1e-9)
    assert hg.value == pytest.approx(outer(), rel=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("route", ROUTES)
def test_routes_agree_with_a_dense_solve(monkeypatch, route, dtype):
    model, X, y, rows, Xv, yv, lam = problem("pen_b", 13, 3, 29, dtype, seed=5)
    theta = argmin(model, X, y, lam).astype(dtype)
    force(monkeypatch, route)
    info = {}
    hg = imp.implicit_model(model, theta, X, y, rows, Xv, yv, lam, 1e-2, info)
    gX, glam = dense(model, theta, X, y, rows, Xv, yv, lam)
    rtol = 1e-9 if dtype == np.float64 else 2e-3
    np.testing.assert_allclose(hg.grad_Xp, gX, rtol=rtol, atol=rtol * np.abs(gX).max())
    assert isinstance(hg.grad_lam, np.ndarray) and hg.grad_lam.shape == (2,)  # two hyperparameters
    np.testing.assert_allclose(hg.grad_lam, glam, rtol=rtol, atol=rtol * np.abs(glam).max())


def test_one_hyperparameter_gives_a_float_and_the_cg_route_at_paper_size():
    """At a paper-sized problem (n < p, p > 150) the default route is CG, and it converges."""
    model, X, y, rows, Xv, yv, lam = problem("logistic", 120, 5, 300, np.float64, lam=0.0)
    X /= math.sqrt(X.shape[1])
    info = {}
    theta = argmin(model, X, y, lam)
    hg = imp.implicit_model(model, theta, X, y, rows, Xv, yv, lam, 1e-8, info)
    assert info["solver"] == "cg" and 0 < info["cg_iterations"] < 60
    assert isinstance(hg.grad_lam, float)
    gX, glam = dense(model, theta, X, y, rows, Xv, yv, lam)
    np.testing.assert_allclose(hg.grad_Xp, gX, rtol=1e-8, atol=1e-9 * np.abs(gX).max())
    assert hg.grad_lam == pytest.approx(glam[0], rel=1e-8)


@pytest.mark.parametrize("route", ["cg", "woodbury", "cholesky"])
def test_negligible_regulariser_is_a_clear_error(monkeypatch, route):
    """exp(lam) ~ 1e-26: CG may converge on the consistent system but is not accepted;
    the direct solve refuses the (numerically) singular Hessian."""
    n, d = (9, 20) if route != "cholesky" else (40, 6)
    model, X, y, rows, Xv, yv, _ = problem("squared", n, 2, d, np.float64)
    X[:, 1] = X[:, 0]  # a repeated column
    Xv[:, 1] = Xv[:, 0]
    lam = np.array([-60.0])
    force(monkeypatch, "cg" if route == "cg" else "direct")
    theta = np.linalg.lstsq(np.column_stack([X, np.ones(n)]), y, rcond=None)[0]
    info = {}
    with pytest.raises(SingularHessianError, match="raise lam") as err:
        imp.implicit_model(model, theta, X, y, rows, Xv, yv, lam, 1e-6, info)
    assert isinstance(err.value, np.linalg.LinAlgError)
    assert info["solver"] == ("woodbury" if route != "cholesky" else "cholesky")


def test_cg_alone_reports_non_convergence(monkeypatch):
    model, X, y, rows, Xv, yv, _ = problem("squared", 9, 2, 20, np.float64)
    monkeypatch.setattr(imp, "CHOLESKY_MAX", 0)
    monkeypatch.setattr(imp, "cg", lambda hvp, b, rtol, maxiter, project=False:
                        (np.zeros_like(b), maxiter, 1.0, False))
    with pytest.raises(SingularHessianError, match="CG did not converge"):
        imp.implicit_model(model, np.zeros(21), X, y, rows, Xv, yv, np.zeros(1), 1e9, {})


def test_cg_routine():
    rng = np.random.default_rng(0)
    Q = np.linalg.qr(rng.normal(size=(40, 40)))[0]
    ev = np.geomspace(1e-2, 1e2, 40)
    H = (Q * ev) @ Q.T
    b = rng.normal(size=40)
    s, it, ritz, ok = imp.cg(lambda v: H @ v, b, 1e-10, 400)
    assert ok and it <= 400 and np.linalg.norm(H @ s - b) <= 1e-10 * np.linalg.norm(b) * 1.01
    assert ritz == pytest.approx(ev[-1], rel=1e-6)  # the largest eigenvalue converges first
    # the projection is pessimistic (CG speeds up as it resolves the extreme eigenvalues),
    # so a budget well above the need converges and a tight one gives up early
    s, it_p, _, ok = imp.cg(lambda v: H @ v, b, 1e-10, 10 * it, project=True)
    assert ok and it_p == it
    s, it, _, ok = imp.cg(lambda v: H @ v, b, 1e-14, 12, project=True)  # projects past it: gives up
    assert not ok and it <= 12
    s, it, ritz, ok = imp.cg(lambda v: -v, b, 1e-10, 10)  # negative curvature
    assert not ok and ritz == math.inf


# ---- networks: H indefinite or singular --------------------------------------

def net_problem(layers, dtype=np.float64, seed=0, n=12, **kw):
    """An MLP with random rows (the last 3 poisoning), labels both classes."""
    from mithridate.models import MLP
    rng = np.random.default_rng(seed)
    model = MLP(layers=layers, **kw)
    d = layers[0]
    X, Xv = rng.standard_normal((n, d)).astype(dtype), rng.standard_normal((8, d)).astype(dtype)
    y, yv = (rng.random(n) < 0.5).astype(dtype), np.r_[0, 1, rng.random(6) < 0.5].astype(dtype)
    return model, X, y, np.arange(n - 3, n), Xv, yv


def torch_eq4(model, theta, X, y, rows, Xv, yv, lam):
    """Eq. (4) by torch autograd: the dense Hessian, a dense solve (LU: any nonsingular H)."""
    torch = pytest.importorskip("torch")
    from mithridate.reference import mlp as ref
    t = lambda a: torch.from_numpy(np.asarray(a, np.float64))  # noqa: E731
    th, Xt = t(theta).requires_grad_(True), t(X).requires_grad_(True)
    H = torch.autograd.functional.hessian(lambda w: model.torch_objective(w, t(X), t(y), t(lam)),
                                          th)
    gA = torch.autograd.grad(ref.loss(model, th, t(Xv), t(yv)), th)[0]
    s = torch.linalg.solve(H, gA)
    g = torch.autograd.grad(model.torch_objective(th, Xt, t(y), t(lam)), th, create_graph=True)[0]
    return -torch.autograd.grad(g @ s, Xt)[0][rows].numpy(), torch.linalg.eigvalsh(H).numpy()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("route", ROUTES)
def test_network_with_an_indefinite_hessian_solves_by_minres(monkeypatch, route, dtype):
    """theta_T after 30 steps: H has negative eigenvalues (CG meets negative curvature, the
    Cholesky fails) but is nonsingular, so eq. (4) is solved by MINRES, on every route,
    and equals torch's dense solve."""
    from mithridate.hypergrad import hypergrad
    model, X, y, rows, Xv, yv = net_problem((5, 4, 3, 1), dtype)
    lam = np.full(3, -4.0)
    w0 = model.init(5, 0).astype(dtype)
    r = hypergrad(X[:-3], y[:-3], X[-3:], y[-3:], Xv, yv, lam=lam, w0=w0, T=30, alpha=0.3,
                  gamma=0.5, model=model, mode="trajectory")
    want, ev = torch_eq4(model, r.theta_T, X, y, rows, Xv, yv, lam)
    assert ev.min() < -0.01 * ev.max() and np.abs(ev).min() > 1e-6 * ev.max()
    force(monkeypatch, route)
    info = {}
    with pytest.warns(RuntimeWarning, match="non-stationary"):
        hg = imp.implicit_model(model, r.theta_T, X, y, rows, Xv, yv, lam, 1e-6, info)
    assert info["solver"] == "minres" and info["minres_iterations"] > 0
    assert info["residual"] <= imp.MINRES_ACCEPT[np.dtype(dtype)]
    rtol = 1e-7 if dtype == np.float64 else 2e-3
    np.testing.assert_allclose(hg.grad_Xp, want, rtol=rtol, atol=rtol * np.abs(want).max())


def test_network_singular_hessian_is_a_clear_error_on_every_route(monkeypatch):
    """A feature that is zero in every training row leaves W1's row for it with only
    the regulariser's curvature exp(-60) ~ 1e-26, while grad A (validation rows use the
    feature) points along it: numerically singular, refused on every route."""
    model, X, y, rows, Xv, yv = net_problem((4, 3, 1))
    X[:, 2] = 0.0
    lam = np.full(2, -60.0)
    theta = model.init(4, 1)
    for route in ROUTES:
        with monkeypatch.context() as m:
            force(m, route)
            info = {}
            with pytest.raises(SingularHessianError, match=r"raise lam.*mode='trajectory'"):
                imp.implicit_model(model, theta, X, y, rows, Xv, yv, lam, 1e9, info)
            assert info["solver"] in ("minres", "cholesky", "cg"), route


def test_minres_refuses_a_singular_inconsistent_system():
    H = np.diag([2.0, -1.0, 0.0])
    info = {}
    with pytest.raises(SingularHessianError, match="relative residual"):
        imp._minres(lambda v: H @ v, np.array([1.0, 1.0, 1.0]), 30, np.float64, np.zeros(1),
                    info)
    assert info["solver"] == "minres" and info["residual"] > 0.1
    s = imp._minres(lambda v: H @ v, np.array([1.0, 1.0, 0.0]), 30, np.float64, np.zeros(1), {})
    np.testing.assert_allclose(s, [0.5, -1.0, 0.0], atol=1e-14)  # consistent: minimum norm


# the leaky-ReLU network (3, 1, 1), its biases penalised, lam = -3: plain GD from this init
# converges (||grad|| ~ 1e-16 by T = 6000) to a minimum off the kinks with H positive definite
MIN_NET = dict(layers=(3, 1, 1), penalize_bias=True)


def min_problem():
    from mithridate.models import MLP
    rng = np.random.default_rng(3)
    w = np.array([1.5, -1.0, 0.5])

    def rows(n):
        X = rng.standard_normal((n, 3))
        return X, (X @ w + 0.3 * rng.standard_normal(n) > 0).astype(float)
    (Xc, yc), (Xp, yp), (Xv, yv) = rows(20), rows(2), rows(9)
    X, y = np.concatenate([Xc, Xp]), np.r_[yc, 1 - yp]  # poisoning rows: flipped labels
    return MLP(**MIN_NET), X, y, np.arange(20, 22), Xv, yv, np.full(2, -3.0)


def test_network_at_a_minimum_matches_finite_differences_and_long_rmd():
    """Implicit at theta_T = the minimum (T = 6000): equal to central differences of the
    outer value at the minimum re-solved by Newton for each perturbed Xp and lam, and to
    trajectory RMD through the same 6000 steps."""
    from mithridate.hypergrad import hypergrad
    model, X, y, rows, Xv, yv, lam = min_problem()
    kw = dict(w0=model.init(3, 1), T=6000, alpha=1.0, gamma=0.5, model=model)
    args = (X[:20], y[:20], X[20:], y[20:], Xv, yv)
    hg = hypergrad(*args, lam=lam, **kw, mode="implicit", tol=1e-12)
    assert hg.info["grad_norm"] < 1e-12 and hg.info["solver"] in ("cg", "cholesky")
    assert np.linalg.eigvalsh(model.hessian(hg.theta_T, X, y, lam)).min() > 0.01
    W1, b1 = hg.theta_T[:3], hg.theta_T[3]
    assert np.abs(X @ W1 + b1).min() > 0.05  # off the kink: the objective is smooth here

    def outer(Xk=None, lm=lam):
        Xn = X.copy()
        if Xk is not None:
            Xn[rows] = Xk
        theta = hg.theta_T.copy()
        for _ in range(30):  # Newton from the minimum: it follows the minimum
            g = model.grad(theta, Xn, y, lm)
            if np.linalg.norm(g) < 1e-15:
                break
            theta -= np.linalg.solve(model.hessian(theta, Xn, y, lm), g)
        return model.data_loss(theta, Xv, yv)

    fd, fd_lam = _central_differences(outer, X[rows], lam)
    np.testing.assert_allclose(hg.grad_Xp, fd, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(hg.grad_lam, fd_lam, rtol=1e-5, atol=1e-9)
    rmd = hypergrad(*args, lam=lam, **kw, mode="trajectory")
    np.testing.assert_allclose(hg.grad_Xp, rmd.grad_Xp, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(hg.grad_lam, rmd.grad_lam, rtol=1e-7, atol=1e-10)


def test_network_at_a_saddle_point_matches_finite_differences():
    """The implicit function theorem needs H nonsingular only: at a nondegenerate saddle
    point (a smooth tanh network, two negative eigenvalues, found by Newton from theta_T)
    eq. (4) by MINRES equals central differences of the outer value at the saddle point
    re-solved by Newton (which follows it) for each perturbed Xp and lam."""
    torch = pytest.importorskip("torch")
    from mithridate.hypergrad import Engine
    from mithridate.models import TorchModule
    rng = np.random.default_rng(1)

    def rows(n):
        X = rng.standard_normal((n, 3))
        return X, (X[:, 0] * X[:, 1] + 0.3 * X[:, 2] > 0).astype(float)
    (Xc, yc), (Xp, yp), (Xv, yv) = rows(30), rows(3), rows(9)
    X, y, idx = np.concatenate([Xc, Xp]), np.r_[yc, 1 - yp], np.arange(30, 33)
    model = TorchModule(torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Tanh(),
                                            torch.nn.Linear(3, 1)).double())
    lam = np.full(2, -4.0)
    theta_T = Engine(Xc, yc, Xv, yv, model=model, T=300, alpha=0.5, gamma=0.5).run(
        X[idx], y[idx], lam, model.init(3, 0), need="value").theta_T

    def newton(theta, Xn, lm):
        for _ in range(40):
            g = model.grad(theta, Xn, y, lm)
            if np.linalg.norm(g) < 1e-13:
                return theta
            theta = theta - np.linalg.solve(model.hessian(theta, Xn, y, lm), g)
        raise AssertionError("Newton did not converge")
    saddle = newton(theta_T, X, lam)
    ev = np.linalg.eigvalsh(model.hessian(saddle, X, y, lam))
    assert (ev < 0).sum() == 2 and np.abs(ev).min() > 1e-3
    info = {}
    hg = imp.implicit_model(model, saddle, X, y, idx, Xv, yv, lam, 1e-12, info)
    assert info["solver"] == "minres"

    def outer(Xk=None, lm=lam):
        Xn = X.copy()
        if Xk is not None:
            Xn[idx] = Xk
        return model.data_loss(newton(saddle, Xn, lm), Xv, yv)

    fd, fd_lam = _central_differences(outer, X[idx], lam)
    np.testing.assert_allclose(hg.grad_Xp, fd, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(hg.grad_lam, fd_lam, rtol=1e-5, atol=1e-8)


def _central_differences(outer, Xr, lam, h=1e-6):
    """Central differences of outer(Xk) wrt every entry of the rows Xr, and of
    outer(lm=...) wrt every entry of lam."""
    fd = np.zeros(Xr.shape)
    for i, j in np.ndindex(Xr.shape):
        E = np.zeros(Xr.shape)
        E[i, j] = h
        fd[i, j] = (outer(Xr + E) - outer(Xr - E)) / (2 * h)
    fd_lam = [(outer(lm=lam + h * e) - outer(lm=lam - h * e)) / (2 * h) for e in np.eye(len(lam))]
    return fd, fd_lam
