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
