"""mithridate.torch: autograd over the fused kernels against the torch reference.

The oracle is torch autograd on the reference objective / Lipschitz constant
(mithridate.reference) and, for hypergradients, torch.autograd.gradcheck's
finite differences. Odd shapes, both float dtypes, per-dtype tolerances.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import mithridate.torch as mt  # noqa: E402
from mithridate import ops  # noqa: E402
from mithridate.hypergrad import hypergrad as np_hypergrad  # noqa: E402
from mithridate.reference.linear import objective as reference_objective  # noqa: E402
from mithridate.testing import TOLERANCES, assert_verbose_allclose, bilevel_data  # noqa: E402

DTYPES = [torch.float32, torch.float64]
LOSSES = ["logistic", "squared", "absolute"]
SHAPES = [(1, 1), (7, 3), (33, 7)]
MODES = {"single": None, "shared": 3, "independent": 2}  # batch size per mode


def tol(dtype):
    return TOLERANCES[str(dtype).replace("torch.", "")]


def make_problem(mode, n, d, dtype, loss, seed=0):
    g = torch.Generator().manual_seed(seed)
    B = MODES[mode]
    randn = lambda *shape, scale=1.0: (scale * torch.randn(*shape, generator=g,
                                                           dtype=torch.float64)).to(dtype)
    X = randn(*((B,) if mode == "independent" else ()), n, d)
    if loss == "logistic":
        y = (torch.rand(X.shape[:-1], generator=g) < 0.5).to(dtype)
    else:
        y = randn(*X.shape[:-1])
    s = (0.5 + torch.rand(X.shape[:-1], generator=g, dtype=torch.float64)).to(dtype)
    batch = () if B is None else (B,)
    theta = randn(*batch, d + 1, scale=2 * d ** -0.5)
    lam = (-0.5 + 0.1 * torch.arange(B or 1, dtype=torch.float64)).reshape(batch)
    return dict(theta=theta, lam=lam, X=X, y=y, sample_weight=s,
                u=randn(*batch, d + 1))


def reference(theta, lam, X, y, sample_weight, loss):
    th = theta if theta.dim() == 2 else theta[None]
    value = reference_objective(th, X, y, sample_weight, lam.reshape(-1).expand(th.shape[0]),
                                loss, True, False)
    return value if theta.dim() == 2 else value[0]


def derivatives(f, pb):
    """Value, first derivatives wrt theta, lam, X, y and second derivatives
    (theta, lam, X, y) of grad_theta f . u, by autograd."""
    inputs = {k: pb[k].detach().clone().requires_grad_(True) for k in ("theta", "lam", "X", "y")}
    value = f(**inputs, sample_weight=pb["sample_weight"])
    first = torch.autograd.grad(value.sum(), list(inputs.values()), create_graph=True)
    second = torch.autograd.grad((first[0] * pb["u"]).sum(), list(inputs.values()),
                                 allow_unused=True)
    out = {"value": value}
    for name, a, b in zip(inputs, first, second):
        out[f"d_{name}"] = a
        out[f"dd_{name}"] = torch.zeros_like(inputs[name]) if b is None else b
    return out


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("n, d", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("loss", LOSSES)
def test_objective_matches_reference(mode, n, d, dtype, loss):
    pb = make_problem(mode, n, d, dtype, loss)
    got = derivatives(lambda **a: mt.linear_objective(
        a["theta"], a["X"], a["y"], lam=a["lam"], sample_weight=a["sample_weight"], loss=loss), pb)
    want = derivatives(lambda **a: reference(loss=loss, **a), pb)
    rtol, atol = tol(dtype)
    for name, t in got.items():
        assert t.shape == want[name].shape, name
        assert t.dtype == (torch.float64 if name.endswith("lam") else dtype), name
        assert_verbose_allclose(t, want[name], rtol, atol, name=name)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("loss", LOSSES)
def test_objective_gradcheck(mode, loss):
    pb = make_problem(mode, 5, 2, torch.float64, loss, seed=1)
    names = ["theta", "lam", "X"] + ([] if loss == "logistic" else ["y"])  # labels stay {0, 1}
    fixed = {k: v for k, v in pb.items() if k not in names and k != "u"}

    def f(*args):
        a = dict(zip(names, args), **fixed)
        return mt.linear_objective(a["theta"], a["X"], a["y"], lam=a["lam"],
                                   sample_weight=a["sample_weight"], loss=loss)
    args = tuple(pb[k].clone().requires_grad_(True) for k in names)
    assert torch.autograd.gradcheck(f, args)
    assert torch.autograd.gradgradcheck(f, args)


def test_hvp_in_a_newton_step():
    """Hessian-vector products by create_graph drive CG to the Newton step H^-1 g."""
    pb = make_problem("single", 33, 7, torch.float64, "logistic", seed=2)
    theta = pb["theta"].clone().requires_grad_(True)
    f = lambda th: mt.linear_objective(th, pb["X"], pb["y"], lam=-1.0)
    (g,) = torch.autograd.grad(f(theta), theta, create_graph=True)
    H = torch.stack([torch.autograd.grad(g, theta, e, retain_graph=True)[0]
                     for e in torch.eye(theta.shape[0], dtype=theta.dtype)])
    H_ref = torch.autograd.functional.hessian(
        lambda th: reference(th, torch.tensor(-1.0, dtype=torch.float64), pb["X"], pb["y"],
                             None, "logistic"), pb["theta"])
    rtol, atol = tol(torch.float64)
    assert_verbose_allclose(H, H_ref, rtol, atol, name="Hessian")


def test_third_derivative_is_a_clear_error():
    pb = make_problem("single", 7, 3, torch.float64, "logistic")
    theta = pb["theta"].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(mt.linear_objective(theta, pb["X"], pb["y"]), theta,
                               create_graph=True)
    (h,) = torch.autograd.grad(g @ pb["u"], theta, create_graph=True)
    with pytest.raises(RuntimeError, match="linear_objective is differentiable only as far"):
        torch.autograd.grad((h + theta).sum(), theta)  # not a silent zero third derivative


@pytest.mark.parametrize("what", ["lipschitz", "hypergrad"])
def test_second_derivative_is_a_clear_error(what):
    if what == "lipschitz":
        theta, X, y = lipschitz_problem(7, 3, None, torch.float64, "squared")
        x = theta.requires_grad_(True)
        f = lambda x: mt.lipschitz(x, X, y, loss="squared")
    else:
        Xc, yc, Xp, yp, Xv, yv = bilevel()
        x = Xp.requires_grad_(True)
        f = lambda x: mt.hypergrad(Xc, yc, x, yp, Xv, yv, lam=-1.0, **HG)
    (g,) = torch.autograd.grad(f(x), x, create_graph=True)
    with pytest.raises(RuntimeError, match=f"{what} is differentiable only as far"):
        torch.autograd.grad((g * x).sum(), x)


def test_objective_argument_errors():
    pb = make_problem("single", 7, 3, torch.float64, "squared")
    with pytest.raises(TypeError, match="X must be a torch.Tensor"):
        mt.linear_objective(pb["theta"], pb["X"].numpy(), pb["y"])
    with pytest.raises(ValueError, match="sample_weight requires grad"):
        mt.linear_objective(pb["theta"], pb["X"], pb["y"],
                            sample_weight=pb["sample_weight"].requires_grad_(True))
    with pytest.raises(TypeError, match="lam must be None, a number or a torch.Tensor"):
        mt.linear_objective(pb["theta"], pb["X"], pb["y"], lam="-1")
    with pytest.raises(ValueError, match="theta has 4 columns"):  # the ops' own checks
        mt.linear_objective(pb["theta"], pb["X"][:, :2].contiguous(), pb["y"])


def test_training_loop_matches_plain_torch():
    """The benchmark's two loops train the same model."""
    from mithridate.bench import train_logistic
    g = torch.Generator().manual_seed(3)
    X = torch.randn(65, 5, generator=g, dtype=torch.float64)
    y = (torch.rand(65, generator=g) < 0.5).double()
    fused = train_logistic(X, y, steps=50, route="fused")
    plain = train_logistic(X, y, steps=50, route="torch")
    assert not torch.equal(fused, torch.zeros_like(fused))  # it moved
    assert_verbose_allclose(fused, plain, *tol(torch.float64), name="theta")


# --- Lipschitz regulariser -------------------------------------------------------------

def lipschitz_problem(n, d, B, dtype, loss, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64).to(dtype)
    y = ((torch.rand(n, generator=g) < 0.5).double() if loss == "logistic"
         else torch.randn(n, generator=g, dtype=torch.float64)).to(dtype)
    theta = (torch.randn(*((B,) if B else ()), d + 1, generator=g, dtype=torch.float64)
             / d ** 0.5).to(dtype)
    return theta, X, y


@pytest.mark.parametrize("n, d", [(1, 1), (33, 7)])
@pytest.mark.parametrize("B", [None, 3])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("bound, norm", [("tight", 2), ("tight", 3.0), ("paper", np.inf)])
def test_lipschitz_matches_reference(n, d, B, dtype, loss, bound, norm):
    theta, X, y = lipschitz_problem(n, d, B, dtype, loss)
    kw = dict(loss=loss, norm=norm, bound=bound)
    th = theta.clone().requires_grad_(True)
    value = mt.lipschitz(th, X, y, **kw)
    (grad,) = torch.autograd.grad((value * torch.arange(1.0, value.numel() + 1).reshape(
        value.shape).to(dtype)).sum(), th)
    want, subgrad = ops.lipschitz(theta, X, y, backend="torch", **kw)
    weights = torch.arange(1.0, want.numel() + 1).reshape(want.shape).to(dtype)
    rtol, atol = tol(dtype)
    assert value.shape == want.shape and value.dtype == dtype
    assert_verbose_allclose(value, want, rtol, atol, name="value")
    assert_verbose_allclose(grad, weights[..., None] * subgrad, rtol, atol, name="subgradient")


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("norm", [2, 3.0])
def test_lipschitz_gradcheck(loss, norm):
    theta, X, y = lipschitz_problem(33, 7, 3, torch.float64, loss, seed=4)
    f = lambda th: mt.lipschitz(th, X, y, loss=loss, norm=norm)
    assert torch.autograd.gradcheck(f, (theta.requires_grad_(True),))


def test_lipschitz_data_is_not_differentiable():
    theta, X, y = lipschitz_problem(7, 3, None, torch.float64, "squared")
    with pytest.raises(ValueError, match="X requires grad.*wrt theta only"):
        mt.lipschitz(theta, X.requires_grad_(True), y, loss="squared")


# --- hypergradients --------------------------------------------------------------------

HG = dict(T=8, alpha=0.5)


def bilevel(dtype=np.float64, B=None, seed=0):
    D = bilevel_data(n=11, k=3, nv=9, d=4, dtype=dtype, seed=seed)
    tensors = [torch.from_numpy(a) for a in D]
    if B:
        tensors[2] = torch.stack([tensors[2] + 0.1 * b for b in range(B)])
        tensors[3] = tensors[3].expand(B, -1).contiguous()
    return tensors


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=str)
@pytest.mark.parametrize("B", [None, 2])
def test_hypergrad_matches_numpy(dtype, B):
    Xc, yc, Xp, yp, Xv, yv = bilevel(dtype, B)
    lam = torch.full((B,) if B else (), -1.0, dtype=torch.float64, requires_grad=True)
    Xp = Xp.clone().requires_grad_(True)
    value = mt.hypergrad(Xc, yc, Xp, yp, Xv, yv, lam=lam, **HG)
    gv = torch.arange(1.0, value.numel() + 1, dtype=value.dtype).reshape(value.shape)
    gX, glam = torch.autograd.grad(value, (Xp, lam), gv)
    want = np_hypergrad(*(t.detach().numpy() for t in (Xc, yc, Xp, yp, Xv, yv)),
                        lam=lam.detach().numpy() if B else -1.0, **HG)
    rtol, atol = TOLERANCES[np.dtype(dtype).name]
    assert value.dtype == Xp.dtype and value.shape == ((B,) if B else ())
    assert_verbose_allclose(value, want.value, rtol, atol, name="value")
    gvn = gv.numpy()
    assert_verbose_allclose(gX, gvn.reshape(gvn.shape + (1, 1)) * want.grad_Xp, rtol, atol,
                            name="grad_Xp")
    assert_verbose_allclose(glam, gvn * want.grad_lam, rtol, atol, name="grad_lam")


@pytest.mark.parametrize("B", [None, 2])
def test_hypergrad_gradcheck(B):
    Xc, yc, Xp, yp, Xv, yv = bilevel(B=B, seed=5)
    lam = torch.full((B,) if B else (), -1.0, dtype=torch.float64)
    f = lambda Xp_, lam_: mt.hypergrad(Xc, yc, Xp_, yp, Xv, yv, lam=lam_, **HG)
    assert torch.autograd.gradcheck(f, (Xp.requires_grad_(True), lam.requires_grad_(True)))


def test_hypergrad_one_lam_for_a_batch():
    """A scalar lam shared by B problems gets the sum of their lam derivatives."""
    Xc, yc, Xp, yp, Xv, yv = bilevel(B=2)
    lam = torch.tensor(-1.0, dtype=torch.float64, requires_grad=True)
    value = mt.hypergrad(Xc, yc, Xp, yp, Xv, yv, lam=lam, **HG)
    (glam,) = torch.autograd.grad(value, lam, torch.tensor([1.0, 3.0], dtype=torch.float64))
    want = np_hypergrad(*(t.numpy() for t in (Xc, yc, Xp, yp, Xv, yv)), lam=-1.0, **HG)
    assert glam.shape == ()
    assert_verbose_allclose(glam, want.grad_lam @ np.array([1.0, 3.0]), *TOLERANCES["float64"],
                            name="grad_lam")


def test_hypergrad_forward_mode_is_lam_only():
    Xc, yc, Xp, yp, Xv, yv = bilevel()
    lam = torch.tensor(-1.0, dtype=torch.float64, requires_grad=True)
    value = mt.hypergrad(Xc, yc, Xp, yp, Xv, yv, lam=lam, mode="forward", **HG)
    (glam,) = torch.autograd.grad(value, lam)
    want = np_hypergrad(*(t.numpy() for t in (Xc, yc, Xp, yp, Xv, yv)), lam=-1.0, **HG)
    assert_verbose_allclose(glam, want.grad_lam, *TOLERANCES["float64"], name="grad_lam")
    with pytest.raises(ValueError, match="mode='forward' differentiates wrt lam only"):
        mt.hypergrad(Xc, yc, Xp.requires_grad_(True), yp, Xv, yv, lam=lam, mode="forward", **HG)


def test_hypergrad_argument_errors():
    Xc, yc, Xp, yp, Xv, yv = bilevel()
    with pytest.raises(ValueError, match="Xc requires grad.*wrt Xp, lam only"):
        mt.hypergrad(Xc.requires_grad_(True), yc, Xp, yp, Xv, yv, lam=-1.0, **HG)
    with pytest.raises(TypeError, match="lam is required"):
        mt.hypergrad(Xc.detach(), yc, Xp, yp, Xv, yv, lam=None, **HG)
    with pytest.raises(ValueError, match="T=0 must be a positive integer"):
        mt.hypergrad(Xc.detach(), yc, Xp, yp, Xv, yv, lam=-1.0, T=0, alpha=0.5)


def test_reference_backend_runs_inside_autograd():
    """backend="torch" runs autograd inside the functions' own forward/backward."""
    pb = make_problem("single", 7, 3, torch.float64, "logistic")
    got = derivatives(lambda **a: mt.linear_objective(
        a["theta"], a["X"], a["y"], lam=a["lam"], backend="torch"), pb)
    want = derivatives(lambda **a: mt.linear_objective(
        a["theta"], a["X"], a["y"], lam=a["lam"], backend="numba"), pb)
    for name, t in got.items():
        assert_verbose_allclose(t, want[name], *tol(torch.float64), name=name)
    theta, X, y = lipschitz_problem(7, 3, None, torch.float64, "logistic")
    th = theta.requires_grad_(True)
    (g,) = torch.autograd.grad(mt.lipschitz(th, X, y, loss="logistic", backend="torch"), th)
    assert_verbose_allclose(g, ops.lipschitz(theta.detach(), X, y, loss="logistic")[1],
                            *tol(torch.float64), name="subgradient")
    Xc, yc, Xp, yp, Xv, yv = bilevel()
    x = Xp.requires_grad_(True)
    (gX,) = torch.autograd.grad(mt.hypergrad(Xc, yc, x, yp, Xv, yv, lam=-1.0, backend="torch",
                                             **HG), x)
    want = np_hypergrad(*(t.detach().numpy() for t in (Xc, yc, Xp, yp, Xv, yv)), lam=-1.0, **HG)
    assert_verbose_allclose(gX, want.grad_Xp, *tol(torch.float64), name="grad_Xp")


# --- the triton route (CUDA tensors; the interpreter on CPU tensors) -------------------

def triton_device():
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        return "cuda"
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("triton needs a GPU or TRITON_INTERPRET=1")
    return "cpu"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("loss", LOSSES)
def test_triton_objective(dtype, loss):
    device = triton_device()
    pb = {k: v.to(device) for k, v in make_problem("shared", 7, 3, dtype, loss).items()}
    got = derivatives(lambda **a: mt.linear_objective(
        a["theta"], a["X"], a["y"], lam=a["lam"], sample_weight=a["sample_weight"], loss=loss,
        backend="triton"), pb)
    want = derivatives(lambda **a: reference(loss=loss, **a), pb)
    rtol, atol = tol(dtype)
    for name, t in got.items():
        assert t.device.type == device, name
        assert_verbose_allclose(t, want[name], rtol, atol, name=name)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_triton_lipschitz(dtype):
    device = triton_device()
    theta, X, y = (t.to(device) for t in lipschitz_problem(7, 3, 3, dtype, "logistic"))
    th = theta.clone().requires_grad_(True)
    value = mt.lipschitz(th, X, y, loss="logistic", backend="triton")
    (grad,) = torch.autograd.grad(value.sum(), th)
    want, subgrad = ops.lipschitz(theta, X, y, loss="logistic", backend="torch")
    rtol, atol = tol(dtype)
    assert_verbose_allclose(value, want, rtol, atol, name="value")
    assert_verbose_allclose(grad, subgrad, rtol, atol, name="subgradient")


def test_import_mithridate_leaves_torch_alone(tmp_path):
    code = ("import sys, mithridate, mithridate.ops; "
            "assert not {'torch', 'mithridate.torch'} & set(sys.modules), sys.modules.keys()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, timeout=60)
    assert out.returncode == 0, out.stderr
