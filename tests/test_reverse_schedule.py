"""kernels/cpu/hypergrad.py `reverse` walking a checkpoint schedule
(mithridate/hypergrad/schedule.py): every plan (segments of any length,
sqrt, revolve with any number of slots) gives trajectory's bits, single and
batched, and stores only what Schedule.state_bytes counts."""
import numpy as np
import pytest

from mithridate.hypergrad.schedule import plan
from mithridate.kernels.cpu import hypergrad as H


def _problem(seed, n, k, nv, d, dtype, loss):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n + k, d)).astype(dtype)
    y = (rng.random(n + k) > 0.5).astype(dtype)
    Xv = rng.normal(size=(nv, d)).astype(dtype)
    yv = np.r_[0, 1, rng.random(nv - 2) > 0.5].astype(dtype)
    code = {"logistic": 0, "squared": 1}[loss]
    return X, y, Xv, yv, code


def _run(X, y, k, Xv, yv, code, fit_b, T, sched):
    n, d = X.shape
    theta0 = np.zeros(d + 1)
    theta0[:d] = np.linspace(-0.2, 0.3, d)
    gX = np.empty((k, d))
    out = H.reverse(X, y, k, Xv, yv, code, fit_b, theta0, 0.07, 0.6, np.exp(-1.5), T,
                    *H.layout(n, d, X.itemsize), *H.layout(Xv.shape[0], d, X.itemsize), 2,
                    sched.actions, sched.theta_only, gX)
    return np.r_[out[0], out[1], out[3], out[2], gX.ravel()]  # value, dlam, diverged, theta_T, gX


def _plans(T):
    yield plan(T, T)
    yield plan(T, "sqrt")
    for c in sorted({1, 2, 3, max(1, T - 1)}):
        yield plan(T, c)
    yield plan(T, "binomial")
    for s in sorted({1, 2, 3, T}):
        yield plan(T, "binomial", max_states=s)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss,fit_b,T,shape", [
    ("logistic", True, 1, (9, 2, 5, 3)), ("squared", False, 2, (13, 1, 4, 6)),
    ("logistic", False, 7, (31, 3, 7, 11)), ("squared", True, 23, (40, 4, 9, 37))])
def test_every_schedule_gives_trajectory_bits(dtype, loss, fit_b, T, shape):
    n, k, nv, d = shape
    X, y, Xv, yv, code = _problem(T, n, k, nv, d, dtype, loss)
    want = _run(X, y, k, Xv, yv, code, fit_b, T, plan(T, T))
    assert np.isfinite(want).all() and want[2] == -1
    for sched in _plans(T):
        got = _run(X, y, k, Xv, yv, code, fit_b, T, sched)
        assert got.tobytes() == want.tobytes(), (sched.n_slots, sched.recomputed)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batched_schedule_equals_single_calls(dtype):
    B, n, k, nv, d, T = 3, 21, 2, 6, 8, 11
    X, y, Xv, yv, code = _problem(5, n, k, nv, d, dtype, "logistic")
    rng = np.random.default_rng(0)
    Xb = np.stack([X + dtype(0.1) * rng.normal(size=X.shape).astype(dtype) for _ in range(B)])
    yb = np.stack([y] * B)
    e = np.exp([-2.0, -1.0, 0.5])
    theta0 = np.zeros((B, d + 1))
    sched = plan(T, "binomial", max_states=2)
    dXp, out, theta_T = np.empty((B, k, d)), np.empty((B, 3)), np.empty((B, d + 1))
    H.reverse_batch(Xb, yb, k, Xv[None], yv[None], code, True, theta0, 0.07, 0.6, e, T,
                    *H.layout(n + k, d, X.itemsize), *H.layout(nv, d, X.itemsize),
                    sched.actions, sched.theta_only, dXp, out, theta_T)
    trajectory = plan(T, T)
    for b in range(B):
        gX = np.empty((k, d))
        value, dlam, th, bad = H.reverse(
            Xb[b], yb[b], k, Xv, yv, code, True, theta0[b], 0.07, 0.6, e[b], T,
            *H.layout(n + k, d, X.itemsize), *H.layout(nv, d, X.itemsize), 1,
            trajectory.actions, trajectory.theta_only, gX)
        assert (value, dlam, bad) == tuple(out[b]) and th.tobytes() == theta_T[b].tobytes()
        assert gX.tobytes() == dXp[b].tobytes()


def test_a_recomputation_is_not_checked_twice():
    """Divergence is checked on the one forward pass only: a run that blows
    up reports its first bad step under every schedule."""
    X, y, Xv, yv, code = _problem(1, 30, 2, 5, 4, np.float64, "squared")
    X *= 30.0  # alpha far past the stable step
    T = 12
    got = {_run(X, y, 2, Xv, yv, code, True, T, s)[2] for s in _plans(T)}
    assert len(got) == 1 and got.pop() >= 0
