"""Sweeps against hostile input: unread or misspelt parameters, escaping names,
oversized grids, foreign stores, killed drivers, dead Ray addresses, a store that
becomes unwritable, and values an experiment refuses."""
import hashlib
import os
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from contextlib import closing
from pathlib import Path

import pytest

from mithridate.cli import main
from mithridate.experiments import (FIGURES, ResultsStore, SpecError, StoreError,
                                    StoreMismatchError, SweepError, SweepSpec, experiment,
                                    get_experiment, load_builtin, run_sweep)
from mithridate.experiments.runner import RAY_CONNECT_SECONDS, WATCH_SECONDS, ConfigError

TOY = {"name": "t", "experiment": "toy", "seeds": [0, 1], "grid": {"beta": [0.0, 0.1]},
       "fixed": {"scale": 2.0}}


def toml(d):
    """A spec mapping as TOML (flat scalars and lists only)."""
    def value(v):
        return repr(v).lower() if isinstance(v, bool) else \
            "[" + ", ".join(value(x) for x in v) + "]" if isinstance(v, list) else \
            f'"{v}"' if isinstance(v, str) else repr(v)
    lines = [f"{k} = {value(d[k])}" for k in ("name", "experiment", "seeds") if k in d]
    for table in ("grid", "fixed"):
        lines += [f"[{table}]"] + [f"{k} = {value(v)}" for k, v in d.get(table, {}).items()]
    return "\n".join(lines) + "\n"


def cli(tmp_path, d, *args):
    """Run ``mithridate sweep`` in-process on the spec ``d``; the exit code."""
    path = tmp_path / "spec.toml"
    path.write_text(toml(d))
    return main(["sweep", str(path), "--no-progress", *args])


def snapshot(folder):
    """Every file under ``folder`` with the sha1 of its bytes."""
    return {p.relative_to(folder): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def stored(out):
    with closing(sqlite3.connect(out / "results.sqlite")) as db:
        return dict(db.execute("SELECT key, metrics FROM results"))


@experiment("test-needs", params=("x", "need"))
def needs(configs):
    return [{"value": c["need"]} for c in configs]


def undeclared(configs):
    return [{"value": 0} for _ in configs]


# --- parameters the experiment never reads ----------------------------------------------

@pytest.mark.parametrize("change", [{"grid": {"beta": [0.0, 0.1], "colour": [1, 2]}},
                                    {"fixed": {"scael": 2.0}}])
def test_unread_parameter_refused_before_any_work(tmp_path, capsys, change):
    d = {**TOY, **change}
    with pytest.raises(SpecError, match="reads no parameter .*(colour|scael)"):
        SweepSpec.from_dict(d)
    direct = SweepSpec(**{k: d[k] for k in ("name", "experiment", "grid", "seeds", "fixed")})
    with pytest.raises(SpecError, match="reads no parameter"):  # built in Python: the runner
        run_sweep(direct, tmp_path / "py", progress=False)
    assert cli(tmp_path, d, "--out", str(tmp_path / "cli")) == 2
    assert "reads no parameter" in capsys.readouterr().err
    assert not (tmp_path / "py").exists() and not (tmp_path / "cli").exists()  # no work done


def test_every_builtin_figure_reads_its_whole_spec():
    load_builtin()
    assert len(FIGURES) >= 5
    for name, figure in FIGURES.items():
        for quick in (True, False):
            spec = figure.spec(quick)
            get_experiment(spec.experiment).check(spec)  # raises on an unread parameter


def test_experiments_must_declare_what_they_read(tmp_path):
    experiment("test-undeclared")(undeclared)
    spec = SweepSpec("u", "test-undeclared", {"x": [1]}, [0])
    with pytest.raises(SpecError, match="does not declare the parameters"):
        run_sweep(spec, tmp_path, progress=False)
    with pytest.raises(TypeError, match="params must be a sequence"):
        experiment("test-bad", params="x")
    with pytest.raises(ValueError, match=r"batch_keys \['y'\] are not in params"):
        experiment("test-bad", batch_keys=("seed", "y"), params=("x",))


# --- names, sizes and values ---------------------------------------------------------------

@pytest.mark.parametrize("name", ["../escape", "/tmp/abs", "a/b", "a\\b", "..", ".", ".hidden",
                                  "", "with space", "x" * 129, "nul\0"])
def test_name_cannot_leave_the_output_folder(tmp_path, monkeypatch, capsys, name):
    with pytest.raises(SpecError, match="name"):
        SweepSpec.from_dict({**TOY, "name": name})
    if name and "\0" not in name:
        monkeypatch.chdir(tmp_path)
        (tmp_path / "spec.toml").write_text(toml({**TOY, "name": name}))
        assert main(["sweep", "spec.toml", "--no-progress"]) == 2  # default --out results/NAME
        assert "name = " in capsys.readouterr().err
        assert sorted(os.listdir(tmp_path)) == ["spec.toml"]


def test_plain_names_accepted():
    for name in ("toy", "paper000-wine-features-quick", "run_2.1", "A" * 128):
        assert SweepSpec.from_dict({**TOY, "name": name}).name == name


def test_grid_too_large_refused_before_enumeration(tmp_path, capsys):
    grid = {"beta": [i / 1e3 for i in range(1000)], "model": [str(i) for i in range(1000)]}
    with pytest.raises(SpecError, match=r"makes 2,000,000 configs \(1000 beta x 1000 model x "
                                        r"2 seeds\), over the limit of 1,000,000"):
        SweepSpec.from_dict({**TOY, "grid": grid})
    huge = {"model": [str(i) for i in range(100)], "beta": [i / 100 for i in range(100)],
            "scale": [float(i) for i in range(100)], "sleep": [i / 1e6 for i in range(100)]}
    with pytest.raises(SpecError, match="configs"):  # 2e8: enumerating would exhaust memory
        SweepSpec.from_dict({**TOY, "grid": huge, "fixed": {}})
    assert cli(tmp_path, {**TOY, "grid": grid}, "--out", str(tmp_path / "o")) == 2
    assert "over the limit" in capsys.readouterr().err


def test_value_errors_exit_2_naming_the_value(tmp_path, capsys):
    bad = {**TOY, "grid": {"beta": [0.0, "lots"]}}
    with pytest.raises(ConfigError, match="refused .*'lots'"):
        run_sweep(SweepSpec.from_dict(bad), tmp_path / "a", progress=False)
    assert len(stored(tmp_path / "a")) == 2  # the good batch ran first and is kept
    assert cli(tmp_path, bad, "--out", str(tmp_path / "b")) == 2
    assert "could not convert string to float: 'lots'" in capsys.readouterr().err
    lacking = {"name": "n", "experiment": "test-needs", "seeds": [0], "grid": {"x": [1]}}
    with pytest.raises(ConfigError, match="needs the parameter 'need'.*add it to the spec"):
        run_sweep(SweepSpec.from_dict(lacking), tmp_path / "c", progress=False)
    # an experiment that breaks on valid input stays a failure (exit 1), not bad input
    failing = {**TOY, "grid": {"fail": [True]}}
    with pytest.raises(SweepError, match="asked to fail") as info:
        run_sweep(SweepSpec.from_dict(failing), tmp_path / "d", progress=False)
    assert not isinstance(info.value, ValueError)
    assert cli(tmp_path, failing, "--out", str(tmp_path / "e")) == 1


# --- the results store -----------------------------------------------------------------------

def _foreign_db(path, wal):
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        if wal:
            db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE notes (body TEXT)")
        db.execute("INSERT INTO notes VALUES ('mine')")


def _meta_only(path, wal):
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("PRAGMA journal_mode=" + ("WAL" if wal else "DELETE"))
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("CREATE TABLE results (key TEXT)")
        db.execute("INSERT INTO meta VALUES ('owner', 'someone else')")


@pytest.mark.parametrize("make", [_foreign_db, _meta_only])
@pytest.mark.parametrize("wal", [False, True])
def test_foreign_store_left_byte_for_byte(tmp_path, capsys, make, wal):
    out = tmp_path / "out"
    out.mkdir()
    make(out / "results.sqlite", wal)
    before = snapshot(out)
    with pytest.raises(StoreError, match="not a mithridate results store.*left untouched"):
        ResultsStore(out, SweepSpec.from_dict(TOY))
    assert cli(tmp_path, TOY, "--out", str(out)) == 2
    assert "not a mithridate results store" in capsys.readouterr().err
    assert snapshot(out) == before  # same bytes, and no -wal or -shm file beside it


def test_other_files_refused_untouched(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "results.sqlite").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "results.sqlite").write_bytes(b"SQLite format 3\0" + b"\xff" * 200)
    for sub, why in (("a", "not a regular file"), ("b", "not a mithridate results store")):
        before = snapshot(tmp_path / sub)
        with pytest.raises(StoreError, match=why):
            ResultsStore(tmp_path / sub, SweepSpec.from_dict(TOY))
        assert snapshot(tmp_path / sub) == before and len(os.listdir(tmp_path / sub)) == 1


def test_store_of_another_spec_left_byte_for_byte(tmp_path):
    run_sweep(SweepSpec.from_dict(TOY), tmp_path, progress=False)
    before = snapshot(tmp_path)
    assert list(before) == [Path("results.sqlite")]
    with pytest.raises(StoreMismatchError, match="nothing was changed"):
        ResultsStore(tmp_path, SweepSpec.from_dict({**TOY, "seeds": [0]}))
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("workers", ["1", "2"])
def test_store_unwritable_mid_run_exit_2_keeps_rows(tmp_path, workers):
    """The store's file system fills up (a file size limit, which binds root too): the
    run stops with exit 2 and a clear message; every row committed before is kept and
    the same command resumes the sweep."""
    d = {"name": "full", "experiment": "toy", "seeds": [0],
         "grid": {"beta": [i / 100 for i in range(20)]}}
    (tmp_path / "s.toml").write_text(toml(d))
    cmd = [sys.executable, "-c", "import sys; from mithridate.cli import main; sys.exit(main())",
           "sweep", str(tmp_path / "s.toml"), "--out", str(tmp_path / "o"), "--no-progress",
           "--workers", workers]
    limit = textwrap.dedent("""
        import resource
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))
    """)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    # cwd=tmp_path: from the checkout, `python -c` would import its source tree (no _C)
    full = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env,
                          preexec_fn=lambda: exec(limit), cwd=tmp_path)
    assert full.returncode == 2, full.stderr
    assert "cannot write to" in full.stderr and "rows committed before are kept" in full.stderr
    assert "Traceback" not in full.stderr
    kept = stored(tmp_path / "o")
    assert 1 <= len(kept) < 20
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env,
                           cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    after = stored(tmp_path / "o")
    assert len(after) == 20 and {k: after[k] for k in kept} == kept


# --- processes ------------------------------------------------------------------------------------

def _alive(pid):
    """Running, not a zombie (a reaper may be slow to collect orphans in containers)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_gone(pids, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline and any(map(_alive, pids)):
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killed_pool_driver_leaves_no_workers(tmp_path):
    (tmp_path / "slow_exp.py").write_text(textwrap.dedent("""
        import os, time
        from mithridate.experiments import experiment

        @experiment("test-slow", params=("x",))
        def slow(configs):
            open(os.path.join(os.environ["MARKS"], str(os.getpid())), "w").close()
            time.sleep(120)
            return [{"y": 0} for _ in configs]
    """))
    marks = tmp_path / "marks"
    marks.mkdir()
    driver = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        import slow_exp
        from mithridate.experiments import SweepSpec, run_sweep
        run_sweep(SweepSpec("slow", "test-slow", {{"x": [1, 2, 3, 4]}}, [0]),
                  {str(tmp_path / "out")!r}, workers=2, progress=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", driver], env={**os.environ, "MARKS": str(marks)},
                            stderr=subprocess.PIPE, cwd=tmp_path)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and len(os.listdir(marks)) < 2 and proc.poll() is None:
            time.sleep(0.05)
        workers = [int(p) for p in os.listdir(marks)]
        assert len(workers) == 2, proc.stderr.read().decode() if proc.poll() is not None else ""
        assert all(map(_alive, workers))
    finally:
        proc.kill()
        proc.wait()
    assert _wait_gone(workers, 5.0) == []


def test_watchdog_alone_ends_an_orphan(tmp_path):
    """The portable fallback (no prctl): the worker notices its parent is gone."""
    orphan = textwrap.dedent("""
        import os, sys, time
        sys.platform = "fallback"  # skip the Linux parent-death signal
        from mithridate.experiments.runner import _exit_with
        _exit_with(os.getppid())
        print(os.getpid(), flush=True)
        time.sleep(120)
    """)
    parent = (f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
              f"{orphan!r}]); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True,
                            cwd=tmp_path)
    try:
        pid = int(proc.stdout.readline())
        assert _alive(pid)
    finally:
        proc.kill()
        proc.wait()
    assert _wait_gone([pid], 5 * WATCH_SECONDS + 2.0) == []


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_ray_address_where_nothing_answers(tmp_path, scheme):
    address = f"{scheme}127.0.0.1:{_closed_port()}"
    (tmp_path / "s.toml").write_text(toml(TOY))
    t0 = time.time()
    # a subprocess with a timeout first: without the check ray.init retries for minutes
    done = subprocess.run([sys.executable, "-c", "import sys; from mithridate.cli import main; "
                           "sys.exit(main())", "sweep", str(tmp_path / "s.toml"), "--out",
                           str(tmp_path / "o"), "--executor", "ray", "--address", address],
                          capture_output=True, text=True, timeout=2 * RAY_CONNECT_SECONDS + 30,
                          cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert f"--address {address}: nothing answers there within " \
           f"{RAY_CONNECT_SECONDS:g} s" in done.stderr
    assert time.time() - t0 < RAY_CONNECT_SECONDS + 30
    with pytest.raises(ValueError, match="nothing answers"):
        run_sweep(SweepSpec.from_dict(TOY), tmp_path / "o", executor="ray", address=address,
                  progress=False)
    assert not (tmp_path / "o").exists()
