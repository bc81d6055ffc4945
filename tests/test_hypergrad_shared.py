"""The shared-clean-rows loops (kernels/cpu/hypergrad_shared.py) against one
single-problem kernel call per problem (kernels/cpu/hypergrad.py on
[Xc; Xp[b]]): equal to rounding (float64 1e-12 relative, float32 its
tolerance), bitwise the same for any thread count, and only the trailing kg
poisoning rows' gradients when dXp has kg < k rows."""
import numpy as np
import pytest

from mithridate.hypergrad.schedule import plan
from mithridate.kernels.cpu import hypergrad as single
from mithridate.kernels.cpu.hypergrad_shared import shared_parts
from mithridate.kernels.cpu.linear import LOSS_CODES
from mithridate.testing import TOLERANCES

T, ALPHA = 13, 0.2


def problems(G, nc, k, nv, d, dtype, shared_v, seed):
    rng = np.random.default_rng(seed)
    Xc = (rng.normal(size=(nc, d)) / np.sqrt(d)).astype(dtype)
    yc = (rng.random(nc) < 0.5).astype(dtype)
    Xp = (rng.normal(size=(G, k, d)) / np.sqrt(d)).astype(dtype)
    yp = (rng.random((G, k)) < 0.5).astype(dtype)
    lead = 1 if shared_v else G
    Xv = (rng.normal(size=(lead, nv, d)) / np.sqrt(d)).astype(dtype)
    yv = np.ascontiguousarray((np.arange(lead * nv).reshape(lead, nv) % 2).astype(dtype))
    theta0 = rng.normal(size=(G, d + 1)) * 0.1
    e = np.exp(np.linspace(-2.0, 0.5, G))
    return Xc, yc, Xp, yp, Xv, yv, theta0, e


def run_shared(reverse, D, code, fit_b, gamma, kg, n_threads):
    Xc, yc, Xp, yp, Xv, yv, theta0, e = D
    G, k, d = Xp.shape
    if not fit_b:
        theta0 = theta0.copy()
        theta0[:, d] = 0.0
    dXp, out, theta_T = np.empty((G, kg, d)), np.empty((G, 3)), np.empty((G, d + 1))
    shared_parts(reverse, Xc, yc, Xp, yp, Xv, yv, code, fit_b, theta0, ALPHA, gamma, e, T,
                 *single.layout(Xv.shape[1], d, Xc.itemsize), n_threads, dXp, out, theta_T)
    return out, theta_T, dXp


def run_single(reverse, D, b, code, fit_b, gamma):
    """(value, dlam, theta_T, dXp or None, diverged step) of problem b alone."""
    Xc, yc, Xp, yp, Xv, yv, theta0, e = D
    k, d = Xp.shape[1:]
    X, y = np.concatenate([Xc, Xp[b]]), np.concatenate([yc, yp[b]])
    p = 0 if Xv.shape[0] == 1 else b
    th0 = theta0[b].copy()
    if not fit_b:
        th0[d] = 0.0
    args = (code, fit_b, th0, ALPHA, gamma, e[b], T, *single.layout(X.shape[0], d, X.itemsize),
            *single.layout(Xv.shape[1], d, X.itemsize), 1)
    if reverse:
        dXp = np.empty((k, d))
        traj = plan(T, T)  # trajectory: every theta stored
        value, dlam, theta, bad = single.reverse(X, y, k, Xv[p], yv[p], *args, traj.actions,
                                                 traj.theta_only, dXp)
        return value, dlam, theta, dXp, bad
    value, dlam, theta, bad = single.forward(X, y, Xv[p], yv[p], *args)
    return value, dlam, theta, None, bad


def close(got, want, dtype):
    rtol, atol = TOLERANCES[np.dtype(dtype).name]
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * scale)
    if dtype == np.float64:
        assert np.abs(got - want).max() <= 1e-12 * scale


@pytest.mark.parametrize("reverse", [True, False], ids=["trajectory", "forward"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss,fit_b,gamma", [("logistic", True, 0.8), ("logistic", False, 0.0),
                                              ("squared", True, 0.0), ("squared", False, 0.8)])
@pytest.mark.parametrize("G,kg", [(1, 3), (6, 3), (9, 2)])
def test_shared_matches_single_calls(reverse, dtype, loss, fit_b, gamma, G, kg):
    """Odd shapes: G off the four-problem blocks, nc and d off the four-row
    blocks, k = 3 poisoning rows of which the trailing kg need gradients."""
    D = problems(G, nc=45, k=3, nv=11, d=37, dtype=dtype, shared_v=G != 6, seed=G)
    code = LOSS_CODES[loss]
    out, theta_T, dXp = run_shared(reverse, D, code, fit_b, gamma, kg, 1)
    for b in range(G):
        value, dlam, theta, gX, bad = run_single(reverse, D, b, code, fit_b, gamma)
        close(out[b, 0], value, dtype)
        close(out[b, 1], dlam, dtype)
        close(theta_T[b], theta, dtype)
        assert out[b, 2] == bad == -1
        if reverse:
            close(dXp[b], gX[-kg:], dtype)


@pytest.mark.parametrize("reverse", [True, False], ids=["trajectory", "forward"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_thread_count_does_not_change_the_bits(reverse, dtype):
    D = problems(5, nc=4099, k=4, nv=7, d=129, dtype=dtype, shared_v=True, seed=7)
    assert single.layout(4099, 129, np.dtype(dtype).itemsize)[0].shape[0] > 4  # 4 groups
    n_out = 3 if reverse else 2  # forward mode writes no dXp
    one = run_shared(reverse, D, 0, True, 0.5, 4, 1)[:n_out]
    for n_threads in (2, 3):
        for a, b in zip(one, run_shared(reverse, D, 0, True, 0.5, 4, n_threads)[:n_out]):
            np.testing.assert_array_equal(a, b)


def test_divergence_is_recorded_per_problem():
    """A step far past 2 / L diverges: each problem records its first bad
    step as its single call does."""
    D = problems(3, nc=23, k=2, nv=5, d=33, dtype=np.float64, shared_v=True, seed=3)
    Xc, yc, Xp, yp, Xv, yv, theta0, e = D
    D = (Xc * 30, yc, Xp * 30, yp, Xv, yv, theta0, e)
    out = run_shared(True, D, LOSS_CODES["squared"], True, 0.0, 2, 1)[0]
    for b in range(3):
        assert out[b, 2] == run_single(True, D, b, LOSS_CODES["squared"], True, 0.0)[4] >= 0
