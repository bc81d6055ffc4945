"""The numba kernels' vectorised exp/log1p against numpy, and where
``mithridate.kernels`` comes from.

The references are numpy's exp/log1p in extended precision (x86 long double,
64-bit mantissa) where the platform has it, so the measured figure is the
approximation's own error and not numpy's float64 rounding.
"""
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

numba = pytest.importorskip("numba")

import mithridate  # noqa: E402
from mithridate.kernels.cpu import _math  # noqa: E402

# The bounds the module docstring of kernels/cpu/_math.py promises (float64).
EXP_REL_BOUND = 4e-16
LOG1P_REL_BOUND = 5e-16
CLAMP = 708.0
LN2 = np.log(2.0)


def exp_neg_abs(z):
    z = np.ascontiguousarray(z, dtype=np.float64)
    out = np.full(z.size, np.nan)
    bits = np.zeros(z.size, dtype=np.int64)
    _math.exp_neg_abs(z, out, bits, z.size)
    return out


@numba.njit
def _log1p_loop(t, out):
    for i in range(t.shape[0]):
        out[i] = _math.log1p_unit(t[i])


def log1p_unit(t):
    t = np.ascontiguousarray(t, dtype=np.float64)
    out = np.full(t.size, np.nan)
    _log1p_loop(t, out)
    return out


def rel_err(got, ref):
    ref = np.asarray(ref)
    return np.abs((got.astype(ref.dtype) - ref) / ref).astype(np.float64)


def around(x, k=3):
    """x and its k float64 neighbours on each side."""
    out = [x]
    lo = hi = x
    for _ in range(k):
        lo, hi = np.nextafter(lo, -np.inf), np.nextafter(hi, np.inf)
        out += [lo, hi]
    return out


# reduction boundaries: x * log2(e) + 0.5 crosses an integer at |z| = (k - 1/2) ln 2
EXP_EDGES = ([0.0, 5e-324, 1e-300, 2.2250738585072014e-308, 1e-16, 1.0]
             + [v for k in (1, 2, 3, 100, 1021) for v in around((k - 0.5) * LN2)]
             + around(CLAMP) + [700.0, 707.9999])
EXP_GRIDS = {
    "dense_0_745": np.linspace(0.0, 745.0, 1_500_001),
    "dense_0_5": np.linspace(0.0, 5.0, 200_001),
    "geometric": np.geomspace(1e-300, 745.0, 200_001),
    "random": np.random.default_rng(0).uniform(0.0, 745.0, 200_000),
    "edges": np.array(EXP_EDGES),
}


@pytest.mark.parametrize("grid", list(EXP_GRIDS))
def test_exp_neg_abs_relative_error(grid):
    z = EXP_GRIDS[grid]
    z = z[z <= CLAMP]
    got = exp_neg_abs(z)
    err = rel_err(got, np.exp(-z.astype(np.longdouble)))
    worst = int(err.argmax())
    assert err.max() < EXP_REL_BOUND, f"max rel error {err.max():.3e} at |z| = {z[worst]!r}"
    np.testing.assert_array_equal(exp_neg_abs(-z), got)  # only |z| matters


def test_exp_neg_abs_clamps_large_arguments():
    z = np.array([CLAMP, np.nextafter(CLAMP, np.inf), 709.0, 745.0, 746.0, 1e4, 1e300, np.inf])
    got = exp_neg_abs(np.concatenate([z, -z]))
    assert (got == got[0]).all(), got
    tiny = np.finfo(np.float64).tiny  # the clamped value is a normal number, never 0 or subnormal
    assert tiny <= got[0] < 3.4e-307
    assert rel_err(got[:1], np.exp(-np.longdouble(CLAMP)))[0] < EXP_REL_BOUND


def test_exp_neg_abs_uses_only_m_entries():
    z = np.linspace(0, 10, 16)
    out = np.full(16, -1.0)
    _math.exp_neg_abs(z, out, np.zeros(16, dtype=np.int64), 5)
    assert (out[5:] == -1.0).all()
    assert rel_err(out[:5], np.exp(-z[:5].astype(np.longdouble))).max() < EXP_REL_BOUND


SQRT2_M1 = np.sqrt(2.0) - 1.0
LOG1P_GRIDS = {
    "dense_0_1": np.linspace(0.0, 1.0, 1_500_001)[1:],
    "geometric": np.geomspace(np.finfo(np.float64).tiny, 1.0, 200_001),
    "random": np.random.default_rng(1).uniform(0.0, 1.0, 200_000),
    # the tiny end of the kernel's actual inputs t = exp(-|z|) >= exp(-708), the branch switch, 1
    "edges": np.array([np.finfo(np.float64).tiny, 1e-300, np.exp(-CLAMP), 1e-16, 1e-8, 0.5, 1.0]
                      + around(SQRT2_M1, 5) + around(_math.SQRT2_M1, 5) + [np.nextafter(1.0, 0)]),
}


@pytest.mark.parametrize("grid", list(LOG1P_GRIDS))
def test_log1p_unit_relative_error(grid):
    t = LOG1P_GRIDS[grid]
    got = log1p_unit(t)
    err = rel_err(got, np.log1p(t.astype(np.longdouble)))
    worst = int(err.argmax())
    assert err.max() < LOG1P_REL_BOUND, f"max rel error {err.max():.3e} at t = {t[worst]!r}"


def test_log1p_unit_zero_and_subnormals():
    t = np.array([0.0, 5e-324, 1e-320, 1e-310])
    got = log1p_unit(t)
    assert got[0] == 0.0 and not np.signbit(got[0])
    # log1p(t) == t to double precision here; subnormals carry absolute, not relative, accuracy
    assert (np.abs(got - t) <= 5e-324).all(), got


# --------------------------------------------------------------------------- packaging


def test_kernels_is_installed_under_mithridate():
    import mithridate.kernels as k
    import mithridate.kernels.cpu.linear  # noqa: F401

    path = Path(k.__file__).resolve()
    assert path.parent == Path(mithridate.__file__).resolve().parent / "kernels"
    purelib = Path(sysconfig.get_paths()["purelib"]).resolve()
    platlib = Path(sysconfig.get_paths()["platlib"]).resolve()
    assert purelib in path.parents or platlib in path.parents, f"{path} is not in site-packages"
    repo_kernels = Path(__file__).resolve().parents[1] / "kernels"
    assert repo_kernels not in path.parents and path.parent != repo_kernels
    assert Path(_math.__file__).resolve().parent == path.parent / "cpu"


def test_kernels_is_not_a_top_level_module(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = ("import importlib.util, sys\n"
            "assert importlib.util.find_spec('mithridate.kernels') is not None\n"
            "try:\n    import kernels\nexcept ModuleNotFoundError:\n    sys.exit(0)\n"
            "sys.exit('import kernels succeeded: ' + str(kernels.__file__))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr + r.stdout
