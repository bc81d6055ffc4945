"""The network on torch tensors: kernels/gpu/mlp.py against its torch
references (and the exact fixed-point step against kernels/cpu/heavy_ball.py,
bit for bit), and mithridate.hypergrad.mlp_torch against torch autograd
through the unrolled heavy-ball loop (and the numpy MLP's generic engine once
mithridate.models.MLP exists). Without a GPU the kernels run under
TRITON_INTERPRET=1 (conftest.py), so shapes stay tiny.
"""
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

torch = pytest.importorskip("torch")
pytest.importorskip("triton")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("triton needs a GPU or TRITON_INTERPRET=1", allow_module_level=True)

from mithridate import fixed_point  # noqa: E402
from mithridate.hypergrad import mlp_torch  # noqa: E402
from mithridate.kernels.cpu import heavy_ball as hb  # noqa: E402
from mithridate.kernels.gpu import mlp as K  # noqa: E402
from mithridate.testing import TOLERANCES, assert_verbose_allclose  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float64]
SHAPES = [(1, 1, 1), (2, 7, 3), (3, 33, 5), (2, 5, 1029)]  # (B, n, h); the last spans 2 programs


def tol(dtype):
    return TOLERANCES[str(dtype).replace("torch.", "")]


def randn(g, *shape, dtype=torch.float64, scale=1.0):
    return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype).to(DEVICE)


# ---- elementwise kernels ----------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_bias_act_and_masked(shape, dtype):
    g = torch.Generator().manual_seed(sum(shape))
    B, n, h = shape
    Z, b, R = randn(g, B, n, h, dtype=dtype), randn(g, B, h, dtype=dtype), randn(g, B, n, h, dtype=dtype)
    Z[..., 0] = -b[:, None, 0]  # pre-activations at exactly 0: the kink's convention
    rtol, atol = tol(dtype)
    A, D = K.bias_act(Z, b, 0.1)
    A_ref, D_ref = K.bias_act_reference(Z, b, 0.1)
    assert A.dtype == D.dtype == dtype
    assert_verbose_allclose(A, A_ref, rtol, atol, name="A")
    assert torch.equal(D, D_ref)
    for bias in (b, None):
        assert_verbose_allclose(K.masked(R, D, bias), K.masked_reference(R, D_ref, bias),
                                rtol, atol, name="masked")


def test_reference_act_matches_autograd():
    g = torch.Generator().manual_seed(0)
    Z = randn(g, 2, 5, 4).requires_grad_()
    b = torch.zeros(2, 4, dtype=torch.float64, device=DEVICE)
    with torch.no_grad():
        Z[0, 0, 0] = 0.0
    A = torch.nn.functional.leaky_relu(Z, 0.1)
    (dA,) = torch.autograd.grad(A.sum(), Z)
    A_ref, D_ref = K.bias_act_reference(Z.detach(), b, 0.1)
    assert torch.equal(A.detach(), A_ref) and torch.equal(dA, D_ref)


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (2, 1030)])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_head(shape, dtype):
    g = torch.Generator().manual_seed(shape[1])
    B, n = shape
    z = randn(g, B, n, dtype=dtype, scale=3.0)
    z[:, :5] = torch.tensor([-1e4, -40.0, 0.0, 40.0, 1e4], dtype=dtype, device=DEVICE)[:min(5, n)]
    b = randn(g, B, 1, dtype=dtype)
    b[0] = 0.0
    y = (torch.rand(B, n, generator=g) < 0.5).to(dtype).to(DEVICE)
    rtol, atol = tol(dtype)
    for name, got, want in zip(("loss", "dz", "l''"), K.head(z, b, y), K.head_reference(z, b, y)):
        assert got.dtype == dtype and torch.isfinite(got).all(), name
        assert_verbose_allclose(got, want, rtol, atol, name=name)


def test_reference_head_matches_autograd():
    g = torch.Generator().manual_seed(1)
    z = randn(g, 2, 6, scale=4.0).requires_grad_()
    y = (torch.rand(2, 6, generator=g) < 0.5).double().to(DEVICE)
    b = torch.zeros(2, 1, dtype=torch.float64, device=DEVICE)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(z, y, reduction="none")
    (dz,) = torch.autograd.grad(loss.sum(), z, create_graph=True)
    (d2,) = torch.autograd.grad(dz.sum(), z)
    ref = K.head_reference(z.detach(), b, y)
    for got, want in zip(ref, (loss, dz, d2)):
        torch.testing.assert_close(got, want.detach(), rtol=1e-12, atol=1e-14)


# ---- exact fixed-point step: bit for bit with kernels/cpu/heavy_ball --------

def _random_state(rng, B, p, words, w):
    thq = rng.integers(-2**45, 2**45, (B, p))
    vq = rng.integers(-2**44, 2**44, (B, p))
    buf = np.zeros((B, words, p), np.uint32)
    buf[:, :max(w - 1, 0)] = rng.integers(0, 2**32, (B, max(w - 1, 0), p), dtype=np.uint32)
    return thq, vq, buf


@pytest.mark.parametrize("p", [1, 37, 300])
@pytest.mark.parametrize("gamma", [0.9, 0.5, 0.99, 0.123])
@pytest.mark.parametrize("gdtype", DTYPES, ids=str)
def test_exact_step_matches_numba(p, gamma, gdtype):
    from mithridate.hypergrad.reversible import gamma_fraction
    rng = np.random.default_rng(p)
    num, den = gamma_fraction(gamma)
    B, words, w, alpha, f = 3, 5, 4, 0.37, 40
    scale = -(1.0 - gamma) * 2.0**f
    thq, vq, buf = _random_state(rng, B, p, words, w)
    grad = torch.from_numpy(rng.standard_normal((B, p)) * 10.0).to(gdtype)
    state = [torch.from_numpy(a.copy()).to(DEVICE) for a in (thq, vq, buf.view(np.int32))]
    codes = K.exact_forward(*state, grad.to(DEVICE), scale, w, num, den, alpha).cpu()
    for b in range(B):
        th, v, bu = thq[b].copy(), vq[b].copy(), buf[b].copy()
        incr, c, rem, hi = (np.empty(p, np.int64) for _ in range(4))
        hb.exact_increment(grad[b].double().numpy(), scale, incr, c)
        hb.exact_forward(th, v, bu, incr, c, w, num, den, alpha, rem, hi)
        for name, got, want in (("theta_q", state[0][b], th), ("v_q", state[1][b], v),
                                ("buffer", state[2][b], bu.view(np.int32)), ("codes", codes[b], c)):
            assert np.array_equal(got.cpu().numpy(), want), name
    K.exact_reverse_theta(state[0], state[1], alpha)
    K.exact_reverse(state[1], state[2], grad.to(DEVICE), scale, w, num, den)
    for name, got, want in zip(("theta_q", "v_q", "buffer"), state, (thq, vq, buf.view(np.int32))):
        assert np.array_equal(got.cpu().numpy(), want), f"{name} not recovered"


@settings(max_examples=40, deadline=None)
@given(p=st.integers(1, 300), num=st.integers(1, 2**31 - 2), extra=st.integers(1, 2**31 - 1),
       w=st.integers(1, 4), bits=st.integers(0, 62), frac=st.integers(1, 62),
       alpha=st.floats(1e-3, 4.0), seed=st.integers(0, 2**32 - 1))
def test_exact_step_property(p, num, extra, w, bits, frac, alpha, seed):
    """Any gamma = num/den, buffer occupancy, state magnitude and scale: the same
    bits and codes as numba, and, when the step is valid, the exact inverse."""
    den = min(num + extra, 2**31 - 1)  # > num: gamma in (0, 1)
    rng = np.random.default_rng(seed)
    B, words = 2, w + 1
    big = 2**bits
    thq = rng.integers(-big, big, (B, p), endpoint=True)
    vq = rng.integers(-big, big, (B, p), endpoint=True)
    buf = np.zeros((B, words, p), np.uint32)
    buf[:, :w - 1] = rng.integers(0, 2**32, (B, w - 1, p), dtype=np.uint32)
    grad = rng.standard_normal((B, p)) * 10.0 ** rng.uniform(-3, 3, (B, p))
    scale = -(1.0 - num / den) * 2.0**frac
    state = [torch.from_numpy(a.copy()).to(DEVICE) for a in (thq, vq, buf.view(np.int32))]
    g = torch.from_numpy(grad).to(DEVICE)
    codes = K.exact_forward(*state, g, scale, w, num, den, alpha).cpu().numpy()
    for b in range(B):
        th, v, bu = thq[b].copy(), vq[b].copy(), buf[b].copy()
        incr, c, rem, hi = (np.empty(p, np.int64) for _ in range(4))
        hb.exact_increment(grad[b], scale, incr, c)
        hb.exact_forward(th, v, bu, incr, c, w, num, den, alpha, rem, hi)
        assert np.array_equal(codes[b], c)
        if not c.any():
            assert np.array_equal(state[0][b].cpu().numpy(), th)
            assert np.array_equal(state[1][b].cpu().numpy(), v)
            assert np.array_equal(state[2][b].cpu().numpy(), bu.view(np.int32))
    if not codes.any():
        K.exact_reverse_theta(state[0], state[1], alpha)
        K.exact_reverse(state[1], state[2], g, scale, w, num, den)
        for got, want in zip(state, (thq, vq, buf.view(np.int32))):
            assert np.array_equal(got.cpu().numpy(), want)


def test_exact_step_codes_match_numba():
    """Increments out of range or not finite, and sums leaving int64: the same
    per-element codes as heavy_ball.exact_forward."""
    B, p, w, num, den, alpha, scale = 1, 6, 1, 9, 10, 0.5, -0.1 * 2.0**40
    thq = np.array([[0, 0, 0, 2**62, 0, 0]])
    vq = np.array([[0, 0, 2**62, 2**62, 0, -5]])
    grad = np.array([[np.nan, np.inf, -1e8, -1e8, 1e30, 1.0]])
    buf = np.zeros((B, 1, p), np.uint32)
    state = [torch.from_numpy(a.copy()).to(DEVICE) for a in (thq, vq, buf.view(np.int32))]
    codes = K.exact_forward(*state, torch.from_numpy(grad).to(DEVICE), scale, w, num, den,
                            alpha).cpu().numpy()
    incr, c, rem, hi = (np.empty(p, np.int64) for _ in range(4))
    hb.exact_increment(grad[0], scale, incr, c)
    th, v, bu = thq[0].copy(), vq[0].copy(), buf[0].copy()
    hb.exact_forward(th, v, bu, incr, c, w, num, den, alpha, rem, hi)
    assert np.array_equal(codes[0], c) and c.any() and not c[-1]


# ---- the hypergradient ------------------------------------------------------

LAYERS = (5, 4, 3, 1)


def make_problems(B, dtype, layers=LAYERS, n=9, k=3, nv=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = layers[0]
    net = K.Net(layers, ops="torch")
    theta0 = torch.cat([torch.cat([randn(g, B, a * b, scale=a ** -0.5),
                                   torch.full((B, b), 1e-2, dtype=torch.float64, device=DEVICE)], 1)
                        for a, b in zip(layers[:-1], layers[1:])], 1)
    assert theta0.shape == (B, net.p)

    def labels(*shape):
        return (torch.rand(*shape, generator=g) < 0.5).to(dtype).to(DEVICE)
    return dict(Xc=randn(g, n, d, dtype=dtype), yc=labels(n), Xp=randn(g, B, k, d, dtype=dtype),
                yp=labels(B, k), Xv=randn(g, nv, d, dtype=dtype), yv=labels(nv),
                lam=randn(g, B, len(layers) - 1, scale=0.5) - 1.0, theta0=theta0)


def objective(theta, X, y, lam, layers, slope=0.1, data_only=False):
    """The network's training objective on one problem, plain torch (the oracle)."""
    h, reg, start = X, 0.0, 0
    for l, (a, b) in enumerate(zip(layers[:-1], layers[1:])):
        W = theta[start:start + a * b].view(a, b)
        bias = theta[start + a * b:start + a * b + b]
        start += a * b + b
        h = h @ W + bias
        if l < len(layers) - 2:
            h = torch.nn.functional.leaky_relu(h, slope)
        reg = reg + torch.exp(lam[l]) / 2 * (W * W).sum()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(h.squeeze(-1), y)
    return loss if data_only else loss + reg


def unrolled(pb, b, T, alpha, gamma, layers=LAYERS):
    """Autograd through the unrolled heavy-ball loop (create_graph), problem b, float64."""
    f64 = {k: v.double() for k, v in pb.items()}
    Xp = f64["Xp"][b].clone().requires_grad_()
    lam = f64["lam"][b].clone().requires_grad_()
    X = torch.cat([f64["Xc"], Xp])
    y = torch.cat([f64["yc"], f64["yp"][b]])
    theta = f64["theta0"][b].clone().requires_grad_()
    v = torch.zeros_like(theta)
    for _ in range(T):
        (g,) = torch.autograd.grad(objective(theta, X, y, lam, layers), theta, create_graph=True)
        v = gamma * v - (1 - gamma) * g
        theta = theta + alpha * v
    A = objective(theta, f64["Xv"], f64["yv"], lam, layers, data_only=True)
    dX, dlam = torch.autograd.grad(A, (Xp, lam))
    return A.detach(), dX, dlam, theta.detach()


def run(pb, mode, T=6, alpha=0.3, gamma=0.0, layers=LAYERS, **kw):
    return mlp_torch.hypergrad(layers, pb["Xc"], pb["yc"], pb["Xp"], pb["yp"], pb["Xv"], pb["yv"],
                               pb["lam"], pb["theta0"], T=T, alpha=alpha, gamma=gamma, mode=mode,
                               **kw)


GRAD_TOL = {torch.float64: (1e-7, 1e-10), torch.float32: (2e-3, 2e-5)}


@pytest.mark.parametrize("mode, gamma", [("trajectory", 0.0), ("trajectory", 0.5),
                                         ("checkpoint", 0.5), ("reversible", 0.9),
                                         ("forward", 0.5)])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_unrolled_autograd(mode, gamma, dtype):
    pb = make_problems(2, dtype, seed=1)
    res = run(pb, mode, gamma=gamma)
    rtol, atol = GRAD_TOL[dtype]
    for b in range(2):
        value, dX, dlam, theta_T = unrolled(pb, b, 6, 0.3, gamma)
        assert_verbose_allclose(res.value[b], value, rtol, atol, name="value")
        assert_verbose_allclose(res.theta_T[b], theta_T, rtol, atol, name="theta_T")
        assert_verbose_allclose(res.grad_lam[b], dlam, rtol, atol, name="grad_lam")
        if mode != "forward":
            assert res.grad_Xp.dtype == dtype
            assert_verbose_allclose(res.grad_Xp[b], dX, rtol, atol, name="grad_Xp")
    if mode == "reversible":
        assert res.info["w0_recovered"]


def test_oracle_matches_finite_differences():
    """The test's unrolled autograd against central differences of its value, wrt a
    few coordinates of Xp and every layer's lam (float64)."""
    pb = make_problems(1, torch.float64, seed=6)
    value, dX, dlam, _ = unrolled(pb, 0, 4, 0.3, 0.5)
    eps = 1e-6
    for key, idx, want in [("Xp", (0, 0, 1), dX[0, 1]), ("Xp", (0, 2, 4), dX[2, 4])] + \
            [("lam", (0, j), dlam[j]) for j in range(len(LAYERS) - 1)]:
        vals = []
        for sign in (1, -1):
            moved = {k: v.clone() for k, v in pb.items()}
            moved[key][idx] += sign * eps
            vals.append(unrolled(moved, 0, 4, 0.3, 0.5)[0])
        fd = (vals[0] - vals[1]) / (2 * eps)
        torch.testing.assert_close(fd, want, rtol=1e-5, atol=1e-9, msg=f"{key}{idx}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_unrolled_reference_matches_oracle(dtype):
    """mlp_torch.unrolled (batched, the benchmarks' baseline) against the test's
    per-problem oracle, whose layout slicing is its own."""
    pb = make_problems(2, dtype, seed=7)
    res = mlp_torch.unrolled(LAYERS, *[pb[k] for k in ("Xc", "yc", "Xp", "yp", "Xv", "yv", "lam",
                                                        "theta0")], T=5, alpha=0.3, gamma=0.5)
    rtol, atol = GRAD_TOL[dtype]
    for b in range(2):
        value, dX, dlam, theta_T = unrolled(pb, b, 5, 0.3, 0.5)
        for name, want in (("value", value), ("grad_Xp", dX), ("grad_lam", dlam),
                           ("theta_T", theta_T)):
            assert_verbose_allclose(getattr(res, name)[b], want, rtol, atol, name=name)
    assert res.grad_Xp.dtype == dtype


@settings(max_examples=15, deadline=None)
@given(layers=st.lists(st.integers(1, 6), min_size=1, max_size=3).map(lambda w: (*w, 1)),
       n=st.integers(1, 6), k=st.integers(0, 3), T=st.integers(1, 4),
       mode=st.sampled_from(["trajectory", "checkpoint", "reversible", "forward"]),
       seed=st.integers(0, 2**16))
def test_any_network_matches_unrolled_autograd(layers, n, k, T, mode, seed):
    """Depth 1..3, widths 1..6, no poisoning rows or a few: every mode equals the
    oracle (float64)."""
    pb = make_problems(2, torch.float64, layers=layers, n=n, k=k, nv=3, seed=seed)
    res = run(pb, mode, T=T, gamma=0.5, layers=layers)
    for b in range(2):
        value, dX, dlam, theta_T = unrolled(pb, b, T, 0.3, 0.5, layers)
        assert_verbose_allclose(res.value[b], value, 1e-9, 1e-12, name="value")
        assert_verbose_allclose(res.grad_lam[b], dlam, 1e-7, 1e-10, name="grad_lam")
        assert_verbose_allclose(res.theta_T[b], theta_T, 1e-9, 1e-12, name="theta_T")
        if mode != "forward":
            assert res.grad_Xp.shape == (2, k, layers[0])
            assert_verbose_allclose(res.grad_Xp[b], dX, 1e-7, 1e-10, name="grad_Xp")


@pytest.mark.parametrize("mode, gamma", [("trajectory", 0.0), ("reversible", 0.5), ("forward", 0.0)])
def test_batch_equals_single_runs(mode, gamma):
    pb = make_problems(3, torch.float64, seed=2)
    batch = run(pb, mode, gamma=gamma)
    for b in range(3):
        one = {k: (v[b:b + 1] if k in ("Xp", "yp", "lam", "theta0") else v) for k, v in pb.items()}
        single = run(one, mode, gamma=gamma)
        for name in ("value", "grad_lam", "theta_T") + (("grad_Xp",) if mode != "forward" else ()):
            torch.testing.assert_close(getattr(batch, name)[b], getattr(single, name)[0],
                                       rtol=1e-12, atol=1e-14, msg=name)


@pytest.mark.parametrize("checkpoints", ["sqrt", "binomial", 2])
def test_checkpoint_equals_trajectory_bit_for_bit(checkpoints):
    pb = make_problems(2, torch.float32, seed=8)
    a = run(pb, "trajectory", T=7, gamma=0.5)
    b = run(pb, "checkpoint", T=7, gamma=0.5, checkpoints=checkpoints)
    assert b.info["state_bytes"] < a.info["state_bytes"] and b.info["recomputed"] > 0
    for name in ("value", "grad_lam", "grad_Xp", "theta_T"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_reversible_triton_and_numba_steps_agree():
    """ops='torch' runs the exact step in numba (kernels/cpu/heavy_ball) and the
    passes in torch: the same hypergradient to float64 tolerance, theta_T alike."""
    pb = make_problems(2, torch.float64, seed=3)
    a = run(pb, "reversible", gamma=0.9, ops="triton")
    b = run({k: v.cpu() for k, v in pb.items()}, "reversible", gamma=0.9, ops="torch")
    for name in ("value", "grad_lam", "grad_Xp", "theta_T"):
        torch.testing.assert_close(getattr(a, name).cpu(), getattr(b, name), rtol=1e-10,
                                   atol=1e-13)


@pytest.mark.parametrize("ops", K.OPS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_reverse_sweep_gradient_has_the_forward_bits(ops, dtype):
    """The gradient the reverse sweep takes from the R-op pass is loss_grad's, bit for
    bit, and two calls at the same theta agree bit for bit."""
    pb = make_problems(3, dtype, seed=9)
    net = K.Net(LAYERS, ops=ops)
    X = torch.cat([pb["Xc"].expand(3, -1, -1), pb["Xp"]], 1)
    y = torch.cat([pb["yc"].expand(3, -1), pb["yp"]], 1)
    theta, u = pb["theta0"].to(dtype), torch.randn_like(pb["theta0"]).to(dtype)
    with torch.no_grad():
        g = net.loss_grad(theta, X, y)[1]
        assert torch.equal(g, net.loss_grad(theta, X, y)[1])
        assert torch.equal(g, net.hvp_rows(theta, u, X, y, 3, want_grad=True)[0])


def test_reversible_refuses_nondeterministic_gradient(monkeypatch):
    pb = make_problems(1, torch.float64, seed=4)
    calls = []
    real = mlp_torch._Problems.grad

    def noisy(self, theta):
        calls.append(1)
        return real(self, theta) * (1 + 1e-9 * len(calls))
    monkeypatch.setattr(mlp_torch._Problems, "grad", noisy)
    with pytest.raises(RuntimeError, match="did not recover"):
        run(pb, "reversible", gamma=0.9)


@pytest.mark.parametrize("mode, gamma", [("trajectory", 0.5), ("reversible", 0.9), ("forward", 0.5)])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_generic_engine_of_numpy_mlp(mode, gamma, dtype):
    """The same hypergradient as the numpy MLP on the generic engine (the public
    mithridate.hypergrad with model=MLP), to dtype tolerance."""
    models = pytest.importorskip("mithridate.models")
    if not hasattr(models, "MLP"):
        pytest.skip("mithridate.models.MLP is not in the tree yet (the MLP helper's file)")
    from mithridate.hypergrad import hypergrad
    pb = make_problems(1, dtype, seed=5)
    pb["theta0"] = pb["theta0"].to(dtype).double()  # w0 in X's dtype for the public API: same values
    res = run(pb, mode, gamma=gamma)
    a = {k: v[0].cpu().numpy() if k in ("Xp", "yp", "lam", "theta0") else v.cpu().numpy()
         for k, v in pb.items()}
    want = hypergrad(a["Xc"], a["yc"], a["Xp"], a["yp"], a["Xv"], a["yv"], lam=a["lam"],
                     w0=a["theta0"].astype(a["Xc"].dtype), T=6, alpha=0.3, gamma=gamma, model=models.MLP(layers=LAYERS),
                     mode=mode)
    rtol, atol = GRAD_TOL[dtype]
    assert_verbose_allclose(res.value[0], torch.as_tensor(float(want.value), dtype=torch.float64),
                            rtol, atol, name="value")
    assert_verbose_allclose(res.grad_lam[0].cpu(), torch.as_tensor(np.asarray(want.grad_lam)),
                            rtol, atol, name="grad_lam")
    if mode != "forward":
        assert_verbose_allclose(res.grad_Xp[0].cpu(), torch.as_tensor(want.grad_Xp), rtol, atol,
                                name="grad_Xp")


def test_matches_reference_mlp_unrolled():
    """The MLP oracle of mithridate.reference.mlp (autograd through the loop of
    models.MLP's torch_objective), float64, trajectory and reversible."""
    models = pytest.importorskip("mithridate.models")
    ref = pytest.importorskip("mithridate.reference.mlp")
    if not hasattr(models, "MLP"):
        pytest.skip("mithridate.models.MLP is not in the tree yet (the MLP helper's file)")
    pb = {k: v.cpu() for k, v in make_problems(1, torch.float64, seed=10).items()}
    X, y = torch.cat([pb["Xc"], pb["Xp"][0]]), torch.cat([pb["yc"], pb["yp"][0]])
    n, k = pb["Xc"].shape[0], pb["Xp"].shape[1]
    value, gX, glam = ref.unrolled(models.MLP(layers=LAYERS), X, y, pb["Xv"], pb["yv"],
                                   pb["lam"][0].numpy(), pb["theta0"][0], 6, 0.3, 0.5,
                                   np.arange(n, n + k))
    for mode in ("trajectory", "reversible"):
        res = run({kk: v.to(DEVICE) for kk, v in pb.items()}, mode, gamma=0.5)
        assert_verbose_allclose(res.value[0].cpu(), value, 1e-10, 1e-13, name="value")
        assert_verbose_allclose(res.grad_Xp[0].cpu(), gX, 1e-8, 1e-11, name="grad_Xp")
        assert_verbose_allclose(res.grad_lam[0].cpu(), glam, 1e-8, 1e-11, name="grad_lam")


# ---- bad input --------------------------------------------------------------

def test_bad_input():
    pb = make_problems(2, torch.float64)
    with pytest.raises(ValueError, match="layers"):
        mlp_torch.hypergrad((6, 4, 3, 1), *[pb[k] for k in ("Xc", "yc", "Xp", "yp", "Xv", "yv",
                                                            "lam")],
                            torch.zeros(2, 6 * 4 + 4 + 4 * 3 + 3 + 3 + 1, dtype=torch.float64),
                            T=2, alpha=0.1)
    with pytest.raises(ValueError, match="layers"):
        K.Net((5, 0, 1))
    with pytest.raises(ValueError, match="output width"):
        K.Net((5, 2))
    with pytest.raises(ValueError, match="lam"):
        run(dict(pb, lam=torch.zeros(2)), "trajectory")
    with pytest.raises(ValueError, match="gamma=0"):
        run(pb, "reversible", gamma=0.0)
    with pytest.raises(ValueError, match="theta0"):
        run(dict(pb, theta0=pb["theta0"][:, 1:]), "trajectory")
    with pytest.raises(ValueError, match="mode"):
        run(pb, "implicit")
    with pytest.raises(ValueError, match="checkpoints"):
        run(pb, "trajectory", checkpoints=3)
    with pytest.raises(ValueError, match="checkpoints"):
        run(pb, "checkpoint", checkpoints=0)
    with pytest.raises(fixed_point.FixedPointOverflow, match="frac_bits"):
        run(dict(pb, theta0=pb["theta0"] * 2.0**30), "reversible", gamma=0.9)
    with pytest.raises(ValueError, match="max_buffer_bytes"):
        run(pb, "reversible", gamma=0.9, max_buffer_bytes=100)
    with pytest.raises(ValueError, match="max_buffer_bytes"):
        run(pb, "trajectory", max_buffer_bytes=100)
    with pytest.raises(ValueError, match="frac_bits"):
        run(pb, "forward", frac_bits=30)
    with pytest.raises(TypeError, match="Xc"):
        run(dict(pb, Xc=pb["Xc"].cpu().numpy()), "trajectory")
    with pytest.raises(ValueError, match=r"\{0, 1\}"):
        run(dict(pb, yc=pb["yc"] * 2 - 1), "trajectory")


# ---- the GPU benchmark's dry run --------------------------------------------

def test_gpu_benchmark_dry_run(monkeypatch, capsys):
    """benchmarks/gpu_mlp.py --tiny: the script a GPU session runs as is, on tiny
    shapes under the interpreter (in this process); every mode of both batch sizes,
    mlp_torch's and the public Engine's, agrees with the unrolled reference."""
    import runpy
    import sys
    from pathlib import Path
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_mlp.py"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(sys, "argv", [str(script), "--tiny", "--skip-tests", "--repeats", "1"])
    runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ")]
    cells = {(r[0].strip(), r[1].strip()): r for r in rows[1:]}
    for B in ("1", "3"):
        assert (B, "torch unrolled") in cells
        for mode in [m for m in mlp_torch.MODES] + [f"Engine {m}" for m in mlp_torch.MODES]:
            row = cells[B, mode]
            float(row[2])  # a time
            assert float(row[6]) < 1e-4, (B, mode, row)  # grad_lam vs the reference, float32
            if not mode.endswith("forward"):
                assert float(row[7]) < 1e-4, (B, mode, row)
