"""Bad inputs through the public ops: every one gets a TypeError/ValueError that
names the argument, before any kernel runs; no op modifies its inputs; and
``import mithridate`` stays light."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mithridate import ops

N, D = 12, 4
P = D + 1
OPS = ["loss_grad", "hvp", "mixed"]


def good(dtype="float64", B=None, indep=False, seed=0):
    rng = np.random.default_rng(seed)
    tlead = () if B is None else (B,)
    xlead = (B,) if indep else ()
    return dict(theta=rng.standard_normal(tlead + (P,)).astype(dtype),
                v=rng.standard_normal(tlead + (P,)).astype(dtype),
                X=rng.standard_normal(xlead + (N, D)).astype(dtype),
                y=(rng.random(xlead + (N,)) < 0.5).astype(dtype),
                sample_weight=rng.uniform(0.5, 1.5, xlead + (N,)).astype(dtype),
                rows=np.array([0, 5, N - 1]), lam=0.5)


def run(op, a, **kw):
    kw = dict(dict(lam=a["lam"], sample_weight=a["sample_weight"]), **kw)
    if op == "loss_grad":
        return ops.loss_grad(a["theta"], a["X"], a["y"], **kw)
    if op == "hvp":
        return ops.hvp(a["theta"], a["v"], a["X"], a["y"], **kw)
    return ops.mixed(a["theta"], a["v"], a["X"], a["y"], a["rows"], **kw)


def expect(op, a, exc, *names, match_all=(), **kw):
    """`op` on `a` raises `exc` whose message names every one of `names`."""
    with pytest.raises(exc) as info:
        run(op, a, **kw)
    msg = str(info.value)
    for name in names + tuple(match_all):
        assert name in msg, f"message does not name {name!r}: {msg}"
    return msg


def with_(**changes):
    def mutate(a):
        a = dict(a)
        for k, f in changes.items():
            a[k] = f(a) if callable(f) else f
        return a
    return mutate


def nonfinite(name, value):
    def f(a):
        x = a[name].copy()
        x.flat[1] = value
        return x
    return f


F64 = np.float64
# id -> (mutation of good(), exception, names the message must contain, ops it applies to)
CASES = {
    "theta_length": (with_(theta=lambda a: a["theta"][:D].copy()), ValueError, ["theta"], OPS),
    "theta_2d_wrong_cols": (with_(theta=np.zeros((2, P + 1))), ValueError, ["theta"], OPS),
    "theta_3d": (with_(theta=np.zeros((1, 2, P))), ValueError, ["theta"], OPS),
    "y_length": (with_(y=lambda a: a["y"][:-1].copy()), ValueError, ["y"], OPS),
    "y_2d": (with_(y=lambda a: a["y"][:, None].copy()), ValueError, ["y"], OPS),
    "v_length": (with_(v=np.zeros(P + 1)), ValueError, ["v"], ["hvp", "mixed"]),
    "v_batched_for_single_theta": (with_(v=np.zeros((1, P))), ValueError, ["v"], ["hvp", "mixed"]),
    "sample_weight_length": (with_(sample_weight=np.ones(N + 1)), ValueError, ["sample_weight"], OPS),
    "sample_weight_2d": (with_(sample_weight=np.ones((1, N))), ValueError, ["sample_weight"], OPS),
    "X_int": (with_(X=lambda a: a["X"].astype(np.int64)), TypeError, ["X"], OPS),
    "X_bool": (with_(X=lambda a: a["X"] > 0), TypeError, ["X"], OPS),
    "X_float16": (with_(X=lambda a: a["X"].astype(np.float16)), TypeError, ["X"], OPS),
    "X_object": (with_(X=lambda a: a["X"].astype(object)), TypeError, ["X"], OPS),
    "X_list": (with_(X=lambda a: a["X"].tolist()), TypeError, ["X"], OPS),
    "X_1d": (with_(X=np.zeros(N)), ValueError, ["X"], OPS),
    "X_4d": (with_(X=np.zeros((1, 1, N, D))), ValueError, ["X"], OPS),
    "theta_object": (with_(theta=lambda a: a["theta"].astype(object)), TypeError, ["theta"], OPS),
    "theta_float32_X_float64": (with_(theta=lambda a: a["theta"].astype(np.float32)), TypeError,
                                ["theta", "float32", "float64"], OPS),
    "X_float32_rest_float64": (with_(X=lambda a: a["X"].astype(np.float32)), TypeError,
                               ["theta", "float32", "float64"], OPS),
    "y_float32": (with_(y=lambda a: a["y"].astype(np.float32)), TypeError, ["y"], OPS),
    "y_int_labels": (with_(y=lambda a: a["y"].astype(np.int64)), TypeError, ["y"], OPS),
    "v_float32": (with_(v=lambda a: a["v"].astype(np.float32)), TypeError, ["v"], ["hvp", "mixed"]),
    "sample_weight_float32": (with_(sample_weight=lambda a: a["sample_weight"].astype(np.float32)),
                              TypeError, ["sample_weight"], OPS),
    "X_strided": (with_(X=lambda a: np.repeat(a["X"], 2, axis=1)[:, ::2]), ValueError, ["X"], OPS),
    "X_fortran": (with_(X=lambda a: np.asfortranarray(a["X"])), ValueError, ["X"], OPS),
    "theta_strided": (with_(theta=lambda a: np.repeat(a["theta"], 2)[::2]), ValueError, ["theta"], OPS),
    "y_strided": (with_(y=lambda a: np.repeat(a["y"], 2)[::2]), ValueError, ["y"], OPS),
    "v_strided": (with_(v=lambda a: np.repeat(a["v"], 2)[::2]), ValueError, ["v"], ["hvp", "mixed"]),
    "theta_nan": (with_(theta=nonfinite("theta", np.nan)), ValueError, ["theta"], OPS),
    "theta_inf": (with_(theta=nonfinite("theta", np.inf)), ValueError, ["theta"], OPS),
    "y_nan": (with_(y=nonfinite("y", np.nan)), ValueError, ["y"], OPS),
    "y_inf": (with_(y=nonfinite("y", -np.inf)), ValueError, ["y"], OPS),
    "v_nan": (with_(v=nonfinite("v", np.nan)), ValueError, ["v"], ["hvp", "mixed"]),
    "v_inf": (with_(v=nonfinite("v", np.inf)), ValueError, ["v"], ["hvp", "mixed"]),
    "sample_weight_nan": (with_(sample_weight=nonfinite("sample_weight", np.nan)), ValueError,
                          ["sample_weight"], OPS),
    "sample_weight_inf": (with_(sample_weight=nonfinite("sample_weight", np.inf)), ValueError,
                          ["sample_weight"], OPS),
    "sample_weight_negative": (with_(sample_weight=nonfinite("sample_weight", -0.1)), ValueError,
                               ["sample_weight"], OPS),
    "lam_nan": (with_(lam=np.nan), ValueError, ["lam"], OPS),
    "lam_inf": (with_(lam=np.inf), ValueError, ["lam"], OPS),
    "lam_length": (with_(lam=np.zeros(2)), ValueError, ["lam"], OPS),
    "lam_2d": (with_(lam=np.zeros((1, 1))), ValueError, ["lam"], OPS),
    "labels_2": (with_(y=lambda a: a["y"] * 2), ValueError, ["y"], OPS),
    "labels_minus1": (with_(y=lambda a: a["y"] * 2 - 1), ValueError, ["y"], OPS),
    "labels_half": (with_(y=lambda a: np.full_like(a["y"], 0.5)), ValueError, ["y"], OPS),
    "empty_n": (with_(X=np.zeros((0, D)), y=np.zeros(0), sample_weight=np.zeros(0),
                      rows=np.array([0])), ValueError, ["X"], OPS),
    "empty_d": (with_(X=np.zeros((N, 0)), theta=np.zeros(1), v=np.zeros(1)), ValueError, ["X"], OPS),
    "empty_batch": (with_(theta=np.zeros((0, P)), v=np.zeros((0, P))), ValueError, ["theta"], OPS),
    "batch_mismatch": (with_(theta=np.zeros((3, P)), v=np.zeros((3, P)), X=np.zeros((2, N, D)),
                             y=np.zeros((2, N)), sample_weight=None), ValueError, ["theta", "X"], OPS),
    "X_3d_theta_1d": (with_(X=lambda a: a["X"][None].copy(), y=lambda a: a["y"][None].copy(),
                            sample_weight=None), ValueError, ["theta"], OPS),
    "rows_too_large": (with_(rows=np.array([0, N])), ValueError, ["rows"], ["mixed"]),
    "rows_negative": (with_(rows=np.array([-1, 2])), ValueError, ["rows"], ["mixed"]),
    "rows_float": (with_(rows=np.array([0.0, 1.0])), ValueError, ["rows"], ["mixed"]),
    "rows_bool": (with_(rows=np.ones(N, dtype=bool)), ValueError, ["rows"], ["mixed"]),
    "rows_empty": (with_(rows=np.array([], dtype=np.int64)), ValueError, ["rows"], ["mixed"]),
    "rows_2d": (with_(rows=np.array([[0, 1]])), ValueError, ["rows"], ["mixed"]),
}
PARAMS = [pytest.param(case, op, id=f"{case}-{op}") for case, (_, _, _, applies) in CASES.items()
          for op in applies]


@pytest.mark.parametrize("case,op", PARAMS)
def test_bad_input(case, op):
    mutate, exc, names, _ = CASES[case]
    expect(op, mutate(good()), exc, *names, backend="numba")


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend", ["numba", "torch", "auto"])
def test_unknown_loss_and_backend(op, backend):
    if backend == "torch":
        pytest.importorskip("torch")
    expect(op, good(), ValueError, "loss", "hinge", loss="hinge", backend=backend)
    expect(op, good(), ValueError, "backend", "gpu-magic", backend="gpu-magic")


@pytest.mark.parametrize("op", OPS)
def test_labels_outside_01_are_fine_for_squared_and_absolute(op):
    a = good()
    a["y"] = a["y"] * 7 - 3
    for loss in ("squared", "absolute"):
        outs = run(op, a, loss=loss, backend="numba")
        for out in (outs if isinstance(outs, tuple) else (outs,)):
            assert np.isfinite(out).all()


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("loss", ["logistic", "squared", "absolute"])
@pytest.mark.parametrize("form", ["single", "shared17", "indep3"])
@pytest.mark.parametrize("op", OPS)
def test_nonfinite_X_names_X_and_row(op, form, loss, value):
    B, indep = {"single": (None, False), "shared17": (17, False), "indep3": (3, True)}[form]
    a = good(B=B, indep=indep)
    a["X"][..., 5, 2] = value  # row 5 is one of the mixed rows
    msg = expect(op, a, ValueError, "X", "row 5", loss=loss, backend="numba")
    if indep:
        assert "problem 0" in msg, msg


def test_overflow_of_finite_inputs_is_reported():
    a = good("float32")
    a["X"] *= np.float32(1e30)
    a["theta"] *= np.float32(1e30)  # |z| ~ 1e60: finite in float64 accumulators, not in float32
    msg = expect("loss_grad", a, ValueError, loss="squared", backend="numba")
    assert "overflow" in msg and "theta" in msg, msg


def test_torch_bad_inputs_name_the_argument():
    torch = pytest.importorskip("torch")
    t = {k: (torch.from_numpy(v) if isinstance(v, np.ndarray) else v) for k, v in good().items()}
    bad = dict(t, theta=t["theta"].clone())
    bad["theta"][0] = float("nan")
    expect("loss_grad", bad, ValueError, "theta", backend="numba")
    expect("loss_grad", dict(t, X=torch.cat([t["X"], t["X"]], 1)[:, ::2]), ValueError, "X", backend="auto")
    expect("loss_grad", dict(t, X=t["X"].long()), TypeError, "X", backend="torch")
    expect("hvp", dict(t, sample_weight=-t["sample_weight"]), ValueError, "sample_weight", backend="torch")


# --------------------------------------------------------------------------- no side effects


@pytest.mark.parametrize("as_torch", [False, True], ids=["numpy", "torch"])
@pytest.mark.parametrize("backend", ["numba", "torch"])
@pytest.mark.parametrize("form", ["single", "shared2", "shared17", "indep3"])
@pytest.mark.parametrize("op", OPS)
def test_inputs_are_not_modified(op, form, backend, as_torch):
    if backend == "torch" or as_torch:
        torch = pytest.importorskip("torch")
    B, indep = {"single": (None, False), "shared2": (2, False), "shared17": (17, False),
                "indep3": (3, True)}[form]
    a = good(B=B, indep=indep)
    a["lam"] = np.linspace(-1.0, 1.0, B or 1)
    if as_torch:
        a = {k: torch.from_numpy(v) for k, v in a.items()}
    before = {k: (v.clone() if as_torch else v.copy()) for k, v in a.items()}
    for loss in ("logistic", "squared", "absolute"):
        run(op, a, loss=loss, backend=backend, penalize_intercept=True)
    for k, v in a.items():
        same = torch.equal(v, before[k]) if as_torch else np.array_equal(v, before[k])
        assert same, f"{op} modified {k}"


# --------------------------------------------------------------------------- import lightness

_PROBE = r"""
import json, sys, time
t = time.perf_counter()
import mithridate, mithridate.ops
dt = time.perf_counter() - t
heavy = lambda: sorted(m for m in ("torch", "triton", "numba") if m in sys.modules)
out = {"import_s": dt, "after_import": heavy()}
import numpy as np
from mithridate import ops
X = np.ones((4, 2)); y = np.zeros(4); theta = np.zeros(3)
try:
    ops.loss_grad(theta[:2], X, y, backend="numba")
except ValueError:
    pass
out["after_validation_error"] = heavy()
ops.loss_grad(theta, X, y, backend="numba")
out["after_numba_call"] = heavy()
print(json.dumps(out))
"""


def test_import_is_light_and_numba_backend_needs_no_torch(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MITHRIDATE_BACKEND")}
    r = subprocess.run([sys.executable, "-c", _PROBE], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["after_import"] == [], f"import mithridate loaded {out['after_import']}"
    assert out["import_s"] < 1.0, f"import mithridate took {out['import_s']:.2f} s"
    assert out["after_validation_error"] == [], "a rejected call must not load any backend"
    # numba loads when its kernel runs; torch is an optional extra and must stay out
    assert out["after_numba_call"] == ["numba"], out["after_numba_call"]


@pytest.mark.parametrize("op", ["loss_grad", "hvp"])
def test_nonfinite_X_on_matrix_matrix_route(op):
    """B thetas against a wide X take the BLAS route; a nan there is named too."""
    from mithridate.kernels.cpu import linear as cpu_linear
    B, n, d = cpu_linear.GEMM_MIN_BATCH, 3000, cpu_linear.GEMM_MIN_FEATURES
    assert cpu_linear._uses_gemm(B, d)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, d))
    X[2500, 7] = np.nan
    y = (rng.random(n) < 0.5).astype(float)
    theta = rng.standard_normal((B, d + 1))
    args = (theta, X, y) if op == "loss_grad" else (theta, theta, X, y)
    with pytest.raises(ValueError, match="X.*row 2500"):
        getattr(ops, op)(*args, backend="numba")
