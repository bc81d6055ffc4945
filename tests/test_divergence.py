"""A diverging inner training on finite inputs (step too large for the
curvature, huge lam, huge features) is reported, never returned as numbers:
every hypergradient mode and backend, the optimal attack and the defences.
Also the resource checks made before any work (memory, singular Hessian)."""
import math
import warnings

import numpy as np
import pytest

import mithridate
from mithridate import _validation
from mithridate.attacks import OptimalPoisoning
from mithridate.defenses import WassersteinRobustRegressor
from mithridate.errors import (DivergenceError, DivergenceWarning, InsufficientMemoryError,
                               SingularHessianError)
from mithridate.hypergrad import divergence, hypergrad
from mithridate.hypergrad.problem import make_problem
from mithridate.testing import bilevel_data

RUNS = [("trajectory", "numba"), ("checkpoint", "numba"), ("forward", "numba"),
        ("implicit", "numba"), ("reversible", "numba"), ("trajectory", "torch"),
        ("forward", "torch"), ("implicit", "torch"), ("trajectory", "cpp"), ("forward", "cpp"),
        ("reversible", "cpp")]


def opts(mode, **kw):
    return dict(dict(T=30, lam=0.0, alpha=0.1, gamma=0.5 if mode == "reversible" else 0.0,
                     mode=mode), **kw)


@pytest.mark.parametrize("mode,backend", RUNS)
@pytest.mark.parametrize("bad", [dict(lam=8.0, alpha=1.0), dict(alpha=1e3)])
def test_every_mode_and_backend_raises_naming_step_alpha_and_fix(mode, backend, bad):
    with pytest.raises(DivergenceError) as info:
        hypergrad(*bilevel_data(), backend=backend, **opts(mode, **bad))
    err, msg = info.value, str(info.value)
    assert 0 <= err.step <= 30 and f"by step {err.step} of T=30" in msg
    assert f"alpha={bad['alpha']:g} exceeds the stable step" in msg and "Lower alpha below" in msg
    assert f"{err.details['stable_alpha']:.3g}" in msg and "curvature" in msg
    assert isinstance(err, FloatingPointError) and mithridate.DivergenceError is DivergenceError


def test_backends_flag_the_same_step():
    steps = set()
    for backend in ("numba", "torch", "cpp"):
        with pytest.raises(DivergenceError) as info:
            hypergrad(*bilevel_data(), backend=backend, **opts("trajectory", alpha=3.0))
        steps.add(info.value.step)
    assert len(steps) == 1, steps


@pytest.mark.parametrize("gamma", [0.0, 0.9, 0.99])
@pytest.mark.parametrize("mode,backend", [("trajectory", "numba"), ("forward", "cpp"),
                                          ("trajectory", "torch")])
def test_stable_steps_are_never_flagged(mode, backend, gamma):
    """alpha at 0.95 of the stable heavy-ball step: the transient growth of
    momentum must stay below the bound (no false alarm), up to gamma = 0.99."""
    data = bilevel_data(n=40, d=6)
    kw = dict(T=200, lam=-1.0, gamma=gamma, loss="squared")
    pb = make_problem(*data, kw["lam"], None, 200, 1.0, gamma, "squared", True, mode, backend)
    alpha = 0.95 * divergence.details(pb, 0)["stable_alpha"]
    r = hypergrad(*data, alpha=alpha, mode=mode, backend=backend, **kw)
    assert np.isfinite(r.value) and np.isfinite(r.grad_lam) and np.isfinite(r.theta_T).all()
    with pytest.raises(DivergenceError):  # and just above it, the same run diverges
        hypergrad(*data, alpha=1.3 * alpha / 0.95, mode=mode, backend=backend,
                  **dict(kw, T=400))


def test_warn_returns_the_diverged_values_and_the_step():
    with pytest.warns(DivergenceWarning, match="is returned as computed") as rec:
        r = hypergrad(*bilevel_data(), on_divergence="warn", **opts("trajectory", alpha=1e3))
    assert len(rec) == 1 and r.info["diverged_at"] >= 0
    assert not (np.abs(r.grad_Xp) < 1e30).all()  # the garbage the default refuses to return
    ok = hypergrad(*bilevel_data(), on_divergence="warn", **opts("trajectory"))
    assert ok.info["diverged_at"] is None
    with pytest.raises(ValueError, match="on_divergence='ignore'"):
        hypergrad(*bilevel_data(), on_divergence="ignore", **opts("trajectory"))


@pytest.mark.parametrize("mode", ["trajectory", "forward"])
def test_batch_names_the_diverged_problem(mode):
    Xc, yc, Xp, yp, Xv, yv = bilevel_data()
    B = 4
    lam = np.array([0.0, 0.0, 9.0, 0.0])  # exp(9) * alpha = 810: problem 2 diverges
    with pytest.raises(DivergenceError, match="^problem 2: .*lam=9") as info:
        hypergrad(Xc, yc, np.stack([Xp] * B), np.stack([yp] * B), Xv, yv,
                  **opts(mode, lam=lam, alpha=0.1))
    assert info.value.problem == 2


def test_feature_scale_overflow_says_standardise():
    Xc, yc, Xp, yp, Xv, yv = bilevel_data()
    with pytest.raises(DivergenceError, match="standardise X"):
        hypergrad(Xc * 1e200, yc, Xp, yp, Xv, yv, loss="squared", **opts("trajectory"))


def test_attack_stops_with_its_own_names():
    rng = np.random.default_rng(0)
    X, Xv = rng.random((60, 5)), rng.random((30, 5))
    y, yv = (rng.random(60) < 0.5) * 1.0, np.arange(30) % 2 * 1.0
    kw = dict(n_points=2, batch_size=2, T=20, T_outer=2, T_lam=1, lam=8.0, eta=5.0)
    with pytest.raises(DivergenceError) as info:
        OptimalPoisoning(**kw).run((X, y), (Xv, yv))
    msg = str(info.value)
    assert msg.startswith("optimal poisoning, ") and "eta=5 exceeds" in msg
    assert "from lam=8 and the n=60 training rows" in msg  # the user's lam, not lam - log n
    assert "alpha=" not in msg and f"lam={8 - math.log(60):g}" not in msg
    with pytest.warns(DivergenceWarning, match="is skipped"):
        res = OptimalPoisoning(on_divergence="warn", **kw).run((X, y), (Xv, yv))
    assert np.isnan(res.values).all() and np.isfinite(res.Xp).all()


def test_defence_with_an_overflowing_scale_raises():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 3))
    y = X @ np.array([1.0, 2.0, 3.0])
    with pytest.raises(DivergenceError, match="rho=1e\\+300"):
        WassersteinRobustRegressor(rho=1e300).fit(X, y)
    with pytest.raises(ValueError, match="standardise X") as info:  # blames X, not data_bounds
        WassersteinRobustRegressor().fit(X * 1e300, y)
    assert "data_bounds" not in str(info.value)


@pytest.mark.parametrize("mode", ["trajectory", "checkpoint", "reversible", "implicit"])
def test_memory_is_checked_before_any_work(monkeypatch, mode):
    monkeypatch.setattr(_validation, "available_memory", lambda: 1000)
    with pytest.raises(InsufficientMemoryError, match=f"mode='{mode}'.*GiB.*available"):
        hypergrad(*bilevel_data(), **opts(mode))
    assert issubclass(InsufficientMemoryError, MemoryError)


def test_trajectory_beyond_the_machine_is_refused():
    with pytest.raises(InsufficientMemoryError, match="mode='checkpoint' or 'reversible'"):
        hypergrad(*bilevel_data(), **opts("trajectory", T=10**12))


def test_singular_implicit_hessian_is_a_clear_error():
    Xc, yc, Xp, yp, Xv, yv = bilevel_data()
    dup = lambda A: np.ascontiguousarray(np.hstack([A, A[:, :1]]))  # a repeated column
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # not stationary: also warned
        with pytest.raises(SingularHessianError, match="raise lam") as info:
            hypergrad(dup(Xc), yc, dup(Xp), yp, dup(Xv), yv, loss="squared",
                      **opts("implicit", lam=-60.0))
    assert isinstance(info.value, np.linalg.LinAlgError) and "singular" in str(info.value)


def test_result_past_the_float32_range_is_an_error_not_inf():
    with pytest.raises(OverflowError, match="^problem 3: .* float32 range"):
        divergence.to_dtype(np.array([[1.0, -1e39]]), np.dtype(np.float32), "problem 3")
    out = divergence.to_dtype(np.array([[1.0, -2.0]]), np.dtype(np.float32), "problem 3")
    assert out.dtype == np.float32 and out.tolist() == [[1.0, -2.0]]


@pytest.mark.parametrize("backend", ["numba", "cpp"])
def test_reversible_adjoint_past_float32_is_an_error(backend):
    """A fuzz find: frac_bits=5 holds the forward steps back (no growth to
    flag) while alpha is far past the stable step, so the reverse sweep grows
    to ~1e107; in float32 that was a silent inf. Now an error either way: past
    float32's range, or (numba, whose adjoint overflows float64 first) a
    non-finite result reported as divergence."""
    rng = np.random.default_rng(0)
    X = lambda m: (rng.normal(size=(m, 20)) * 0.1).astype(np.float32)
    y = lambda m: (np.arange(m) % 2 == 0).astype(np.float32)
    args = (X(49), y(49), X(4), 1 - y(4), X(20), y(20))
    with pytest.raises((OverflowError, DivergenceError), match="(?i)lower alpha"):
        hypergrad(*args, lam=-2.0, T=54, alpha=80.0, gamma=0.3, fit_intercept=False,
                  mode="reversible", frac_bits=5, backend=backend)


@pytest.mark.parametrize("backend", ["numba", "cpp"])
@pytest.mark.parametrize("alpha", [7.0, 8.0])
def test_reversible_flags_growth_inside_the_fixed_point_range(backend, alpha):
    """A diverging run whose state stays inside the fixed-point range (frac_bits=16:
    |theta| < 2**47) is flagged at the same step as trajectory's check, not only
    once the state overflows."""
    kw = dict(T=30, lam=0.0, alpha=alpha, gamma=0.5, on_divergence="warn")
    with pytest.warns(DivergenceWarning):
        want = hypergrad(*bilevel_data(), mode="trajectory", backend=backend, **kw)
    with pytest.warns(DivergenceWarning):
        got = hypergrad(*bilevel_data(), mode="reversible", frac_bits=16, backend=backend, **kw)
    assert got.info["w0_recovered"] and np.abs(got.theta_T).max() < 2.0**47
    assert got.info["diverged_at"] == want.info["diverged_at"] is not None
    with pytest.raises(DivergenceError, match=f"by step {want.info['diverged_at']} of T=30"):
        hypergrad(*bilevel_data(), mode="reversible", frac_bits=16, backend=backend,
                  **dict(kw, on_divergence="raise"))
