"""OptimalPoisoning (paper 002, Algorithm 1), its victim trainer and lam_CLEAN."""
import math

import numpy as np
import pytest

from mithridate import DivergenceError, DivergenceWarning
from mithridate.attacks import (OptimalPoisoning, evaluate, lam_clean, run_lockstep, train_gd,
                               train_sgd)


def _data(seed=0, n=40, nv=30, d=4):
    rng = np.random.default_rng(seed)

    def draw(m):
        y = np.arange(m) % 2
        X = rng.normal(size=(m, d)) * 0.15 + 0.5 + 0.2 * (2 * y[:, None] - 1)
        return np.clip(X, 0, 1), y.astype(float)
    return draw(n), draw(nv)


SMALL = dict(n_points=4, batch_size=2, T=30, T_outer=8, T_lam=3, alpha=0.3, beta=0.5, eta=0.5,
             box=(0.0, 1.0), lam_range=(-8.0, 6.0))


def _val_loss(theta, X, y):
    z = X @ theta[:-1] + theta[-1]
    return float(np.mean(np.logaddexp(0, z) - y * z))


def test_attack_raises_validation_loss_of_inner_model():
    train, val = _data()
    res = OptimalPoisoning(lam=-8.0, random_state=0, **SMALL).run(train, val)
    # Independent of the engine: retrain with the numpy inner trainer on each set.
    n = len(train[1])
    clean = train_gd(*train, [-8.0], T=30, eta=0.5)[0]
    pois = train_gd(*res.training_set(), [-8.0], T=30, eta=0.5)[0]
    assert _val_loss(pois, *val) > _val_loss(clean, *val) + 0.05
    assert res.values[-1] > res.values[0]
    assert np.isclose(res.values[0], _val_loss(clean, *val), rtol=1e-6)
    X, y = res.training_set()
    assert X.shape == (n, 4)  # replaced, not appended
    # Clones of validation points with flipped labels moved away from their start.
    assert np.abs(res.Xp - res.Xp_init).max() > 0.1
    assert set(np.unique(res.yp)) <= {0.0, 1.0}


def test_lam_step_follows_the_hypergradient_sign():
    train, val = _data(1)
    res = OptimalPoisoning(lam="learned", **{**SMALL, "T_lam": 2, "T_outer": 2},
                           lam_init=1.0, random_state=0).run(train, val)
    h = res.history
    lam_before = np.concatenate([[1.0], h["lam"][:-1]])
    step = h["lam"] - lam_before
    assert np.all(np.isfinite(h["grad_lam"]))
    # descent: the step is -beta * grad_lam (nothing clipped in this range)
    np.testing.assert_allclose(step, -SMALL["beta"] * h["grad_lam"], rtol=1e-9, atol=1e-12)
    assert np.all(np.sign(step[h["grad_lam"] != 0]) == -np.sign(h["grad_lam"][h["grad_lam"] != 0]))
    # lam in force: after the clean-set steps, then after each batch's last step (warm start)
    assert res.lam_batches[0] == h["lam"][h["batch"] == 0][-1]
    for b in (1, 2):
        assert res.lam_batches[b] == h["lam"][h["batch"] == b][-1]
    assert h["lam"][h["batch"] == 1][0] == res.lam_batches[0] - SMALL["beta"] * h["grad_lam"][h["batch"] == 1][0]


def test_projections_hold():
    train, val = _data(2)
    box = (0.2, 0.8)
    tr = (np.clip(train[0], *box), train[1])
    va = (np.clip(val[0], *box), val[1])
    res = OptimalPoisoning(lam="learned", **{**SMALL, "alpha": 5.0, "beta": 1e4, "box": box,
                                            "lam_range": (0.5, 0.7)},
                           lam_init=0.6, random_state=0).run(tr, va)
    assert res.Xp.min() >= box[0] and res.Xp.max() <= box[1]
    assert np.isin(res.Xp, box).mean() > 0.5  # a step of 5 lands on the faces
    assert np.all((res.history["lam"] >= 0.5) & (res.history["lam"] <= 0.7))
    assert set(np.round(res.history["lam"], 12)) <= {0.5, 0.7}


def test_cumulative_batches_keep_earlier_batches_fixed():
    train, val = _data(3)
    one = OptimalPoisoning(lam=-2.0, **{**SMALL, "n_points": 2}, random_state=5).run(train, val)
    two = OptimalPoisoning(lam=-2.0, **SMALL, random_state=5).run(train, val)
    np.testing.assert_array_equal(two.Xp[:2], one.Xp)
    np.testing.assert_array_equal(two.replaced[:2], one.replaced)
    assert not np.array_equal(two.Xp[2:], two.Xp_init[2:])
    X1, _ = two.training_set(1)
    np.testing.assert_array_equal(X1[two.replaced[:2]], one.Xp)
    np.testing.assert_array_equal(X1[two.replaced[2:]], train[0][two.replaced[2:]])
    assert len(two.lam_batches) == 3 and len(two.values) == 3


def test_restarts_keep_the_best_attempt():
    train, val = _data(4)
    kw = dict(lam="learned", **{**SMALL, "n_points": 2}, random_state=1)
    base = OptimalPoisoning(restarts=0, **kw).run(train, val)
    more = OptimalPoisoning(restarts=2, **kw).run(train, val)
    att = more.history["attempt"][more.history["batch"] == 1]
    assert sorted(set(att)) == [0, 1, 2]
    assert more.values[1] >= base.values[1] - 1e-12  # attempt 0 is the base run


def test_deterministic_with_random_state():
    train, val = _data(5)
    a = OptimalPoisoning(lam="learned", **SMALL, random_state=7).run(train, val)
    b = OptimalPoisoning(lam="learned", **SMALL, random_state=7).run(train, val)
    np.testing.assert_array_equal(a.Xp, b.Xp)
    np.testing.assert_array_equal(a.lam_batches, b.lam_batches)
    c = OptimalPoisoning(lam="learned", **SMALL, random_state=8).run(train, val)
    assert not np.array_equal(a.replaced, c.replaced)


def test_append_mode_and_clone_class():
    train, val = _data(6)
    res = OptimalPoisoning(lam=-8.0, **SMALL, replace=False, clone_class=0,
                           random_state=0).run(train, val)
    X, y = res.training_set()
    assert X.shape[0] == len(train[1]) + 4 and np.all(res.yp == 1.0)


@pytest.mark.parametrize("kw, data_change, err, match", [
    (dict(box=(0.3, 0.6)), None, ValueError, "box"),
    (dict(T=0), None, ValueError, "T=0"),
    (dict(T_outer=-1), None, ValueError, "T_outer"),
    (dict(gamma=1.0), None, ValueError, "gamma"),
    (dict(lam_range=(2.0, -8.0)), None, ValueError, "lam_range"),
    (dict(n_points=3), None, ValueError, "multiple of batch_size"),
    (dict(lam="auto"), None, ValueError, "lam="),
    (dict(lam_init=9.0), None, ValueError, "lam_init"),
    (dict(mode="forward"), None, ValueError, "mode='forward'"),
    (dict(alpha=0.0), None, ValueError, "alpha"),
    (dict(n_points=40, batch_size=4), None, ValueError, "n_points=40"),
    (dict(clone_class=2), None, ValueError, "clone_class"),
    ({}, "one_class", ValueError, "one class"),
    ({}, "labels", ValueError, "labels in"),
    ({}, "nan", ValueError, "nan"),
    ({}, "list", TypeError, "pair"),
])
def test_bad_inputs(kw, data_change, err, match):
    train, val = _data()
    if data_change == "one_class":
        val = (val[0], np.zeros_like(val[1]))
    elif data_change == "labels":
        train = (train[0], train[1] * 2)
    elif data_change == "nan":
        X = train[0].copy()
        X[0, 0] = np.nan
        train = (X, train[1])
    elif data_change == "list":
        train = train[0]
    with pytest.raises(err, match=match):
        OptimalPoisoning(**{"lam": "learned", **SMALL, **kw}).run(train, val)


def test_victim_sgd_and_metrics():
    (X, y), (Xt, yt) = _data(7, n=200, nv=200)
    theta = train_sgd(X, y, -8.0, lr=0.5, epochs=30, random_state=0)
    m = evaluate(theta, Xt, yt)
    assert m["error"] < 0.1 and 0 <= m["fpr"] <= 1 and 0 <= m["fnr"] <= 1
    # error is the class-weighted mix of the two rates
    pos = yt.mean()
    assert math.isclose(m["error"], pos * m["fnr"] + (1 - pos) * m["fpr"])
    strong = train_sgd(X, y, math.log(200), lr=0.5, epochs=30, random_state=0)
    assert evaluate(strong, Xt, yt)["w_norm2"] < m["w_norm2"]
    np.testing.assert_array_equal(theta, train_sgd(X, y, -8.0, lr=0.5, epochs=30, random_state=0))
    with pytest.raises(ValueError, match="lr"):
        train_sgd(X, y, 0.0, lr=-1)
    with pytest.raises(ValueError, match="diverge"):
        train_sgd(X, y, math.log(200 * 200), lr=0.5)
    with pytest.raises(ValueError, match="theta"):
        evaluate(theta[:-1], Xt, yt)


def test_lam_clean_cross_validation():
    (X, y), _ = _data(8, n=100)
    lam, table = lam_clean(X, y, grid=[-8.0, 0.0, 8.0], T=50, eta=0.5, random_state=0)
    assert table.shape == (3, 3) and lam in (-8.0, 0.0)  # exp(8)/n crushes w: worse held-out loss
    best = np.lexsort((table[:, 2], table[:, 1]))[0]
    assert lam == table[best, 0]
    with pytest.raises(ValueError, match="grid"):
        lam_clean(X, y, grid=[])
    with pytest.raises(ValueError, match="n_splits"):
        lam_clean(X, y, n_splits=1)


def _close(a, b, dtype):
    rtol, atol = (1e-9, 1e-12) if dtype == np.float64 else (2e-4, 1e-5)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


def _cast(data, dtype):
    return tuple((X.astype(dtype), y.astype(dtype)) for X, y in data)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("d", [4, 37])  # 37 >= SHARED_MIN_FEATURES: the shared-rows route
def test_lockstep_matches_separate_runs(d, dtype):
    train, val = _cast(_data(9, n=45, nv=31, d=d), dtype)
    kw = dict(SMALL, n_points=6, batch_size=3, T_outer=5, random_state=3)
    atks = [OptimalPoisoning(lam=-8.0, **kw), OptimalPoisoning(lam=1.0, **kw),
            OptimalPoisoning(lam="learned", lam_init=0.5, **kw),
            OptimalPoisoning(lam="learned", lam_init=2.0, **{**kw, "T_lam": 1, "beta": 0.2})]
    together = run_lockstep(atks, train, val)
    for atk, got in zip(atks, together):
        want = atk.run(train, val)
        assert got.Xp.dtype == dtype and got.Xp.shape == (6, d)
        np.testing.assert_array_equal(got.replaced, want.replaced)
        np.testing.assert_array_equal(got.Xp_init, want.Xp_init)
        _close(got.Xp, want.Xp, dtype)
        _close(got.lam_batches, want.lam_batches, dtype)
        _close(got.values, want.values, dtype)
        for k in ("batch", "attempt", "iteration"):
            np.testing.assert_array_equal(got.history[k], want.history[k])
        for k in ("value", "grad_norm", "grad_lam", "lam"):
            _close(got.history[k], want.history[k], dtype)


def test_lockstep_append_mode_and_restarts():
    train, val = _data(10)
    kw = dict(SMALL, replace=False, clone_class=1, restarts=1, random_state=4)
    atks = [OptimalPoisoning(lam=-2.0, **kw), OptimalPoisoning(lam="learned", **kw)]
    for atk, got in zip(atks, run_lockstep(atks, train, val)):
        want = atk.run(train, val)
        assert got.training_set()[0].shape[0] == len(train[1]) + 4
        _close(got.Xp, want.Xp, np.float64)
        _close(got.values, want.values, np.float64)
        np.testing.assert_array_equal(got.history["attempt"], want.history["attempt"])


def test_lockstep_refuses_attacks_that_differ():
    train, val = _data()
    base = dict(SMALL, random_state=0)
    with pytest.raises(ValueError, match="attack 1 has T=12"):
        run_lockstep([OptimalPoisoning(**base), OptimalPoisoning(**{**base, "T": 12})], train, val)
    with pytest.raises(ValueError, match="replace different training rows"):
        run_lockstep([OptimalPoisoning(**base), OptimalPoisoning(**{**base, "random_state": 1})],
                     train, val)
    with pytest.raises(ValueError, match="another model or box"):
        run_lockstep([OptimalPoisoning(**base), OptimalPoisoning(**{**base, "box": (-1, 2)})],
                     train, val)
    with pytest.raises(TypeError, match="non-empty list"):
        run_lockstep([], train, val)


def test_lockstep_divergence_is_per_attack():
    """lam = 8 on 40 rows: exp(8) / 40 ~ 75, so eta = 0.5 diverges; lam = -8 does not."""
    train, val = _data(11)
    kw = dict(SMALL, random_state=2)
    calm = OptimalPoisoning(lam=-8.0, **kw)
    wild = OptimalPoisoning(lam=8.0, on_divergence="warn", **kw)
    with pytest.warns(DivergenceWarning, match="eta=0.5"):
        got = run_lockstep([calm, wild], train, val)
    want = calm.run(train, val)
    _close(got[0].Xp, want.Xp, np.float64)
    _close(got[0].values, want.values, np.float64)
    assert np.isnan(got[1].values).all() and np.isnan(got[1].history["value"]).all()
    np.testing.assert_array_equal(got[1].Xp, got[1].Xp_init)  # every update skipped
    with pytest.raises(DivergenceError, match="the value on the clean training set: .* lam=8 and the n=40"):
        run_lockstep([calm, OptimalPoisoning(lam=8.0, **kw)], train, val)


# ---- the network victim (issue 10): mithridate.models.MLP, one lam per layer ----------

NET = dict(n_points=4, batch_size=2, T=25, T_outer=4, T_lam=2, alpha=0.5, beta=0.5, eta=0.5,
           box=(0.0, 1.0), lam_range=(-8.0, 3.0))


def _mlp(d=4, seeds=None):
    """A tiny MLP; with ``seeds`` a list, every model.init records its random_state."""
    from mithridate.models import MLP

    class Recording(MLP):
        def init(self, d, random_state=None):
            seeds.append(random_state)
            return super().init(d, random_state=random_state)
    return (MLP if seeds is None else Recording)(layers=(d, 6, 3, 1))


def _net_val_loss(model, X, y, lam, Xv, yv, inits):
    """Mean validation loss of the attack's inner training (full-batch GD, lam - log n per
    layer) over several random initial weights: numpy's trainer, not the engine."""
    from mithridate.models.training import gradient_descent
    lam = np.asarray(lam, float) - math.log(len(y))
    out = []
    for s in inits:
        th = gradient_descent(model, X, y, lam, T=NET["T"], alpha=NET["eta"],
                              theta0=model.init(X.shape[1], random_state=s))
        out.append(model.data_loss(th, Xv, yv))
    return float(np.mean(out))


def test_network_attack_raises_the_validation_loss():
    train, val = _data(10)
    model = _mlp()
    res = OptimalPoisoning(model=model, lam=-8.0, random_state=0, **NET).run(train, val)
    assert res.lam_batches.shape == (3, 3) and (res.lam_batches == -8.0).all()
    inits = range(100, 106)  # not the attack's: the points generalise across initialisations
    clean = _net_val_loss(model, *train, [-8.0] * 3, *val, inits)
    pois = _net_val_loss(model, *res.training_set(), [-8.0] * 3, *val, inits)
    assert pois > clean + 0.05
    assert res.values[-1] > res.values[0]
    assert np.abs(res.Xp - res.Xp_init).max() > 0.1
    assert res.Xp.min() >= 0 and res.Xp.max() <= 1


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_network_attack_on_the_torch_route_matches_the_generic_engine(backend):
    """backend='torch'/'triton' runs the network's hypergradients on mithridate.hypergrad.
    mlp_torch (float64 here: the two routes' rounding must not move the ascent's steps)."""
    if backend == "triton":
        pytest.importorskip("triton")
    train, val = _data(16)
    kw = dict(model=_mlp(), lam="learned", random_state=0, **NET)
    ref = OptimalPoisoning(**kw).run(train, val)
    res = OptimalPoisoning(backend=backend, **kw).run(train, val)
    np.testing.assert_allclose(res.Xp, ref.Xp, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(res.lam_batches, ref.lam_batches, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(res.values, ref.values, rtol=1e-9)


def test_network_per_layer_lam_is_learned_and_projected():
    train, val = _data(11)
    lo, hi = 1.0, 2.0
    res = OptimalPoisoning(model=_mlp(), lam="learned", lam_init=[1.5, 1.6, 1.7], random_state=0,
                           **{**NET, "beta": 50.0, "lam_range": (lo, hi)}).run(train, val)
    h = res.history
    assert h["lam"].shape == (len(h["value"]), 3) and h["grad_lam"].shape == h["lam"].shape
    assert np.isfinite(h["grad_lam"]).all() and (h["lam"] >= lo).all() and (h["lam"] <= hi).all()
    before = np.vstack([[1.5, 1.6, 1.7], h["lam"][:-1]])
    # projected descent per layer: each layer's step is -beta * its own gradient, clipped
    np.testing.assert_allclose(h["lam"], np.clip(before - 50.0 * h["grad_lam"], lo, hi),
                               rtol=1e-12, atol=1e-12)
    assert (np.abs(h["lam"][-1] - [1.5, 1.6, 1.7]) > 1e-3).all()  # every layer's lam moved
    assert len(set(np.round(h["grad_lam"][0], 12))) == 3  # one gradient per layer
    assert isinstance(res.lam, np.ndarray) and res.lam.shape == (3,)


def test_network_fixed_lam_vector_stays_put():
    train, val = _data(12)
    res = OptimalPoisoning(model=_mlp(), lam=[-8.0, 0.0, 1.0], random_state=0,
                           **NET).run(train, val)
    assert (res.lam_batches == [-8.0, 0.0, 1.0]).all()
    assert np.isnan(res.history["grad_lam"]).all()


def test_network_new_initial_weights_for_every_update_seeded():
    train, val = _data(13)
    runs = []
    for state in (3, 3, 4):
        seeds = []
        res = OptimalPoisoning(model=_mlp(seeds=seeds), lam="learned", random_state=state,
                               **NET).run(train, val)
        runs.append((seeds, res))
    (s1, a), (s2, b), (s3, c) = runs
    # one init per hyperiteration: T_lam clean-set steps + the clean value, then per batch
    # T_outer updates (each: the points' step and the lam step at one init) + its value
    assert len(s1) == NET["T_lam"] + 1 + 2 * (NET["T_outer"] + 1)
    assert len(set(s1)) == len(s1)  # a fresh seed every time
    assert s1 == s2 and s1 != s3  # drawn from the attack's random_state
    np.testing.assert_array_equal(a.Xp, b.Xp)
    np.testing.assert_array_equal(a.lam_batches, b.lam_batches)
    assert not np.array_equal(a.Xp, c.Xp)


@pytest.mark.parametrize("kw, match", [
    (dict(lam=[0.0, 1.0]), r"lam has shape \(2,\).*3 lam"),
    (dict(lam="learned", lam_init=[0.0, 1.0, 2.0, 3.0]), r"lam_init has shape \(4,\)"),
    (dict(lam="learned", lam_init=[0.0, 1.0, 9.0]), r"lam_init=.*lam_range"),
    (dict(lam=[0.0, np.nan, 1.0]), "finite"),
    (dict(backend="cpp"), r"generic engine.*or its torch route"),
    (dict(mode="reversible", gamma=0.0), "gamma > 0"),
])
def test_network_bad_input_is_refused_before_any_work(kw, match):
    train, val = _data(14)
    seeds = []
    with pytest.raises(ValueError, match=match):
        OptimalPoisoning(model=_mlp(seeds=seeds), **{**NET, **kw}).run(train, val)
    assert seeds == []  # no inner training started


def test_network_width_must_match_the_data():
    train, val = _data(15)
    seeds = []
    with pytest.raises(ValueError, match=r"takes 5 inputs.*4 features.*layers=\(4, 6, 3, 1\)"):
        OptimalPoisoning(model=_mlp(d=5, seeds=seeds), **NET).run(train, val)
    assert seeds == []
    with pytest.raises(ValueError, match="takes 5 inputs"):
        train_sgd(*train, -8.0, model=_mlp(d=5), lr=0.1, epochs=1)


def test_network_victim_training_and_metrics():
    train, val = _data(16)
    model = _mlp()
    kw = dict(model=model, lr=0.1, batch_size=8, epochs=30)
    a = train_sgd(*train, [-8.0, -8.0, -8.0], random_state=1, **kw)
    np.testing.assert_array_equal(a, train_sgd(*train, -8.0, random_state=1, **kw))
    assert not np.array_equal(a, train_sgd(*train, -8.0, random_state=2, **kw))
    m = evaluate(a, *val, model=model)
    layout = model.layout(4)
    W = [a[layout.slice(g)] for g in layout.penalised]
    np.testing.assert_allclose(m["layer_norms"], [w @ w / w.size for w in W])
    assert np.isclose(m["w_norm2"], sum(w @ w for w in W))
    pred = model.logits(a, val[0]) > 0
    assert m["error"] == np.mean(pred != (val[1] > 0.5)) < 0.3  # it learned the task
    with pytest.raises(ValueError, match=r"lam has shape \(2,\)"):
        train_sgd(*train, [0.0, 1.0], **kw)
