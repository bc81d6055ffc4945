"""The network's torch route of the engine: Engine / hypergrad with model=MLP(...)
and backend "torch" (the kernels' torch forms) or "triton" (the Triton kernels,
under TRITON_INTERPRET=1 without a GPU: conftest.py), every mode, both dtypes,
single and batched calls, against the generic engine (backend "numba", auto's
choice on the host) and reference.mlp.unrolled (autograd through the loop);
reversible recovers theta_0 and v_0 bit for bit; the registry's selection."""
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

torch = pytest.importorskip("torch")
pytest.importorskip("triton")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("triton needs a GPU or TRITON_INTERPRET=1", allow_module_level=True)

from mithridate.hypergrad import Engine, hypergrad  # noqa: E402
from mithridate.hypergrad.mlp_torch import MODES  # noqa: E402
from mithridate.models import MLP  # noqa: E402
from mithridate.reference import mlp as ref  # noqa: E402

LAYERS = (5, 4, 3, 1)
NC, K, NV, T, ALPHA, GAMMA = 9, 3, 6, 6, 0.3, 0.6
ROUTES = ("torch", "triton")
TOL = {np.float64: 1e-9, np.float32: 3e-4}  # relative to the largest entry


def data(dtype, B=None, seed=0, d=LAYERS[0]):
    rng = np.random.default_rng(seed)
    X = lambda *s: rng.standard_normal(s + (d,)).astype(dtype)  # noqa: E731
    lab = lambda *s: (rng.random(s) < 0.5).astype(dtype)  # noqa: E731
    lead = () if B is None else (B,)
    return dict(Xc=X(NC), yc=lab(NC), Xv=X(NV), yv=np.r_[0, 1, lab(NV - 2)].astype(dtype)), \
        dict(Xp=X(*lead, K), yp=lab(*lead, K))


def close(a, b, dtype, what):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(np.abs(b).max(initial=0.0), 1e-3)
    assert np.abs(a - b).max(initial=0.0) <= TOL[dtype] * scale, (what, a, b)


def engine(fixed, mode, backend, model=None, **kw):
    return Engine(**fixed, model=model or MLP(layers=LAYERS), T=T, alpha=ALPHA, gamma=GAMMA,
                  mode=mode, backend=backend, **kw)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", ROUTES)
def test_route_matches_generic_engine_and_unrolled_reference(backend, mode, dtype):
    model = MLP(layers=LAYERS)
    fixed, call = data(dtype)
    lam = np.array([-1.0, -2.0, -1.5])
    w0 = model.init(LAYERS[0], 3).astype(dtype)
    got = engine(fixed, mode, backend).run(**call, lam=lam, w0=w0)
    want = engine(fixed, mode, "numba").run(**call, lam=lam, w0=w0)
    assert got.info["backend"] == backend and want.info["backend"] == "generic"
    assert set(got.info) == set(want.info) and got.info["mode"] == mode
    assert got.theta_T.dtype == dtype and isinstance(got.value, float)
    for name in ("value", "grad_lam", "theta_T") + (("grad_Xp",) if mode != "forward" else ()):
        close(getattr(got, name), getattr(want, name), dtype, (backend, mode, name))
    if mode == "forward":
        assert got.grad_Xp is None
    else:
        assert got.grad_Xp.dtype == dtype and got.grad_Xp.shape == (K, LAYERS[0])
    t = lambda a: torch.from_numpy(np.asarray(a, np.float64))  # noqa: E731
    X, y = (np.concatenate([fixed[f"{v}c"], call[f"{v}p"]]) for v in "Xy")
    value, gX, glam = ref.unrolled(model, t(X), t(y), t(fixed["Xv"]), t(fixed["yv"]), lam,
                                   w0.astype(np.float64), T, ALPHA, GAMMA, np.arange(NC, NC + K))
    close(got.value, float(value), dtype, "value vs unrolled")
    close(got.grad_lam, glam.numpy(), dtype, "grad_lam vs unrolled")
    if mode != "forward":
        close(got.grad_Xp, gX.numpy(), dtype, "grad_Xp vs unrolled")
    if mode == "reversible":  # the int64 state and the same bit buffer
        assert got.info["w0_recovered"] is True
        assert got.info["state_bytes"] == want.info["state_bytes"]


@pytest.mark.parametrize("backend", ROUTES)
def test_batched_calls_are_one_problem_each(backend):
    """Xp (B, k, d), lam (B, n_lam), w0 (B, p), shared clean rows: as B single calls
    (the same route), and need='lam' / need='value' as the generic engine's."""
    model = MLP(layers=LAYERS)
    fixed, call = data(np.float64, B=3)
    lam = np.array([[-1.0, -2.0, -1.5], [-2.0, -1.0, -3.0], [-0.5, -0.5, -0.5]])
    w0 = np.stack([model.init(LAYERS[0], s) for s in range(3)])
    eng = engine(fixed, "trajectory", backend)
    batch = eng.run(**call, lam=lam, w0=w0)
    assert batch.info["B"] == 3 and batch.grad_Xp.shape == (3, K, LAYERS[0])
    assert batch.grad_lam.shape == (3, 3) and batch.theta_T.shape == (3, model.layout(5).size)
    for b in range(3):
        one = eng.run(call["Xp"][b], call["yp"][b], lam[b], w0[b])
        close(batch.grad_Xp[b], one.grad_Xp, np.float64, b)
        close(batch.grad_lam[b], one.grad_lam, np.float64, b)
        close(batch.value[b], one.value, np.float64, b)
    generic = engine(fixed, "trajectory", "numba")
    for need in ("lam", "value"):
        got, want = eng.run(**call, lam=lam, w0=w0, need=need), \
            generic.run(**call, lam=lam, w0=w0, need=need)
        assert got.grad_Xp is None and set(got.info) == set(want.info), need
        close(got.value, want.value, np.float64, need)
        if need == "lam":
            close(got.grad_lam, want.grad_lam, np.float64, need)
        else:
            assert got.grad_lam is None


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("backend", ROUTES)
def test_reversible_recovers_the_initial_state_bit_for_bit(backend, dtype, monkeypatch):
    """The reverse sweep ends at theta_0's fixed-point code, v_0 = 0 and an empty
    buffer exactly (the route compares them bit for bit: w0_recovered), and that
    check is live: a gradient that differs in its last bits between the sweeps fails."""
    from mithridate.hypergrad import mlp_torch
    fixed, call = data(dtype, B=2, seed=4)
    model = MLP(layers=LAYERS)
    w0 = np.stack([model.init(5, s) for s in (1, 2)]).astype(dtype)
    r = engine(fixed, "reversible", backend).run(**call, lam=np.full(3, -2.0), w0=w0)
    assert r.info["w0_recovered"] is True and r.info["B"] == 2
    calls = []
    grad = mlp_torch._Problems.grad

    def noisy(self, theta):
        calls.append(1)
        return grad(self, theta) * (1 + 1e-12 * len(calls))
    monkeypatch.setattr(mlp_torch._Problems, "grad", noisy)
    with pytest.raises(RuntimeError, match="did not recover"):
        engine(fixed, "reversible", backend).run(**call, lam=np.full(3, -2.0), w0=w0)


def test_auto_keeps_the_generic_engine_and_the_environment_overrides(monkeypatch):
    fixed, call = data(np.float64)
    lam = np.full(3, -2.0)
    monkeypatch.delenv("MITHRIDATE_BACKEND", raising=False)
    assert engine(fixed, "trajectory", "auto").backend == "generic"
    assert engine(fixed, "implicit", "numba").backend == "generic"
    monkeypatch.setenv("MITHRIDATE_BACKEND", "torch")
    r = hypergrad(**fixed, **call, lam=lam, T=T, alpha=ALPHA, gamma=GAMMA,
                  model=MLP(layers=LAYERS))
    assert r.info["backend"] == "torch"
    monkeypatch.delenv("MITHRIDATE_BACKEND")
    r = hypergrad(**fixed, **call, lam=lam, T=T, alpha=ALPHA, gamma=GAMMA,
                  model=MLP(layers=LAYERS), backend="torch", device="cpu", mode="forward")
    assert r.info["backend"] == "torch" and r.info["mode"] == "forward"
    monkeypatch.setenv("MITHRIDATE_BACKEND", "cpp")  # no mlp implementation: ignored
    assert engine(fixed, "trajectory", "auto").backend == "generic"


def test_route_refusals_before_any_work():
    fixed, _ = data(np.float64)
    with pytest.raises(ValueError, match=r"mode='implicit' does not run on backend='torch'"):
        engine(fixed, "implicit", "torch")
    with pytest.raises(ValueError, match="mlp has no cpp implementation"):
        engine(fixed, "trajectory", "cpp")
    with pytest.raises(ValueError, match="device='tpu' must be None, 'cpu' or 'cuda'"):
        engine(fixed, "trajectory", "torch", device="tpu")
    with pytest.raises(ValueError, match="device='cpu' applies to the network's torch route"):
        engine(fixed, "trajectory", "numba", device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="device='cuda': no CUDA GPU"):
            engine(fixed, "trajectory", "torch", device="cuda")
    else:
        with pytest.raises(ValueError, match="use backend='triton' or device='cpu'"):
            engine(fixed, "reversible", "torch", device="cuda")


def test_divergence_is_reported_as_on_the_generic_engine():
    """alpha far past the stable step: the route's device-side watch flags the step."""
    from mithridate.errors import DivergenceError
    fixed, call = data(np.float64)
    w0 = MLP(layers=LAYERS).init(5, 0)
    for backend in ("numba", "torch"):
        eng = Engine(**fixed, model=MLP(layers=LAYERS), T=40, alpha=500.0, gamma=0.0,
                     backend=backend)
        with pytest.raises(DivergenceError, match="alpha"):
            eng.run(**call, lam=np.full(3, 3.0), w0=w0)


@pytest.mark.parametrize("model", [MLP(layers=(5, 1)), MLP(layers=(5, 3, 1), penalize_bias=True,
                                                              negative_slope=0.0)], ids=repr)
def test_other_networks_and_batched_clean_rows(model):
    """One layer (one lam: grad_lam a float, as the generic engine's), biases penalised,
    ReLU; clean and validation rows with a leading B axis."""
    n_lam = model.n_layers
    fixed, call = data(np.float64, seed=2)
    lam = -1.5 if n_lam == 1 else np.full(n_lam, -1.5)
    w0 = model.init(5, 1)
    got = engine(fixed, "trajectory", "torch", model).run(**call, lam=lam, w0=w0)
    want = engine(fixed, "trajectory", "numba", model).run(**call, lam=lam, w0=w0)
    assert isinstance(got.grad_lam, float) == (n_lam == 1) == isinstance(want.grad_lam, float)
    close(got.grad_lam, want.grad_lam, np.float64, "grad_lam")
    close(got.grad_Xp, want.grad_Xp, np.float64, "grad_Xp")
    batched = {k: np.stack([v, v[::-1]]) for k, v in fixed.items()}  # problem 1: rows reversed
    calls = {k: np.stack([v, v]) for k, v in call.items()}
    got = engine(batched, "checkpoint", "torch", model).run(**calls, lam=lam, w0=w0)
    want = engine(batched, "checkpoint", "numba", model).run(**calls, lam=lam, w0=w0)
    close(got.grad_Xp, want.grad_Xp, np.float64, "batched grad_Xp")
    close(got.value, want.value, np.float64, "batched value")


def test_memory_is_checked_before_any_work(monkeypatch):
    """The route's rows and states against the memory available (the GPU's on cuda)."""
    from mithridate import _validation
    from mithridate.errors import InsufficientMemoryError
    from mithridate.hypergrad import mlp_torch
    fixed, call = data(np.float64)
    host = engine(fixed, "trajectory", "torch")
    gpu = engine(fixed, "trajectory", "triton", device="cuda") if torch.cuda.is_available() \
        else None
    monkeypatch.setattr(_validation, "available_memory", lambda: 1000)
    monkeypatch.setattr(mlp_torch, "_run", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(InsufficientMemoryError, match="mode='trajectory' on backend='torch'"):
        host.run(**call, lam=np.full(3, -1.0))
    if gpu is not None:
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1000, 2000))
        with pytest.raises(InsufficientMemoryError, match="GPU memory"):
            gpu.run(**call, lam=np.full(3, -1.0))


@settings(max_examples=15, deadline=None)
@given(widths=st.lists(st.integers(1, 6), min_size=0, max_size=2), d=st.integers(1, 7),
       k=st.integers(1, 4), B=st.sampled_from([None, 1, 3]), T=st.integers(1, 7),
       mode=st.sampled_from(MODES), lam=st.floats(-5.0, 1.0), gamma=st.floats(0.1, 0.9),
       seed=st.integers(0, 2**16))
def test_route_equals_generic_engine_for_any_network(widths, d, k, B, T, mode, lam, gamma, seed):
    """Any depth and widths, rows, batch, steps, lam and momentum (float64): the torch route
    and the generic engine give the same hypergradient to rounding."""
    model = MLP(layers=(d, *widths, 1))
    rng = np.random.default_rng(seed)
    X = lambda *s: rng.standard_normal(s + (d,))  # noqa: E731
    lab = lambda *s: (rng.random(s) < 0.5).astype(float)  # noqa: E731
    lead = () if B is None else (B,)
    fixed = dict(Xc=X(NC), yc=lab(NC), Xv=X(NV), yv=np.r_[0.0, 1.0, lab(NV - 2)])
    call = dict(Xp=X(*lead, k), yp=lab(*lead, k), lam=np.full(model.n_layers, lam) if
                model.n_layers > 1 else lam, w0=model.init(d, seed))
    runs = [Engine(**fixed, model=model, T=T, alpha=0.3, gamma=gamma, mode=mode,
                   backend=be).run(**call) for be in ("torch", "numba")]
    got, want = runs
    for name in ("value", "grad_lam", "theta_T") + (("grad_Xp",) if mode != "forward" else ()):
        close(getattr(got, name), getattr(want, name), np.float64, (mode, name))
