"""Exact reversible fixed point: mithridate.fixed_point against a big-int reference."""
import math
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mithridate import fixed_point as fp

I64_MIN, I64_MAX = -2**63, 2**63 - 1
MAX_BASE = 2**31 - 1


# ---- pure-Python reference of the same scheme (Python ints are exact) -------

def ref_mul(x, B, num, den):
    """Pop s in base num, x' = floor((x*num + s)/den), push the remainder in base den."""
    s, B = B % num, B // num
    y = x * num + s
    return y // den, B * den + y % den


def ref_unmul(x, B, num, den):
    r, B = B % den, B // den
    y = x * den + r
    return y // num, B * num + y % num


def to_int(row):
    return sum(int(v) << (32 * j) for j, v in enumerate(row))


def to_limbs(B, w):
    return [(B >> (32 * j)) & 0xFFFFFFFF for j in range(w)]


def ref_step(q, buf, num, den, op):
    """Reference of a whole mul/unmul call: new (q, buf), or None if any element fails."""
    f = ref_mul if op == "mul" else ref_unmul
    w = buf.shape[-1]
    out_q, out_b = [], []
    for x, row in zip(q.tolist(), buf.reshape(len(q), w)):
        x2, B2 = f(x, to_int(row), num, den)
        if B2 >= 2**(32 * w) or not I64_MIN <= x2 <= I64_MAX:
            return None
        out_q.append(x2)
        out_b.append(to_limbs(B2, w))
    return np.array(out_q, np.int64), np.array(out_b, np.uint32).reshape(buf.shape)


# ---- strategies ---------------------------------------------------------------

special = st.sampled_from([(9, 10), (999, 1000), (1, 2), (3, 2), (1, 1), (10, 9),
                           (MAX_BASE - 1, MAX_BASE), (1, MAX_BASE), (MAX_BASE, 1)])
gammas = st.one_of(special, st.tuples(st.integers(1, MAX_BASE), st.integers(1, MAX_BASE)),
                   st.tuples(st.integers(1, 50), st.integers(1, 50)))
int64s = st.one_of(st.integers(I64_MIN, I64_MAX), st.integers(-10**6, 10**6),
                   st.sampled_from([I64_MIN, I64_MIN + 1, -1, 0, 1, I64_MAX - 1, I64_MAX]))
limbs = st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 2**31, 2**32 - 1]))


@st.composite
def states(draw):
    n = draw(st.integers(1, 6))
    w = draw(st.integers(1, 4))
    q = np.array(draw(st.lists(int64s, min_size=n, max_size=n)), np.int64)
    buf = np.array(draw(st.lists(limbs, min_size=n * w, max_size=n * w)), np.uint32).reshape(n, w)
    if draw(st.booleans()):
        buf[:, -1] = 0  # room to grow: most steps then fit
    return q, buf


# ---- mul / unmul ------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(states(), gammas, st.sampled_from(["mul", "unmul"]))
def test_step_matches_reference_and_inverts(state, gamma, op):
    q, buf = state
    num, den = gamma
    q0, b0 = q.copy(), buf.copy()
    expected = ref_step(q, buf, num, den, op)
    forward, backward = (fp.mul, fp.unmul) if op == "mul" else (fp.unmul, fp.mul)
    if expected is None:
        with pytest.raises(fp.FixedPointOverflow):
            forward(q, num, den, buf)
        np.testing.assert_array_equal(q, q0)  # nothing written on failure
        np.testing.assert_array_equal(buf, b0)
        return
    forward(q, num, den, buf)
    np.testing.assert_array_equal(q, expected[0])
    np.testing.assert_array_equal(buf, expected[1])
    backward(q, num, den, buf)  # the inverse always fits: it returns to a valid state
    np.testing.assert_array_equal(q, q0)
    np.testing.assert_array_equal(buf, b0)


@settings(max_examples=200, deadline=None)
@given(gammas, st.data())
def test_mul_is_a_multiplication(gamma, data):
    num, den = gamma
    big = min(2**62, 2**62 * den // num)  # |x| * num/den stays inside int64
    xs = data.draw(st.lists(st.one_of(st.integers(-big, big), st.integers(-1000, 1000)),
                            min_size=1, max_size=8))
    words = data.draw(st.lists(st.integers(0, 2**32 - 1), min_size=len(xs), max_size=len(xs)))
    q = np.array(xs, np.int64)
    buf = np.zeros((len(xs), 2), np.uint32)
    buf[:, 0] = words  # random low limb, room above
    fp.mul(q, num, den, buf)
    bound = max(Fraction(1), Fraction(num, den))
    for x, x2 in zip(xs, q.tolist()):
        assert abs(x2 - Fraction(x * num, den)) < bound


@settings(max_examples=300, deadline=None)
@given(gammas, st.integers(1, 3), st.integers(-2**40, 2**40), st.integers(-1, 1), st.data())
def test_capacity_check_is_exact_at_the_boundary(gamma, w, x, offset, data):
    # A buffer whose popped quotient Q sits next to the largest Q that still fits.
    num, den = gamma
    r = data.draw(st.integers(0, den - 1))
    Q = max(0, (2**(32 * w) - 1 - r) // den + offset)
    B = Q * num + data.draw(st.integers(0, num - 1))
    assume(B < 2**(32 * w))
    q, buf = np.array([x], np.int64), np.array([to_limbs(B, w)], np.uint32)
    expected = ref_step(q, buf, num, den, "mul")
    if expected is None:
        with pytest.raises(fp.FixedPointOverflow, match="buffer"):
            fp.mul(q, num, den, buf)
        assert q[0] == x and to_int(buf[0]) == B
    else:
        fp.mul(q, num, den, buf)
        np.testing.assert_array_equal(buf, expected[1])


@pytest.mark.parametrize("num,den,steps", [(9, 10, 1000), (999, 1000, 1000), (1, 2, 1000),
                                           (MAX_BASE - 1, MAX_BASE, 1000), (1, MAX_BASE, 300),
                                           (7, 7, 1000), (3, 2, 30), (1000, 999, 1000)])
def test_many_steps_fit_required_words_and_reverse(num, den, steps):
    rng = np.random.default_rng(num * 7 + den)
    n = 16
    q = rng.integers(-2**40, 2**40, n, dtype=np.int64)
    q[:2] = [2**40, -2**40]
    w = fp.required_words(steps, num, den)
    buf = fp.new_buffer(n, w)
    q0 = q.copy()
    ref = [(int(x), 0) for x in q0]
    for _ in range(steps):
        fp.mul(q, num, den, buf)  # never raises: required_words is an upper bound
        ref = [ref_mul(x, B, num, den) for x, B in ref]
    assert q.tolist() == [x for x, _ in ref]
    assert [to_int(row) for row in buf] == [B for _, B in ref]
    for _ in range(steps):
        fp.unmul(q, num, den, buf)
    np.testing.assert_array_equal(q, q0)
    assert not buf.any()


@pytest.mark.parametrize("num,den,steps", [(9, 10, 1000), (1, 2, 100), (999, 1000, 10**6),
                                           (3, 2, 1000), (1, 1, 1), (5, 7, 0)])
def test_required_words_formula(num, den, steps):
    w = fp.required_words(steps, num, den)
    bits = math.log2(den) + math.log2(max(steps, 1)) + max(steps - 1, 0) * max(0, math.log2(den / num))
    assert 32 * w >= bits  # enough (the proof is in csrc/include/fixed_point.h) ...
    assert 32 * w < bits + 34  # ... and not wasteful


def test_capacity_exceeded_changes_nothing():
    q = np.array([5, 6, 7], np.int64)
    buf = fp.new_buffer(3, 1)
    buf[2, 0] = 2**32 - 1  # only the last element overflows: all or nothing
    q0, b0 = q.copy(), buf.copy()
    with pytest.raises(OverflowError, match="required_words"):
        fp.mul(q, 1, 2, buf)
    np.testing.assert_array_equal(q, q0)
    np.testing.assert_array_equal(buf, b0)


def test_too_many_steps_for_the_buffer_raises():
    num, den, steps = 1, 2**20, 3
    buf = fp.new_buffer(4, fp.required_words(steps, num, den))
    q = np.full(4, -1, np.int64)  # pushes the largest digit, den - 1, at every step
    with pytest.raises(OverflowError, match="required_words"):
        for i in range(100):
            fp.mul(q, num, den, buf)
    assert i >= steps  # the worst case fits the bound...
    assert i < steps + 3  # ...and not far above it here


@pytest.mark.parametrize("x,num,den", [(2**62, 2, 1), (6148914691236517206, 3, 2), (I64_MAX, MAX_BASE, 1), (I64_MIN, 2, 1),
                                       (-2**62 - 1, 2, 1)])
def test_int64_overflow_changes_nothing(x, num, den):
    q = np.array([1, x], np.int64)
    buf = fp.new_buffer(2, 2)
    q0 = q.copy()
    with pytest.raises(fp.FixedPointOverflow, match=r"int64 at q\[1\]"):
        fp.mul(q, num, den, buf)
    np.testing.assert_array_equal(q, q0)
    assert not buf.any()


def test_nd_arrays_and_torch_cpu_tensors():
    torch = pytest.importorskip("torch")
    q = torch.arange(-6, 6, dtype=torch.int64).reshape(3, 4) * 1000
    buf = fp.new_buffer((3, 4), 1, device="cpu")
    fp.mul(q, 9, 10, buf)
    assert q.tolist() == (torch.arange(-6, 6).reshape(3, 4) * 900).tolist()
    fp.unmul(q, 9, 10, buf)
    assert q.tolist() == (torch.arange(-6, 6).reshape(3, 4) * 1000).tolist() and not buf.any()
    x = torch.tensor([0.5, -1.25], dtype=torch.float64)
    assert torch.equal(fp.decode(fp.encode(x, 10), 10), x)


# ---- encode / decode ------------------------------------------------------------------

@given(st.lists(st.integers(-2**53, 2**53), min_size=1, max_size=10), st.integers(0, 62))
def test_decode_then_encode_is_identity(qs, frac_bits):
    q = np.array(qs, np.int64)
    np.testing.assert_array_equal(fp.encode(fp.decode(q, frac_bits), frac_bits), q)


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=10), st.integers(0, 40))
def test_encode_rounds_to_nearest(xs, frac_bits):
    q = fp.encode(np.array(xs), frac_bits)
    for x, k in zip(xs, q.tolist()):
        assert abs(Fraction(k, 2**frac_bits) - Fraction(x)) <= Fraction(1, 2**(frac_bits + 1))


@pytest.mark.parametrize("frac_bits", [0, 20, 62])
def test_encode_range(frac_bits):
    top = 2.0 ** (63 - frac_bits)
    ok = np.array([-top, np.nextafter(top, 0)])
    assert fp.encode(ok, frac_bits)[0] == I64_MIN
    for bad in (top, -np.nextafter(top, np.inf), 1e308):
        with pytest.raises(fp.FixedPointOverflow, match=rf"x\[1\].*\[-2\*\*{63 - frac_bits}"):
            fp.encode(np.array([0.0, bad]), frac_bits)
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(ValueError, match="nan or inf"):
            fp.encode(np.array([bad]), frac_bits)


# ---- bad inputs -----------------------------------------------------------------

def _q():
    return np.zeros(4, np.int64)


def _buf():
    return fp.new_buffer(4, 2)


BAD = [
    (lambda: fp.mul(_q().astype(np.float64), 9, 10, _buf()), TypeError, "q has dtype float64"),
    (lambda: fp.mul([0, 0, 0, 0], 9, 10, _buf()), TypeError, "q must be a numpy array"),
    (lambda: fp.mul(np.zeros(8, np.int64)[::2], 9, 10, _buf()), ValueError, "q is not C-contiguous"),
    (lambda: fp.mul(_q(), 9, 10, _buf().astype(np.int32)), TypeError, "buffer has dtype int32"),
    (lambda: fp.mul(_q(), 9, 10, fp.new_buffer(3, 2)), ValueError, "buffer has shape"),
    (lambda: fp.mul(_q(), 9, 10, np.zeros(4, np.uint32)), ValueError, "buffer has shape"),
    (lambda: fp.mul(_q(), 9, 10, fp.new_buffer(4, 2)[:, :1]), ValueError, "buffer is not C-contiguous"),
    (lambda: fp.mul(_q(), 0, 10, _buf()), ValueError, r"num=0 is out of range"),
    (lambda: fp.mul(_q(), 9, 2**31, _buf()), ValueError, r"den=2147483648 is out of range"),
    (lambda: fp.mul(_q(), 0.9, 1, _buf()), TypeError, "num must be an int"),
    (lambda: fp.unmul(_q(), True, 1, _buf()), TypeError, "num must be an int"),
    (lambda: fp.encode(np.zeros(2), -1), ValueError, "frac_bits=-1"),
    (lambda: fp.encode(np.zeros(2), 63), ValueError, "frac_bits=63"),
    (lambda: fp.decode(_q(), 2.0), TypeError, "frac_bits must be an int"),
    (lambda: fp.decode(np.zeros(2), 2), TypeError, "q has dtype float64"),
    (lambda: fp.encode(np.array(["a"]), 2), TypeError, "x has dtype"),
    (lambda: fp.required_words(-1, 9, 10), ValueError, "n_steps=-1"),
    (lambda: fp.required_words(10, 9, 0), ValueError, "den=0"),
    (lambda: fp.new_buffer(4, 0), ValueError, "n_words=0"),
    (lambda: fp.new_buffer(-1, 2), ValueError, "shape=-1"),
]


@pytest.mark.parametrize("call,exc,match", BAD)
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_read_only_and_aliased_arrays_rejected():
    q = _q()
    q.setflags(write=False)
    with pytest.raises(ValueError, match="q is read-only"):
        fp.mul(q, 9, 10, _buf())
    buf = _buf()
    buf.setflags(write=False)
    with pytest.raises(ValueError, match="buffer is read-only"):
        fp.mul(_q(), 9, 10, buf)
    flat = np.zeros(12, np.uint32)
    with pytest.raises(ValueError, match="share memory"):  # q's memory overlaps the buffer's
        fp.mul(flat[:8].view(np.int64), 9, 10, flat[4:].reshape(4, 2))


def test_torch_and_numpy_mixed_rejected():
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError, match="both be numpy arrays or both tensors"):
        fp.mul(torch.zeros(4, dtype=torch.int64), 9, 10, _buf())


def test_bindings_reject_mismatched_sizes():
    from mithridate import _C
    with pytest.raises(ValueError):
        _C.fixed_point.mul(_q(), np.zeros((3, 2), np.uint32), 2, 9, 10)
    with pytest.raises(TypeError):  # no silent conversion (a copy would lose the update)
        _C.fixed_point.mul(_q().astype(np.int32), _buf(), 2, 9, 10)


def test_import_does_not_import_torch(tmp_path):
    code = "import sys, mithridate.fixed_point; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)  # the installed package


# ---- CUDA ------------------------------------------------------------------------

def _cuda_torch():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    pytest.importorskip("mithridate._C_cuda", reason="mithridate built without CUDA")
    return torch


def test_cuda_matches_cpu():
    torch = _cuda_torch()
    rng = np.random.default_rng(0)
    n, steps, num, den = 10_000, 200, 9, 10
    q = rng.integers(-2**50, 2**50, n, dtype=np.int64)
    w = fp.required_words(steps, num, den)
    qc, bc = q.copy(), fp.new_buffer(n, w)
    qg, bg = torch.from_numpy(q).cuda(), fp.new_buffer(n, w, device="cuda")
    for _ in range(steps):
        fp.mul(qc, num, den, bc)
        fp.mul(qg, num, den, bg)
    np.testing.assert_array_equal(qg.cpu().numpy(), qc)
    np.testing.assert_array_equal(bg.cpu().numpy(), bc)
    for _ in range(steps):
        fp.unmul(qg, num, den, bg)
    np.testing.assert_array_equal(qg.cpu().numpy(), q)
    assert not bg.cpu().numpy().any()
    full = np.zeros((n, 1), np.uint32)
    full[-1] = 2**32 - 1  # only the last element overflows: all or nothing
    small = torch.from_numpy(full).cuda()
    with pytest.raises(OverflowError, match="required_words"):
        fp.mul(qg, 1, 2, small)
    np.testing.assert_array_equal(qg.cpu().numpy(), q)
    np.testing.assert_array_equal(small.cpu().numpy(), full)
    x = torch.tensor([0.5, -3.0, 1e-3], dtype=torch.float64, device="cuda")
    k = fp.encode(x, 30)
    np.testing.assert_array_equal(k.cpu().numpy(), fp.encode(x.cpu().numpy(), 30))
    np.testing.assert_array_equal(fp.decode(k, 30).cpu().numpy(), fp.decode(k.cpu().numpy(), 30))
    with pytest.raises(ValueError, match="nan or inf"):
        fp.encode(torch.tensor([1.0, float("nan")], device="cuda"), 30)
    with pytest.raises(fp.FixedPointOverflow, match=r"x\[1\]"):
        fp.encode(torch.tensor([1.0, 2.0**40], device="cuda"), 30)


@settings(deadline=None)  # the first draw compiles the kernel
@given(st.lists(st.integers(-2**62, 2**62 - 1), min_size=1, max_size=12), st.integers(0, 62),
       st.sampled_from([np.float32, np.float64]))
def test_decode_into_is_decode_then_cast(qs, frac_bits, dtype):
    """The reversible loop's decode into X's dtype: the bits of decode(q).astype(dtype)."""
    from mithridate.kernels.cpu.fixed_point import decode_into
    q = np.array(qs, np.int64)
    out = np.empty(q.shape, dtype)
    decode_into(q, 2.0**-frac_bits, out)
    assert out.tobytes() == fp.decode(q, frac_bits).astype(dtype).tobytes()


@settings(deadline=None)  # the first draw compiles the kernel
@given(st.lists(st.integers(-2**63, 2**63 - 1), min_size=1, max_size=12), st.integers(1, 2**31 - 1))
def test_floor_divmod_lanes_is_floor_divmod(xs, d):
    """step_lanes' division-free split of a full int64 (float quotient, corrected) is exact."""
    from mithridate.kernels.cpu import fixed_point as nfp
    inv = (1.0 / d) * nfp._BELOW
    for x in xs:
        q, r = nfp.floor_divmod_lanes(np.int64(x), np.int64(d), inv)
        assert (int(q), int(r)) == divmod(x, d)
