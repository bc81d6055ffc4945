"""Batched hypergradients: B problems in one call equal B single calls bit
for bit (numba, per-problem route), or to rounding (the matrix-matrix route
of problems sharing Xc), and bad batch shapes are rejected naming the problem."""
import numpy as np
import pytest

from mithridate.hypergrad import fused, hypergrad
from mithridate.kernels.cpu import hypergrad_shared
from mithridate.testing import TOLERANCES

B, N, K, NV, D = 5, 26, 3, 17, 7
OPTS = dict(T=12, alpha=0.3, gamma=0.6)


def batch(shared_c, shared_v, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    lead = lambda shared: () if shared else (B,)
    Xc = rng.normal(size=lead(shared_c) + (N, D)).astype(dtype)
    yc = (rng.random(lead(shared_c) + (N,)) < 0.5).astype(dtype)
    Xp = rng.normal(size=(B, K, D)).astype(dtype)
    yp = (rng.random((B, K)) < 0.5).astype(dtype)
    Xv = rng.normal(size=lead(shared_v) + (NV, D)).astype(dtype)
    yv = np.ascontiguousarray(np.broadcast_to(np.arange(NV) % 2, lead(shared_v) + (NV,)), dtype)
    return Xc, yc, Xp, yp, Xv, yv


def single(D_, b):
    """Problem b of a batch, in the single-problem shapes."""
    return tuple(a if a.ndim == (1 if i % 2 else 2) else a[b] for i, a in enumerate(D_))


@pytest.mark.parametrize("mode", ["trajectory", "checkpoint", "forward"])
@pytest.mark.parametrize("shared_c,shared_v", [(True, True), (False, True), (False, False)])
def test_batch_equals_single_calls_bitwise(mode, shared_c, shared_v):
    D_ = batch(shared_c, shared_v)  # D < SHARED_MIN_FEATURES: the per-problem route
    lam = np.linspace(-2.0, 0.5, B)
    w0 = np.random.default_rng(1).normal(size=(B, D + 1)) * 0.1
    hb = hypergrad(*D_, lam=lam, w0=w0, mode=mode, **OPTS)
    assert hb.value.shape == (B,) and hb.grad_lam.shape == (B,) and hb.theta_T.shape == (B, D + 1)
    assert hb.info["B"] == B and hb.info["mode"] == mode
    for b in range(B):
        h1 = hypergrad(*single(D_, b), lam=lam[b], w0=w0[b], mode=mode, **OPTS)
        assert hb.value[b] == h1.value and hb.grad_lam[b] == h1.grad_lam
        np.testing.assert_array_equal(hb.theta_T[b], h1.theta_T)
        if mode == "forward":
            assert hb.grad_Xp is None
        else:
            np.testing.assert_array_equal(hb.grad_Xp[b], h1.grad_Xp)


@pytest.mark.parametrize("mode", ["trajectory", "forward"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss,fit_intercept,gamma", [("logistic", True, 0.8),
                                                      ("logistic", False, 0.0),
                                                      ("squared", True, 0.0),
                                                      ("squared", False, 0.8)])
def test_shared_route_matches_single_calls(monkeypatch, mode, dtype, loss, fit_intercept, gamma):
    """Odd shapes: a 2-D Xc shared by all, and a 3-D Xc with
    equal slices in runs of 3 and 2 plus one of its own (that one takes the
    per-problem route)."""
    calls = []
    monkeypatch.setattr(hypergrad_shared, "SHARED_MIN_GROUP", 2)
    monkeypatch.setattr(fused, "shared", lambda pbs, mode, info: calls.append(len(pbs))
                        or _numba_shared(pbs, mode, info))
    rng = np.random.default_rng(4)
    n, k, nv, d, b = 23, 3, 9, 37, 6
    Xc = rng.normal(size=(n, d)).astype(dtype)
    yc = (rng.random(n) < 0.5).astype(dtype)
    Xp = rng.normal(size=(b, k, d)).astype(dtype)
    yp = (rng.random((b, k)) < 0.5).astype(dtype)
    Xv = rng.normal(size=(b, nv, d)).astype(dtype)
    yv = (rng.random((b, nv)) < 0.5).astype(dtype)
    # shifts small enough that alpha stays below 2 / L (Xc + 1 diverges for the squared loss)
    X3 = np.stack([Xc, Xc, Xc, Xc + 0.1, Xc + 0.1, Xc - 0.1])
    y3 = np.stack([yc, yc, yc, 1 - yc, 1 - yc, yc])
    opts = dict(lam=np.linspace(-2.0, 0.5, b), T=11, alpha=0.2, gamma=gamma, loss=loss,
                fit_intercept=fit_intercept, mode=mode)
    rtol, atol = TOLERANCES[np.dtype(dtype).name]
    for xc, ycs in ((Xc, yc), (X3, y3)):
        hb = hypergrad(xc, ycs, Xp, yp, Xv, yv, **opts)
        for i in range(b):
            h1 = hypergrad(xc if xc.ndim == 2 else xc[i], ycs if ycs.ndim == 1 else ycs[i],
                           Xp[i], yp[i], Xv[i], yv[i], **{**opts, "lam": opts["lam"][i]})
            pairs = [(hb.value[i], h1.value), (hb.grad_lam[i], h1.grad_lam),
                     (hb.theta_T[i], h1.theta_T)]
            if mode == "forward":
                assert hb.grad_Xp is None
            else:
                pairs.append((hb.grad_Xp[i], h1.grad_Xp))
            for got, want in pairs:
                scale = np.abs(want).max()
                np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * scale)
                if dtype == np.float64:  # the task's bar: 1e-12 relative
                    assert np.abs(got - want).max() <= 1e-12 * scale
    assert calls == [b, 3, 2]


_numba_shared = fused.shared


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_matches_torch_reference(dtype):
    D_ = batch(False, True, dtype=dtype, seed=2)
    lam = np.array([-1.0, -0.5, 0.0, 0.3, -2.0])
    hb = hypergrad(*D_, lam=lam, **OPTS)
    ref = hypergrad(*D_, lam=lam, backend="torch", **OPTS)
    rtol = 1e-10 if dtype == np.float64 else 1e-3
    assert hb.grad_Xp.dtype == dtype and hb.theta_T.dtype == dtype
    np.testing.assert_allclose(hb.value, ref.value, rtol=rtol)
    np.testing.assert_allclose(hb.grad_Xp, ref.grad_Xp, rtol=rtol, atol=rtol * np.abs(ref.grad_Xp).max())
    np.testing.assert_allclose(hb.grad_lam, ref.grad_lam, rtol=rtol, atol=1e-6 if dtype == np.float32 else 0)


def test_batch_implicit_loops_over_problems():
    D_ = batch(True, True, seed=3)
    opts = dict(lam=np.array([-0.5, -0.3, 0.0, 0.2, 0.4]), T=400, alpha=0.5, gamma=0.5)
    hb = hypergrad(*D_, mode="implicit", **opts)
    h1 = hypergrad(*single(D_, 3), mode="implicit", **{**opts, "lam": 0.2})
    assert hb.grad_Xp.shape == (B, K, D) and hb.info["solver"] == "cholesky"
    np.testing.assert_allclose(hb.grad_Xp[3], h1.grad_Xp, rtol=1e-12)
    assert len(hb.info["grad_norm"]) == B


def test_bad_batches_name_the_problem():
    Xc, yc, Xp, yp, Xv, yv = batch(False, True)
    with pytest.raises(ValueError, match="Xc has 4 problems on axis 0 but Xp has 5"):
        hypergrad(Xc[:4], yc[:4], Xp, yp, Xv, yv, lam=0.0, **OPTS)
    with pytest.raises(ValueError, match="yp must be 2-D"):
        hypergrad(Xc, yc, Xp, yp[0], Xv, yv, lam=0.0, **OPTS)
    with pytest.raises(ValueError, match="Xc is batched but yc is not"):
        hypergrad(Xc, yc[0], Xp, yp, Xv, yv, lam=0.0, **OPTS)
    with pytest.raises(ValueError, match=r"lam has shape \(3,\)"):
        hypergrad(Xc, yc, Xp, yp, Xv, yv, lam=np.zeros(3), **OPTS)
    bad = Xp.copy()
    bad[2, 1, 0] = np.inf
    with pytest.raises(ValueError, match="problem 2: Xp contains nan or inf"):
        hypergrad(Xc, yc, bad, yp, Xv, yv, lam=0.0, **OPTS)
    bad = yc.copy()
    bad[4, 0] = 3.0
    with pytest.raises(ValueError, match="problem 4: yc: y must hold labels"):
        hypergrad(Xc, bad, Xp, yp, Xv, yv, lam=0.0, **OPTS)
    with pytest.raises(ValueError, match="problem 1: lam"):
        hypergrad(Xc, yc, Xp, yp, Xv, yv, lam=np.array([0, np.nan, 0, 0, 0.0]), **OPTS)
    with pytest.raises(ValueError, match=r"w0 has shape \(5, 3\)"):
        hypergrad(Xc, yc, Xp, yp, Xv, yv, lam=0.0, w0=np.zeros((B, 3)), **OPTS)
    with pytest.raises(ValueError, match="T=0"):
        hypergrad(Xc, yc, Xp, yp, Xv, yv, lam=0.0, **{**OPTS, "T": 0})
    with pytest.raises(ValueError, match="gamma"):
        hypergrad(Xc, yc, Xp, yp, Xv, yv, lam=0.0, **{**OPTS, "gamma": 1.0})
