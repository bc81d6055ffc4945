"""The ``mithridate`` command line and ``mithridate bench --quick --json``."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from mithridate import __version__, backends, bench
from mithridate.cli import main

KEYS = {"op", "backend", "shape", "dtype", "median_s", "reference_median_s",
        "speedup", "roof_fraction", "roof_gbps"}


MLP_KEYS = {"op", "backend", "shape", "layers", "dtype", "mode", "schedule", "T", "best_s",
            "reference_best_s", "speedup", "peak_extra_bytes", "reference_peak_extra_bytes",
            "memory_ratio", "memory_method", "time_per_step_s", "memory_per_step_bytes",
            "threads", "cpu_s", "reference_cpu_s"}


def check_mlp_record(r):
    assert MLP_KEYS <= set(r), f"missing keys {MLP_KEYS - set(r)} in {r}"
    assert r["path"] == "mlp" and (r["path"], r["backend"]) in backends.REGISTRY
    assert r["reference"] == "torch" and r["reference_mode"] == "unrolled"
    for k in ("best_s", "reference_best_s", "speedup", "cpu_s", "reference_cpu_s"):
        assert math.isfinite(r[k]) and r[k] > 0, (k, r)
    assert r["speedup"] == pytest.approx(r["reference_best_s"] / r["best_s"])
    assert r["peak_extra_bytes"] >= 0 and r["reference_peak_extra_bytes"] >= 0
    assert r["memory_ratio"] == pytest.approx(r["peak_extra_bytes"]
                                              / max(r["reference_peak_extra_bytes"], 1))
    assert r["memory_method"] in ("VmHWM-VmRSS", "ru_maxrss-VmRSS")
    assert r["layers"][0] == r["shape"][1] and r["layers"][-1] == 1
    assert r["mode"] in backends.implementation("hypergrad", "numba").MODES + ("implicit",)


def check_records(records):
    assert isinstance(records, list) and records
    for r in records:
        if r["op"] == "mlp":
            check_mlp_record(r)
            continue
        assert KEYS <= set(r), f"missing keys {KEYS - set(r)} in {r}"
        for k in ("median_s", "reference_median_s", "speedup", "roof_fraction", "roof_gbps"):
            assert math.isfinite(r[k]) and r[k] > 0, (k, r)
        assert r["speedup"] == pytest.approx(r["reference_median_s"] / r["median_s"])
        assert isinstance(r["shape"], list) and all(isinstance(s, int) for s in r["shape"])
        assert r["dtype"] in ("float32", "float64")
        assert r["path"] == bench.OP_PATH[r["op"]] and (r["path"], r["backend"]) in backends.REGISTRY
        assert r["reference"] == ("numpy" if r["path"] == "fixed_point" else "torch")
        if r["path"] == "hypergrad":
            assert r["mode"] in backends.implementation("hypergrad", r["backend"]).MODES
            assert r["reference_mode"] in ("trajectory", r["mode"])
        if r["op"] == "fixed_point_step":
            assert isinstance(r["n_words"], int) and r["n_words"] >= 1
        if r["op"] in ("loss_grad_batched", "hypergrad_batched"):
            assert math.isfinite(r["batch_gain"]) and r["batch_gain"] > 0
        if r["op"] == "torch_train":
            assert isinstance(r["steps"], int) and r["steps"] > 0
        if r["op"] == "lipschitz_batched":
            assert r["matmul_ratio"] == pytest.approx(r["median_s"] / r["matmul_median_s"])


def test_bench_quick_json(capsys):
    assert main(["bench", "--quick", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)  # stdout holds the JSON and nothing else
    check_records(records)
    assert {r["op"] for r in records} == set(bench.OPS)
    ran = {(r["path"], r["backend"]) for r in records}
    for path in backends.PATHS:  # every pair that can run here ran
        assert {(path, b) for b in backends.available(path) if bench.skip_reason(b) is None
                and b != bench.REFERENCE} <= ran
    modes = {(r["backend"], r["mode"]) for r in records if r["op"] == "hypergrad"}
    for b in backends.available("hypergrad"):
        if b != bench.REFERENCE and bench.skip_reason(b) is None:
            assert {(b, m) for m in bench.hypergrad_modes(b)} <= modes


def test_console_script_bench():
    script = Path(sys.executable).with_name("mithridate")
    out = subprocess.run([str(script), "bench", "--quick", "--json", "--ops", "hvp",
                          "--backends", "numba", "triton"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    records = json.loads(out.stdout)
    check_records(records)
    assert {r["op"] for r in records} == {"hvp"} and any(r["backend"] == "numba" for r in records)
    assert "skipped linear on triton" in out.stderr or any(r["backend"] == "triton" for r in records)


@pytest.mark.skipif(backends.unavailable_reason("cpp") is not None, reason="mithridate._C not built")
def test_bench_cpp(capsys):
    assert main(["bench", "--quick", "--json", "--backends", "cpp", "--ops", "loss_grad",
                 "fixed_point_encode", "fixed_point_step"]) == 0
    captured = capsys.readouterr()
    records = json.loads(captured.out)
    check_records(records)
    assert {(r["op"], r["backend"]) for r in records} == {("fixed_point_encode", "cpp"),
                                                          ("fixed_point_step", "cpp")}
    assert "skipped linear on cpp: no cpp implementation (implemented: numba, triton, torch)" \
        in captured.err
    assert main(["bench", "--quick", "--backends", "cpp", "--ops", "hvp"]) == 1  # nothing to run
    assert "skipped linear on cpp" in capsys.readouterr().out


def test_runnable_pairs_and_reasons(monkeypatch):
    monkeypatch.setattr(bench, "skip_reason", lambda b: "off" if b in ("triton", "cuda") else None)
    pairs, notes = bench.runnable(["hvp", "hypergrad", "fixed_point_step"],
                                  ["numba", "cpp", "cuda", "triton"])
    assert pairs == {"linear": ["numba"], "hypergrad": ["numba", "cpp"],
                     "fixed_point": ["numba", "cpp"]}
    assert notes == ["skipped linear on cpp: no cpp implementation (implemented: numba, triton, torch)",
                     "skipped linear on cuda: no cuda implementation (implemented: numba, triton, "
                     "torch)", "skipped linear on triton: off",
                     "skipped hypergrad on cuda: off",
                     "skipped hypergrad on triton: no triton implementation "
                     "(implemented: numba, cpp, cuda, torch)",
                     "skipped fixed_point on cuda: off",
                     "skipped fixed_point on triton: no triton implementation "
                     "(implemented: numba, cpp, cuda)"]
    monkeypatch.setattr(bench, "skip_reason", lambda b: "no torch" if b == "torch" else None)
    pairs, notes = bench.runnable(["hvp", "fixed_point_encode"], ["numba"])
    assert pairs == {"fixed_point": ["numba"]}  # its reference is numpy
    assert notes == ["skipped linear: its reference torch is unavailable: no torch"]


def test_bench_table(capsys):
    assert main(["bench", "--quick", "--ops", "loss_grad", "--backends", "numba"]) == 0
    out = capsys.readouterr().out
    assert "roof: read bandwidth" in out
    assert "speedup" in out and "numba" in out


def test_bench_mlp_quick(capsys):
    """Every mode of the network, each T of the quick preset, against the torch
    reference in the same run; a mode without a record says why in the notes."""
    assert main(["bench", "--quick", "--json", "--ops", "mlp"]) == 0
    captured = capsys.readouterr()
    records = json.loads(captured.out)
    check_records(records)
    cfg = bench.QUICK["mlp"]
    got = {(r["mode"], r["schedule"], r["T"]) for r in records}
    for name, opts in bench.MLP_MODES.items():
        key = (opts.get("mode", name), opts.get("checkpoints"))
        for T in cfg["Ts"]:
            assert key + (T,) in got or \
                f"mlp {name} T={T} float32 threads=1: no record: " in captured.err
    assert {(r["mode"], r["schedule"]) for r in records} >= {
        ("trajectory", None), ("checkpoint", "sqrt"), ("checkpoint", "binomial"),
        ("reversible", None), ("forward", None)}
    for r in records:  # the growth fits: every mode ran at both Ts
        assert math.isfinite(r["time_per_step_s"]) and math.isfinite(r["memory_per_step_bytes"])
        assert r["repeats"] == cfg["repeats"][r["T"]] and r["tracemalloc_peak_bytes"] > 0
        assert r["threads"] == 1  # both sides, set in the child's environment
    table = bench.format_table(records)
    assert "mem ratio" in table and "checkpoint binomial (2 states)" in table


def test_peak_memory_probe():
    """The per-record memory measure sees a 64 MiB allocation made after the reset. The
    pages come from their own anonymous mapping, touched one by one: a numpy array could
    land on heap pages an earlier test left resident (glibc raises its mmap threshold
    after large frees), which RSS had counted already."""
    import mmap
    import numpy as np
    rss0 = bench._rss_kib("VmRSS")
    if not bench._reset_peak():
        pytest.skip("/proc/self/clear_refs not writable here (bench falls back to ru_maxrss)")
    buf = mmap.mmap(-1, 64 << 20)
    a = np.frombuffer(buf, dtype=np.uint8)
    a[::mmap.PAGESIZE] = 1  # every page resident
    extra = (bench._rss_kib("VmHWM") - rss0) * 1024
    del a
    buf.close()
    assert 60 << 20 <= extra <= 200 << 20


def test_fit_lines():
    assert bench._fit([100, 300, 600], [1.0, 3.0, 6.0]) == pytest.approx((0.0, 0.01), abs=1e-12)
    assert bench._fit([100], [1.0]) == (None, None)


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"mithridate {__version__}"


@pytest.mark.parametrize("argv", [["bench", "--nope"], ["bench", "--ops", "gemm"],
                                  ["bench", "--backends", "cobol"], ["frobnicate"], []])
def test_bad_arguments_exit_2(argv, capsys):
    assert main(argv) == 2
    assert "usage:" in capsys.readouterr().err
