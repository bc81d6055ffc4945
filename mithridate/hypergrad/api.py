"""``hypergrad``: gradient of the validation loss after T inner steps wrt the
poisoning features and lam. See the package docstring for the math."""
import math
import numpy as np

from .. import fixed_point
from .._validation import as_number, check_memory
from ..errors import DivergenceError
from . import divergence, fused
from .problem import NATIVE, make_problem, make_problems
from .implicit import CHOLESKY_MAX
from .result import HyperGrad



def hypergrad(Xc, yc, Xp, yp, Xv, yv, *, lam, w0=None, T, alpha, gamma=0.0, loss="logistic",
              fit_intercept=True, mode="trajectory", backend="numba", tol=1e-6,
              checkpoints="sqrt", frac_bits=None, max_buffer_bytes=None, on_divergence="raise"):
    """Hypergradients of A(theta_T) = mean validation loss wrt Xp and lam.

    Inner: T steps of heavy-ball GD (``gamma``; 0 = plain GD) with step
    ``alpha`` from ``w0`` (zeros by default; (d + fit_intercept,)) on
    1/n sum l over [Xc; Xp] + exp(lam)/2 ||w||^2 (labels yp fixed). Modes:
    ``trajectory`` (exact RMD storing theta_0..theta_T), ``checkpoint`` (exact
    RMD storing ``checkpoints`` states ("sqrt": ceil(sqrt(T)), or an int) and
    recomputing each segment; equal to trajectory bit for bit on numba),
    ``reversible`` (exact reversal in fixed point with ``frac_bits`` fractional
    bits; the bit buffer may not exceed ``max_buffer_bytes`` per problem,
    default the size of the trajectory it replaces),
    ``forward`` (exact, lam only), ``implicit`` (eq. 4 at theta_T, exact only
    at a stationary point: ``info["grad_norm"]`` is the final training
    gradient norm, warned about above ``tol``).
    ``backend``: ``numba`` (compiled loops, every mode), ``torch`` (autograd
    through the unrolled loop, which is also its checkpoint mode; for implicit
    only the training runs in torch),
    ``cpp``/``cuda`` (compiled extension, where built).
    Arrays: numpy, one float dtype, C-contiguous; results in that dtype.

    Divergence: every mode and backend watches the training gradient at each
    inner step (no extra pass over X); if it becomes nan/inf or grows past a
    bound no stable run reaches (kernels/cpu/hypergrad.py), ``on_divergence="raise"``
    (default) raises mithridate.DivergenceError naming the step, alpha against
    the stable step for the estimated curvature, and the fix; ``"warn"``
    issues a DivergenceWarning and returns the diverged values, with
    ``info["diverged_at"]`` the step (None where the run was stable). Mode
    ``reversible`` raises in either case when its fixed point overflows (it
    has no values to return). Memory: the states each mode stores are checked
    against the memory available before any work (InsufficientMemoryError).

    Batched: Xp (B, k, d) and yp (B, k) give B independent problems; Xc, yc,
    Xv, yv, w0 are either shared (their single-problem shape) or carry a
    leading B axis, lam is a number or (B,). Returns one HyperGrad with value
    (B,), grad_Xp (B, k, d), grad_lam (B,), theta_T (B, p).
    """
    batched = isinstance(Xp, np.ndarray) and Xp.ndim == 3
    build = make_problems if batched else make_problem
    problems = build(Xc, yc, Xp, yp, Xv, yv, lam, w0, T, alpha, gamma, loss, fit_intercept,
                     mode, backend)
    problems = problems if batched else [problems]
    n_ckpt = _n_checkpoints(checkpoints, problems[0].T)
    for name, value in (("frac_bits", frac_bits), ("max_buffer_bytes", max_buffer_bytes)):
        if value is not None and mode != "reversible":
            raise ValueError(f"{name}={value!r} applies to mode='reversible' only; "
                             f"leave it None for mode={mode!r}.")
    divergence.check_option(on_divergence)
    tol = as_number("tol", tol, "the implicit mode's stationarity tolerance")
    _check_memory(problems, mode, backend, n_ckpt, frac_bits, max_buffer_bytes)
    try:
        results = _run(problems, mode, backend, tol, n_ckpt, frac_bits, max_buffer_bytes)
    except fixed_point.FixedPointOverflow as err:  # reversible: diverged, or frac_bits too high?
        _diagnose_overflow(problems, err)
        raise
    steps = [_diverged_at(pb, r) for pb, r in zip(problems, results)]
    divergence.report(problems, steps, on_divergence)
    if on_divergence == "warn":
        for r, step in zip(results, steps):
            r.info["diverged_at"] = step
    return _stack(results) if batched else results[0]


def _memory(problems, mode, backend, n_ckpt, frac_bits, max_buffer_bytes):
    """Bytes a call allocates, about (every problem's states at once: the
    shared-Xc route holds them together), and what those bytes are."""
    pb = problems[0]
    B, T, d, p = len(problems), pb.T, pb.d, pb.d + 1
    n = pb.Xc.shape[0] + pb.Xp.shape[0]
    copies = 0 if backend in NATIVE else B * n * d * pb.Xc.itemsize  # [Xc; Xp] per problem
    if mode == "reversible":
        from . import reversible
        f = reversible.check_frac_bits(frac_bits)
        reversible.check_max_buffer_bytes(max_buffer_bytes)
        state = reversible.plan(pb, f, max_buffer_bytes)[3]
        return copies + B * state, "its fixed-point states and bit buffers"
    if backend == "torch":  # the autograd graph keeps a few n- and p-vectors per step
        return copies + B * T * (n + p) * 8 * 8, f"the autograd graph of T={T} steps"
    if mode == "implicit":
        solve = p * p * 8 + n * p * 8 if p <= CHOLESKY_MAX else 0
        return copies + solve, "the float64 Hessian and design matrix"
    if mode == "forward":
        return copies, "the training rows"
    from ..kernels.cpu.hypergrad import state_bytes
    states = state_bytes(T, d, T + 1 if mode == "trajectory" else n_ckpt)
    return copies + B * states, f"the stored states of T={T} steps ({mode})"


def _check_memory(problems, mode, backend, n_ckpt, frac_bits, max_buffer_bytes):
    need, what = _memory(problems, mode, backend, n_ckpt, frac_bits, max_buffer_bytes)
    fix = {"trajectory": "use mode='checkpoint' or 'reversible' (less memory per step), fewer "
                         "steps T, or smaller batches",
           "checkpoint": "use mode='reversible', fewer checkpoints, or smaller batches",
           "reversible": "use a larger gamma (a shorter bit buffer), fewer steps T, or smaller "
                         "batches"}.get(mode, "use smaller batches or fewer rows")
    batch = f" for {len(problems)} problems" if len(problems) > 1 else ""
    check_memory(need, f"mode={mode!r} on backend={backend!r}{batch}: {what}", fix)


def _diverged_at(pb, result):
    """The step the backend flagged (info["diverged_at"], popped), else T if
    a result is nan/inf anyway (e.g. the final iterate), else None."""
    step = result.info.pop("diverged_at", -1)
    if step is not None and step >= 0:
        return int(step)
    return pb.T if divergence.diverged(result) else None


def _diagnose_overflow(problems, err):
    """A fixed-point overflow in mode='reversible': raise DivergenceError
    (chained to it) if the float training diverges, else return."""
    from ..kernels.cpu import hypergrad as kernel
    for i, pb in enumerate(problems):
        args = fused.numba_args(pb)
        step = int(kernel.train(*args[:2], *args[4:13], args[-1])[2])
        if step >= 0:
            steps = [None] * len(problems)
            steps[i] = step
            try:
                divergence.report(problems, steps, "raise")
            except DivergenceError as div:
                raise div from err


def _n_checkpoints(checkpoints, T):
    """Number of stored (theta, v) states for mode='checkpoint', in [1, T]."""
    if checkpoints == "sqrt":
        return math.isqrt(T - 1) + 1  # ceil(sqrt(T))
    if isinstance(checkpoints, bool) or not isinstance(checkpoints, (int, np.integer)) \
            or checkpoints < 1:
        raise ValueError(f"checkpoints={checkpoints!r} must be 'sqrt' or a positive integer "
                         "(the number of stored states).")
    return int(min(checkpoints, T))


def _run(problems, mode, backend, tol, n_ckpt, frac_bits, max_buffer_bytes):
    """list[HyperGrad], one per problem."""
    if backend in NATIVE:
        from .native import run
        return run(problems, mode, backend, frac_bits, max_buffer_bytes)
    if mode == "reversible":
        from .reversible import run
        return run(problems, frac_bits, max_buffer_bytes)
    info = lambda pb: dict(mode=mode, backend=backend, T=pb.T)
    if mode == "implicit":
        from .implicit import implicit
        return [implicit(pb, backend, tol, info(pb)) for pb in problems]
    if backend == "torch":
        from .reference import unrolled
        out = []
        for pb in problems:
            value, gX, glam, theta, step = unrolled(pb)
            gX = None if mode == "forward" else gX.astype(pb.Xc.dtype)
            out.append(HyperGrad(value, gX, glam, theta, dict(info(pb), diverged_at=step)))
        return out
    import numba
    if len(problems) > 1 and len(problems) >= numba.get_num_threads():
        return fused.batch(problems, mode, n_ckpt, info)
    return [fused.single(pb, mode, n_ckpt, info(pb)) for pb in problems]


def _stack(results):
    """One HyperGrad of (B, ...) arrays; info keys equal across problems stay
    scalars, the others become lists."""
    first = results[0]
    info = {key: (val if all(r.info.get(key) == val for r in results)
                  else [r.info.get(key) for r in results]) for key, val in first.info.items()}
    info["B"] = len(results)
    gX = None if first.grad_Xp is None else np.stack([r.grad_Xp for r in results])
    return HyperGrad(np.array([r.value for r in results]), gX,
                     np.array([r.grad_lam for r in results]),
                     np.stack([r.theta_T for r in results]), info)
