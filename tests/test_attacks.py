"""Simple attacks of paper 000: label flipping and data modification."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mithridate.attacks import (data_modification, data_modification_batch, label_flip,
                                label_flip_batch, label_set, label_set_batch, n_poisoned)


def data(n=50, d=3, labels="reg", seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = {"reg": rng.normal(size=n), "01": rng.integers(0, 2, n).astype(float),
         "pm1": rng.choice([-1, 1], n)}[labels]
    return X, y


ATTACKS = [  # (single, batch, kwargs, labels of y)
    (label_set, label_set_batch, {"value": 10.0}, "reg"),
    (label_flip, label_flip_batch, {}, "01"),
    (label_flip, label_flip_batch, {}, "pm1"),
    (data_modification, data_modification_batch, {"variance": 4.0}, "reg"),
]
IDS = ["set", "flip01", "flippm1", "noise"]


def test_rounding():
    assert [n_poisoned(10, b) for b in (0, 0.04, 0.05, 0.25, 0.35, 1)] == [0, 0, 1, 3, 4, 10]


@pytest.mark.parametrize("single,batch,kw,labels", ATTACKS, ids=IDS)
def test_single(single, batch, kw, labels):
    X, y = data(labels=labels)
    X0, y0 = X.copy(), y.copy()
    out = single(X, y, 0.3, seed=1, **kw)
    assert np.array_equal(X, X0) and np.array_equal(y, y0)  # inputs untouched
    assert out.mask.dtype == bool and out.mask.sum() == 15
    assert out.X.shape == X.shape and out.y.shape == y.shape
    assert out.X.dtype == X.dtype and out.y.dtype == y.dtype
    assert not np.shares_memory(out.X, X) and not np.shares_memory(out.y, y)
    keep = ~out.mask
    assert np.array_equal(out.X[keep], X[keep]) and np.array_equal(out.y[keep], y[keep])
    if single is data_modification:
        assert np.array_equal(out.y, y) and not np.isin(out.X[out.mask], X).any()
    else:
        assert np.array_equal(out.X, X)
    again = single(X, y, 0.3, seed=1, **kw)
    other = single(X, y, 0.3, seed=2, **kw)
    assert all(np.array_equal(a, b) for a, b in zip(out, again))
    assert not np.array_equal(out.mask, other.mask)


def test_values_and_conventions():
    X, y = data()
    out = label_set(X, y, 0.5, 10, seed=0)
    assert (out.y[out.mask] == 10).all()
    X, y = data(labels="01")
    out = label_flip(X, y, 0.5, seed=0)
    assert np.array_equal(out.y[out.mask], 1 - y[out.mask])
    X, y = data(labels="pm1")
    out = label_flip(X, y, 0.5, seed=0)
    assert np.array_equal(out.y[out.mask], -y[out.mask]) and out.y.dtype == y.dtype
    ones = np.ones(10)
    assert (label_flip(X[:10], ones, 1.0, labels="01").y == 0).all()
    assert (label_flip(X[:10], ones, 1.0, labels="pm1").y == -1).all()
    assert (label_flip(X[:10], np.zeros(10, np.uint8), 1.0).y == 1).all()  # all-0 is {0, 1}
    assert (label_flip(X[:10], -ones, 1.0).y == 1).all()                    # all -1 is {-1, 1}


def test_noise_moments():
    X, y = data(n=4000, d=5)
    for variance in (4.0, 100.0):
        noise = data_modification(X, y, 0.5, variance=variance, seed=3)
        z = noise.X[noise.mask]  # 10,000 draws: sd of the mean 0.01*sqrt(variance), of the variance ~1.4%
        assert abs(z.mean()) < 0.1 * np.sqrt(variance)
        assert abs(z.var() / variance - 1) < 0.1
    assert (data_modification(X, y, 1.0, variance=0.0).X == 0).all()
    f64 = data_modification(X, y, 0.5, variance=4.0, seed=3)
    f32 = data_modification(X.astype(np.float32), y, 0.5, variance=4.0, seed=3)
    assert f32.X.dtype == np.float32 and np.array_equal(f32.mask, f64.mask)
    assert np.array_equal(f32.X[f32.mask], f64.X[f64.mask].astype(np.float32))


@pytest.mark.parametrize("single,batch,kw,labels", ATTACKS, ids=IDS)
def test_batch_equals_singles_and_nests(single, batch, kw, labels):
    X, y = data(n=40, labels=labels)
    betas, seeds = [0.0, 0.1, 0.25, 0.5, 1.0], [0, 7, 123]
    out = batch(X, y, betas, seeds, **kw)
    assert out.X.shape == (5, 3, 40, 3) and out.y.shape == (5, 3, 40) and out.mask.shape == (5, 3, 40)
    for i, b in enumerate(betas):
        for j, s in enumerate(seeds):
            one = single(X, y, b, seed=s, **kw)
            assert all(np.array_equal(a, c[i, j]) for a, c in zip(one, out))
    assert np.array_equal(out.mask.sum(-1), np.array([[0, 4, 10, 20, 40]] * 3).T)
    assert (out.mask[:-1] <= out.mask[1:]).all()  # nested: a row poisoned at beta stays poisoned
    both = out.mask[1] & out.mask[3]
    for name in ("X", "y"):                      # and keeps the same poisoned value
        a, c = getattr(out, name)[1], getattr(out, name)[3]
        assert np.array_equal(a[both], c[both])
    unchanged = out.X if batch is not data_modification_batch else out.y
    assert not unchanged.flags.writeable  # a broadcast view of the input, not a copy


def test_batch_memory_limit():
    X, y = data(n=1000, d=10)
    with pytest.raises(ValueError, match="max_bytes.*single-config"):
        data_modification_batch(X, y, [0.1] * 10, range(10), variance=1.0, max_bytes=10**6)
    label_set_batch(X, y, [0.1] * 10, range(10), 1.0, max_bytes=10**6)  # y only: 900 kB


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), d=st.integers(1, 4), seed=st.integers(0, 2**32),
       betas=st.lists(st.floats(0, 1), min_size=1, max_size=4))
def test_property_counts_and_nesting(n, d, seed, betas):
    X, y = data(n, d)
    out = data_modification_batch(X, y, betas, [seed], variance=2.0)
    counts = out.mask[:, 0].sum(-1)
    assert list(counts) == [n_poisoned(n, b) for b in betas]
    order = np.argsort(betas, kind="stable")
    m = out.mask[order, 0]
    assert (m[:-1] <= m[1:]).all()
    assert np.array_equal(out.X[~out.mask], np.broadcast_to(X, out.X.shape)[~out.mask])


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 60), beta=st.floats(0, 1), seed=st.integers(0, 2**32))
def test_property_flip_is_involution_on_poisoned_rows(n, beta, seed):
    X, y = data(n, labels="01")
    once = label_flip(X, y, beta, seed=seed, labels="01")  # small n may draw all-1 labels
    twice = label_flip(X, once.y, beta, seed=seed, labels="01")
    assert np.array_equal(twice.y, y) and (once.y != y).sum() == n_poisoned(n, beta)


X_, Y_ = data()
BAD = [
    (dict(beta=1.5), ValueError, "beta must lie in"),
    (dict(beta=-0.1), ValueError, "beta must lie in"),
    (dict(beta=float("nan")), ValueError, "beta must lie in"),
    (dict(beta="0.1"), TypeError, "beta must hold real"),
    (dict(seed=-1), ValueError, "seed must hold non-negative"),
    (dict(seed=1.5), TypeError, "seed must hold"),
    (dict(X=X_[0]), ValueError, "X must be 2-D.*reshape"),
    (dict(X=X_.tolist()), TypeError, "X must be a numpy array"),
    (dict(X=X_.astype(str)), TypeError, "X has dtype"),
    (dict(y=Y_[:-1]), ValueError, "y has 49 entries but X has 50"),
    (dict(y=Y_[:, None]), ValueError, "y must be 1-D"),
    (dict(X=np.where(np.eye(50, 3) > 0, np.nan, X_)), ValueError, "X contains nan"),
    (dict(y=np.r_[Y_[:-1], np.inf]), ValueError, "y contains nan or inf"),
    (dict(X=np.zeros((0, 3)), y=np.zeros(0)), ValueError, "X is empty"),
    (dict(X=np.zeros((5, 0)), y=np.zeros(5)), ValueError, "X is empty"),
]


@pytest.mark.parametrize("kw,exc,msg", BAD)
@pytest.mark.parametrize("attack", [
    lambda X=X_, y=Y_, beta=0.1, seed=0: label_set(X, y, beta, 10, seed=seed),
    lambda X=X_, y=Y_, beta=0.1, seed=0: data_modification(X, y, beta, variance=4, seed=seed),
    lambda X=X_, y=Y_, beta=0.1, seed=0: label_set_batch(X, y, [0.0, beta], [0, seed], 10),
], ids=["single", "noise", "batch"])
def test_bad_inputs(attack, kw, exc, msg):
    if "beta" in kw or "seed" in kw:
        msg = msg.replace("beta ", "beta[s]? ").replace("seed ", "seeds? ")
    with pytest.raises(exc, match=msg):
        attack(**kw)


def test_bad_attack_parameters():
    X, y = data(labels="01")
    for variance in (-1.0, float("inf"), "4"):
        with pytest.raises(ValueError, match="variance must be a finite number >= 0"):
            data_modification(X, y, 0.1, variance=variance)
    with pytest.raises(TypeError, match="X has dtype int64.*needs floats"):
        data_modification(X.astype(np.int64), y, 0.1, variance=1.0)
    with pytest.raises(ValueError, match="value must be a finite"):
        label_set(X, y, 0.1, float("nan"))
    with pytest.raises(TypeError, match="does not fit y's dtype"):
        label_set(X, y.astype(np.int64), 0.1, 0.5)
    with pytest.raises(TypeError, match="does not fit y's dtype"):
        label_set(X, y.astype(np.uint8), 0.1, 300)
    with pytest.raises(ValueError, match="binary labels"):
        label_flip(X, data()[1], 0.1)
    with pytest.raises(ValueError, match="only the label 1.*labels='01'"):
        label_flip(X, np.ones(50), 0.1)
    with pytest.raises(ValueError, match="labels='pm1' needs y in"):
        label_flip(X, y, 0.1, labels="pm1")
    with pytest.raises(ValueError, match="labels must be"):
        label_flip(X, y, 0.1, labels="binary")
    with pytest.raises(ValueError, match="betas is empty"):
        label_flip_batch(X, y, [], [0])
    with pytest.raises(ValueError, match="seeds is empty"):
        label_flip_batch(X, y, [0.1], [])
