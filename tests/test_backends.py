"""The backend registry (mithridate.backends): the table, selection rules and their errors."""
import importlib
import logging
import subprocess
import sys

import numpy as np
import pytest

from mithridate import backends, ops

PATHS = ("linear", "lipschitz", "hypergrad", "fixed_point", "mlp")
HOST_AUTO = {"linear": "numba", "lipschitz": "numba", "hypergrad": "numba", "fixed_point": "cpp",
             "mlp": "numba"}


class FakeCudaTensor:
    """Stands for a CUDA tensor: selection looks only at the type's module and is_cuda."""
    __module__ = "torch"
    is_cuda = True


@pytest.fixture(autouse=True)
def no_override(monkeypatch):
    monkeypatch.delenv("MITHRIDATE_BACKEND", raising=False)


def only(monkeypatch, *names):
    """Pretend only backends `names` can run here."""
    monkeypatch.setattr(backends, "unavailable_reason",
                        lambda b: None if b in names else f"{b} is switched off for this test")


def test_the_table():
    assert backends.PATHS == PATHS
    assert backends.BACKENDS == ("numba", "cpp", "cuda", "triton", "torch", "auto")
    assert backends.implemented("linear") == ("numba", "triton", "torch")
    assert backends.implemented("lipschitz") == ("numba", "triton", "torch")
    assert backends.implemented("hypergrad") == ("numba", "cpp", "cuda", "torch")
    assert backends.implemented("fixed_point") == ("numba", "cpp", "cuda")
    assert backends.implemented("mlp") == ("numba", "triton", "torch")
    assert backends.REGISTRY["hypergrad", "cpp"] == backends.REGISTRY["hypergrad", "cuda"] \
        == "mithridate.hypergrad.native"
    for path, (host, gpu) in backends.AUTO.items():  # auto only ever picks what exists
        assert set(host) | set(gpu) <= set(backends.implemented(path))


@pytest.mark.parametrize("path", PATHS)
def test_auto_on_host_data(path):
    assert backends.select(path, "auto", np.zeros(3)) == HOST_AUTO[path]
    assert backends.select(path) == HOST_AUTO[path]  # no data: host


def test_auto_picks_numba_for_cpu_tensors():
    torch = pytest.importorskip("torch")
    assert backends.select("linear", "auto", torch.zeros(3), None) == "numba"


@pytest.mark.parametrize("path", PATHS)
def test_explicit_choices(path):
    for name in backends.available(path):
        assert backends.select(path, name, np.zeros(3)) == name


@pytest.mark.parametrize("path,env", [("linear", "torch"), ("lipschitz", "torch"),
                                      ("hypergrad", "torch"), ("hypergrad", "cpp"),
                                      ("fixed_point", "numba"), ("mlp", "torch")])
def test_environment_overrides_auto(monkeypatch, path, env):
    monkeypatch.setenv("MITHRIDATE_BACKEND", env)
    assert backends.select(path, "auto", np.zeros(3)) == env
    assert backends.select(path, HOST_AUTO[path], np.zeros(3)) == HOST_AUTO[path]  # explicit wins


def test_environment_auto_is_auto(monkeypatch):
    monkeypatch.setenv("MITHRIDATE_BACKEND", "auto")
    assert backends.select("linear") == "numba"


@pytest.mark.parametrize("path,env", [("linear", "cpp"), ("hypergrad", "triton"),
                                      ("fixed_point", "torch")])
def test_environment_backend_without_the_path_is_ignored(monkeypatch, caplog, path, env):
    monkeypatch.setenv("MITHRIDATE_BACKEND", env)
    with caplog.at_level(logging.DEBUG, logger=backends.__name__):
        assert backends.select(path, "auto", np.zeros(3)) == HOST_AUTO[path]
    assert f"MITHRIDATE_BACKEND='{env}' has no {path} implementation" in caplog.text


def test_environment_backend_unavailable(monkeypatch):
    only(monkeypatch, "numba")
    monkeypatch.setenv("MITHRIDATE_BACKEND", "cpp")
    with pytest.raises(RuntimeError, match=r"hypergrad on MITHRIDATE_BACKEND='cpp' is unavailable: "
                                           r"cpp is switched off.*Available here for hypergrad: "
                                           r"numba \(or 'auto'\)"):
        backends.select("hypergrad", "auto", np.zeros(3))


def test_unknown_environment_backend(monkeypatch):
    monkeypatch.setenv("MITHRIDATE_BACKEND", "fortran")
    for path in PATHS:
        with pytest.raises(ValueError, match="MITHRIDATE_BACKEND='fortran' is unknown"):
            backends.select(path, "auto", np.zeros(3))


def test_unknown_backend_and_path():
    for path in PATHS:
        with pytest.raises(ValueError, match=r"backend='fortran' is unknown; choose one of \["):
            backends.select(path, "fortran", np.zeros(3))
    with pytest.raises(ValueError, match="backend='fortran' is unknown"):
        backends.implementation("linear", "fortran")
    with pytest.raises(ValueError, match="backend='fortran' is unknown"):
        backends.unavailable_reason("fortran")
    X = np.zeros((3, 2))
    with pytest.raises(ValueError, match="unknown"):
        ops.loss_grad(np.zeros(3), X, np.zeros(3), backend="fortran")
    for call in (lambda: backends.select("gemm", "numba"), lambda: backends.select("gemm"),
                 lambda: backends.implementation("gemm", "numba"), lambda: backends.available("gemm")):
        with pytest.raises(ValueError, match=r"hot path 'gemm' is unknown; choose one of \['linear'"):
            call()


@pytest.mark.parametrize("path,name", [("hypergrad", "triton"), ("fixed_point", "torch"),
                                       ("fixed_point", "triton"), ("linear", "cpp"),
                                       ("linear", "cuda"), ("lipschitz", "cpp"), ("mlp", "cpp"),
                                       ("mlp", "cuda")])
def test_backend_without_the_path(path, name):
    listed = ", ".join(backends.implemented(path))
    message = f"backend='{name}': {path} has no {name} implementation; implemented: {listed}."
    with pytest.raises(ValueError, match=message):
        backends.select(path, name, np.zeros(3))
    with pytest.raises(ValueError, match=message):
        backends.implementation(path, name)


def test_explicit_unavailable_says_why_and_what_to_use(monkeypatch):
    only(monkeypatch, "numba", "torch")
    with pytest.raises(RuntimeError, match=r"hypergrad on backend='cpp' is unavailable: cpp is "
                                           r"switched off for this test\. Available here for "
                                           r"hypergrad: numba, torch \(or 'auto'\)\."):
        backends.select("hypergrad", "cpp", np.zeros(3))
    only(monkeypatch)
    with pytest.raises(RuntimeError, match="Available here for fixed_point: none"):
        backends.select("fixed_point", "numba")


def test_available_follows_availability(monkeypatch):
    only(monkeypatch, "numba", "cpp")
    assert {p: backends.available(p) for p in PATHS} == {
        "linear": ("numba",), "lipschitz": ("numba",), "hypergrad": ("numba", "cpp"),
        "fixed_point": ("numba", "cpp"), "mlp": ("numba",)}


@pytest.mark.parametrize("path,first,then", [("linear", "numba", "torch"),
                                             ("hypergrad", "numba", "cpp"),
                                             ("fixed_point", "cpp", "numba"),
                                             ("mlp", "numba", "torch")])
def test_auto_falls_back_and_logs_why(monkeypatch, caplog, path, first, then):
    names = set(backends.NAMES) - {first}
    only(monkeypatch, *names)
    with caplog.at_level(logging.DEBUG, logger=backends.__name__):
        assert backends.select(path, "auto", np.zeros(3)) == then
    assert f"backend auto for {path}: {first} unavailable ({first} is switched off" in caplog.text
    assert f"using {then}" in caplog.text


def test_auto_with_nothing_available(monkeypatch):
    only(monkeypatch, "triton")
    with pytest.raises(RuntimeError, match=r"no backend can run fixed_point on host data here: "
                                           r"cpp unavailable .*; numba unavailable"):
        backends.select("fixed_point", "auto", np.zeros(3))
    with pytest.raises(RuntimeError, match="no backend can run hypergrad on CUDA tensors"):
        backends.select("hypergrad", "auto", FakeCudaTensor())


def test_auto_on_gpu_data(monkeypatch, caplog):
    only(monkeypatch, *backends.NAMES)
    assert {p: backends.select(p, "auto", FakeCudaTensor()) for p in PATHS} == {
        "linear": "triton", "lipschitz": "triton", "hypergrad": "cuda", "fixed_point": "cuda",
        "mlp": "triton"}
    only(monkeypatch, "numba", "torch")
    with caplog.at_level(logging.DEBUG, logger=backends.__name__):
        assert backends.select("lipschitz", "auto", np.zeros(3), FakeCudaTensor()) == "torch"
    assert "triton unavailable" in caplog.text


def _no_gpu(monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(backends, "cuda_available", lambda: False)


def test_explicit_triton_without_gpu_raises(monkeypatch):
    _no_gpu(monkeypatch)
    with pytest.raises(RuntimeError, match="linear on backend='triton' is unavailable: triton needs "
                                           "a CUDA GPU"):
        backends.select("linear", "triton", np.zeros(3))


def test_explicit_triton_runs_under_interpreter(monkeypatch):
    _no_gpu(monkeypatch)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert backends.select("linear", "triton", np.zeros(3)) == "triton"
    assert backends.select("linear", "auto", FakeCudaTensor()) == "triton"
    assert backends.select("mlp", "triton", np.zeros(3)) == "triton"


def test_cuda_needs_the_extension_and_a_gpu(monkeypatch):
    monkeypatch.setattr(backends, "cuda_available", lambda: False)
    monkeypatch.setattr(backends, "_import_error", lambda mod: None)
    assert backends.unavailable_reason("cuda") == "no CUDA GPU is visible to torch"
    assert backends.unavailable_reason("cpp") is None
    monkeypatch.setattr(backends, "cuda_available", lambda: True)
    assert backends.unavailable_reason("cuda") is None
    monkeypatch.setattr(backends, "_import_error", lambda mod: "undefined symbol: cudaFree")
    assert "mithridate._C_cuda does not import (undefined symbol: cudaFree)" \
        in backends.unavailable_reason("cuda")
    assert "mithridate._C does not import" in backends.unavailable_reason("cpp")


def test_explicit_missing_package_raises(monkeypatch):
    monkeypatch.setattr(backends, "_installed", lambda mod: mod != "numba")
    with pytest.raises(RuntimeError, match="numba is not installed"):
        backends.select("linear", "numba", np.zeros(3))


def test_import_stays_light(tmp_path):
    code = ("import sys, mithridate; from mithridate import backends\n"
            "assert [backends.select(p) for p in backends.PATHS] == "
            "['numba', 'numba', 'numba', 'cpp', 'numba']\n"
            "assert not {'torch', 'triton'} & set(sys.modules), 'imported torch'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)  # the installed package


def test_mlp_on_gpu_data_falls_back_to_torch(monkeypatch, caplog):
    only(monkeypatch, "numba", "torch")
    with caplog.at_level(logging.DEBUG, logger=backends.__name__):
        assert backends.select("mlp", "auto", FakeCudaTensor()) == "torch"
    assert "backend auto for mlp: triton unavailable" in caplog.text


def test_gpu_flag_picks_as_for_cuda_tensors(monkeypatch, caplog):
    """select(..., gpu=True): numpy data the caller moves to the GPU (Engine's device='cuda')."""
    only(monkeypatch, *backends.NAMES)
    assert backends.select("mlp", "auto", np.zeros(3), gpu=True) == "triton"
    assert backends.select("mlp", "auto", np.zeros(3)) == "numba"
    only(monkeypatch, "numba", "torch")
    with caplog.at_level(logging.DEBUG, logger=backends.__name__):
        assert backends.select("mlp", "auto", gpu=True) == "torch"
    assert "backend auto for mlp: triton unavailable" in caplog.text
    monkeypatch.setenv("MITHRIDATE_BACKEND", "numba")  # the override wins over the flag
    assert backends.select("mlp", "auto", gpu=True) == "numba"


def test_mlp_triton_module_holds_the_network_kernels(monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    mod = backends.implementation("mlp", "triton")
    assert mod is importlib.import_module("mithridate.kernels.gpu.mlp")
    for name in ("bias_act", "masked", "head", "bias_act_reference", "masked_reference",
                 "head_reference", "exact_forward", "exact_reverse_theta", "exact_reverse"):
        assert callable(getattr(mod, name)), name


ENTRY_POINTS = {"linear": ("loss_grad", "hvp", "mixed"), "lipschitz": ("lipschitz", "data_bounds"),
                "fixed_point": ("encode", "decode", "mul", "required_words")}


def test_every_available_entry_has_its_module():
    for (path, name), module in backends.REGISTRY.items():
        if backends.unavailable_reason(name) is not None:
            continue
        mod = backends.implementation(path, name)
        assert mod is importlib.import_module(module) and backends.implementation(path, name) is mod
        kernels = mod.fixed_point if path == "fixed_point" and name != "numba" else mod
        assert all(callable(getattr(kernels, f)) for f in ENTRY_POINTS.get(path, ()))


# ---- fixed point: every host backend, the same bits ---------------------------

HOST_FIXED = [b for b in ("cpp", "numba") if backends.unavailable_reason(b) is None]


@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 1, 3), (0,)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("num,den", [(9, 10), (1, 3), (7, 5)])
def test_fixed_point_backends_agree_bit_for_bit(shape, dtype, num, den):
    from mithridate import fixed_point as fp
    rng = np.random.default_rng(sum(shape) + num)
    x = (rng.standard_normal(shape) * 100).astype(dtype)
    f, steps = 30, 6
    w = fp.required_words(steps, num, den)
    runs = {}
    for name in HOST_FIXED:
        q = fp.encode(x, f, backend=name)
        buf = fp.new_buffer(shape, w)
        trace = [q.copy()]
        for _ in range(steps):
            fp.mul(q, num, den, buf, backend=name)
            trace.append(q.copy())
        after = buf.copy()
        for _ in range(steps):
            fp.unmul(q, num, den, buf, backend=name)
        assert np.array_equal(q, trace[0]) and not buf.any()  # exact inverse
        runs[name] = trace, after, fp.decode(trace[-1], f, backend=name)
    ref_trace, ref_buf, ref_x = runs[HOST_FIXED[0]]
    assert ref_trace[0].dtype == np.int64 and ref_trace[0].shape == shape
    assert np.array_equal(ref_x, np.ldexp(ref_trace[-1].astype(np.float64), -f))
    for trace, buf, xs in runs.values():
        assert all(np.array_equal(a, b) for a, b in zip(trace, ref_trace))
        assert np.array_equal(buf, ref_buf) and np.array_equal(xs, ref_x)


def test_fixed_point_errors_are_the_same_on_every_backend():
    from mithridate import fixed_point as fp
    for name in HOST_FIXED:
        with pytest.raises(ValueError, match=r"x\[1\] is nan or inf"):
            fp.encode(np.array([0.0, np.nan]), 10, backend=name)
        q = fp.encode(np.full(3, 5.0), 10, backend=name)
        buf = fp.new_buffer(3, 1)
        with pytest.raises(fp.FixedPointOverflow, match=r"would overflow buffer \(n_words=1\) at q\[0\]"):
            for _ in range(100):
                fp.mul(q, 1, 1000, buf, backend=name)


def test_fixed_point_follows_the_registry(monkeypatch):
    from mithridate import fixed_point as fp
    calls = []
    real = backends.implementation
    monkeypatch.setattr(backends, "implementation",
                        lambda path, name: calls.append((path, name)) or real(path, name))
    fp.encode(np.ones(2), 4)
    monkeypatch.setenv("MITHRIDATE_BACKEND", "numba")
    fp.encode(np.ones(2), 4)
    assert calls == [("fixed_point", "cpp"), ("fixed_point", "numba")]
    monkeypatch.setenv("MITHRIDATE_BACKEND", "cuda")  # a capacity is host arithmetic, whatever the data
    assert fp.required_words(10, 9, 10) == real("fixed_point", "numba").required_words(10, 9, 10)
    with pytest.raises(ValueError, match=r"backend='fortran' is unknown"):
        fp.decode(np.zeros(2, np.int64), 4, backend="fortran")
    with pytest.raises(ValueError, match=r"backend='torch': fixed_point has no torch implementation"):
        fp.encode(np.ones(2), 4, backend="torch")


def test_fixed_point_backend_must_run_where_the_data_lives(monkeypatch):
    from mithridate import fixed_point as fp
    only(monkeypatch, *backends.NAMES)
    with pytest.raises(ValueError, match=r"q is on the host but backend='cuda' runs on CUDA tensors; "
                                         r"use backend='cpp', 'numba' or 'auto'"):
        fp.mul(np.zeros(2, np.int64), 9, 10, fp.new_buffer(2, 1), backend="cuda")
    with pytest.raises(ValueError, match=r"x is a CUDA tensor but backend='numba' runs on the host; "
                                         r"use backend='cuda' or 'auto'"):
        fp.encode(FakeCudaTensor(), 4, backend="numba")
