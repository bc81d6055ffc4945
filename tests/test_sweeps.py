"""Sweeps: specs, batching, the SQLite store, resume after SIGKILL, executors, CLI errors."""
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from contextlib import closing

import pandas as pd
import pytest

from mithridate.cli import main
from mithridate.experiments import (ResultsStore, SpecError, StoreError, StoreMismatchError,
                                    SweepSpec, config_key, run_sweep)
from mithridate.experiments.runner import _share_cores, make_batches

TOML = """
name = "t"
experiment = "toy"
seeds = [0, 1, 2]
[grid]
model = ["a", "b"]
beta = [0.0, 0.1, 0.2]
[fixed]
scale = 2.0
"""


# Run it with cwd=tmp_path: `python -c` puts the cwd first on sys.path, and from the
# checkout the source tree (no compiled _C) would shadow the installed package.
CLI = [sys.executable, "-c", "import sys; from mithridate.cli import main; sys.exit(main())"]


def toy_spec(**changes):
    d = {"name": "t", "experiment": "toy", "seeds": [0, 1, 2],
         "grid": {"model": ["a", "b"], "beta": [0.0, 0.1, 0.2]}, "fixed": {"scale": 2.0}}
    d.update(changes)
    return SweepSpec.from_dict(d)


def rows(out):
    """Stored rows, read with sqlite3 alone: key -> (metrics JSON, finished_at)."""
    with closing(sqlite3.connect(out / "results.sqlite")) as db:
        return {k: (m, t) for k, m, t in db.execute("SELECT key, metrics, finished_at "
                                                     "FROM results")}


def committed(out):
    try:
        return len(rows(out))
    except sqlite3.OperationalError:  # the store is being created
        return 0


def test_spec_configs_keys_and_fingerprint(tmp_path):
    (tmp_path / "s.toml").write_text(TOML)
    spec = SweepSpec.from_toml(tmp_path / "s.toml")
    assert spec == toy_spec()
    configs = spec.configs()
    assert len(configs) == 18 and list(configs[0]) == ["model", "beta", "scale", "seed"]
    assert configs[:2] == [{"model": "a", "beta": 0.0, "scale": 2.0, "seed": 0},
                           {"model": "a", "beta": 0.0, "scale": 2.0, "seed": 1}]
    assert len({config_key(c) for c in configs}) == 18
    assert config_key({"a": 1, "b": 2}) == config_key({"b": 2, "a": 1})
    assert spec.fingerprint() == toy_spec(name="other").fingerprint()
    assert spec.fingerprint() != toy_spec(seeds=[0, 1]).fingerprint()


@pytest.mark.parametrize("change, match", [
    ({"colour": 1}, "unknown key"),
    ({"seeds": "0"}, "seeds"),
    ({"seeds": [0.5]}, "seeds must be integers"),
    ({"seeds": []}, "seeds"),
    ({"grid": {}}, "grid must be a non-empty"),
    ({"grid": {"beta": []}}, "grid.beta"),
    ({"grid": {"beta": [[0.1]]}}, "grid.beta"),
    ({"grid": {"beta": [float("inf")]}}, r"grid.beta = inf: values must be finite"),
    ({"fixed": {"scale": float("nan")}}, r"fixed.scale = nan: values must be finite"),
    ({"grid": {"seed": [1]}}, "appear twice"),
    ({"fixed": {"beta": 1.0}}, "appear twice"),
    ({"experiment": "nope"}, "unknown experiment 'nope'"),
])
def test_malformed_spec(change, match):
    with pytest.raises(SpecError, match=match):
        toy_spec(**change)


def test_batches_share_non_batch_keys():
    configs = toy_spec().configs()
    batches = make_batches(configs, ("seed",))
    assert len(batches) == 6 and all(len(b) == 3 for b in batches)
    assert [c for b in batches for c in b] == configs
    sizes = [len(b) for b in make_batches(configs, ("seed", "beta"), max_batch=4)]
    assert sizes == [4, 4, 1, 4, 4, 1]  # per model: 9 configs cut at max_batch


def test_store_resume_mismatch_export(tmp_path):
    spec = toy_spec()
    first = run_sweep(toy_spec(seeds=[0, 1, 2]), tmp_path, progress=False)
    assert len(first) == 18 and set(first["batch_size"]) == {3}
    before = rows(tmp_path)
    again = run_sweep(spec, tmp_path, workers=2, progress=False)  # nothing left to run
    pd.testing.assert_frame_equal(first, again)
    assert rows(tmp_path) == before
    with pytest.raises(StoreMismatchError, match="choose another --out"):
        ResultsStore(tmp_path, toy_spec(seeds=[0, 1]))
    assert rows(tmp_path) == before
    with ResultsStore(tmp_path, spec) as store:
        store.add([(spec.configs()[0], {"score": -1.0, "batch_size": 0})])  # first result wins
        for name in ("r.csv", "r.parquet"):
            back = (pd.read_csv if name.endswith("csv") else pd.read_parquet)(
                store.export(tmp_path / name))
            pd.testing.assert_frame_equal(back, first, check_dtype=False)
    assert rows(tmp_path) == before


def test_store_refuses_foreign_files(tmp_path):
    (tmp_path / "results.sqlite").write_bytes(b"not a database" * 100)
    with pytest.raises(StoreError, match="not a mithridate results store"):
        ResultsStore(tmp_path, toy_spec())
    assert (tmp_path / "results.sqlite").read_bytes() == b"not a database" * 100
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="writable --out"):
        ResultsStore(tmp_path / "file" / "sub", toy_spec())


def test_process_pool_matches_in_process(tmp_path):
    serial = run_sweep(toy_spec(), tmp_path / "a", progress=False)
    pooled = run_sweep(toy_spec(), tmp_path / "b", workers=2, progress=False)
    pd.testing.assert_frame_equal(serial, pooled)


def test_pool_workers_share_the_cores(monkeypatch):
    """Each worker gets cpu_count // workers threads unless the user chose a number."""
    monkeypatch.delenv("NUMBA_NUM_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    _share_cores(1)
    assert os.environ["NUMBA_NUM_THREADS"] == "1" and os.environ["OMP_NUM_THREADS"] == "3"


def test_failure_keeps_finished_batches(tmp_path):
    spec = toy_spec(grid={"fail": [False, True]}, seeds=[0, 1])
    with pytest.raises(Exception, match="asked to fail"):
        run_sweep(spec, tmp_path, progress=False)
    assert len(rows(tmp_path)) == 2  # the batch with fail=False, committed before the error


def test_sigkill_mid_sweep_then_resume(tmp_path):
    spec = toy_spec(grid={"beta": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]},
                    seeds=[0, 1], fixed={"sleep": 0.1})
    (tmp_path / "s.toml").write_text(textwrap.dedent("""
        name = "kill"
        experiment = "toy"
        seeds = [0, 1]
        [grid]
        beta = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
        [fixed]
        sleep = 0.1
    """))
    out = tmp_path / "out"
    cmd = [*CLI, "sweep", str(tmp_path / "s.toml"),
           "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if (out / "results.sqlite").exists() and committed(out) >= 4:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = rows(out)
    assert 4 <= len(before) < 16
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    after = rows(out)
    assert len(after) == 16 and set(after) == {config_key(c) for c in spec.configs()}
    assert {k: after[k] for k in before} == before  # finished rows untouched
    assert "16 configs" in done.stdout and "score mean" in done.stdout


def test_ray_local_cluster_and_join(tmp_path):
    ray = pytest.importorskip("ray")
    spec = toy_spec()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        via_ray = run_sweep(spec, tmp_path / "ray", executor="ray", progress=False)
        # a second process joins the running cluster with --address
        address = ray.get_runtime_context().gcs_address
        (tmp_path / "s.toml").write_text(TOML)
        joined = subprocess.run([*CLI, "sweep",
                                 str(tmp_path / "s.toml"), "--out", str(tmp_path / "join"),
                                 "--executor", "ray", "--address", address, "--no-progress",
                                 "--export", str(tmp_path / "join.csv")],
                                capture_output=True, text=True, timeout=120, cwd=tmp_path)
    finally:
        ray.shutdown()
    assert joined.returncode == 0, joined.stderr
    local = run_sweep(spec, tmp_path / "local", progress=False)
    pd.testing.assert_frame_equal(via_ray, local)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "join.csv"), local, check_dtype=False)


def test_cli_bad_input_exit_2(tmp_path, capsys):
    good = tmp_path / "good.toml"
    good.write_text(TOML)
    out = tmp_path / "out"
    assert main(["sweep", str(good), "--out", str(out), "--no-progress"]) == 0
    before = rows(out)
    bad = {"unknown.toml": TOML.replace('"toy"', '"nope"'),
           "key.toml": "colour = 1\n" + TOML,
           "type.toml": TOML.replace("[0, 1, 2]", '"all"'),
           "empty.toml": 'experiment = "toy"\nseeds = [0]\n[grid]\n',
           "syntax.toml": "experiment = \n"}
    for name, text in bad.items():
        (tmp_path / name).write_text(text)
        assert main(["sweep", str(tmp_path / name), "--out", str(out)]) == 2, name
    other = TOML.replace("[0, 1, 2]", "[0, 1]")
    (tmp_path / "other.toml").write_text(other)
    (tmp_path / "file").write_text("")
    for argv in (["sweep", str(tmp_path / "other.toml"), "--out", str(out)],
                 ["sweep", str(good), "--out", str(tmp_path / "file" / "x")],
                 ["sweep", str(tmp_path / "missing.toml")],
                 ["sweep", str(good), "--out", str(out), "--export", str(tmp_path / "r.xls")],
                 ["sweep", str(good), "--address", "auto"],
                 ["reproduce", "nope"], ["reproduce"]):
        assert main(argv) == 2, argv
    err = capsys.readouterr().err
    for needle in ("unknown experiment 'nope'", "unknown key(s) ['colour']", "seeds must be",
                   "grid must be a non-empty", "not valid TOML", "fingerprint",
                   "choose a writable --out", "cannot read spec file", ".csv or .parquet",
                   "add --executor ray", "unknown figure 'nope'", "--list"):
        assert needle in err, needle
    assert rows(out) == before  # nothing lost or overwritten


def test_reproduce_list_and_toy(tmp_path, capsys):
    assert main(["reproduce", "--list"]) == 0
    listed = capsys.readouterr().out
    assert "toy" in listed
    assert main(["reproduce", "toy", "--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    assert {"results.csv", "toy.png", "summary.md", "results.sqlite"} <= set(os.listdir(tmp_path))
    assert len(pd.read_csv(tmp_path / "results.csv")) == 12
    assert "mean" in capsys.readouterr().out
