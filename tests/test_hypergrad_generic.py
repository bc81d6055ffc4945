"""The generic engine (mithridate/hypergrad/generic.py) against the torch
oracle (autograd through the unrolled loop of model.torch_objective),
finite differences and the fused loops, in every mode."""
from types import SimpleNamespace

import numpy as np
import pytest

from mithridate import fixed_point
from mithridate.errors import DivergenceWarning
from mithridate.hypergrad import generic, hypergrad, schedule
from mithridate.models import Layout, LinearModel, Model

torch = pytest.importorskip("torch")

NC, K, NV, D = 13, 3, 11, 7
T, ALPHA, GAMMA = 9, 0.4, 0.7
TOL = {np.float64: 1e-10, np.float32: 2e-4}  # relative to the largest entry
MODES = ("trajectory", "checkpoint", "forward", "reversible")  # the gradient modes


def data(dtype, seed=0, loss="logistic"):
    rng = np.random.default_rng(seed)
    X = lambda n: rng.standard_normal((n, D)).astype(dtype)
    lab = lambda n: ((rng.random(n) < 0.5) if loss == "logistic" else rng.standard_normal(n))
    return dict(Xc=X(NC), yc=lab(NC).astype(dtype), Xp=X(K), yp=lab(K).astype(dtype),
                Xv=X(NV), yv=np.r_[0, 1, lab(NV - 2)].astype(dtype))


def problem(arrays, lam, theta0, T=T, alpha=ALPHA, gamma=GAMMA):
    a = arrays
    rows = lambda: (np.concatenate([a["Xc"], a["Xp"]]), np.concatenate([a["yc"], a["yp"]]))
    return SimpleNamespace(**a, lam=lam, theta0=theta0, T=T, alpha=alpha, gamma=gamma, rows=rows)


def linear_outer(model, theta, Xv, yv):
    from mithridate.reference.linear import objective
    return objective(theta[None], Xv, yv, None, None, model.loss, model.fit_intercept, False)[0]


def oracle(model, arrays, lam, theta0, T=T, alpha=ALPHA, gamma=GAMMA, outer=linear_outer):
    """(value, grad_Xp, grad_lam, theta_T) by autograd in float64 through T steps;
    outer(model, theta, Xv, yv): the outer objective on tensors."""
    t = {k: torch.from_numpy(v.astype(np.float64)) for k, v in arrays.items()}
    Xp = t["Xp"].clone().requires_grad_(True)
    lam_t = torch.tensor(np.atleast_1d(lam), dtype=torch.float64, requires_grad=True)
    X, y = torch.cat([t["Xc"], Xp]), torch.cat([t["yc"], t["yp"]])
    theta = torch.from_numpy(theta0.astype(np.float64)).requires_grad_(True)
    v = torch.zeros_like(theta)
    for _ in range(T):
        (g,) = torch.autograd.grad(model.torch_objective(theta, X, y, lam_t), theta,
                                   create_graph=True)
        v = gamma * v - (1 - gamma) * g
        theta = theta + alpha * v
    value = outer(model, theta, t["Xv"], t["yv"])
    gX, glam = torch.autograd.grad(value, (Xp, lam_t))
    return float(value.detach()), gX.numpy(), glam.numpy(), theta.detach().numpy()


def close(a, b, dtype, what):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(np.abs(b).max(initial=0.0), 1e-3)
    assert np.abs(a - b).max(initial=0.0) <= TOL[dtype] * scale, (what, a, b)


def weighted():
    w = np.random.default_rng(5).uniform(0.2, 2.0, NC + K)
    return LinearModel().with_weights(w)


MODELS = {
    "penalised_intercept": lambda: LinearModel(penalize_intercept=True),   # n_lam = 2
    "weights": weighted,
    "squared_no_intercept": lambda: LinearModel(loss="squared", fit_intercept=False),
}


def lam_for(model):
    return np.array([-1.0, 0.5]) if model.penalize_intercept else -0.7


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_mode_against_the_oracle(name, dtype):
    model = MODELS[name]()
    if name == "weights":
        model = model.with_weights(model.sample_weight.astype(dtype))
    arrays = data(dtype, loss=model.loss)
    p = model.layout(D).size
    theta0 = np.random.default_rng(1).normal(0, 0.3, p).astype(dtype)
    lam = lam_for(model)
    value, gX, glam, theta_T = oracle(model, arrays, lam, theta0)
    for mode in MODES:
        r = generic.run(model, [problem(arrays, lam, theta0)], mode)[0]
        assert r.theta_T.dtype == dtype and r.theta_T.shape == (p,)
        close(r.value, value, dtype, (mode, "value"))
        close(r.theta_T, theta_T, dtype, (mode, "theta_T"))
        close(r.grad_lam, glam if model.layout(D).n_lam > 1 else glam[0], dtype, (mode, "lam"))
        assert np.shape(r.grad_lam) == (() if np.ndim(lam) == 0 else (2,))
        if mode == "forward":
            assert r.grad_Xp is None
        else:
            assert r.grad_Xp.dtype == dtype and r.grad_Xp.shape == (K, D)
            close(r.grad_Xp, gX, dtype if mode != "reversible" else np.float32, (mode, "Xp"))
        assert r.info["backend"] == "generic" and r.info["diverged_at"] == -1


def test_finite_differences():
    """d value / d lam_j and d value / d Xp[i, j] by central differences (float64)."""
    model = LinearModel(penalize_intercept=True)
    arrays = data(np.float64, seed=3)
    theta0 = np.zeros(D + 1)
    lam = np.array([-1.2, 0.3])
    r = generic.run(model, [problem(arrays, lam, theta0)], "trajectory")[0]
    value = lambda a, l: generic.run(model, [problem(a, l, theta0)], "forward")[0].value
    h = 1e-5
    for j in range(2):
        e = np.eye(2)[j] * h
        fd = (value(arrays, lam + e) - value(arrays, lam - e)) / (2 * h)
        assert abs(fd - r.grad_lam[j]) <= 1e-7 * max(1, abs(fd))
    for i, j in [(0, 0), (2, 6), (1, 3)]:
        up, down = dict(arrays, Xp=arrays["Xp"].copy()), dict(arrays, Xp=arrays["Xp"].copy())
        up["Xp"][i, j] += h
        down["Xp"][i, j] -= h
        fd = (value(up, lam) - value(down, lam)) / (2 * h)
        assert abs(fd - r.grad_Xp[i, j]) <= 1e-7 * max(1, abs(fd))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("mode", MODES)
def test_agrees_with_the_fused_loops(mode, dtype):
    """The linear model the fused loops run too: the same values to rounding."""
    arrays = data(dtype, seed=2)
    theta0 = np.random.default_rng(4).normal(0, 0.2, D + 1).astype(dtype)
    ref = hypergrad(**arrays, lam=-0.5, w0=theta0, T=T, alpha=ALPHA, gamma=GAMMA, mode=mode)
    r = generic.run(LinearModel(), [problem(arrays, -0.5, theta0)], mode)[0]
    tol = dtype if mode != "reversible" else np.float32  # two fixed-point trajectories, 2^-40 apart
    close(r.value, ref.value, tol, "value")
    close(r.grad_lam, ref.grad_lam, tol, "lam")
    close(r.theta_T, ref.theta_T, tol, "theta_T")
    if mode != "forward":
        close(r.grad_Xp, ref.grad_Xp, tol, "Xp")
    assert isinstance(r.grad_lam, float)


@pytest.mark.parametrize("sched", [schedule.plan(T, 1), schedule.plan(T, 4),
                                   schedule.plan(T, "binomial", max_states=2),
                                   schedule.plan(T, "binomial")])
def test_checkpoint_is_trajectory_bit_for_bit(sched):
    """Any schedule recomputes the same thetas: the same bits as storing them all."""
    model = LinearModel(penalize_intercept=True)
    arrays = data(np.float32, seed=6)
    pb = problem(arrays, np.array([-1.0, 0.0]), np.zeros(D + 1, np.float32))
    a = generic.run(model, [pb], "trajectory")[0]
    b = generic.run(model, [pb], "checkpoint", schedule=sched)[0]
    assert b.value == a.value and (b.grad_lam == a.grad_lam).all()
    assert (b.grad_Xp == a.grad_Xp).all() and (b.theta_T == a.theta_T).all()
    assert b.info["recomputed"] == sched.recomputed
    assert b.info["state_bytes"] == sched.state_bytes(D + 1)


def test_value_mode_is_the_training_of_trajectory():
    model = LinearModel(penalize_intercept=True)
    pb = problem(data(np.float32, seed=8), np.array([-0.5, 0.2]), np.zeros(D + 1, np.float32))
    a = generic.run(model, [pb], "trajectory")[0]
    b = generic.run(model, [pb], "value")[0]
    assert b.value == a.value and (b.theta_T == a.theta_T).all()
    assert b.grad_Xp is None and b.grad_lam is None and b.info["mode"] == "value"


def test_several_problems_and_no_poisoning_rows():
    model = LinearModel(penalize_intercept=True)
    arrays = data(np.float64, seed=7)
    empty = dict(arrays, Xp=arrays["Xp"][:0], yp=arrays["yp"][:0])
    pbs = [problem(arrays, np.array([0.1, -0.2]), np.zeros(D + 1)),
           problem(empty, np.array([-2.0, 1.0]), np.zeros(D + 1))]
    out = generic.run(model, pbs, "checkpoint")
    assert out[1].grad_Xp.shape == (0, D)
    for r, pb in zip(out, pbs):
        ref = generic.run(model, [pb], "trajectory")[0]
        assert (r.grad_lam == ref.grad_lam).all() and (r.grad_Xp == ref.grad_Xp).all()


def test_divergence_is_flagged_at_the_first_bad_step():
    arrays = data(np.float64)
    pb = problem(arrays, -3.0, np.zeros(D + 1), T=40, alpha=60.0, gamma=0.0)
    for mode in ("trajectory", "forward"):
        r = generic.run(LinearModel().with_weights(np.ones(NC + K)), [pb], mode)[0]
        with pytest.warns(DivergenceWarning):
            ref = hypergrad(**arrays, lam=-3.0, T=40, alpha=60.0, mode=mode, on_divergence="warn")
        step = r.info["diverged_at"]
        assert 0 < step < 40 and step == ref.info["diverged_at"]


class Noisy(LinearModel):
    """A model whose gradient is not a function of theta alone."""
    def grad(self, theta, X, y, lam):
        g = super().grad(theta, X, y, lam)
        return g + np.random.default_rng().normal(0, 1e-3, g.shape)


def test_reversible_checks():
    arrays = data(np.float64)
    pb = lambda **kw: problem(arrays, -1.0, kw.pop("theta0", np.zeros(D + 1)), **kw)
    with pytest.raises(RuntimeError, match="did not recover w0 bit for bit"):
        generic.run(Noisy(), [pb()], "reversible")
    with pytest.raises(ValueError, match="gamma=0 with mode='reversible'"):
        generic.run(LinearModel(), [pb(gamma=0.0)], "reversible")
    with pytest.raises(fixed_point.FixedPointOverflow, match="frac_bits=40"):
        generic.run(LinearModel(), [pb(theta0=np.full(D + 1, 2.0**30))], "reversible")
    with pytest.raises(ValueError, match="over max_buffer_bytes=8;"):
        generic.run(LinearModel(), [pb()], "reversible", max_buffer_bytes=8)
    with pytest.raises(fixed_point.FixedPointOverflow, match=r"\(problem 1\).*left the fixed"):
        generic.run(LinearModel(), [pb(), pb(alpha=1e3, T=60)], "reversible", frac_bits=50)
    r = generic.run(LinearModel(), [pb()], "reversible", frac_bits=12)[0]
    assert r.info["w0_recovered"] and r.info["frac_bits"] == 12


def test_argument_errors():
    arrays = data(np.float64)
    pb = problem(arrays, -1.0, np.zeros(D + 1))
    m = LinearModel()
    with pytest.raises(ValueError, match="mode='implicit' is not one of"):
        generic.run(m, [pb], "implicit")
    with pytest.raises(ValueError, match="schedule applies to mode='checkpoint' only"):
        generic.run(m, [pb], "trajectory", schedule=schedule.plan(T))
    with pytest.raises(ValueError, match="schedule must be .*T=9"):
        generic.run(m, [pb], "checkpoint", schedule=schedule.plan(T + 1))
    with pytest.raises(ValueError, match="frac_bits=3 applies to mode='reversible' only"):
        generic.run(m, [pb], "forward", frac_bits=3)
    with pytest.raises(ValueError, match="theta0 has shape .*p=8"):
        generic.run(m, [problem(arrays, -1.0, np.zeros(D))], "forward")
    with pytest.raises(ValueError, match="this model has 2 hyperparameter"):
        generic.run(LinearModel(penalize_intercept=True), [pb], "forward")


def test_state_bytes():
    m, pb = LinearModel(), problem(data(np.float64), -1.0, np.zeros(D + 1))
    assert generic.state_bytes(m, pb, "trajectory") == 8 * (D + 1) * T
    assert generic.state_bytes(m, pb, "checkpoint") == schedule.plan(T).state_bytes(D + 1)
    assert generic.state_bytes(m, pb, "forward") == 8 * (D + 1) * 4
    assert generic.state_bytes(m, pb, "reversible") == (D + 1) * (16 + 4)
    assert generic.state_bytes(m, pb, "value") == 8 * (D + 1) * 2


class TinyNet(Model):
    """A one-hidden-layer tanh network (logistic loss) on torch autograd: a
    model with p != d + 1 and two penalised groups, as issue 10's network."""
    fused = None

    def __init__(self, hidden=3):
        self.h, self.loss, self.fit_intercept = hidden, "logistic", True

    def layout(self, d):
        h = self.h
        return Layout((("W1", h * d), ("b1", h), ("w2", h), ("b2", 1)), ("W1", "w2"))

    def features(self, p):
        return (p - 2 * self.h - 1) // self.h

    def _loss(self, theta, X, y):
        h, d = self.h, X.shape[1]
        W1, b1 = theta[:h * d].reshape(h, d), theta[h * d:h * d + h]
        z = torch.tanh(X @ W1.T + b1) @ theta[h * d + h:h * d + 2 * h] + theta[-1]
        return (torch.nn.functional.softplus(z) - y * z).mean()

    def _grad(self, theta, X, y, create_graph=False):
        theta = torch.from_numpy(np.asarray(theta, np.float64)).requires_grad_(True)
        value = self._loss(theta, torch.as_tensor(X, dtype=torch.float64),
                           torch.as_tensor(y, dtype=torch.float64))
        return theta, value, torch.autograd.grad(value, theta, create_graph=create_graph)[0]

    def loss_grad(self, theta, X, y):
        _, value, g = self._grad(theta, X, y)
        return float(value.detach()), g.numpy()

    data_loss_grad = loss_grad

    def loss_hvp(self, theta, u, X, y):
        th, _, g = self._grad(theta, X, y, create_graph=True)
        return torch.autograd.grad(g @ torch.from_numpy(np.asarray(u, np.float64)), th)[0].numpy()

    def mixed_rows(self, theta, u, X, y, rows):
        Xt = torch.as_tensor(X, dtype=torch.float64).clone().requires_grad_(True)
        th = torch.from_numpy(np.asarray(theta, np.float64)).requires_grad_(True)
        g = torch.autograd.grad(self._loss(th, Xt, torch.as_tensor(y, dtype=torch.float64)), th,
                                create_graph=True)[0]
        gu = g @ torch.from_numpy(np.asarray(u, np.float64))
        return torch.autograd.grad(gu, Xt)[0][rows].numpy()

    def torch_objective(self, theta, X, y, lam):
        from mithridate.reference.linear import l2
        layout = self.layout(X.shape[-1])
        return self._loss(theta, X, y) + l2(theta, lam, [layout.slice(g) for g in layout.penalised])


def test_any_model_a_network():
    """Every mode for a non-linear model through its primitives alone."""
    model = TinyNet()
    arrays = data(np.float64, seed=9)
    p = model.layout(D).size
    theta0 = np.random.default_rng(2).normal(0, 0.5, p)
    lam = np.array([-2.0, -1.0])
    value, gX, glam, theta_T = oracle(model, arrays, lam, theta0,
                                      outer=lambda m, th, Xv, yv: m._loss(th, Xv, yv))
    for mode in MODES:
        r = generic.run(model, [problem(arrays, lam, theta0)], mode)[0]
        close(r.value, value, np.float64, (mode, "value"))
        close(r.theta_T, theta_T, np.float64, (mode, "theta_T"))
        close(r.grad_lam, glam, np.float64, (mode, "lam"))
        if mode != "forward":
            close(r.grad_Xp, gX, np.float64, (mode, "Xp"))
