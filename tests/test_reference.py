"""The torch reference (the test oracle) against float64 central differences.

Step and tolerance: central differences with step h have truncation error
h^2/6 |f'''| ~ 1e-13 and rounding error ~ eps |f| / h ~ 1e-10 for the O(1)
quantities used here (eps = 2.2e-16, h = 1e-6). rtol = 1e-6 with atol = 1e-8
sits two orders above both, and far below any real error (a wrong term is
O(1e-2) or larger). The absolute loss is differentiated only at points whose
residuals |z - y| stay >= 0.05, far from the kink compared with the
perturbations (<= 1e-5 in z).
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mithridate.reference import linear as ref  # noqa: E402
from mithridate.testing import assert_verbose_allclose  # noqa: E402

H = 1e-6
RTOL, ATOL = 1e-6, 1e-8
LOSSES = ["logistic", "squared", "absolute"]
FORMS = {"single": (1, False), "shared3": (3, False), "indep3": (3, True)}  # B, X is 3-D
INTERCEPT = {"no_b": (False, False), "b": (True, False), "b_pen": (True, True)}
N, D = 9, 4
ROWS = [0, 5, N - 1]


def make(loss, form, intercept, weights, lam, seed=0):
    rng = np.random.default_rng(seed)
    B, indep = FORMS[form]
    fit_b, pen_b = INTERCEPT[intercept]
    p = D + fit_b
    xlead = (B,) if indep else ()
    X = rng.standard_normal(xlead + (N, D))
    theta = rng.standard_normal((B, p)) * 0.7
    v = rng.standard_normal((B, p))
    X3 = X if indep else X[None]
    z = np.einsum("bnd,bd->bn", X3, theta[:, :D]) + (theta[:, D:] if fit_b else 0.0)
    if loss == "logistic":
        y = (rng.random(xlead + (N,)) < 0.5).astype(float)
    else:
        y = rng.standard_normal(xlead + (N,))
    if loss == "absolute":  # keep every residual of every problem away from the kink
        for _ in range(50):
            near = np.abs(z - y) < 0.05
            near = near if indep else near.any(axis=0)
            if not near.any():
                break
            y = y + 0.15 * near
        assert (np.abs(z - y) >= 0.05).all()
    t = lambda a: None if a is None else torch.tensor(a, dtype=torch.float64)  # noqa: E731
    return dict(theta=t(theta), v=t(v), X=t(X), y=t(y),
                sample_weight=t(rng.uniform(0.5, 1.5, xlead + (N,))) if weights else None,
                lam=t(rng.uniform(-1.0, 1.0, B)) if lam else None,
                loss=loss, fit_intercept=fit_b, penalize_intercept=pen_b)


def objective(P, theta=None, X=None, lam="same"):
    return ref.objective(P["theta"] if theta is None else theta, P["X"] if X is None else X, P["y"],
                         P["sample_weight"], P["lam"] if lam == "same" else lam, P["loss"],
                         P["fit_intercept"], P["penalize_intercept"])


def grad(P, theta=None, X=None, lam="same"):
    Q = dict(P, theta=P["theta"] if theta is None else theta, X=P["X"] if X is None else X,
             lam=P["lam"] if lam == "same" else lam)
    return ref.loss_grad(Q["theta"], Q["X"], Q["y"], Q["sample_weight"], Q["lam"], Q["loss"],
                         Q["fit_intercept"], Q["penalize_intercept"])[1]


def central(f, x, direction):
    """(f(x + h dir) - f(x - h dir)) / 2h."""
    return (f(x + H * direction) - f(x - H * direction)) / (2 * H)


CASES = [pytest.param(loss, form, icpt, w, lam, id=f"{loss}-{form}-{icpt}-{'w' if w else 'no_w'}-"
                      f"{'lam' if lam else 'no_lam'}")
         for loss in LOSSES for form in FORMS for icpt in INTERCEPT
         for w in (True, False) for lam in (True, False)]
ARGS = "loss,form,intercept,weights,lam"


@pytest.mark.parametrize(ARGS, CASES)
def test_objective_matches_formula(loss, form, intercept, weights, lam):
    """The objective itself against a plain numpy transcription of the contract."""
    P = make(loss, form, intercept, weights, lam)
    th, X, y = (P[k].numpy() for k in ("theta", "X", "y"))
    X3 = X if X.ndim == 3 else X[None]
    z = np.einsum("bnd,bd->bn", X3, th[:, :D]) + (th[:, D:] if P["fit_intercept"] else 0.0)
    per_row = {"logistic": np.logaddexp(0.0, z) - y * z, "squared": 0.5 * (z - y) ** 2,
               "absolute": np.abs(z - y)}[loss]
    if P["sample_weight"] is not None:
        per_row = per_row * P["sample_weight"].numpy()
    want = per_row.mean(axis=1)
    if P["lam"] is not None:
        pen = th if P["penalize_intercept"] else th[:, :D]
        want = want + 0.5 * np.exp(P["lam"].numpy()) * (pen ** 2).sum(axis=1)
    value, _ = ref.loss_grad(P["theta"], P["X"], P["y"], P["sample_weight"], P["lam"], loss,
                             P["fit_intercept"], P["penalize_intercept"])
    assert_verbose_allclose(value, want, 1e-13, 1e-14, name="value")
    assert_verbose_allclose(objective(P), want, 1e-13, 1e-14, name="objective")


@pytest.mark.parametrize(ARGS, CASES)
def test_gradient(loss, form, intercept, weights, lam):
    P = make(loss, form, intercept, weights, lam)
    theta = P["theta"]
    fd = torch.stack([central(lambda t: objective(P, theta=t), theta, torch.eye(theta.shape[1])[i])
                      for i in range(theta.shape[1])], dim=1)
    assert_verbose_allclose(grad(P), fd, RTOL, ATOL, name="grad")


@pytest.mark.parametrize(ARGS, CASES)
def test_hvp(loss, form, intercept, weights, lam):
    P = make(loss, form, intercept, weights, lam)
    got = ref.hvp(P["theta"], P["v"], P["X"], P["y"], P["sample_weight"], P["lam"], loss,
                  P["fit_intercept"], P["penalize_intercept"])
    fd = central(lambda t: grad(P, theta=t), P["theta"], P["v"])  # H v, one direction per problem
    assert_verbose_allclose(got, fd, RTOL, ATOL, name="hvp")


def mixed_fd(P, rows):
    """FD of g_b = grad_b . v_b wrt each X[rows[k], j] (every problem's copy) and wrt lam."""
    def g(X=None, lam="same"):
        return (grad(P, X=X, lam=lam) * P["v"]).sum(dim=1)

    X = P["X"]
    dX = torch.zeros(P["theta"].shape[0], len(rows), D, dtype=torch.float64)
    for k, r in enumerate(rows):
        for j in range(D):
            E = torch.zeros_like(X)
            E[..., r, j] = 1.0
            dX[:, k, j] = central(lambda Xp: g(X=Xp), X, E)
    if P["lam"] is None:
        dlam = torch.zeros(P["theta"].shape[0], dtype=torch.float64)
    else:
        dlam = central(lambda lm: g(lam=lm), P["lam"], torch.ones_like(P["lam"]))
    return dX, dlam


@pytest.mark.parametrize(ARGS, CASES)
def test_mixed(loss, form, intercept, weights, lam):
    P = make(loss, form, intercept, weights, lam)
    dX, dlam = ref.mixed(P["theta"], P["v"], P["X"], P["y"], P["sample_weight"], P["lam"],
                         torch.tensor(ROWS), loss, P["fit_intercept"], P["penalize_intercept"])
    fd_dX, fd_dlam = mixed_fd(P, ROWS)
    assert_verbose_allclose(dX, fd_dX, RTOL, ATOL, name="dX")
    assert_verbose_allclose(dlam, fd_dlam, RTOL, ATOL, name="dlam")
    if loss != "absolute":  # guard against a vacuous comparison
        assert fd_dX.abs().max() > 1e-3


@pytest.mark.parametrize("form", list(FORMS))
def test_mixed_repeated_rows(form):
    P = make("logistic", form, "b", True, True, seed=1)
    rows = [N - 1, 0, N - 1, 3, 0]
    dX, _ = ref.mixed(P["theta"], P["v"], P["X"], P["y"], P["sample_weight"], P["lam"],
                      torch.tensor(rows), "logistic", True, False)
    fd_dX, _ = mixed_fd(P, rows)  # the derivative wrt that row, at every occurrence
    assert_verbose_allclose(dX, fd_dX, RTOL, ATOL, name="dX")
