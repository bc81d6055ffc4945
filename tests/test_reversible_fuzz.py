"""Exactness of mode='reversible' whatever the compiler does: the fixed-point
glue is compiled strict even under a fastmath caller (numba hands a caller's
flags to callees that leave fastmath unset), a forward step and its undo are
the identity on values at the rounding edges, and a CI-sized slice of
benchmarks/fuzz_reversible.py recovers w0 on every configuration."""
import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import numba
import numpy as np
import pytest
from numba import njit
from numba.core.registry import CPUDispatcher

from mithridate.kernels.cpu import fixed_point as fp
from mithridate.kernels.cpu import heavy_ball as hb
from mithridate.kernels.cpu import hypergrad_reversible as R
from mithridate.hypergrad import hypergrad
from mithridate.kernels.cpu._math import FASTMATH
from mithridate.testing import bilevel_data

# an LLVM float instruction carrying any fast-math flag
FAST_FLAGS = re.compile(r"= (fadd|fsub|fmul|fdiv|frem|fneg)( [a-z]+)*? "
                        r"(fast|reassoc|contract|arcp|nnan|ninf|nsz|afn)\b")
# the helpers that compute or apply fixed-point increments: heavy_ball.py's exact step, and the
# linear model's increment and glue in hypergrad_reversible.py
EXACT_STEP = ("to_int", "fits", "exact_increment", "_theta_incr", "exact_forward",
              "exact_reverse_theta", "exact_reverse")
GLUE = ("_decode", "_sum_chunks", "_increment", "step_words")


def _dispatchers(module):
    return {name: obj for name, obj in vars(module).items() if isinstance(obj, CPUDispatcher)}


def test_exact_helpers_are_strict_and_not_inlined():
    """Every exact dispatcher sets fastmath=False itself (left unset, numba's
    CPUTargetOptions.finalize inherits the caller's) and is not inlined into
    its caller's IR (inline='always' compiles it under the caller's flags)."""
    exact = {**_dispatchers(fp), **{n: getattr(hb, n) for n in EXACT_STEP},
             **{n: getattr(R, n) for n in GLUE}}
    assert len(exact) > 25
    for name, disp in exact.items():
        opts = disp.targetoptions
        assert "fastmath" in opts and opts["fastmath"] is False, name
        assert opts.get("inline", "never") == "never", name


def test_exact_jit_options_keep_a_fastmath_callers_flags_out():
    """The mechanism itself: a function with EXACT_JIT's options compiles
    without fast-math flags under a fastmath caller, where the same function
    without fastmath=False gets them (the control shows the check can fail)."""
    def body(a, b, c, d):
        return a * b + c / d

    strict = njit(**{**fp.EXACT_JIT, "cache": False})(body)
    unset = njit(**{k: v for k, v in fp.EXACT_JIT.items() if k not in ("fastmath", "cache")})(body)

    @njit(fastmath=FASTMATH, cache=False)
    def caller(a, b, c, d):
        return strict(a, b, c, d) + unset(a, b, c, d)

    assert caller(1.0, 2.0, 3.0, 4.0) == 2 * (2.0 + 0.75)
    ir_of = lambda f: f.inspect_llvm(f.signatures[0])
    assert not FAST_FLAGS.search(ir_of(strict))
    assert FAST_FLAGS.search(ir_of(unset))


@njit(fastmath=FASTMATH, cache=False)
def _step_and_undo(thq, vq, buf, w, num, den, g, d, cg, ce, alpha, scale, rem, hi, incr, codes):
    """One forward step and its undo, as the fastmath loop calls them."""
    R._increment(g, thq, d, cg, ce, scale, incr, codes)
    status = hb.exact_forward(thq, vq, buf, incr, codes, w, num, den, alpha, rem, hi)[0]
    if status == fp.OK:
        hb.exact_reverse_theta(thq, vq, alpha)
        R._increment(g, thq, d, cg, ce, scale, incr, codes)
        hb.exact_reverse(vq, buf, incr, w, num, den, rem, hi)
    return status


def _edge_gradients(rng, p, cg, scale):
    """g whose data increment cg g 2^f lies within a few ulps of a half-integer
    (where one rounding more or less flips rint), at magnitudes 2^20..2^52."""
    half = (rng.integers(2**19, 2**20, p) * 2.0 ** rng.integers(0, 33, p) + 0.5) \
        * rng.choice([-1.0, 1.0], p)
    g = half / (cg * scale)
    for _ in range(3):
        g = np.nextafter(g, rng.choice([-np.inf, np.inf], p))
    return np.append(g, 0.0)  # slot d + 1 unused without an intercept


@pytest.mark.parametrize("seed", range(3))
def test_step_then_undo_is_the_identity_at_rounding_edges(seed):
    """Every size from 1 to 40 (vector bodies, epilogues and peeled elements of
    each loop), both slot layouts, gammas, frac_bits 40..62."""
    rng = np.random.default_rng(seed)
    done = 0
    for p in range(1, 41):
        fi = bool(rng.integers(2))
        d = p - fi
        f = int(rng.integers(40, 63))
        scale = 2.0**f
        num, den = ((3, 10), (1, 2), (9, 10), (99, 100), (123456789, 1000000000))[rng.integers(5)]
        s, n, e = 1 - num / den, float(rng.integers(2, 60)), float(np.exp(rng.uniform(-6, 2)))
        cg, ce = s / n, s * e
        g = _edge_gradients(rng, p, cg, scale)
        thq = rng.integers(-2**40, 2**40, p) << int(rng.integers(0, 12))
        vq = rng.integers(-2**40, 2**40, p)
        buf = np.zeros((3, p), np.uint32)
        buf[0] = rng.integers(0, 2**32, p, dtype=np.uint32)
        state = thq.copy(), vq.copy(), buf.copy()
        status = _step_and_undo(thq, vq, buf, 2, num, den, g, d, cg, ce, 0.3 * rng.random(), scale,
                                *(np.empty(p, np.int64) for _ in range(4)))
        if status != fp.OK:  # an increment left int64: the kernel stops, nothing to undo
            continue
        done += 1
        for got, want, name in zip((thq, vq, buf), state, ("theta_q", "v_q", "buffer")):
            np.testing.assert_array_equal(got, want, err_msg=f"{name}, p={p} frac_bits={f}")
    assert done >= 30


ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("loss,fi", [("squared", True), ("logistic", False)])
def test_numba_and_cpp_take_the_same_fixed_point_steps(loss, fi):
    """Both loops implement the same increments (rint of one product each): at
    frac_bits = 3 their float64 gradients, equal to ~1e-16, round to the same
    integers, so theta_T agrees bit for bit."""
    for seed in range(10):
        D = bilevel_data(n=30, k=3, d=6, seed=seed)
        opts = dict(lam=0.5, T=20, alpha=0.3, gamma=0.5, loss=loss, fit_intercept=fi,
                    mode="reversible", frac_bits=3, w0=np.linspace(-1, 2, 6 + fi))
        a, b = (hypergrad(*D, backend=be, **opts) for be in ("numba", "cpp"))
        assert a.info["w0_recovered"] and b.info["w0_recovered"]
        assert a.theta_T.tobytes() == b.theta_T.tobytes(), seed


@pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler")
@pytest.mark.parametrize("flags,builds", [([], True), (["-ffast-math"], False), (["-Ofast"], False)])
def test_fast_math_build_of_the_header_is_refused(tmp_path, flags, builds):
    """csrc/include/fixed_point.h stops a -ffast-math/-Ofast build (IEEE semantics
    are the reversal's premise); a plain build of the same source compiles."""
    src = tmp_path / "use.cpp"
    src.write_text('#include "fixed_point.h"\nint main() { return 0; }\n')
    out = subprocess.run(["c++", "-std=c++17", "-fsyntax-only", *flags, "-I",
                          str(ROOT / "csrc" / "include"), str(src)], capture_output=True, text=True)
    assert (out.returncode == 0) == builds, out.stderr
    if not builds:
        assert "needs IEEE arithmetic" in out.stderr


def _fuzz_module():
    path = ROOT / "benchmarks" / "fuzz_reversible.py"
    spec = importlib.util.spec_from_file_location("fuzz_reversible", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fuzz_slice_recovers_every_configuration():
    """300 configurations of the fuzz script, numba and cpp alternating (one
    numba thread, as the script: the bits do not depend on it)."""
    fuzz = _fuzz_module()
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        counts, failures = fuzz.fuzz(300, seed=2026, backends=["numba", "cpp"], log=lambda _: None)
    finally:
        numba.set_num_threads(before)
    assert failures == []
    for backend in ("numba", "cpp"):
        assert counts["recovered", backend] >= 100, counts
    assert sum(counts.values()) == 300


def test_fuzz_script_reports_a_failure(monkeypatch):
    """The script's classifier calls an unrecovered w0 a failure."""
    fuzz = _fuzz_module()

    def unrecovered(*args, **kw):
        raise RuntimeError("mode='reversible': the reverse sweep did not recover w0 bit for bit")
    monkeypatch.setattr(fuzz, "hypergrad", unrecovered)
    counts, failures = fuzz.fuzz(2, seed=0, backends=["numba"], log=lambda _: None)
    assert len(failures) == 2 and "did not recover" in failures[0][1]
    threads = str(numba.get_num_threads())
    assert fuzz.main(["--configs", "1", "--backends", "numba", "--threads", threads]) == 1
