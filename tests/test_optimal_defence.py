"""OptimalPoisoning against paper 000's Wasserstein-robust defence (issue 11):
``defence=`` "l2" is the plain attack bit for bit; "wasserstein" / "both" learn or fix
rho (and lam) on the engine's generic route, whose hypergradients on the attack's scale
match the torch unrolled reference; the attack's options (cumulative batches, restarts,
box, lockstep) keep working; bad input is refused before any work."""
import math
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("numba")

from mithridate.attacks import Defence, OptimalPoisoning, run_lockstep  # noqa: E402
from mithridate.attacks.optimal import _DefenceEngine  # noqa: E402
from mithridate.hypergrad.reference import unrolled_model  # noqa: E402

KW = dict(n_points=4, batch_size=2, T=15, T_outer=4, T_lam=3, eta=0.5, random_state=0)


def data(dtype=np.float64, loss="logistic", n=40, nv=20, d=6, seed=0):
    rng = np.random.default_rng(seed)
    X, Xv = rng.random((n, d)).astype(dtype), rng.random((nv, d)).astype(dtype)
    if loss == "logistic":
        y, yv = (X[:, 0] > .5).astype(dtype), (Xv[:, 0] > .5).astype(dtype)
    else:
        w = rng.normal(size=d)
        y, yv = (X @ w).astype(dtype), (Xv @ w).astype(dtype)
    return (X, y), (Xv, yv)


def attack(**kw):
    return OptimalPoisoning(**{**KW, **kw})


def test_l2_defence_is_the_plain_attack_bit_for_bit():
    train, val = data()
    a, b = attack().run(train, val), attack(defence="l2").run(train, val)
    for name in ("Xp", "lam_batches", "values"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("loss", ["logistic", "squared"])
def test_wasserstein_learned_rho(loss, dtype):
    train, val = data(dtype, loss)
    box = (0.0, 1.0)
    r = attack(model=loss, defence="wasserstein", box=box).run(train, val)
    assert r.Xp.dtype == dtype and r.Xp.shape == (4, 6)
    assert r.lam_batches.shape == (3,)  # log rho after 0, 1, 2 batches
    assert np.all(np.diff(r.history["lam"][:KW["T_lam"] + 1]) != 0)  # rho is learned
    lo, hi = (math.log(v) for v in Defence().rho_range)
    assert np.all((lo <= r.lam_batches) & (r.lam_batches <= hi))
    assert r.Xp.min() >= box[0] and r.Xp.max() <= box[1]
    assert r.values[-1] > r.values[0]  # the attack raises the defended model's validation loss
    # cumulative batches: batch 1's points are kept while batch 2 is optimised
    X1, _ = r.training_set(1)
    X2, _ = r.training_set(2)
    np.testing.assert_array_equal(X1[r.replaced[:2]], X2[r.replaced[:2]])


def test_both_with_lam_learned_and_rho_fixed():
    train, val = data()
    r = attack(defence=Defence("both", rho=0.01), restarts=1).run(train, val)
    lams = np.asarray(r.history["lam"])
    assert lams.shape[1] == 2
    assert np.all(lams[:, 1] == math.log(0.01))  # the fixed entry never moves (restarts too)
    assert np.ptp(lams[:, 0]) > 0
    fixed = attack(defence=Defence("both", rho="learned"), lam=-3.0).run(train, val)
    lams = np.asarray(fixed.history["lam"])
    assert np.all(lams[:, 0] == -3.0) and np.ptp(lams[:, 1]) > 0


@pytest.mark.parametrize("regularizer", ["wasserstein", "both"])
def test_the_defence_engine_against_the_unrolled_reference(regularizer):
    """The attack's engine: L2 entry on the 1/n scale (lam - log n), log rho as it is."""
    (X, y), (Xv, yv) = data(n=30, d=5, seed=2)
    atk = attack(defence=regularizer)
    victim, *_ = atk._check((X, y), (Xv, yv))
    k = 3
    Xc, yc, Xp, yp = X[k:], y[k:], Xv[:k] * 0.9, 1 - yv[:k]
    eng = _DefenceEngine(victim, Xc, yc, Xv, yv, T=10, eta=0.5, gamma=0.0, mode="trajectory",
                         backend="numba")
    lam = np.array([0.5, -3.0]) if regularizer == "both" else -3.0
    r = eng.run(Xp, yp, lam)
    engine_lam = np.array([0.5 - math.log(30), -3.0]) if regularizer == "both" else -3.0
    pb = SimpleNamespace(Xc=Xc, yc=yc, Xp=Xp, yp=yp, Xv=Xv, yv=yv, lam=engine_lam,
                         theta0=np.zeros(6), T=10, alpha=0.5, gamma=0.0)
    value, gX, glam, _ = unrolled_model(victim.model, pb)
    assert r.value == pytest.approx(value, rel=1e-10)
    np.testing.assert_allclose(r.grad_Xp, gX, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(r.grad_lam, glam if regularizer == "both" else glam[0],
                               rtol=1e-8, atol=1e-12)
    lam_only = eng.run(Xp, yp, lam, need="lam")  # the attack's lam step: the same grad_lam
    np.testing.assert_array_equal(lam_only.grad_lam, r.grad_lam)


@pytest.mark.filterwarnings("error::RuntimeWarning")  # implicit: stationary, no warning
@pytest.mark.parametrize("mode,gamma,T", [("checkpoint", 0.0, 15), ("reversible", 0.5, 15),
                                          ("implicit", 0.0, 800)])
def test_other_engine_modes(mode, gamma, T):
    """Every reverse mode runs the defended attack as trajectory does (implicit: at a
    stationary theta_T: T = 800 steps of 1.0, fewer hyperiterations)."""
    train, val = data()
    kw = dict(defence="both", gamma=gamma, T=T) if T < 100 else \
        dict(defence="both", T=T, eta=1.0, T_outer=2, T_lam=2)
    base = attack(**kw).run(train, val)
    r = attack(**kw, mode=mode).run(train, val)
    tol = 1e-4 if mode == "implicit" else 1e-6
    np.testing.assert_allclose(r.Xp, base.Xp, rtol=tol, atol=tol)
    np.testing.assert_allclose(r.lam_batches, base.lam_batches, rtol=tol, atol=tol)


def test_lockstep_equals_separate_runs():
    train, val = data()
    attacks = [attack(defence="both"), attack(defence="both", lam=-2.0)]
    together = run_lockstep(attacks, train, val)
    for a, r in zip(attacks, together):
        alone = a.run(train, val)
        np.testing.assert_allclose(r.Xp, alone.Xp, rtol=1e-7, atol=1e-10)
        np.testing.assert_allclose(r.lam_batches, alone.lam_batches, rtol=1e-7, atol=1e-10)
    with pytest.raises(ValueError, match="defence="):
        run_lockstep([attack(defence="both"), attack(defence="wasserstein")], train, val)


def test_bad_input_before_any_work():
    from sklearn.linear_model import LogisticRegression
    from mithridate.defenses import WassersteinRobustClassifier
    from mithridate.models import MLP
    train, val = data()
    bad = [
        (dict(defence=Defence(rho=0.0)), "rho=0.0.*log rho"),
        (dict(defence=Defence(rho=-1.0)), "rho=-1.0"),
        (dict(defence=Defence(rho_init=0.0)), "rho_init=0.0"),
        (dict(defence=Defence(rho_range=(0.0, 1.0))), r"rho_range\[0\]=0.0"),
        (dict(defence=Defence(rho_init=100.0)), "rho_init=100 must lie in rho_range"),
        (dict(defence=Defence(rho="fixed")), "'learned' or a fixed rho"),
        (dict(defence=Defence(norm=1)), "pass smoothing=mu > 0"),
        (dict(defence=Defence(norm=math.inf)), "pass smoothing=mu > 0"),
        (dict(defence="ridge"), "defence='ridge'"),
        (dict(defence=Defence("lasso")), "lasso"),
        (dict(defence="wasserstein", model=MLP((6, 3, 1))), "linear losses only"),
        (dict(defence="both", model=LogisticRegression()), "linear losses only"),
        (dict(defence="wasserstein", model=WassersteinRobustClassifier()), "linear losses only"),
        (dict(defence="both", backend="torch"), "generic engine"),
    ]
    for kw, match in bad:
        with pytest.raises(ValueError, match=match):
            attack(**kw).run(train, val)
    with pytest.raises(TypeError, match="defence must be None"):
        attack(defence=3).run(train, val)


@pytest.mark.parametrize("defence", [None, "both"])
def test_optimised_labels(defence):
    """optimize_labels (regression): the labels move within label_box, the attack does at
    least as well as with the flipped labels fixed, and the feature-only first hypergradient
    equals the fixed-label attack's (same start)."""
    train, val = data(loss="squared")
    kw = dict(model="squared", defence=defence)
    fixed = attack(**kw).run(train, val)
    lab = attack(**kw, optimize_labels=True).run(train, val)
    lo, hi = train[1].min(), train[1].max()
    assert lab.Xp.shape == (4, 6) and lab.yp.shape == (4,)
    assert np.all((lo <= lab.yp) & (lab.yp <= hi)) and not np.array_equal(lab.yp, fixed.yp)
    assert lab.values[-1] >= fixed.values[-1]
    np.testing.assert_allclose(lab.values[0], fixed.values[0], rtol=1e-12)  # the clean set
    X, y = lab.training_set()
    np.testing.assert_array_equal(y[lab.replaced], lab.yp)
    np.testing.assert_array_equal(X[lab.replaced], lab.Xp)
    box = attack(**kw, optimize_labels=True, label_box=(0.0, 0.1)).run(train, val)
    assert box.yp.min() >= 0.0 and box.yp.max() <= 0.1


def test_label_optimisation_bad_input():
    train, val = data()
    with pytest.raises(ValueError, match="regression only.*classifier"):
        attack(optimize_labels=True).run(train, val)
    with pytest.raises(ValueError, match="regression only"):
        attack(optimize_labels=True, defence="wasserstein").run(train, val)
    rtrain, rval = data(loss="squared")
    with pytest.raises(ValueError, match="label_box applies to optimize_labels=True"):
        attack(model="squared", label_box=(0, 1)).run(rtrain, rval)
    with pytest.raises(ValueError, match="label_box"):
        attack(model="squared", optimize_labels=True, label_box=(1, 0)).run(rtrain, rval)
    with pytest.raises(TypeError, match="optimize_labels"):
        attack(model="squared", optimize_labels="yes").run(rtrain, rval)
