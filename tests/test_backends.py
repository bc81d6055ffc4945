"""Backend selection rules of mithridate.backends."""
import logging
import subprocess
import sys

import numpy as np
import pytest

from mithridate import backends, ops


class FakeCudaTensor:
    """Stands for a CUDA tensor: selection looks only at the type's module and is_cuda."""
    __module__ = "torch"
    is_cuda = True


@pytest.fixture(autouse=True)
def no_override(monkeypatch):
    monkeypatch.delenv("MITHRIDATE_BACKEND", raising=False)


def test_auto_picks_numba_for_numpy():
    assert backends.select("auto", np.zeros(3)) == "numba"


def test_auto_picks_numba_for_cpu_tensors():
    torch = pytest.importorskip("torch")
    assert backends.select("auto", torch.zeros(3), None) == "numba"


def test_environment_overrides_auto(monkeypatch):
    monkeypatch.setenv("MITHRIDATE_BACKEND", "torch")
    assert backends.select("auto", np.zeros(3)) == "torch"
    assert backends.select("numba", np.zeros(3)) == "numba"  # an explicit choice wins


def test_unknown_environment_backend(monkeypatch):
    monkeypatch.setenv("MITHRIDATE_BACKEND", "fortran")
    with pytest.raises(ValueError, match="MITHRIDATE_BACKEND"):
        backends.select("auto", np.zeros(3))


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown"):
        backends.select("fortran", np.zeros(3))
    X = np.zeros((3, 2))
    with pytest.raises(ValueError, match="unknown"):
        ops.loss_grad(np.zeros(3), X, np.zeros(3), backend="fortran")


def _no_gpu(monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(backends, "cuda_available", lambda: False)


def test_explicit_triton_without_gpu_raises(monkeypatch):
    _no_gpu(monkeypatch)
    with pytest.raises(RuntimeError, match="triton"):
        backends.select("triton", np.zeros(3))


def test_explicit_triton_runs_under_interpreter(monkeypatch):
    _no_gpu(monkeypatch)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert backends.select("triton", np.zeros(3)) == "triton"


def test_auto_gpu_data(monkeypatch, caplog):
    _no_gpu(monkeypatch)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert backends.select("auto", FakeCudaTensor()) == "triton"
    monkeypatch.delenv("TRITON_INTERPRET")
    with caplog.at_level(logging.DEBUG, logger=backends.__name__):
        assert backends.select("auto", FakeCudaTensor()) == "torch"  # falls back, logs why
    assert "unavailable" in caplog.text


def test_explicit_missing_package_raises(monkeypatch):
    monkeypatch.setattr(backends, "_installed", lambda mod: mod != "numba")
    with pytest.raises(RuntimeError, match="numba is not installed"):
        backends.select("numba", np.zeros(3))


def test_import_stays_light(tmp_path):
    code = "import sys, mithridate; assert not {'torch', 'triton'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)  # the installed package


def test_every_backend_has_a_module():
    for name in backends.LINEAR:
        if backends.unavailable_reason(name) is None:
            mod = backends.linear_module(name)
            assert all(callable(getattr(mod, f)) for f in ("loss_grad", "hvp", "mixed"))
