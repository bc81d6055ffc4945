"""Bad input for the network (issue 10's list), on every route: the generic engine
(backend "numba", auto's choice on host data) and the torch route (backend
"torch", and "triton" under TRITON_INTERPRET=1 without a GPU): each a clear error
naming the argument and the fix, raised before any work (no training gradient is
ever computed: the ``no_work`` fixture makes the first one fail the test)."""
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mithridate.hypergrad import Engine, generic, hypergrad  # noqa: E402
from mithridate.models import MLP, TorchModule  # noqa: E402

ROUTES = ["numba", "torch"]
if os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available():
    ROUTES.append("triton")
LAYERS = (4, 3, 1)


@pytest.fixture
def no_work(monkeypatch):
    from mithridate.hypergrad import mlp_torch

    def work(*args, **kw):
        raise AssertionError("work started before the bad input was refused")
    monkeypatch.setattr(generic._Inner, "grad_pass", work)
    monkeypatch.setattr(mlp_torch._Problems, "grad", work)
    monkeypatch.setattr(mlp_torch._Problems, "back", work)


def data(d=4, dtype=np.float64):
    rng = np.random.default_rng(0)
    X = lambda n: rng.standard_normal((n, d)).astype(dtype)  # noqa: E731
    lab = lambda n: (rng.random(n) < 0.5).astype(dtype)  # noqa: E731
    return dict(Xc=X(8), yc=lab(8), Xp=X(2), yp=lab(2), Xv=X(5), yv=np.r_[0, 1, lab(3)])


def call(route, model=None, lam=(-1.0, -1.0), mode="trajectory", gamma=0.5, arrays=None, **kw):
    model = model or MLP(layers=LAYERS)
    return hypergrad(**(arrays or data()), model=model, lam=np.asarray(lam), T=4, alpha=0.1,
                     gamma=gamma, mode=mode, backend=route, **kw)


@pytest.mark.parametrize("route", ROUTES)
def test_layer_sizes_that_do_not_match_the_data(route, no_work):
    with pytest.raises(ValueError, match=r"layers=\(5, 3, 1\) starts with width 5 but the data "
                                         r"has 4 features; pass layers=\(4, 3, 1\)"):
        call(route, MLP(layers=(5, 3, 1)))


@pytest.mark.parametrize("layers", [(4, 0, 1), (4, -3, 1), (4, 2.5, 1), (4,), (4, 3, 2)])
def test_non_positive_or_malformed_widths(layers):
    """Refused when the model is built, before any engine sees it."""
    with pytest.raises(ValueError, match=r"layers=.*(positive integer widths|output width 1)"):
        MLP(layers=layers)


@pytest.mark.parametrize("route", ROUTES)
def test_lam_vector_of_the_wrong_length(route, no_work):
    with pytest.raises(ValueError, match=r"lam has shape \(3,\); the model has 2 hyperparameters, "
                                         r"one per penalised group: give \(2,\)"):
        call(route, lam=(-1.0, -1.0, -1.0))
    arrays = data()
    arrays["Xp"], arrays["yp"] = np.stack([arrays["Xp"]] * 3), np.stack([arrays["yp"]] * 3)
    with pytest.raises(ValueError, match=r"lam has shape \(3, 3\); give \(2,\) for every problem "
                                         r"or \(3, 2\)"):
        call(route, lam=np.zeros((3, 3)), arrays=arrays)


@pytest.mark.parametrize("route", ROUTES)
def test_gamma_zero_with_mode_reversible(route, no_work):
    """Refused when the Engine is built: plain GD cannot be reversed."""
    fixed = {k: v for k, v in data().items() if k not in ("Xp", "yp")}
    with pytest.raises(ValueError, match="gamma=0 with mode='reversible'.*use mode='trajectory' "
                                         "or 'checkpoint', or gamma > 0"):
        Engine(**fixed, model=MLP(layers=LAYERS), T=4, alpha=0.1, gamma=0.0, mode="reversible",
               backend=route)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.complex64])
def test_torch_module_whose_parameters_are_not_floating_point(dtype):
    net = torch.nn.Linear(4, 1)
    net.weight = torch.nn.Parameter(torch.zeros(1, 4, dtype=dtype), requires_grad=False)
    with pytest.raises(TypeError, match=r"module parameter 'weight' has dtype .*; every parameter "
                                        r"must be floating point"):
        TorchModule(net)
    half = torch.nn.Linear(4, 1).half()
    with pytest.raises(TypeError, match=r"dtype torch.float16; use float32 or float64 "
                                        r"\(module.float\(\) or module.double\(\)\)"):
        TorchModule(half)


@pytest.mark.parametrize("route", ROUTES)
def test_buffer_budget_too_small_for_T(route, no_work):
    """The bit buffer of T steps (p words per step's digits) over max_buffer_bytes."""
    with pytest.raises(ValueError, match=r"needs a \d+-byte bit buffer.*over max_buffer_bytes=64; "
                                         r"use mode='checkpoint', a larger gamma, or raise "
                                         r"max_buffer_bytes"):
        call(route, mode="reversible", gamma=0.9, max_buffer_bytes=64)
    with pytest.raises(ValueError, match=r"max_buffer_bytes=64 applies to mode='reversible' only"):
        call(route, mode="trajectory", max_buffer_bytes=64)
