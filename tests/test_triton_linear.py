"""Triton backend of the fused linear-model kernels against the torch reference.

On a machine without a GPU the kernels run under TRITON_INTERPRET=1 (set by
conftest.py), so the shapes stay tiny. float32 uses the shared tolerance: the
kernels accumulate in float32 like the reference and reduce their per-program
partials in float64, so they are no less accurate than torch.
"""
import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("triton needs a GPU or TRITON_INTERPRET=1", allow_module_level=True)

from mithridate import ops  # noqa: E402
from mithridate.kernels.gpu import linear as gpu_linear  # noqa: E402
from mithridate.testing import TOLERANCES, assert_verbose_allclose  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = [(1, 1), (7, 3), (33, 7), (65, 33)]
DTYPES = [torch.float32, torch.float64]
LOSSES = ["logistic", "squared", "absolute"]
# batch size per mode; shared with B >= DOT_MIN_BATCH takes the tl.dot route
MODES = {"single": None, "shared": 5, "independent": 3}
assert MODES["shared"] >= gpu_linear.DOT_MIN_BATCH


def make_problem(mode, n, d, dtype, loss, fit_intercept=True, weights=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    B = MODES[mode]
    batch = () if B is None else (B,)
    p = d + fit_intercept

    def randn(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype)

    X = randn(*((B,) if mode == "independent" else ()), n, d)
    ylead = X.shape[:-1]
    if loss == "logistic":
        y = (torch.rand(ylead, generator=g) < 0.5).to(dtype)
    else:
        y = randn(*ylead)
    s = (0.5 + torch.rand(ylead, generator=g, dtype=torch.float64)).to(dtype) if weights else None
    rows = torch.unique(torch.tensor([0, n - 1, n // 2]))
    return dict(theta=randn(*batch, p, scale=d ** -0.5 * 2), v=randn(*batch, p), X=X, y=y,
                sample_weight=s, rows=rows, B=B)


def evaluate(pb, backend, **options):
    """All three ops for one problem: {name: tensor}."""
    device = "cpu" if backend == "numba" else DEVICE
    dev = {k: (t.to(device) if torch.is_tensor(t) else t) for k, t in pb.items()}
    common = dict(sample_weight=dev["sample_weight"], backend=backend, **options)
    value, grad = ops.loss_grad(dev["theta"], dev["X"], dev["y"], **common)
    hv = ops.hvp(dev["theta"], dev["v"], dev["X"], dev["y"], **common)
    dX, dlam = ops.mixed(dev["theta"], dev["v"], dev["X"], dev["y"], dev["rows"], **common)
    return dict(value=value, grad=grad, hvp=hv, dX=dX, dlam=dlam)


def check_against_reference(pb, dtype, **options):
    got = evaluate(pb, "triton", **options)
    want = evaluate(pb, "torch", **options)
    rtol, atol = TOLERANCES[str(dtype).replace("torch.", "")]
    for name, t in got.items():
        assert t.dtype == dtype and t.device.type == DEVICE, name
        assert torch.isfinite(t).all(), name
        assert_verbose_allclose(t, want[name], rtol, atol, name=name)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("n, d", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("loss", LOSSES)
def test_matches_reference(mode, n, d, dtype, loss):
    pb = make_problem(mode, n, d, dtype, loss)
    check_against_reference(pb, dtype, loss=loss, lam=-0.5)


# (lam, penalize_intercept): penalising the intercept only matters with a lam
LAMS = [(None, False), ("scalar", False), ("scalar", True), ("vector", True)]


@pytest.mark.parametrize("mode", ["shared", "independent"])
@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("weights", [True, False])
@pytest.mark.parametrize("lam, penalize", LAMS)
@pytest.mark.parametrize("loss", LOSSES)
def test_options(mode, fit_intercept, weights, lam, penalize, loss):
    pb = make_problem(mode, 33, 7, torch.float64, loss, fit_intercept, weights, seed=1)
    lam = {None: None, "scalar": 0.7, "vector": torch.linspace(-2.0, 1.0, pb["B"], dtype=torch.float64)}[lam]
    check_against_reference(pb, torch.float64, loss=loss, lam=lam,
                            fit_intercept=fit_intercept, penalize_intercept=penalize)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("loss", LOSSES)
def test_extreme_margins(mode, dtype, loss):
    """|z| up to 1e4: no overflow, no nan, same values as the reference."""
    pb = make_problem(mode, 10, 2, dtype, loss, seed=2)
    zs = torch.tensor([-1e4, -1e3, -40.0, -1e-3, 0.0, 1e-3, 40.0, 1e3, 1e4, 2.5], dtype=dtype)
    pb["X"][..., 0] = zs
    pb["theta"][..., 0] = 1.0
    pb["theta"][..., 1] = 0.0
    pb["rows"] = torch.tensor([0, 4, 8])
    check_against_reference(pb, dtype, loss=loss, lam=0.0)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("loss", ["logistic", "squared"])
def test_tile_loops(monkeypatch, mode, loss):
    """Small tiles and few programs: the grid-stride loop over row tiles and the
    loop over column chunks both run several times."""
    monkeypatch.setattr(gpu_linear, "BLOCK_N", 16)
    monkeypatch.setattr(gpu_linear, "MAX_BLOCK_D", 16)
    monkeypatch.setattr(gpu_linear, "MAX_PROGRAMS", 2)
    pb = make_problem(mode, 65, 33, torch.float64, loss, seed=3)
    check_against_reference(pb, torch.float64, loss=loss, lam=0.1)


@pytest.mark.parametrize("mode", ["single", "shared"])
def test_deterministic(mode):
    pb = make_problem(mode, 65, 7, torch.float32, "logistic", seed=4)
    first, second = evaluate(pb, "triton", lam=0.1), evaluate(pb, "triton", lam=0.1)
    for name in first:
        assert torch.equal(first[name], second[name]), name
