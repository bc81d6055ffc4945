"""mithridate.warmup: argument checks, and that a warmed cache serves a fresh
process without one compile (in a private NUMBA_CACHE_DIR)."""
import json
import os
import subprocess
import sys

import pytest

from mithridate import warmup as wu


def test_jobs_and_dtypes_are_named():
    assert wu.DTYPES == ("float64", "float32")
    assert all(name.split(".")[0] in ("hypergrad", "ops", "models") for name in wu.JOBS)
    assert {"hypergrad.trajectory", "hypergrad.checkpoint", "hypergrad.forward",
            "hypergrad.reversible", "hypergrad.implicit", "ops.loss_grad", "ops.hvp",
            "ops.mixed"} <= set(wu.JOBS)


@pytest.mark.parametrize("kwargs, match", [
    (dict(jobs=["ops.nope"]), "unknown warm-up jobs"),
    (dict(dtypes=("float16",)), "non-empty subset"),
    (dict(dtypes=()), "non-empty subset"),
    (dict(processes=0), "positive int"),
    (dict(processes=True), "positive int"),
    (dict(processes=1.5), "positive int"),
])
def test_bad_arguments_fail_before_any_work(kwargs, match):
    with pytest.raises(ValueError, match=match):
        wu.warmup(**kwargs, progress=False)


def _python(code, cache, cwd):
    """Run code as a stdin script (its __main__ has no file: the warm-up's
    workers must not need one) in cwd with NUMBA_CACHE_DIR=cache."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache))
    out = subprocess.run([sys.executable, "-"], input=code, cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_warm_cache_serves_a_fresh_process(tmp_path):
    cache = tmp_path / "numba-cache"
    # outside the checkout: the subprocess imports the installed package
    first = _python("import json; from mithridate.warmup import warmup\n"
                    "r = warmup(['ops.lipschitz'], dtypes=('float64',), processes=1, "
                    "progress=False)\n"
                    "print(json.dumps({'keys': [list(k) for k in r['seconds']], "
                    "'recompiled': [[list(k), v] for k, v in r['recompiled'].items()]}))",
                    cache, tmp_path)
    assert first["keys"] == [["ops.lipschitz", "float64"]]
    assert first["recompiled"] == [[["ops.lipschitz", "float64"], []]]
    assert any(cache.rglob("*.nbi")), "warmup wrote no cache index"
    again = _python("import json; from mithridate.warmup import _run_task\n"
                    "s, compiled = _run_task('ops.lipschitz', 'float64')\n"
                    "print(json.dumps(compiled))", cache, tmp_path)
    assert again == []


def test_cli_refuses_an_unknown_job_before_any_work(capsys):
    from mithridate.cli import main
    assert main(["warmup", "--jobs", "no-such-job"]) == 2
    assert "invalid choice" in capsys.readouterr().err
