"""``hypergrad``: gradient of the validation loss after T inner steps wrt the
poisoning features and lam. See the package docstring for the math."""
import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from .. import fixedpoint, ops
from .._validation import as_number, check_memory
from ..errors import DivergenceError, InsufficientMemoryError, SingularHessianError
from . import divergence
from .problem import NATIVE, make_problem, make_problems

CHOLESKY_MAX = 2000  # p above this: CG on HVPs instead of forming the p x p Hessian
# Trajectory- and forward-mode batches: at least SHARED_MIN_GROUP consecutive problems sharing Xc, yc
# with d >= SHARED_MIN_FEATURES take the matrix-matrix route (rmd.shared_parts).
# Measured at paper size (n = 529, d = 784, T = 150, 2 cores) against the per-problem
# batch: groups of 24-40 gain 1.3-1.5x (f32) and 1.4-2.5x (f64); groups of 4-20 lose
# (0.3-0.9x: BLAS on a few rows is no faster than streaming X per problem).
# Below d = 32 the per-problem route is as fast for shared X (kernels/cpu/linear.py).
SHARED_MIN_GROUP = 24
SHARED_MIN_FEATURES = 32


@dataclass
class HyperGrad:
    """value: validation loss at theta_T; grad_Xp (k, d) (None in forward
    mode); grad_lam; theta_T = [w; b] (p,); info: mode details
    (``state_bytes``: the reverse sweep's stored states). A batched call
    returns value (B,), grad_Xp (B, k, d), grad_lam (B,), theta_T (B, p)."""
    value: float
    grad_Xp: np.ndarray
    grad_lam: float
    theta_T: np.ndarray
    info: dict = field(default_factory=dict)


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
    bound no stable run reaches (kernels/cpu/rmd.py), ``on_divergence="raise"``
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
    except fixedpoint.FixedPointOverflow as err:  # reversible: diverged, or frac_bits too high?
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
    from ..kernels.cpu.rmd import state_bytes
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
    from ..kernels.cpu import rmd
    for i, pb in enumerate(problems):
        args = _numba_args(pb)
        step = int(rmd.train(*args[:2], *args[4:13], args[-1])[2])
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
        return [_implicit(pb, backend, tol, info(pb)) for pb in problems]
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
        return _numba_batch(problems, mode, n_ckpt, info)
    return [_numba(pb, mode, n_ckpt, info(pb)) for pb in problems]


def _numba(pb, mode, n_ckpt, info):
    from ..kernels.cpu import rmd
    args = _numba_args(pb)
    dt = pb.Xc.dtype
    if mode == "forward":
        value, glam, theta, info["diverged_at"] = rmd.forward(*args)
        return HyperGrad(float(value), None, float(glam), _theta_out(pb, theta), info)
    k = pb.Xp.shape[0]
    gX = np.empty((k, pb.d))
    X, y, Xv, yv, *rest = args
    n_states = pb.T + 1 if mode == "trajectory" else n_ckpt
    info["state_bytes"] = rmd.state_bytes(pb.T, pb.d, n_states)
    value, glam, theta, info["diverged_at"] = rmd.reverse(
        X, y, k, Xv, yv, *rest, rmd.segment_length(pb.T, n_states), gX)
    return HyperGrad(float(value), gX.astype(dt), float(glam), _theta_out(pb, theta), info)


def _numba_batch(problems, mode, n_ckpt, info):
    """All problems in one compiled call, parallel over problems (same bits
    as single calls); in trajectory mode, groups sharing their clean rows take
    the matrix-matrix route instead (same values to rounding)."""
    from ..kernels.cpu import rmd
    from ..kernels.cpu.linear import LOSS_CODES
    results = [None] * len(problems)
    for idx in (_shared_groups(problems) if mode in ("trajectory", "forward") else []):
        for i, r in zip(idx, _numba_shared([problems[i] for i in idx], mode, info)):
            results[i] = r
    rest = [i for i, r in enumerate(results) if r is None]
    if not rest:
        return results
    problems = [problems[i] for i in rest]
    pb0 = problems[0]
    B, k, d, dt = len(problems), pb0.Xp.shape[0], pb0.d, pb0.Xc.dtype
    X = np.stack([np.concatenate([pb.Xc, pb.Xp]) for pb in problems])
    y = np.stack([np.concatenate([pb.yc, pb.yp]) for pb in problems])
    Xv, yv, theta0, e = _batch_inputs(problems)
    common = (LOSS_CODES[pb0.loss], pb0.fit_intercept, theta0, pb0.alpha, pb0.gamma, e, pb0.T,
              *rmd.layout(X.shape[1], d, X.itemsize), *rmd.layout(Xv.shape[1], d, X.itemsize))
    out, theta_T = np.empty((B, 3)), np.empty((B, d + 1))
    infos = [info(pb) for pb in problems]
    if mode == "forward":
        rmd.forward_batch(X, y, Xv, yv, *common, out, theta_T)
        gX = [None] * B
    else:
        n_states = pb0.T + 1 if mode == "trajectory" else n_ckpt
        for i in infos:
            i["state_bytes"] = rmd.state_bytes(pb0.T, d, n_states)
        dXp = np.empty((B, k, d))
        rmd.reverse_batch(X, y, k, Xv, yv, *common, rmd.segment_length(pb0.T, n_states), dXp,
                          out, theta_T)
        gX = dXp.astype(dt)
    for j, (i, pb) in enumerate(zip(rest, problems)):
        infos[j]["diverged_at"] = int(out[j, 2])
        results[i] = HyperGrad(float(out[j, 0]), gX[j], float(out[j, 1]),
                               _theta_out(pb, theta_T[j]), infos[j])
    return results


def _batch_inputs(problems):
    """Xv, yv (1 or B leading), theta0 (B, d + 1), e = exp(lam) (B,)."""
    pb0 = problems[0]
    shared_v = all(pb.Xv is pb0.Xv for pb in problems)
    Xv = pb0.Xv[None] if shared_v else np.stack([pb.Xv for pb in problems])
    yv = pb0.yv[None] if shared_v else np.stack([pb.yv for pb in problems])
    theta0 = np.zeros((len(problems), pb0.d + 1))
    for b, pb in enumerate(problems):
        theta0[b, :pb.theta0.shape[0]] = pb.theta0
    return Xv, yv, theta0, np.exp([pb.lam for pb in problems])


def _shared_groups(problems):
    """Index lists of runs of consecutive problems with the same clean rows
    (the same Xc, yc objects, or equal ones: a (B, n, d) Xc that repeats each
    repetition's rows), where the matrix-matrix route pays (SHARED_MIN_*)."""
    if problems[0].d < SHARED_MIN_FEATURES:
        return []
    same = lambda a, b: a is b or (a.shape == b.shape and np.array_equal(a[:1], b[:1])
                                   and np.array_equal(a, b))
    runs = [[0]]
    for i in range(1, len(problems)):
        p, q = problems[runs[-1][0]], problems[i]
        if same(p.Xc, q.Xc) and same(p.yc, q.yc):
            runs[-1].append(i)
        else:
            runs.append([i])
    return [r for r in runs if len(r) >= SHARED_MIN_GROUP]


def _numba_shared(problems, mode, info):
    """Trajectory RMD or forward mode for problems sharing Xc, yc:
    rmd.shared_parts, one part of the problems per numba thread."""
    import numba
    from ..kernels.cpu import rmd
    from ..kernels.cpu.linear import _one_blas_thread
    from ..kernels.cpu.linear import LOSS_CODES
    pb0 = problems[0]
    G, d = len(problems), pb0.d
    Xv, yv, theta0, e = _batch_inputs(problems)
    Xp = np.stack([pb.Xp for pb in problems])
    yp = np.stack([pb.yp for pb in problems])
    dXp, out, theta_T = np.empty(Xp.shape), np.empty((G, 3)), np.empty((G, d + 1))
    with _one_blas_thread():
        rmd.shared_parts(mode != "forward", pb0.Xc, pb0.yc, Xp, yp, Xv, yv,
                         LOSS_CODES[pb0.loss], pb0.fit_intercept, theta0, pb0.alpha, pb0.gamma,
                         e, pb0.T, *rmd.layout(Xv.shape[1], d, Xp.itemsize),
                         min(G, numba.get_num_threads()), dXp, out, theta_T)
    gX = [None] * G if mode == "forward" else dXp.astype(pb0.Xc.dtype)
    infos = [info(pb) for pb in problems]
    for i in infos if mode != "forward" else []:
        i["state_bytes"] = rmd.state_bytes(pb0.T, d, pb0.T + 1)
    for i, bad in zip(infos, out[:, 2]):
        i["diverged_at"] = int(bad)
    return [HyperGrad(float(out[b, 0]), gX[b], float(out[b, 1]), _theta_out(pb, theta_T[b]),
                      infos[b]) for b, pb in enumerate(problems)]


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


def _numba_args(pb):
    """(X, y, Xv, yv, code, fit_b, theta0, alpha, gamma, e, T, groups, block,
    v_groups, v_block, n_threads) for kernels/cpu/rmd.py."""
    import numba
    from ..kernels.cpu.linear import LOSS_CODES
    from ..kernels.cpu.rmd import layout
    X = np.concatenate([pb.Xc, pb.Xp])
    y = np.concatenate([pb.yc, pb.yp])
    (n, d), nv = X.shape, pb.Xv.shape[0]
    theta0 = np.zeros(d + 1)
    theta0[:pb.theta0.shape[0]] = pb.theta0
    return (X, y, pb.Xv, pb.yv, LOSS_CODES[pb.loss], pb.fit_intercept, theta0, pb.alpha,
            pb.gamma, float(np.exp(pb.lam)), pb.T, *layout(n, d, X.itemsize),
            *layout(nv, d, X.itemsize), numba.get_num_threads())


def _theta_out(pb, theta):
    return theta[:pb.d + pb.fit_intercept].astype(pb.Xc.dtype)


def _implicit(pb, backend, tol, info):
    """Eq. (4): s = H^-1 grad A, grad_Xp = -d/dXp (g . s), grad_lam = -d/dlam (g . s)."""
    X = np.concatenate([pb.Xc, pb.Xp])
    y = np.concatenate([pb.yc, pb.yp])
    if backend == "torch":
        from .reference import train
        theta, step = train(pb)
    else:
        from ..kernels.cpu import rmd
        args = _numba_args(pb)
        theta, _, step = rmd.train(*args[:2], *args[4:13], args[-1])
        theta = _theta_out(pb, theta)
    info["diverged_at"] = int(step)
    if step >= 0:  # no stationary point to differentiate at: nan, reported by hypergrad()
        k, dt = pb.Xp.shape[0], pb.Xc.dtype
        return HyperGrad(math.nan, np.full((k, pb.d), np.nan, dt), math.nan, theta, info)
    common = dict(loss=pb.loss, fit_intercept=pb.fit_intercept, backend=backend)
    _, g = ops.loss_grad(theta, X, y, lam=pb.lam, **common)
    info["grad_norm"] = float(np.linalg.norm(g))
    if info["grad_norm"] > tol:
        warnings.warn(f"implicit hypergradient at a non-stationary point: ||grad L(theta_T)|| = "
                      f"{info['grad_norm']:.3g} > tol={tol:g}; raise T or alpha (or use "
                      "mode='trajectory').", RuntimeWarning, stacklevel=3)
    value, gA = ops.loss_grad(theta, pb.Xv, pb.yv, **common)
    p = theta.shape[0]
    if p <= CHOLESKY_MAX:
        from scipy.linalg import cho_solve
        info["solver"] = "cholesky"
        s = cho_solve(_cholesky(pb, _hessian(pb, theta, X)), gA.astype(np.float64))
    else:
        from scipy.sparse.linalg import LinearOperator, cg
        info["solver"] = "cg"
        H = LinearOperator((p, p), dtype=np.float64, matvec=lambda v: ops.hvp(
            theta, np.ascontiguousarray(v.ravel(), dtype=X.dtype), X, y, lam=pb.lam, **common))
        s, fail = cg(H, gA.astype(np.float64), rtol=1e-10 if X.dtype == np.float64 else 1e-6)
        if fail:
            raise SingularHessianError(
                f"mode='implicit': CG did not converge on the {p} x {p} training Hessian at "
                f"theta_T ({fail} iterations): it is singular or ill-conditioned; raise lam "
                f"(now {pb.lam:g}) or use mode='trajectory'.")
    rows = np.arange(pb.Xc.shape[0], X.shape[0])
    dX, dlam = ops.mixed(theta, np.ascontiguousarray(s, dtype=X.dtype), X, y, rows,
                         lam=pb.lam, **common)
    return HyperGrad(float(value), -np.asarray(dX), -float(dlam), theta, info)


def _cholesky(pb, H):
    """cho_factor of the training Hessian H, or SingularHessianError when H is
    not numerically positive definite (condition >= 1/eps by the factor's diagonal)."""
    from scipy.linalg import cho_factor
    try:
        factor = cho_factor(H)
        r = np.abs(np.diag(factor[0]))
        cond = (r.max() / r.min()) ** 2 if r.min() > 0 else math.inf
    except np.linalg.LinAlgError:
        cond = math.inf
    if not cond < 1 / np.finfo(np.float64).eps:
        why = "singular (not positive definite)" if cond == math.inf else \
            f"too ill-conditioned to solve (condition >= {cond:.3g})"
        raise SingularHessianError(
            f"mode='implicit': the {H.shape[0]} x {H.shape[0]} training Hessian at theta_T is "
            f"{why}: exp(lam) = {math.exp(pb.lam):.3g} (lam={pb.lam:g}) adds too little "
            "curvature for these data; raise lam, or use mode='trajectory', which needs no "
            "Hessian solve.")
    return factor


def _hessian(pb, theta, X):
    """Training-objective Hessian in float64: [X 1]^T diag(l'') [X 1] / n + exp(lam) [I 0; 0 0]."""
    d = pb.d
    A = np.hstack([X, np.ones((X.shape[0], 1))]) if pb.fit_intercept else X.astype(np.float64)
    z = A @ theta.astype(np.float64)
    if pb.loss == "logistic":
        sig = 0.5 * (1.0 + np.tanh(0.5 * z))  # stable sigmoid
        c = sig * (1.0 - sig)
    else:
        c = np.ones_like(z)
    H = (A.T * c) @ A / X.shape[0]
    H[np.arange(d), np.arange(d)] += np.exp(pb.lam)
    return H
