"""Fused linear-model ops: the numba backend against the torch reference.

Every op (loss_grad, hvp, mixed) in every form (one theta; B thetas against a
shared X on the streaming path and on the matrix-matrix path; B independent
problems), both dtypes at ``TOLERANCES[dtype]``. Shapes cover the kernel's
paths: one row, odd sizes, several row blocks inside one chunk, and many chunks.
"""
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("numba")

from mithridate import ops  # noqa: E402
from mithridate.kernels.cpu import linear as cpu_linear  # noqa: E402
from mithridate.testing import TOLERANCES, assert_verbose_allclose  # noqa: E402

DTYPES = ["float64", "float32"]
LOSSES = ["logistic", "squared", "absolute"]
OPS = ["loss_grad", "hvp", "mixed"]
# form -> (number of thetas or None for one theta (p,), X is 3-D)
FORMS = {
    "single": (None, False),
    "shared2": (2, False),  # streaming path (B < GEMM_MIN_BATCH)
    "shared17": (17, False),  # matrix-matrix path when d >= GEMM_MIN_FEATURES
    "indep3": (3, True),    # B independent problems, X (B, n, d)
}
MULTI_BLOCK = (5000, 13)    # one row chunk holding several row blocks
MANY_CHUNKS = (8200, 65)    # many row chunks (and several GEMM row blocks)
SHAPES = [(1, 1), (7, 3), (33, 7), (257, 33), (1000, 257), MULTI_BLOCK, MANY_CHUNKS]
INTERCEPT = {"no_b": (False, False), "b": (True, False), "b_pen": (True, True)}


def shape_id(s):
    return f"{s[0]}x{s[1]}"


def make_problem(n, d, dtype, loss, form, *, intercept="b", weights=True, lam="scalar",
                 z_max=None, seed=0):
    """Random problem; `z_max` rescales theta so that max |z| == z_max.

    For the absolute loss, labels are moved away from the kink |z - y| = 0
    (by more than either side's rounding of z) so both sides agree on signs.
    """
    rng = np.random.default_rng(seed)
    B, indep = FORMS[form]
    fit_intercept, penalize = INTERCEPT[intercept]
    p = d + fit_intercept
    tlead = () if B is None else (B,)
    xlead = (B,) if indep else ()
    X = rng.standard_normal(xlead + (n, d)) / np.sqrt(d)
    if loss == "logistic":
        y = (rng.random(xlead + (n,)) < 0.5).astype(np.float64)
    else:
        y = rng.standard_normal(xlead + (n,))
    theta = rng.standard_normal(tlead + (p,))
    v = rng.standard_normal(tlead + (p,))

    def z_of(th):
        th2 = np.atleast_2d(th)
        X3 = X if indep else X[None]
        z = np.einsum("bnd,bd->bn", X3, th2[:, :d])
        return z + th2[:, d:] if fit_intercept else z

    if z_max is not None:
        theta *= z_max / np.abs(z_of(theta)).max()
    if loss == "absolute":
        margin = 0.1 if z_max else 1e-3
        for _ in range(20):
            near = np.abs(z_of(theta) - y) < margin
            near = near.reshape(y.shape) if indep else near.any(axis=0)
            if not near.any():
                break
            y = y + 3 * margin * near
    sw = rng.uniform(0.0, 2.0, xlead + (n,)) if weights else None
    lam_value = {"none": None, "scalar": 0.3, "array": rng.uniform(-2.0, 1.0, B or 1)}[lam]
    rows = np.unique([0, n // 2, n - 1]).astype(np.int64)
    cast = lambda a: None if a is None else np.ascontiguousarray(a, dtype=dtype)  # noqa: E731
    return SimpleNamespace(
        theta=cast(theta), v=cast(v), X=cast(X), y=cast(y), sample_weight=cast(sw), rows=rows,
        kw=dict(loss=loss, lam=lam_value, fit_intercept=fit_intercept, penalize_intercept=penalize),
        z_of=z_of)


def call(op, P, backend, **extra):
    kw = dict(P.kw, sample_weight=P.sample_weight, backend=backend, **extra)
    if op == "loss_grad":
        return ops.loss_grad(P.theta, P.X, P.y, **kw)
    if op == "hvp":
        return (ops.hvp(P.theta, P.v, P.X, P.y, **kw),)
    return ops.mixed(P.theta, P.v, P.X, P.y, P.rows, **kw)


NAMES = {"loss_grad": ("value", "grad"), "hvp": ("hvp",), "mixed": ("dX", "dlam")}


def check_against_reference(op, P, dtype, require_finite=False):
    got = call(op, P, "numba")
    want = call(op, P, "torch")
    rtol, atol = TOLERANCES[dtype]
    for name, g, w in zip(NAMES[op], got, want):
        assert isinstance(g, (np.ndarray, np.generic)), f"{name}: numpy in, got {type(g).__name__} out"
        assert g.dtype == np.dtype(dtype), f"{name}: dtype {g.dtype}, expected {dtype}"
        if require_finite:
            assert np.isfinite(g).all(), f"{name} has non-finite values"
        assert_verbose_allclose(g, w, rtol, atol, name=f"{op}.{name}")
    return got


def test_shapes_cover_kernel_paths():
    # Keeps SHAPES meaningful if the kernel's blocking constants change.
    assert 2 < cpu_linear.GEMM_MIN_BATCH <= 17
    n, d = MULTI_BLOCK
    assert cpu_linear._n_chunks(n, d) == 1
    for itemsize in (4, 8):
        assert n > 2 * cpu_linear._block_rows(d, itemsize)
    n, d = MANY_CHUNKS
    assert cpu_linear._n_chunks(n, d) >= 8
    assert n > 2 * cpu_linear.GEMM_BLOCK_ROWS and cpu_linear._uses_gemm(17, d)
    assert n // cpu_linear._n_chunks(n, d) > cpu_linear._block_rows(d, 8)


@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("weights", [True, False], ids=["w", "no_w"])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", OPS)
def test_shapes(op, dtype, loss, weights, form, shape):
    P = make_problem(*shape, dtype, loss, form, weights=weights, lam="scalar")
    check_against_reference(op, P, dtype)


@pytest.mark.parametrize("lam", ["none", "scalar", "array"])
@pytest.mark.parametrize("weights", [True, False], ids=["w", "no_w"])
@pytest.mark.parametrize("intercept", list(INTERCEPT))
@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", OPS)
def test_options(op, dtype, loss, form, intercept, weights, lam):
    P = make_problem(33, 7, dtype, loss, form, intercept=intercept, weights=weights, lam=lam, seed=1)
    check_against_reference(op, P, dtype)


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", OPS)
def test_extreme_z(op, dtype, loss, form):
    P = make_problem(257, 33, dtype, loss, form, z_max=1e4, seed=2)
    z = P.z_of(P.theta.astype(np.float64))
    assert np.abs(z).max() > 0.99e4 and np.median(np.abs(z)) > 100  # really extreme
    check_against_reference(op, P, dtype, require_finite=True)


def to_torch(a):
    return None if a is None else torch.from_numpy(a.copy())


@pytest.mark.parametrize("backend", ["numba", "auto"])
@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", OPS)
def test_torch_inputs(op, dtype, form, backend):
    P = make_problem(257, 33, dtype, "logistic", form, lam="array", seed=3)
    want = call(op, P, "numba")
    T = SimpleNamespace(**{k: to_torch(getattr(P, k)) for k in ("theta", "v", "X", "y", "sample_weight")},
                        rows=torch.from_numpy(P.rows), kw=dict(P.kw, lam=torch.from_numpy(P.kw["lam"])))
    got = call(op, T, backend)
    for name, g, w in zip(NAMES[op], got, want):
        assert isinstance(g, torch.Tensor), f"{name}: torch in, got {type(g).__name__} out"
        assert g.dtype == getattr(torch, dtype) and g.device.type == "cpu"
        assert tuple(g.shape) == np.shape(w), f"{name}: shape {tuple(g.shape)} != {np.shape(w)}"
        assert_verbose_allclose(g, w, 0.0, 0.0, name=f"{op}.{name}")  # same kernel, same bits


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_mixed_repeated_and_boundary_rows(dtype, form):
    P = make_problem(257, 33, dtype, "logistic", form, seed=4)
    n = P.X.shape[-2]
    P.rows = np.array([n - 1, 0, 5, 0, n - 1, 5, n - 1], dtype=np.int64)
    dX, _ = check_against_reference("mixed", P, dtype)
    # a repeated row gets the derivative wrt that row at every occurrence
    for k, r in enumerate(P.rows):
        first = int(np.flatnonzero(P.rows == r)[0])
        np.testing.assert_array_equal(dX[..., k, :], dX[..., first, :])


@pytest.mark.parametrize("form", ["single", "shared2", "shared17", "indep3"])
def test_deterministic_across_thread_counts(form):
    import numba

    P = make_problem(*MANY_CHUNKS, "float64", "logistic", form, seed=5)
    before = numba.get_num_threads()
    try:
        runs = []
        for threads in (1, before):
            numba.set_num_threads(threads)
            runs.append([call(op, P, "numba") for op in OPS])
    finally:
        numba.set_num_threads(before)
    for outs1, outs2 in zip(*runs):
        for a, b in zip(outs1, outs2):
            np.testing.assert_array_equal(a, b)
