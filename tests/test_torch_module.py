"""TorchModule (mithridate/models/torch_module.py): any torch.nn.Module on the
hypergradient engine. Every mode against autograd through the unrolled loop
(create_graph) and finite differences, both dtypes; the primitives against
torch.func and finite differences; determinism (the same bits per theta, w0
recovered); the groups options; bad input."""
import warnings

import numpy as np
import pytest

from mithridate.hypergrad import Engine, hypergrad

torch = pytest.importorskip("torch")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402

from mithridate.models.torch_module import HESSIAN_MAX, TorchModule  # noqa: E402

NC, K, NV, D, H = 13, 3, 11, 5, 4
T, ALPHA, GAMMA = 9, 0.5, 0.7
TOL = {np.float64: 1e-9, np.float32: 3e-4}  # relative to the largest entry
MODES = ("trajectory", "checkpoint", "reversible", "forward")
TORCH_DTYPE = {np.float64: torch.float64, np.float32: torch.float32}


class Custom(torch.nn.Module):
    """Not a Sequential: raw parameters (no reset_parameters), a scalar one, (n,) output."""

    def __init__(self, d=D, h=H, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = torch.nn.Parameter(0.6 * torch.randn(h, d, generator=g, dtype=torch.float64))
        self.scale = torch.nn.Parameter(torch.tensor(0.8, dtype=torch.float64))
        self.v = torch.nn.Parameter(0.7 * torch.randn(h, generator=g, dtype=torch.float64))

    def forward(self, X):
        return (torch.sin(X @ self.W.T) * self.scale) @ self.v


def sequential(dtype=np.float64, seed=0, out=1):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(D, H), torch.nn.Tanh(), torch.nn.Linear(H, out))
    return net.to(TORCH_DTYPE[dtype])


def custom(dtype=np.float64):
    return Custom().to(TORCH_DTYPE[dtype])


CASES = {  # (model, lam): a Sequential with one lam per layer; the custom module, squared loss
    "sequential": (lambda dt: TorchModule(sequential(dt)), np.array([-1.5, -0.5])),
    "custom": (lambda dt: TorchModule(custom(dt), loss="squared", groups="module",
                                      penalize_bias=True), -1.0),
}


def data(dtype, seed=0, loss="logistic"):
    rng = np.random.default_rng(seed)
    X = lambda n: rng.standard_normal((n, D)).astype(dtype)
    lab = lambda n: (rng.random(n) < 0.5) if loss == "logistic" else rng.standard_normal(n)
    return dict(Xc=X(NC), yc=lab(NC).astype(dtype), Xp=X(K), yp=lab(K).astype(dtype),
                Xv=X(NV), yv=np.r_[0, 1, lab(NV - 2)].astype(dtype))


def oracle(model, a, lam, theta0, T=T, alpha=ALPHA, gamma=GAMMA):
    """(value, grad_Xp, grad_lam, theta_T): autograd in float64 through T heavy-ball steps
    of model.torch_objective (create_graph), outer the plain mean loss at theta_T."""
    t = {k: torch.from_numpy(v.astype(np.float64)) for k, v in a.items()}
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
    no_l2 = torch.full_like(lam_t, -torch.inf)  # exp(-inf) = 0: the mean loss alone
    value = model.torch_objective(theta, t["Xv"], t["yv"], no_l2)
    gX, glam = torch.autograd.grad(value, (Xp, lam_t))
    return float(value.detach()), gX.numpy(), glam.numpy(), theta.detach().numpy()


def implicit_oracle(model, a, lam, theta):
    """Eq. 4 at theta by torch autograd (float64): -gA^T H^-1 d2L/dtheta d(Xp, lam)."""
    t = {k: torch.from_numpy(v.astype(np.float64)) for k, v in a.items()}
    lam_t = torch.tensor(np.atleast_1d(lam), dtype=torch.float64, requires_grad=True)
    Xp = t["Xp"].clone().requires_grad_(True)
    th = torch.from_numpy(theta.astype(np.float64)).requires_grad_(True)
    X, y = torch.cat([t["Xc"], Xp]), torch.cat([t["yc"], t["yp"]])
    inner = lambda w: model.torch_objective(w, X, y, lam_t)
    Hm = torch.autograd.functional.hessian(inner, th.detach())
    no_l2 = torch.full_like(lam_t, -torch.inf)
    value = model.torch_objective(th, t["Xv"], t["yv"], no_l2)
    (gA,) = torch.autograd.grad(value, th)
    s = torch.linalg.solve(Hm, gA)
    (g,) = torch.autograd.grad(inner(th), th, create_graph=True)
    gX, glam = torch.autograd.grad(-(g @ s), (Xp, lam_t))
    return float(value.detach()), gX.numpy(), glam.numpy()


def close(a, b, dtype, what):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (what, a.shape, b.shape)
    scale = max(np.abs(b).max(initial=0.0), 1e-3)
    assert np.abs(a - b).max(initial=0.0) <= TOL[dtype] * scale, (what, a, b)


def run(model, a, lam, theta0, mode, **kw):
    return hypergrad(**a, model=model, lam=lam, w0=theta0, T=kw.pop("T", T), alpha=ALPHA,
                     gamma=GAMMA, mode=mode, **kw)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_mode_against_the_unrolled_oracle(case, dtype):
    make, lam = CASES[case]
    model = make(dtype)
    a = data(dtype, loss=model.loss)
    theta0 = model.init(D).astype(dtype)
    value, gX, glam, theta_T = oracle(model, a, lam, theta0)
    glam = glam if np.ndim(lam) else glam[0]
    for mode in MODES:
        r = run(model, a, lam, theta0, mode)
        assert r.theta_T.dtype == dtype and r.theta_T.shape == (model.p,)
        close(r.value, value, dtype, (mode, "value"))
        close(r.theta_T, theta_T, dtype, (mode, "theta_T"))
        close(r.grad_lam, glam, dtype, (mode, "lam"))
        if mode == "forward":
            assert r.grad_Xp is None
        else:
            assert r.grad_Xp.dtype == dtype and r.grad_Xp.shape == (K, D)
            close(r.grad_Xp, gX, dtype if mode != "reversible" else np.float32, (mode, "Xp"))
    r = run(model, a, lam, theta0, "reversible")
    assert r.info["w0_recovered"] and r.info["backend"] == "generic"


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", sorted(CASES))
def test_implicit_against_eq4_by_autograd(case, dtype):
    """Every parameter penalised and lam large enough for a positive definite Hessian."""
    make = {"sequential": lambda dt: TorchModule(sequential(dt), penalize_bias=True),
            "custom": CASES["custom"][0]}[case]
    model = make(dtype)
    lam = np.full(model.layout(D).n_lam, 0.5) if model.layout(D).n_lam > 1 else 0.5
    a = data(dtype, loss=model.loss)
    theta0 = model.init(D).astype(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # T = 9 is not stationary: eq. 4 at theta_T
        r = run(model, a, lam, theta0, "implicit")
    value, gX, glam = implicit_oracle(model, a, lam, r.theta_T)
    close(r.value, value, dtype, "value")
    close(r.grad_Xp, gX, dtype, "Xp")
    close(r.grad_lam, glam if np.ndim(lam) else glam[0], dtype, "lam")
    assert r.info["solver"] in ("cholesky", "cg")


@pytest.mark.parametrize("case", sorted(CASES))
def test_finite_differences(case):
    """d value / d lam_j and d value / d Xp[i, j] by central differences (float64)."""
    make, lam = CASES[case]
    model = make(np.float64)
    a = data(np.float64, seed=3, loss=model.loss)
    theta0 = model.init(D)
    engine = Engine(a["Xc"], a["yc"], a["Xv"], a["yv"], model=model, T=T, alpha=ALPHA,
                    gamma=GAMMA, mode="trajectory")
    r = engine.run(a["Xp"], a["yp"], lam, theta0)
    value = lambda Xp, l: engine.run(Xp, a["yp"], l, theta0, need="value").value
    h = 1e-5
    lams = np.atleast_1d(lam).astype(np.float64)
    for j in range(lams.size):
        e = np.eye(lams.size)[j] * h
        fd = (value(a["Xp"], lams + e) - value(a["Xp"], lams - e)) / (2 * h)
        assert abs(fd - np.atleast_1d(r.grad_lam)[j]) <= 1e-7 * max(1, abs(fd))
    for i, j in [(0, 0), (2, 4), (1, 3)]:
        up, down = a["Xp"].copy(), a["Xp"].copy()
        up[i, j] += h
        down[i, j] -= h
        fd = (value(up, lam) - value(down, lam)) / (2 * h)
        assert abs(fd - r.grad_Xp[i, j]) <= 1e-7 * max(1, abs(fd))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_checkpoint_equals_trajectory_bit_for_bit(dtype):
    model = CASES["sequential"][0](dtype)
    a, lam = data(dtype, seed=4), np.array([-1.0, 0.0])
    theta0 = model.init(D).astype(dtype)
    ref = run(model, a, lam, theta0, "trajectory")
    for ckpt in ("sqrt", 2):
        r = run(model, a, lam, theta0, "checkpoint", checkpoints=ckpt)
        assert r.value == ref.value and (r.grad_lam == ref.grad_lam).all()
        assert (r.grad_Xp == ref.grad_Xp).all() and (r.theta_T == ref.theta_T).all()
    r = run(model, a, lam, theta0, "checkpoint", checkpoints="binomial")
    assert (r.grad_Xp == ref.grad_Xp).all()


# -- primitives ----------------------------------------------------------------
def primitives_setup(dtype=np.float64, make=lambda dt: TorchModule(sequential(dt))):
    model = make(dtype)
    a = data(dtype, seed=5, loss=model.loss)
    X, y = np.concatenate([a["Xc"], a["Xp"]]), np.concatenate([a["yc"], a["yp"]])
    rng = np.random.default_rng(6)
    theta = (model.init(D) + rng.normal(0, 0.1, model.p)).astype(dtype)
    u = rng.standard_normal(model.p).astype(dtype)
    return model, X, y, theta, u


@pytest.mark.parametrize("make", [CASES["sequential"][0], CASES["custom"][0]])
def test_primitives_against_finite_differences(make):
    model, X, y, theta, u = primitives_setup(np.float64, make)
    model.layout(D)
    h = 1e-6
    value, g = model.loss_grad(theta, X, y)
    assert isinstance(value, float) and g.shape == (model.p,) and g.dtype == np.float64
    fd = (model.loss_grad(theta + h * u, X, y)[0] - model.loss_grad(theta - h * u, X, y)[0]) / (2 * h)
    assert abs(fd - g @ u) <= 1e-8 * max(1, abs(fd))
    hu = model.loss_hvp(theta, u, X, y)
    fd = (model.loss_grad(theta + h * u, X, y)[1] - model.loss_grad(theta - h * u, X, y)[1]) / (2 * h)
    assert np.abs(fd - hu).max() <= 1e-7 * max(1, np.abs(fd).max())
    Hm = model.loss_hessian(theta, X, y)
    assert Hm.dtype == np.float64 and Hm.shape == (model.p, model.p)
    assert np.abs(Hm @ u - hu).max() <= 1e-10 * max(1, np.abs(hu).max())
    rows = np.array([NC, NC + 2, 1])
    mixed = model.mixed_rows(theta, u, X, y, rows)
    assert mixed.shape == (3, D)
    for i, r in enumerate(rows):
        for j in range(D):
            up, down = X.copy(), X.copy()
            up[r, j] += h
            down[r, j] -= h
            fd = (model.loss_grad(theta, up, y)[1] - model.loss_grad(theta, down, y)[1]) @ u / (2 * h)
            assert abs(fd - mixed[i, j]) <= 1e-7 * max(1, abs(fd))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_torch_objective_is_the_numpy_objective(dtype):
    model, X, y, theta, _ = primitives_setup(dtype)
    lam = np.array([-0.3, 0.4])
    value = model.objective(theta, X, y, lam)
    t = lambda a: torch.from_numpy(a)
    ref = model.torch_objective(t(theta), t(X), t(y), t(lam))
    close(value, float(ref), dtype, "objective")
    th = t(theta.copy()).requires_grad_(True)
    (g,) = torch.autograd.grad(model.torch_objective(th, t(X), t(y), t(lam)), th)
    close(model.grad(theta, X, y, lam), g.numpy(), dtype, "grad")


def test_logits_and_the_callable_loss():
    model, X, y, theta, u = primitives_setup(np.float64, CASES["custom"][0])
    z = model.logits(theta, X)
    assert z.shape == (X.shape[0],) and z.dtype == np.float64
    own = TorchModule(custom(), loss=lambda z, y: 0.5 * (z - y) ** 2, groups="module",
                      penalize_bias=True)
    assert own.loss_grad(theta, X, y)[1].tobytes() == model.loss_grad(theta, X, y)[1].tobytes()
    assert own.loss_hvp(theta, u, X, y).tobytes() == model.loss_hvp(theta, u, X, y).tobytes()


# -- determinism ----------------------------------------------------------------
def test_the_same_theta_gives_the_same_bits_on_any_thread_setting():
    model, X, y, theta, u = primitives_setup(np.float32)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        g2 = model.loss_grad(theta, X, y)[1]
        assert torch.get_num_threads() == 2  # restored
        torch.set_num_threads(1)
        g1 = model.loss_grad(theta, X, y)[1]
        again = model.loss_grad(theta.copy(), X.copy(), y)[1]
    finally:
        torch.set_num_threads(before)
    assert g1.tobytes() == g2.tobytes() == again.tobytes()
    assert not torch.are_deterministic_algorithms_enabled()  # restored
    assert model.loss_hvp(theta, u, X, y).tobytes() == model.loss_hvp(theta, u, X, y).tobytes()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_reversible_recovers_w0_and_refuses_a_random_module(dtype):
    model = CASES["sequential"][0](dtype)
    a = data(dtype, seed=7)
    theta0 = model.init(D).astype(dtype)
    r = run(model, a, np.array([-1.0, -1.0]), theta0, "reversible", T=15)
    assert r.info["w0_recovered"] and r.info["mode"] == "reversible"

    class Noisy(torch.nn.Module):  # not a function of (theta, X): caught by the w0 check
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(D, 1).to(TORCH_DTYPE[dtype])

        def forward(self, X):
            return self.lin(X + 1e-3 * torch.randn_like(X))

    with pytest.raises(RuntimeError, match="did not recover w0 bit for bit"):
        run(TorchModule(Noisy()), a, -1.0, np.zeros(D + 1, dtype), "reversible")


# -- groups ---------------------------------------------------------------------
def independent_objective(net, X, y, lam, groups):
    """mean logistic loss + sum_g exp(lam_g)/2 ||members_g||^2 from the module itself."""
    with torch.no_grad():
        z = net(torch.from_numpy(X)).reshape(-1)
        yt = torch.from_numpy(y)
        value = float((torch.nn.functional.softplus(z) - yt * z).mean())
        params = dict(net.named_parameters())
        return value + sum(0.5 * np.exp(l) * float(sum((params[m] ** 2).sum() for m in members))
                           for l, members in zip(lam, groups))


@pytest.mark.parametrize("groups, penalize_bias, layout, penalised", [
    ("parameter", False, (("0.weight", 20), ("0.bias", 4), ("2.weight", 4), ("2.bias", 1)),
     [["0.weight"], ["2.weight"]]),
    ("parameter", True, (("0.weight", 20), ("0.bias", 4), ("2.weight", 4), ("2.bias", 1)),
     [["0.weight"], ["0.bias"], ["2.weight"], ["2.bias"]]),
    ("module", False, (("module", 24), ("0.bias", 4), ("2.bias", 1)),
     [["0.weight", "2.weight"]]),
    ("module", True, (("module", 29),), [["0.weight", "0.bias", "2.weight", "2.bias"]]),
    ({"last": ["2.weight", "2.bias"], "first": ["0.weight"]}, False,
     (("first", 20), ("0.bias", 4), ("last", 5)), [["2.weight", "2.bias"], ["0.weight"]]),
])
def test_groups(groups, penalize_bias, layout, penalised):
    net = sequential()
    model = TorchModule(net, groups=groups, penalize_bias=penalize_bias)
    lay = model.layout(D)
    assert lay.groups == layout and lay.n_lam == len(penalised)
    if isinstance(groups, dict):
        assert lay.penalised == tuple(groups)
    params = dict(net.named_parameters())
    theta = model.init(D)
    for name, _ in layout:  # each group's slice holds its members, flattened in named order
        members = [name] if name in params else \
            next(m for m, g in zip(penalised, lay.penalised) if g == name)
        want = torch.cat([params[m].detach().reshape(-1) for m in members]).numpy()
        assert (theta[lay.slice(name)] == want).all()
    X, y = np.concatenate([data(np.float64)["Xc"]]), data(np.float64)["yc"]
    lam = np.linspace(-1, 0.5, lay.n_lam)
    assert abs(model.objective(theta, X, y, lam) -
               independent_objective(net, X, y, lam, penalised)) <= 1e-12


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(-1, 2), min_size=4, max_size=4), st.data())
def test_any_groups_dict(assignment, draw):
    """Any partition of any subset of the parameters into lam groups: the objective is
    the module's loss plus each group's L2 term."""
    net = sequential(seed=1)
    names = [n for n, _ in net.named_parameters()]
    dict_ = {}
    for name, g in zip(names, assignment):
        if g >= 0:
            dict_.setdefault(f"g{g}", []).append(name)
    if not dict_:
        with pytest.raises(ValueError, match="groups={} penalises nothing"):
            TorchModule(net, groups=dict_)
        return
    model = TorchModule(net, groups=dict_)
    lay = model.layout(D)
    assert lay.size == 29 and lay.penalised == tuple(dict_)
    lam = np.array(draw.draw(st.lists(st.floats(-3, 1), min_size=lay.n_lam, max_size=lay.n_lam)))
    a = data(np.float64, seed=2)
    theta = model.init(D)
    want = independent_objective(net, a["Xc"], a["yc"], lam, dict_.values())
    assert abs(model.objective(theta, a["Xc"], a["yc"], lam) - want) <= 1e-12 * max(1, abs(want))


def test_init():
    net = sequential()
    model = TorchModule(net)
    current = model.init(D)
    assert current.dtype == np.float64 and current.shape == (29,)
    a, b = model.init(D, random_state=3), model.init(D, random_state=3)
    assert (a == b).all() and not (a == current).all()
    assert (model.init(D) == current).all()  # the module itself is unchanged
    c = model.init(D, random_state=np.random.default_rng(0))
    assert c.shape == (29,) and not (c == a).all()
    with pytest.raises(ValueError, match=r"\['W', 'scale', 'v'\] belong to modules without one"):
        TorchModule(custom()).init(D, random_state=0)
    with pytest.raises(TypeError, match="random_state must be None, an int seed or a numpy"):
        model.init(D, random_state=0.5)


# -- bad input -------------------------------------------------------------------
class IntParam(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(D, dtype=torch.int64), requires_grad=False)

    def forward(self, X):
        return X @ self.w


@pytest.mark.parametrize("make, error, match", [
    (lambda: TorchModule(np.eye(2)), TypeError, "module must be a torch.nn.Module"),
    (lambda: TorchModule(torch.nn.Tanh()), ValueError, "has no parameters"),
    (lambda: TorchModule(IntParam()), TypeError, "parameter 'w' has dtype torch.int64"),
    (lambda: TorchModule(torch.nn.Sequential(torch.nn.Linear(D, 2), torch.nn.Linear(2, 1).double())),
     TypeError, r"mixed dtypes \['torch.float32', 'torch.float64'\].*module.float\(\)"),
    (lambda: TorchModule(torch.nn.Linear(D, 1).half()), TypeError, "float16; use float32"),
    (lambda: TorchModule(torch.nn.Sequential(torch.nn.Linear(D, 1), torch.nn.Dropout())),
     ValueError, r"submodules \['1'\] are in training mode.*module.eval\(\)"),
    (lambda: TorchModule(sequential(), loss="hinge"), ValueError, "loss='hinge' must be one of"),
    (lambda: TorchModule(sequential(), groups="layer"), ValueError, "groups='layer' must be"),
    (lambda: TorchModule(sequential(), groups={"a": ["0.weight", "nope"]}), ValueError,
     r"names \['nope'\], not parameters of the module"),
    (lambda: TorchModule(sequential(), groups={"a": ["0.weight"], "b": ["0.weight"]}), ValueError,
     "each parameter belongs to one group at most"),
    (lambda: TorchModule(sequential(), groups={"a": ["0.weight"]}, penalize_bias=True), ValueError,
     "with a dict name the biases"),
    (lambda: TorchModule(sequential(), groups={"0.bias": ["0.weight"]}), ValueError,
     r"group names \['0.bias'\] are also names of unpenalised parameters"),
    (lambda: TorchModule(torch.nn.Linear(D, 1), groups={"a": []}), ValueError, "non-empty list"),
    (lambda: TorchModule(torch.nn.LayerNorm(D)), ValueError, "no parameter of >= 2 dim"),
    (lambda: TorchModule(sequential(), num_threads=0), ValueError, "num_threads=0 must be"),
])
def test_bad_modules(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_bad_data():
    a = data(np.float64)
    model = TorchModule(sequential(np.float32))
    with pytest.raises(TypeError, match=r"X has dtype float64 but the module's parameters are "
                                        r"float32: cast the data \(X.astype\(numpy.float32\)\)"):
        run(model, a, np.array([-1.0, -1.0]), model.init(D), "trajectory")
    with pytest.raises(TypeError, match="train data: X has dtype float64"):
        model.check_data(a["Xc"], a["yc"], "train")
    with pytest.raises(ValueError, match=r"maps \(2, 5\) rows to \(2, 3\).*\(n,\) or \(n, 1\)"):
        run(TorchModule(sequential(out=3)), a, np.array([-1.0, -1.0]), np.zeros(38), "trajectory")
    with pytest.raises(ValueError, match=r"does not take \(n, d=5\) feature rows"):
        TorchModule(torch.nn.Linear(7, 1).double()).layout(D)
    m64 = TorchModule(sequential())
    with pytest.raises(ValueError, match="takes 2-D feature rows"):
        m64.loss_grad(m64.init(D), a["Xc"][None], a["yc"])
    with pytest.raises(ValueError, match="per-row losses"):
        TorchModule(sequential(), loss=lambda z, y: (z - y).pow(2).mean()).layout(D)
    with pytest.raises(ValueError, match="theta has 7 entries but the module has p=29"):
        m64.features(7)
    big = TorchModule(torch.nn.Linear(HESSIAN_MAX, 1).double())
    Xb = np.zeros((2, HESSIAN_MAX))
    with pytest.raises(ValueError, match=f"over HESSIAN_MAX={HESSIAN_MAX}.*use loss_hvp"):
        big.loss_hessian(big.init(HESSIAN_MAX), Xb, np.zeros(2))
    with pytest.raises(ValueError, match="y must hold labels in"):
        m64.check_data(a["Xc"], a["yc"] + 2, "train")


def test_the_docstring_example_runs():
    """The usage example of the module docstring (the README's API tour) as written."""
    import textwrap
    from mithridate.models import torch_module
    doc = torch_module.__doc__
    block = doc[doc.index("::\n") + 3:]
    lines = []
    for line in block.splitlines():
        if line.strip() and not line.startswith("    "):
            break
        lines.append(line)
    namespace = {}
    exec(textwrap.dedent("\n".join(lines)), namespace)
    r = namespace["r"]
    assert r.grad_Xp.shape == (4, 10) and r.grad_lam.shape == (2,) and r.info["w0_recovered"]
    assert np.isfinite(r.grad_Xp).all() and np.isfinite(r.grad_lam).all()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("make", [CASES["sequential"][0], CASES["custom"][0]])
def test_back_is_hvp_and_mixed_rows_from_one_pass(make, dtype):
    model, X, y, theta, u = primitives_setup(dtype, make)
    lam = np.linspace(-1.5, -0.5, model.layout(D).n_lam)
    rows = np.array([NC + 1, 0])
    hu, mixed = model.back(theta, u, X, y, lam, rows)
    assert hu.dtype == dtype and mixed.dtype == dtype and mixed.shape == (2, D)
    close(hu, model.hvp(theta, u, X, y, lam), dtype, "hvp")
    close(mixed, model.mixed_rows(theta, u, X, y, rows), dtype, "mixed")
    again = model.back(theta.copy(), u.copy(), X.copy(), y, lam, rows)
    assert again[0].tobytes() == hu.tobytes() and again[1].tobytes() == mixed.tobytes()
