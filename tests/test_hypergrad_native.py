"""The compiled fused hypergradient loops (backend "cpp", csrc/cpu/hypergrad.cpp):
against autograd through the unrolled loop, the numba backend and central
differences; reversible mode restores w0 bit for bit; batches give the bits of
single runs whatever the threading; bad inputs fail before any kernel runs.
The CUDA twin (csrc/cuda/hypergrad.cu) compiles here; without a GPU it must refuse
clearly."""
import os
import subprocess
import sys

import numpy as np
import pytest

from mithridate import _C
from mithridate import fixed_point as fp
from mithridate.errors import DivergenceError
from mithridate.hypergrad import hypergrad, native, reversible
from mithridate.hypergrad.problem import make_problem
from mithridate.hypergrad.reference import unrolled
from mithridate.testing import TOLERANCES, assert_verbose_allclose, bilevel_data, hypergrad_fd

CASES = [(loss, fi, gamma) for loss in ("logistic", "squared") for fi in (True, False)
         for gamma in (0.0, 0.8)]


def data(n=37, k=3, nv=11, d=13, dtype=np.float64, seed=0):
    """Odd shapes: no multiple of the 8 accumulator lanes or of the row chunks."""
    return bilevel_data(n, k, nv, d, dtype, seed)


def kw(loss="logistic", fi=True, gamma=0.8, T=30, **extra):
    return dict(lam=-1.0, T=T, alpha=0.3, gamma=gamma, loss=loss, fit_intercept=fi, **extra)


def problem(D, loss="logistic", fi=True, gamma=0.8, T=30, alpha=0.3, lam=-1.0, w0=None):
    return make_problem(*D, lam, w0, T, alpha, gamma, loss, fi, "trajectory", "cpp")


def close(actual, expected, rtol, name):
    assert_verbose_allclose(actual, expected, rtol, rtol * np.abs(expected).max(), name=name)


def modes(gamma):
    return [m for m in native.MODES if gamma > 0 or m != "reversible"]


@pytest.mark.parametrize("loss,fi,gamma", CASES)
def test_every_mode_matches_unrolled_autograd(loss, fi, gamma):
    D = data(seed=1)
    value, gX, glam, theta, _ = unrolled(problem(D, loss, fi, gamma))
    for mode in modes(gamma):
        hg = hypergrad(*D, mode=mode, backend="cpp", **kw(loss, fi, gamma))
        assert hg.value == pytest.approx(value, rel=1e-10), mode
        close(hg.theta_T, theta, 1e-10, f"{mode} theta_T")
        assert hg.grad_lam == pytest.approx(glam, rel=1e-8), mode
        if mode == "forward":
            assert hg.grad_Xp is None
        else:
            close(hg.grad_Xp, gX, 1e-8, f"{mode} grad_Xp")
        assert hg.info["backend"] == "cpp" and hg.info["mode"] == mode


@pytest.mark.parametrize("mode", native.MODES)
@pytest.mark.parametrize("loss", ["logistic", "squared"])
def test_float32_matches_float32_reference(mode, loss):
    D = data(n=41, k=5, nv=9, d=19, dtype=np.float32, seed=2)
    opts = kw(loss, True, 0.5, T=25)
    value, gX, glam, theta, _ = unrolled(problem(D, loss, True, 0.5, T=25))
    hg = hypergrad(*D, mode=mode, backend="cpp", **opts)
    rtol, atol = TOLERANCES["float32"]
    assert hg.theta_T.dtype == np.float32
    assert_verbose_allclose(hg.theta_T, theta, rtol, atol, name="theta_T")
    assert hg.value == pytest.approx(value, rel=rtol)
    assert hg.grad_lam == pytest.approx(glam, rel=10 * rtol, abs=atol)
    if mode != "forward":
        assert hg.grad_Xp.dtype == np.float32
        close(hg.grad_Xp, gX, 10 * rtol, "grad_Xp")


@pytest.mark.parametrize("loss,fi,gamma", [("logistic", True, 0.9), ("squared", False, 0.0)])
def test_matches_numba_backend(loss, fi, gamma):
    """float64 only: float32 is checked against the float32 reference above
    (and numba's float32 compile would double this file's time)."""
    D = data(n=70, k=4, nv=23, d=29, seed=3)
    rtol = 1e-10
    for mode in ("trajectory", "forward"):
        ref = hypergrad(*D, mode=mode, backend="numba", **kw(loss, fi, gamma, T=35))
        hg = hypergrad(*D, mode=mode, backend="cpp", **kw(loss, fi, gamma, T=35))
        close(hg.theta_T, ref.theta_T, rtol, f"{mode} theta_T")
        assert hg.value == pytest.approx(ref.value, rel=rtol)
        assert hg.grad_lam == pytest.approx(ref.grad_lam, rel=10 * rtol)
        if mode == "trajectory":
            close(hg.grad_Xp, ref.grad_Xp, 10 * rtol, "grad_Xp")





@pytest.mark.parametrize("loss,fi,gamma", [("logistic", True, 0.7), ("squared", False, 0.0),
                                           ("logistic", False, 0.0), ("squared", True, 0.6)])
def test_matches_finite_differences(loss, fi, gamma):
    D = data(n=23, k=2, nv=7, d=5, seed=4)
    opts = kw(loss, fi, gamma, T=15)
    gX, glam = hypergrad_fd(D, {**opts, "backend": "cpp"})
    for mode in modes(gamma):
        hg = hypergrad(*D, mode=mode, backend="cpp", **opts)
        assert hg.grad_lam == pytest.approx(glam, rel=1e-6, abs=1e-9), mode
        if mode != "forward":
            close(hg.grad_Xp, gX, 1e-6, f"{mode} grad_Xp")


@pytest.mark.parametrize("gamma,fraction", [(0.9, (9, 10)), (1 / 3, (1, 3)), (0.5, (1, 2)),
                                            (0.95, (19, 20))])
@pytest.mark.parametrize("frac_bits", [None, 30, 52])
def test_reversible_recovers_w0_bit_for_bit(gamma, fraction, frac_bits):
    D = data(n=45, k=3, nv=8, d=10, seed=5)
    w0 = np.random.default_rng(6).normal(size=11)
    opts = kw("logistic", True, gamma, T=60, w0=w0)
    hg = hypergrad(*D, mode="reversible", backend="cpp", frac_bits=frac_bits, **opts)
    ref = hypergrad(*D, mode="trajectory", backend="cpp", **opts)
    f = reversible.DEFAULT_FRAC_BITS if frac_bits is None else frac_bits
    words = fp.required_words(60, *fraction)
    assert hg.info["w0_recovered"] is True
    assert hg.info["frac_bits"] == f and hg.info["gamma_fraction"] == fraction
    assert hg.info["buffer_words"] == words and hg.info["state_bytes"] == 11 * (16 + 4 * words)
    # The fixed-point trajectory is within ~T 2^-f of the float one.
    rtol = max(1e-8, 1e3 * 2.0**-f)
    close(hg.grad_Xp, ref.grad_Xp, rtol, "grad_Xp")
    assert hg.grad_lam == pytest.approx(ref.grad_lam, rel=rtol)


def test_batch_equals_single_runs_bit_for_bit():
    """A batch runs one problem per thread, a single problem alone: the same
    bits, and a mixed-dtype batch is split by dtype."""
    D1 = data(n=300, k=7, nv=31, d=120, seed=7)
    D2 = data(n=260, k=5, nv=17, d=120, seed=8)
    D3 = data(n=90, k=3, nv=10, d=17, dtype=np.float32, seed=9)
    pbs = [problem(D1, gamma=0.9, T=20), problem(D2, "squared", False, 0.9, T=20),
           problem(D3, gamma=0.9, T=20)]
    for mode in native.MODES:
        batch = native.run(pbs, mode, "cpp")
        for pb, b in zip(pbs, batch):
            (one,) = native.run([pb], mode, "cpp")
            assert b.value == one.value and b.grad_lam == one.grad_lam, mode
            np.testing.assert_array_equal(b.theta_T, one.theta_T)
            if mode != "forward":
                np.testing.assert_array_equal(b.grad_Xp, one.grad_Xp)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss,fi,gamma", [("logistic", True, 0.9), ("squared", False, 0.0)])
def test_value_mode_is_trajectory_without_the_sweep(dtype, loss, fi, gamma):
    """Mode value (csrc kValue, the engine's need="value"): trajectory's value
    and theta_T bit for bit, no gradients; single problems and a batch."""
    pbs = [problem(data(n=n, k=k, nv=9, d=d, dtype=dtype, seed=n), loss, fi, gamma, T=23)
           for n, k, d in ((37, 3, 13), (70, 1, 13), (41, 4, 13))]
    traj = native.run(pbs, "trajectory", "cpp")
    for got in (native.run(pbs, "value", "cpp"), [native.run([pb], "value", "cpp")[0] for pb in pbs]):
        for g, t in zip(got, traj):
            assert g.value == t.value and g.theta_T.tobytes() == t.theta_T.tobytes()
            assert g.grad_Xp is None and g.grad_lam is None and g.info["mode"] == "value"
            assert g.info["diverged_at"] == -1 and "state_bytes" not in g.info


def test_unknown_mode_code_is_refused_by_the_binding():
    pb = native._pack(problem(data()), "trajectory", 40, None)[0]
    with pytest.raises(ValueError, match="mode must be 0"):
        _C.hypergrad.run(4, [pb])
    with pytest.raises(ValueError, match="mode='value2'"):
        native.run([problem(data())], "value2", "cpp")


THREADS_SCRIPT = """
import hashlib, numpy as np
from mithridate.hypergrad import native
from mithridate.hypergrad.problem import make_problem
rng = np.random.default_rng(0)
X, Xv = rng.normal(size=(529, 500)), rng.normal(size=(37, 500))
y, yv = (np.arange(529) % 2).astype(float), (np.arange(37) % 2).astype(float)
pb = make_problem(X[:512], y[:512], X[512:], y[512:], Xv, yv, -1.0, None, 6, 0.05, 0.9,
                  "logistic", True, "trajectory", "cpp")
h = hashlib.sha256()
for mode in native.MODES:
    r = native.run([pb], mode, "cpp")[0]
    h.update(np.float64([r.value, r.grad_lam]).tobytes() + r.theta_T.tobytes())
    h.update(b"" if r.grad_Xp is None else r.grad_Xp.tobytes())
print(h.hexdigest())
"""


def test_result_does_not_depend_on_the_thread_count(tmp_path):
    """n d >= 2^18: one problem's row chunks run on every thread; the chunks
    and their order are fixed by n, so 1 and 2 threads give the same bits."""
    digests = []
    for threads in ("1", "2"):
        env = {**os.environ, "OMP_NUM_THREADS": threads}
        # cwd outside the checkout: `python -c` puts cwd first on sys.path, and the
        # source tree's mithridate has no compiled _C (the tests use the installed one).
        out = subprocess.run([sys.executable, "-c", THREADS_SCRIPT], env=env, check=True,
                             capture_output=True, text=True, timeout=300, cwd=tmp_path)
        digests.append(out.stdout.strip())
    assert digests[0] == digests[1] and len(digests[0]) == 64


def test_batched_api_matches_numba():
    rng = np.random.default_rng(10)
    Xc, yc, _, _, Xv, yv = data(seed=10)
    Xp = rng.normal(size=(4, 3, 13))
    yp = np.tile([1.0, 0.0, 1.0], (4, 1))
    lam = np.array([-2.0, -1.0, 0.0, 0.5])
    opts = dict(lam=lam, T=20, alpha=0.3, gamma=0.5)
    hg = hypergrad(Xc, yc, Xp, yp, Xv, yv, backend="cpp", **opts)
    ref = hypergrad(Xc, yc, Xp, yp, Xv, yv, backend="numba", **opts)
    close(hg.grad_Xp, ref.grad_Xp, 1e-10, "grad_Xp")
    close(hg.grad_lam, ref.grad_lam, 1e-10, "grad_lam")


@pytest.mark.parametrize("change,error,match", [
    (dict(mode="reversible", gamma=0.0), ValueError, "mode='trajectory'"),
    (dict(mode="trajectory", frac_bits=40), ValueError, "frac_bits"),
    (dict(mode="reversible", frac_bits=0), ValueError, "frac_bits"),
    (dict(mode="reversible", frac_bits=63), ValueError, "frac_bits"),
    (dict(mode="reversible", frac_bits=20.0), TypeError, "frac_bits"),
    (dict(mode="reversible", frac_bits=60, w0=np.full(14, 100.0)), fp.FixedPointOverflow, "w0"),
    (dict(mode="reversible", alpha=50.0, T=200), DivergenceError, "step .*alpha=50"),
    (dict(mode="reversible", gamma=1e-13), ValueError, "gamma"),
])
def test_bad_inputs_name_the_argument(change, error, match):
    D = data(seed=11)
    opts = {**kw(), "backend": "cpp", **change}
    if change.get("alpha") == 50.0:  # squared loss with a huge step: diverges
        opts["loss"] = "squared"
    with pytest.raises(error, match=match):
        hypergrad(*D, **opts)


def test_run_checks_its_arguments():
    pb = problem(data())
    with pytest.raises(ValueError, match="mode"):
        native.run([pb], "implicit", "cpp")
    with pytest.raises(ValueError, match="backend"):
        native.run([pb], "trajectory", "numba")
    with pytest.raises(TypeError, match="Problem"):
        native.run([], "trajectory", "cpp")


def test_binding_refuses_arrays_it_could_overrun():
    """The extension checks dtype, contiguity and shapes itself, so a direct
    caller cannot make it read or write out of bounds."""
    from dataclasses import replace
    pb = problem(data(k=3, d=13))
    args, _ = native._pack(pb, "trajectory", 40, None)
    run = lambda a: _C.hypergrad.run(0, [a])
    for change, error, match in [
            (dict(Xp=np.ascontiguousarray(pb.Xp[:, :12])), ValueError, "Xp"),  # narrower than Xc
            (dict(Xc=np.asfortranarray(pb.Xc)), TypeError, "Xc"),
            (dict(yc=pb.yc.astype(np.float32)), TypeError, "yc"),  # labels of another dtype than X
            (dict(dXp=np.zeros((2, 13))), ValueError, "dXp"),  # output too small for k = 3
            (dict(T=0), ValueError, "T"),
            (dict(alpha="0.1"), TypeError, "alpha"),
            (dict(model=native.LinearSpec(2, True)), ValueError, "loss_code")]:
        with pytest.raises(error, match=match):
            run(replace(args, **change))
    with pytest.raises(AttributeError):
        _C.hypergrad.run(0, [tuple(vars(args).values())])  # positional tuples are gone
    with pytest.raises(ValueError, match="mode"):
        _C.hypergrad.run(7, [args])
    assert run(args) == [(0, -1, -1)]


def test_cuda_backend_without_gpu_is_a_clear_error():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="backend='cuda' is unavailable.*cpp"):
        hypergrad(*data(), backend="cuda", **kw())
