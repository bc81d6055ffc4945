"""Hypergradients of the network (mithridate.models.MLP) on the generic engine,
every mode, against the torch oracle (mithridate.reference.mlp.unrolled:
autograd through the unrolled loop) and finite differences; reversible's
exactness; bad input."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mithridate.hypergrad import generic, hypergrad, schedule
from mithridate.hypergrad.implicit import CHOLESKY_MAX
from mithridate.models import MLP

torch = pytest.importorskip("torch")
from mithridate.reference import mlp as ref  # noqa: E402  (needs torch)

NC, K, NV = 10, 3, 7
T, ALPHA, GAMMA = 8, 0.5, 0.6
TOL = {np.float64: 1e-9, np.float32: 3e-4}  # relative to the largest entry
NETS = ((4, 1), (5, 3, 1), (3, 7, 2, 1))   # depth 1..3, odd widths
MODES = {"trajectory": {}, "checkpoint": {},  # checkpoint: "sqrt" by default
         "binomial": dict(schedule=lambda: schedule.plan(T, "binomial", max_states=2)),
         "reversible": {}, "forward": {}}


def data(d, dtype, seed=0):
    rng = np.random.default_rng(seed)
    X = lambda n: rng.standard_normal((n, d)).astype(dtype)  # noqa: E731
    lab = lambda n: (rng.random(n) < 0.5).astype(dtype)  # noqa: E731
    return dict(Xc=X(NC), yc=lab(NC), Xp=X(K), yp=lab(K), Xv=X(NV), yv=np.r_[0, 1, lab(NV - 2)])


class Problem:
    """What generic.run takes: the arrays, lam, theta0 and the loop settings."""

    def __init__(self, arrays, lam, theta0, T=T, alpha=ALPHA, gamma=GAMMA):
        self.__dict__.update(arrays, lam=lam, theta0=theta0, T=T, alpha=alpha, gamma=gamma)

    def rows(self):
        return np.concatenate([self.Xc, self.Xp]), np.concatenate([self.yc, self.yp])


def oracle(model, pb):
    """(value, dA/dXp, dA/dlam) by autograd through the unrolled loop, float64."""
    t = lambda a: torch.from_numpy(np.asarray(a, np.float64))  # noqa: E731
    X, y = pb.rows()
    value, gX, glam = ref.unrolled(model, t(X), t(y), t(pb.Xv), t(pb.yv), pb.lam,
                                   np.asarray(pb.theta0, np.float64), pb.T, pb.alpha, pb.gamma,
                                   np.arange(NC, NC + K))
    return float(value), gX.numpy(), glam.numpy()


def close(a, b, dtype, what):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(np.abs(b).max(initial=0.0), 1e-3)
    assert np.abs(a - b).max(initial=0.0) <= TOL[dtype] * scale, (what, a, b)


def setup(layers, dtype, seed=0, **kw):
    model = MLP(layers=layers, **kw)
    theta0 = model.init(layers[0], random_state=seed).astype(dtype)
    lam = np.linspace(-2.0, -0.5, model.n_layers)
    return model, Problem(data(layers[0], dtype, seed), lam, theta0)


def run(model, pb, mode):
    opts = {k: f() for k, f in MODES.get(mode, {}).items()}
    return generic.run(model, [pb], "checkpoint" if mode == "binomial" else mode, **opts)[0]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("layers", NETS)
def test_every_mode_against_the_oracle(layers, dtype):
    model, pb = setup(layers, dtype)
    value, gX, glam = oracle(model, pb)
    for mode in MODES:
        r = run(model, pb, mode)
        close(r.value, value, dtype, (mode, "value"))
        close(r.grad_lam, glam if model.n_layers > 1 else glam[0], dtype, (mode, "lam"))
        assert r.theta_T.dtype == dtype
        if mode != "forward":
            assert r.grad_Xp.dtype == dtype and r.grad_Xp.shape == (K, layers[0])
            close(r.grad_Xp, gX, dtype, (mode, "Xp"))
    v = generic.run(model, [pb], "value")[0]
    assert v.value == run(model, pb, "trajectory").value and v.grad_lam is None


def test_finite_differences():
    """d value / d lam_l for every layer and d value / d Xp[i, j] by central differences."""
    model, pb = setup((4, 5, 3, 1), np.float64, seed=3)
    r = run(model, pb, "trajectory")
    value = lambda q: generic.run(model, [q], "value")[0].value  # noqa: E731
    h = 1e-5
    for j in range(3):
        e = np.eye(3)[j] * h
        up, down = Problem(data(4, np.float64, 3), pb.lam + e, pb.theta0), \
            Problem(data(4, np.float64, 3), pb.lam - e, pb.theta0)
        fd = (value(up) - value(down)) / (2 * h)
        assert abs(fd - r.grad_lam[j]) <= 1e-7 * max(1, abs(fd))
    for i, j in [(0, 0), (2, 3), (1, 2)]:
        arrays = [data(4, np.float64, 3) for _ in range(2)]
        arrays[0]["Xp"][i, j] += h
        arrays[1]["Xp"][i, j] -= h
        fd = (value(Problem(arrays[0], pb.lam, pb.theta0))
              - value(Problem(arrays[1], pb.lam, pb.theta0))) / (2 * h)
        assert abs(fd - r.grad_Xp[i, j]) <= 1e-7 * max(1, abs(fd))


@settings(max_examples=12, deadline=None)
@given(widths=st.lists(st.integers(1, 5), min_size=0, max_size=2), d=st.integers(1, 5),
       k=st.integers(0, 3), gamma=st.sampled_from([0.3, 0.5, 0.9]),
       mode=st.sampled_from(sorted(MODES)), seed=st.integers(0, 50))
def test_any_network_any_mode(widths, d, k, gamma, mode, seed):
    model = MLP(layers=(d, *widths, 1))
    arrays = data(d, np.float64, seed)
    arrays["Xp"], arrays["yp"] = arrays["Xp"][:k], arrays["yp"][:k]
    pb = Problem(arrays, np.full(model.n_layers, -1.0), model.init(d, seed), gamma=gamma)
    t = lambda a: torch.from_numpy(np.asarray(a, np.float64))  # noqa: E731
    X, y = pb.rows()
    value, gX, glam = ref.unrolled(model, t(X), t(y), t(pb.Xv), t(pb.yv), pb.lam, pb.theta0, T,
                                   ALPHA, gamma, np.arange(NC, NC + k))
    r = run(model, pb, mode)
    close(r.value, float(value), np.float64, "value")
    close(r.grad_lam, glam.numpy() if model.n_layers > 1 else glam.numpy()[0], np.float64, "lam")
    if mode != "forward":
        close(r.grad_Xp, gX.numpy(), np.float64, "Xp")


def test_checkpoint_is_trajectory_bit_for_bit():
    """Recomputed passes (and the kept ones) give the same bits as storing every theta."""
    model, pb = setup((5, 4, 3, 1), np.float32, seed=1)
    a = run(model, pb, "trajectory")
    for sched in (schedule.plan(T, 1), schedule.plan(T, 3),
                  schedule.plan(T, "binomial", max_states=2), schedule.plan(T, "binomial")):
        b = generic.run(model, [pb], "checkpoint", schedule=sched)[0]
        assert b.value == a.value and (b.grad_lam == a.grad_lam).all()
        assert (b.grad_Xp == a.grad_Xp).all() and (b.theta_T == a.theta_T).all()
    assert a.info["state_bytes"] == generic.state_bytes(model, pb, "trajectory")
    X, _ = pb.rows()
    assert a.info["state_bytes"] == schedule.plan(T, T).state_bytes(model.layout(5).size) \
        + schedule.plan(T, T).n_slots * model.pass_bytes(X)


def test_reversible_is_exact():
    """The gradient is a function of theta to the bit, the BLAS thread count is held for
    the whole call, and theta_0, v_0 come back bit for bit (the engine asserts it)."""
    from threadpoolctl import threadpool_info
    model, pb = setup((6, 5, 3, 1), np.float32, seed=2)
    X, y = pb.rows()
    theta = pb.theta0 + np.float32(0.1)
    g1, g2 = (model.grad_pass(theta, X, y, pb.lam)[0] for _ in range(2))
    assert (g1 == g2).all() and (g1 == model.grad(theta, X, y, pb.lam)).all()
    seen = []

    class Watched(MLP):
        def grad_pass(self, theta, X, y, lam):
            seen.append(tuple(p["num_threads"] for p in threadpool_info()
                              if p["user_api"] == "blas"))
            return super().grad_pass(theta, X, y, lam)

    r = generic.run(Watched(layers=model.layers), [pb], "reversible")[0]
    assert r.info["w0_recovered"] and len(set(seen)) == 1 and len(seen) == 2 * T
    assert r.info["state_bytes"] == generic.state_bytes(model, pb, "reversible")  # bytes, an int


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_reversible_chunks_change_no_bit(dtype, monkeypatch):
    """The fixed-point passes run CHUNK elements at a time: any chunking (here 1, 7 and
    one chunk) gives the same bits, and an overflow names the same element."""
    model, pb = setup((9, 6, 3, 1), dtype, seed=3)
    results, errors = [], []
    for chunk in (1, 7, 10**6):
        monkeypatch.setattr(generic, "CHUNK", chunk)
        r = generic.run(model, [pb], "reversible")[0]
        results.append([r.value, r.grad_Xp.tobytes(), r.grad_lam.tobytes(), r.theta_T.tobytes()])
        assert r.info["w0_recovered"] and r.theta_T.dtype == dtype
        with pytest.raises(generic.fixed_point.FixedPointOverflow) as err:
            generic.run(model, [Problem(data(9, dtype, 3), pb.lam, pb.theta0, T=40, alpha=50.0)],
                        "reversible", frac_bits=60)
        errors.append(str(err.value))
    assert results[0] == results[1] == results[2] and errors[0] == errors[1] == errors[2]
    assert "step" in errors[0]


def test_reversible_memory():
    """Peak numpy memory of reversible mode (tracemalloc): the int64 theta_q, v_q and bit
    buffer, a chunk's int64 scratch, about six vectors in X's dtype (theta_t, theta_T,
    the adjoints, the gradient, H u), one float64 transient (the growth watch's gradient,
    the lam product's theta) and the network's pass; not the float64 vectors it held."""
    import tracemalloc
    model, pb = setup((300, 40, 8, 1), np.float32, seed=1)
    pb.T = 12
    X, _ = pb.rows()
    p = model.layout(300).size
    generic.run(model, [pb], "reversible")  # kernels compiled
    tracemalloc.start()
    r = generic.run(model, [pb], "reversible")[0]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    buffer_bytes = r.info["state_bytes"] - 16 * p
    bound = (16 * p + buffer_bytes + 32 * min(generic.CHUNK, p) + 6 * 4 * p + 8 * p
             + 3 * model.pass_bytes(X) + X.nbytes + 64 * 1024)
    assert peak <= bound, (peak, bound)


def test_reversible_refuses_a_nondeterministic_gradient():
    class Noisy(MLP):
        def grad_pass(self, theta, X, y, lam):
            g, state = super().grad_pass(theta, X, y, lam)
            return g + np.random.default_rng().normal(0, 1e-3, g.shape).astype(g.dtype), state

    model, pb = setup((3, 4, 1), np.float64)
    with pytest.raises(RuntimeError, match="did not recover w0 bit for bit"):
        generic.run(Noisy(layers=model.layers), [pb], "reversible")


def test_forward_memory_is_independent_of_T():
    model, pb = setup((5, 4, 3, 1), np.float64)
    sizes = {generic.state_bytes(model, Problem(data(5, np.float64), pb.lam, pb.theta0, T=t),
                                 "forward") for t in (5, 50, 500)}
    assert sizes == {8 * model.layout(5).size * 2 * 4}


def test_public_api_and_implicit():
    """hypergrad(model=MLP): trajectory equals the generic route; implicit is eq. (4) at
    theta_T (its Hessian solve by torch), through the Cholesky and the CG paths."""
    for layers in ((4, 3, 1), (40, 50, 1)):  # p = 19; p = 2101 > CHOLESKY_MAX: CG on HVPs
        model, pb = setup(layers, np.float64, seed=4, penalize_bias=True)
        pb.lam = np.full(model.n_layers, 0.5)
        kw = dict(lam=pb.lam, w0=pb.theta0, T=60, alpha=0.5, gamma=0.5, model=model)
        arrays = data(layers[0], np.float64, 4)
        a = hypergrad(**arrays, **kw, mode="trajectory")
        b = generic.run(model, [Problem(arrays, pb.lam, pb.theta0, 60, 0.5, 0.5)],
                        "trajectory")[0]
        assert a.value == b.value and (a.grad_Xp == b.grad_Xp).all()
        with pytest.warns(RuntimeWarning, match="non-stationary"):
            r = hypergrad(**arrays, **kw, mode="implicit", tol=1e-12)
        assert r.info["solver"] == ("cg" if model.layout(layers[0]).size > CHOLESKY_MAX
                                    else "cholesky")
        t = lambda x: torch.from_numpy(np.asarray(x, np.float64))  # noqa: E731
        X, y = (np.concatenate([arrays[f"{v}c"], arrays[f"{v}p"]]) for v in "Xy")
        th, Xt = t(r.theta_T).requires_grad_(True), t(X).requires_grad_(True)
        H = torch.autograd.functional.hessian(
            lambda w: model.torch_objective(w, t(X), t(y), t(pb.lam)), th)
        gA = torch.autograd.grad(ref.loss(model, th, t(arrays["Xv"]), t(arrays["yv"])), th)[0]
        s = torch.linalg.solve(H, gA)
        g = torch.autograd.grad(model.torch_objective(th, Xt, t(y), t(pb.lam)), th,
                                create_graph=True)[0]
        want = -torch.autograd.grad(g @ s, Xt)[0][NC:].numpy()
        close(r.grad_Xp, want, np.float32, ("implicit", layers))


def test_bad_input():
    model, pb = setup((4, 3, 1), np.float64)
    arrays = data(4, np.float64)
    kw = dict(w0=pb.theta0, T=T, alpha=ALPHA, gamma=GAMMA)
    with pytest.raises(ValueError, match=r"layers=\(5, 3, 1\) starts with width 5 but the data "
                                         r"has 4 features; pass layers=\(4, 3, 1\)"):
        hypergrad(**arrays, lam=pb.lam, **kw, model=MLP(layers=(5, 3, 1)))
    with pytest.raises(ValueError, match=r"lam has shape \(3,\); the model has 2 hyperparameters"):
        hypergrad(**arrays, lam=np.zeros(3), **kw, model=model)
    with pytest.raises(ValueError, match="gamma=0 with mode='reversible'"):
        generic.run(model, [Problem(arrays, pb.lam, pb.theta0, gamma=0.0)], "reversible")
    with pytest.raises(ValueError, match="over max_buffer_bytes=64;"):
        generic.run(model, [pb], "reversible", max_buffer_bytes=64)
    with pytest.raises(ValueError, match="theta0 has shape"):
        generic.run(model, [Problem(arrays, pb.lam, np.zeros(3))], "trajectory")


def test_oracle_against_finite_differences():
    """reference.mlp.unrolled's own gradients (the oracle above) by central differences."""
    model, pb = setup((3, 4, 1), np.float64, seed=6)
    value, gX, glam = oracle(model, pb)
    h = 1e-6
    for j in range(2):
        e = np.eye(2)[j] * h
        fd = (oracle(model, Problem(data(3, np.float64, 6), pb.lam + e, pb.theta0))[0]
              - oracle(model, Problem(data(3, np.float64, 6), pb.lam - e, pb.theta0))[0]) / (2 * h)
        assert abs(fd - glam[j]) <= 1e-7 * max(1, abs(fd))
    arrays = [data(3, np.float64, 6) for _ in range(2)]
    arrays[0]["Xp"][1, 2] += h
    arrays[1]["Xp"][1, 2] -= h
    fd = (oracle(model, Problem(arrays[0], pb.lam, pb.theta0))[0]
          - oracle(model, Problem(arrays[1], pb.lam, pb.theta0))[0]) / (2 * h)
    assert abs(fd - gX[1, 2]) <= 1e-7 * max(1, abs(fd))
