"""The ``mithridate`` command line and ``mithridate bench --quick --json``."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from mithridate import __version__
from mithridate.cli import main

KEYS = {"op", "backend", "shape", "dtype", "median_s", "reference_median_s",
        "speedup", "roof_fraction", "roof_gbps"}


def check_records(records):
    assert isinstance(records, list) and records
    for r in records:
        assert KEYS <= set(r), f"missing keys {KEYS - set(r)} in {r}"
        for k in ("median_s", "reference_median_s", "speedup", "roof_fraction", "roof_gbps"):
            assert math.isfinite(r[k]) and r[k] > 0, (k, r)
        assert r["speedup"] == pytest.approx(r["reference_median_s"] / r["median_s"])
        assert isinstance(r["shape"], list) and all(isinstance(s, int) for s in r["shape"])
        assert r["dtype"] in ("float32", "float64")
        if r["op"] in ("loss_grad_batched", "hypergrad_batched"):
            assert math.isfinite(r["batch_gain"]) and r["batch_gain"] > 0
        if r["op"] == "torch_train":
            assert isinstance(r["steps"], int) and r["steps"] > 0
        if r["op"] == "lipschitz_batched":
            assert r["matmul_ratio"] == pytest.approx(r["median_s"] / r["matmul_median_s"])
    assert any(r["backend"] == "numba" for r in records)


def test_bench_quick_json(capsys):
    assert main(["bench", "--quick", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)  # stdout holds the JSON and nothing else
    check_records(records)
    assert {r["op"] for r in records} == {"loss_grad", "hvp", "loss_grad_batched",
                                          "lipschitz_batched", "hypergrad", "hypergrad_batched",
                                          "torch_train"}


def test_console_script_bench():
    script = Path(sys.executable).with_name("mithridate")
    out = subprocess.run([str(script), "bench", "--quick", "--json", "--ops", "hvp",
                          "--backends", "numba", "triton"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    records = json.loads(out.stdout)
    check_records(records)
    assert {r["op"] for r in records} == {"hvp"}
    assert "skipped backend triton" in out.stderr or any(r["backend"] == "triton" for r in records)


def test_bench_table(capsys):
    assert main(["bench", "--quick", "--ops", "loss_grad", "--backends", "numba"]) == 0
    out = capsys.readouterr().out
    assert "roof: read bandwidth" in out
    assert "speedup" in out and "numba" in out


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"mithridate {__version__}"


@pytest.mark.parametrize("argv", [["bench", "--nope"], ["bench", "--ops", "gemm"],
                                  ["bench", "--backends", "cobol"], ["frobnicate"], []])
def test_bad_arguments_exit_2(argv, capsys):
    assert main(argv) == 2
    assert "usage:" in capsys.readouterr().err
