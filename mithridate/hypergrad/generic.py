"""Hypergradients of any mithridate.models Model by a Python loop over its
primitives: the engine's route for models without a fused loop (a
penalised intercept, sample weights, n_lam > 1, the network of issue 10).

Inner loop (mithridate.hypergrad): T heavy-ball steps of the model's
training objective on the rows X = [Xc; Xp] (poisoning rows last) from
theta_0, v_0 = 0 (models/heavy_ball.step); outer A = model.data_loss(theta_T,
Xv, yv). Modes:

- ``trajectory`` / ``checkpoint``: exact RMD walking a schedule.Schedule
  (trajectory: plan(T, T), every theta stored; checkpoint: the given plan,
  default "sqrt"). The step back at theta_t with u = vb + alpha tb
  (kernels/cpu/heavy_ball.direction, adjoint):
      tb -= (1 - gamma) H u,   vb = gamma u,
      dXp -= (1 - gamma) d/dXp (g . u),   dlam -= (1 - gamma) d/dlam (g . u).
- ``forward``: one tangent (dtheta/dlam_j, dv/dlam_j) per hyperparameter,
  carried by the same heavy-ball recursion with dg_j = H dtheta_j + d g/dlam_j;
  dA/dlam_j = grad A(theta_T) . dtheta_j at the end (lam only).
- ``reversible``: theta, v in int64 fixed point (kernels/cpu/heavy_ball.exact_*,
  the invariant of kernels/cpu/hypergrad_reversible.py): the increment is
  rint(-(1 - gamma) 2^f g) of the model's full gradient at the decoded theta_t,
  which the reverse recomputes bit for bit at the recovered theta_t (a model's
  gradient is a deterministic function of theta). The reverse then takes the
  step back above there; theta_0 and v_0 = 0 must come back bit for bit.
- ``value``: the training and the outer value only (grad_Xp, grad_lam None).

A model may return, with each gradient, the state of its pass at theta
(Model.grad_pass; the network's activations and deltas): the step back at the
same theta then reuses it (Model.back) instead of a second forward pass. _rmd
keeps them as its docstring says (counted in state_bytes); forward mode's
tangent HVPs and reversible's reverse step use the state of the same step's
gradient.

Model calls take theta (and u) in X's dtype, as the fused loops' row passes;
the state, adjoints and sums are float64, except reversible's adjoints, kept in
X's dtype for memory (_reversible says why). Divergence: the growth watch of
kernels/cpu/hypergrad.py on each first-pass step, returned as
info["diverged_at"] for mithridate.hypergrad.divergence to report.
"""
import math

import numpy as np

from .. import fixed_point
from ..models.heavy_ball import step
from . import divergence, reversible, schedule as schedules
from .schedule import ADVANCE, RESTORE, SAVE, VALUE
from .result import HyperGrad

MODES = ("trajectory", "checkpoint", "forward", "reversible", "value")
CHUNK = 1 << 13  # elements per fixed-point pass in reversible mode (its int64 scratch)


def run(model, problems, mode, *, schedule=None, frac_bits=None, max_buffer_bytes=None):
    """list[HyperGrad], one per Problem (fields Xc, yc, Xp, yp, Xv, yv, lam,
    theta0, T, alpha, gamma; rows() = the packed [Xc; Xp], [yc; yp]). Every
    problem is checked before any runs."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not one of the generic engine's modes {list(MODES)}.")
    if schedule is not None and mode != "checkpoint":
        raise ValueError(f"schedule applies to mode='checkpoint' only; leave it None for "
                         f"mode={mode!r}.")
    for name, value in (("frac_bits", frac_bits), ("max_buffer_bytes", max_buffer_bytes)):
        if value is not None and mode != "reversible":
            raise ValueError(f"{name}={value!r} applies to mode='reversible' only; leave it None "
                             f"for mode={mode!r}.")
    inners = [_Inner(model, pb) for pb in problems]
    if mode == "reversible":
        frac_bits = reversible.check_frac_bits(frac_bits)
        reversible.check_max_buffer_bytes(max_buffer_bytes)
        plans = [_fixed_point_plan(inner, frac_bits, max_buffer_bytes) for inner in inners]
        with _pinned_blas():
            return [_reversible(inner, frac_bits, *plan, _where(i, problems))
                    for i, (inner, plan) in enumerate(zip(inners, plans))]
    if mode in ("forward", "value"):
        return [_forward(inner, mode == "forward") for inner in inners]
    scheds = [_schedule(mode, schedule, inner.T) for inner in inners]
    return [_rmd(inner, sched, mode) for inner, sched in zip(inners, scheds)]


def state_bytes(model, pb, mode, schedule=None, frac_bits=None, max_buffer_bytes=None):
    """Bytes of the states `mode` stores for Problem pb (the memory check)."""
    inner = _Inner(model, pb)
    p = inner.p
    if mode in ("forward", "value"):
        return 8 * p * 2 * (1 + (mode == "forward") * inner.n_lam)
    if mode == "reversible":
        return _fixed_point_plan(inner, reversible.check_frac_bits(frac_bits), max_buffer_bytes)[3]
    sched = _schedule(mode, schedule, inner.T)
    return sched.state_bytes(p) + _cache_size(sched) * inner.pass_bytes


def _cache_size(sched):
    """At most this many model pass states are kept by _rmd (module docstring)."""
    return sched.n_slots


class _Inner:
    """One problem's rows and settings, and the model calls in its terms."""

    def __init__(self, model, pb):
        self.model, self.pb = model, pb
        self.X, self.y = pb.rows()
        self.k = pb.Xp.shape[0]
        self.rows = np.arange(self.X.shape[0] - self.k, self.X.shape[0])
        self.dtype = self.X.dtype
        self.d = self.X.shape[1]
        self.layout = model.layout(self.d)
        self.p, self.n_lam = self.layout.size, self.layout.n_lam
        self.lam = model.regularizer(self.d).check_lam(np.atleast_1d(np.asarray(pb.lam, np.float64)))
        theta0 = np.asarray(pb.theta0)  # its own float dtype: reversible needs no float64 copy
        self.theta0 = theta0 if theta0.dtype.kind == "f" else theta0.astype(np.float64)
        if self.theta0.shape != (self.p,):
            raise ValueError(f"theta0 has shape {self.theta0.shape} but the model's layout "
                             f"{self.layout.groups} has p={self.p} parameters.")
        self.T, self.alpha, self.gamma = pb.T, pb.alpha, pb.gamma
        self.pass_bytes = model.pass_bytes(self.X)

    def _x(self, a):
        return a.astype(self.dtype, copy=False)

    def grad_pass(self, theta):
        """(the training objective's gradient at theta (float64), the model's pass state
        for back at theta)."""
        g, state = self.grad_pass_x(self._x(theta))
        return np.asarray(g, np.float64), state

    def grad_pass_x(self, theta_x):
        """grad_pass at theta in X's dtype, the gradient in the model's dtype. Every
        gradient of every mode comes from here: the reverse sweep of reversible repeats
        the forward's calls, hence its bits."""
        g, state = self.model.grad_pass(theta_x, self.X, self.y, self.lam)
        return np.asarray(g), state

    def outer(self, theta, dtype=np.float64):
        """(value, gradient in ``dtype``) of the outer objective at theta_T."""
        value, g = self.model.data_loss_grad(self._x(theta), self.pb.Xv, self.pb.yv)
        return float(value), np.array(g, dtype)  # a copy: the reverse updates it in place

    def back(self, theta, tb, vb, dXp, dlam, state=None):
        """The step back at theta_t, in place (module docstring); ``state``: the model's
        grad_pass state at theta_t, reused where given."""
        u = self.direction(tb, vb)
        self.back_lam(theta, u, dlam)
        self.back_rows(self._x(theta), u, tb, vb, dXp, state)

    def direction(self, tb, vb):
        """u = vb + alpha tb, formed in vb's storage (all the step back needs of vb)."""
        from ..kernels.cpu.heavy_ball import direction
        direction(tb, vb, self.alpha, vb)
        return vb

    def back_lam(self, theta, u, dlam):
        """dlam -= (1 - gamma) d/dlam (g . u) at float64 theta."""
        dlam -= (1.0 - self.gamma) * np.asarray(self.model.mixed_lam(theta, u, self.lam),
                                                np.float64)

    def back_rows(self, theta_x, u, tb, vb, dXp, state=None):
        """The rest of the step back, u = direction(tb, vb), theta_x = theta_t in X's
        dtype: dXp -= (1 - gamma) d/dXp (g . u); tb -= (1 - gamma) H u, vb = gamma u.
        H u stays in the model's dtype (the adjoint widens each element exactly)."""
        from ..kernels.cpu.heavy_ball import adjoint
        ux = self._x(u)
        if self.k or state is not None:
            hu, mixed = self.model.back(theta_x, ux, self.X, self.y, self.lam, self.rows, state)
            dXp -= (1.0 - self.gamma) * mixed
        else:
            hu = self.model.hvp(theta_x, ux, self.X, self.y, self.lam)
        del ux
        adjoint(tb, vb, u, np.asarray(hu), self.gamma)

    def hvp(self, theta, u, state):
        """H u at theta (X's dtype), from the pass ``state`` where the model keeps one."""
        th, ux = self._x(theta), self._x(u)
        if state is None:
            return self.model.hvp(th, ux, self.X, self.y, self.lam)
        return self.model.back(th, ux, self.X, self.y, self.lam, self.rows[:0], state)[0]

    def lam_tangent(self, theta):
        """(n_lam, p): d grad / d lam_j, from the model's regulariser components."""
        return np.asarray(self.model.lam_tangent(theta, self.lam), np.float64)

    def result(self, value, dXp, dlam, theta_T, info, where=""):
        glam = float(dlam[0]) if dlam is not None and self.n_lam == 1 else dlam
        gX = None if dXp is None else divergence.to_dtype(dXp, self.dtype, f"generic{where}")
        return HyperGrad(value, gX, glam, theta_T.astype(self.dtype, copy=False), info)


def _pinned_blas():
    """The BLAS thread count in effect now, held for the whole call: the reverse sweep's
    gradients must repeat the forward's bits, and a GEMM's partition (hence its rounding)
    may depend on the thread count."""
    from threadpoolctl import threadpool_info, threadpool_limits
    counts = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
    return threadpool_limits(limits=min(counts) if counts else 1, user_api="blas")


def _step(theta, v, g, alpha, gamma):
    """The heavy-ball step into new arrays (the walker keeps references to the old ones),
    one fused pass (kernels/cpu/heavy_ball.step)."""
    from ..kernels.cpu.heavy_ball import step as fused_step
    theta, v = theta.copy(), v.copy()
    fused_step(theta, v, g, alpha, gamma)
    return theta, v


def _where(i, problems):
    return f" (problem {i})" if len(problems) > 1 else ""


def _schedule(mode, schedule, T):
    if mode == "trajectory":
        return schedules.plan(T, T)
    if schedule is None:
        return schedules.plan(T, "sqrt")
    if not isinstance(schedule, schedules.Schedule) or schedule.T != T:
        raise ValueError(f"schedule must be a mithridate.hypergrad.schedule.Schedule for T={T} "
                         f"(schedule.plan(T, ...)), got {schedule!r:.80}.")
    return schedule


def _watcher(gamma):
    """watch(g, t): the growth check of kernels/cpu/hypergrad.py; .step: the flagged step (-1)."""
    from ..kernels.cpu.hypergrad import _watch, new_watch
    record = new_watch()

    def watch(g, t):
        _watch(float(g @ g), gamma, t, record)
    watch.step = lambda: int(record[1])
    return watch


def _rmd(inner, sched, mode):
    """Trajectory or checkpoint RMD: walk the schedule (schedule.py's cursor). The
    model's pass state of a gradient at theta_t (a network's activations) is kept for
    the REVERSE at t: every step's in trajectory mode, in checkpoint mode those of
    the recomputations (at most sched.n_slots, the lowest t dropped first)."""
    theta, v, t = np.array(inner.theta0, np.float64), np.zeros(inner.p), 0
    slots = [None] * sched.n_slots
    watch = _watcher(inner.gamma)
    first = True  # before VALUE: the one forward pass, watched
    keep = inner.pass_bytes > 0  # the default Model keeps no state
    cache, size = {}, _cache_size(sched)
    dXp, dlam = np.zeros((inner.k, inner.d)), np.zeros(inner.n_lam)
    for op, arg in sched.actions:
        if op == ADVANCE:
            for _ in range(arg):
                g, state = inner.grad_pass(theta)
                if first:
                    watch(g, t)
                if keep and (not first or mode == "trajectory"):
                    cache[t] = state
                    if len(cache) > size:
                        del cache[min(cache)]
                theta, v = _step(theta, v, g, inner.alpha, inner.gamma)
                t += 1
        elif op == SAVE:  # step returns new arrays: references are copies
            slots[arg] = (theta, None if sched.theta_only[arg] else v, t)
        elif op == RESTORE:
            theta, v, t = slots[arg]
        elif op == VALUE:
            value, tb = inner.outer(theta)
            vb, theta_T, first = np.zeros(inner.p), theta, False
        else:
            inner.back(theta, tb, vb, dXp, dlam, cache.pop(arg, None))
            for stale in [s for s in cache if s > arg]:  # the reverse has passed them
                del cache[stale]
    info = dict(mode=mode, backend="generic", T=inner.T, diverged_at=watch.step(),
                state_bytes=sched.state_bytes(inner.p) + size * inner.pass_bytes,
                recomputed=sched.recomputed)
    return inner.result(value, dXp, dlam, theta_T, info)


def _forward(inner, tangents):
    """Forward mode (tangents) or the value alone: the tangents ride the
    heavy-ball step with theta's."""
    n = inner.n_lam if tangents else 0
    theta, v = np.array(inner.theta0, np.float64), np.zeros(inner.p)
    dth, dv = np.zeros((n, inner.p)), np.zeros((n, inner.p))
    watch = _watcher(inner.gamma)
    for t in range(inner.T):
        g, state = inner.grad_pass(theta)
        watch(g, t)
        if tangents:
            dg = inner.lam_tangent(theta)
            for j in range(n):
                dg[j] += inner.hvp(theta, dth[j], state)
            dth, dv = step(dth, dv, dg, inner.alpha, inner.gamma)
        theta, v = _step(theta, v, g, inner.alpha, inner.gamma)
    value, gv = inner.outer(theta)
    mode = "forward" if tangents else "value"
    info = dict(mode=mode, backend="generic", T=inner.T, diverged_at=watch.step(),
                state_bytes=8 * inner.p * 2 * (1 + n))
    return inner.result(value, None, dth @ gv if tangents else None, theta, info)


def _fixed_point_plan(inner, frac_bits, max_buffer_bytes):
    """Every check of reversible mode before any work: (num, den, words, state_bytes)."""
    num, den = reversible.gamma_fraction(inner.gamma)
    words = fixed_point.required_words(inner.T, num, den)
    buffer_bytes = inner.p * words * 4
    cap = (inner.T + 1) * inner.p * 8 if max_buffer_bytes is None else max_buffer_bytes
    if buffer_bytes > cap:
        raise ValueError(
            f"mode='reversible' with T={inner.T} and gamma={inner.gamma!r} (= {num}/{den}) needs "
            f"a {buffer_bytes}-byte bit buffer ({words} words per parameter), over "
            f"max_buffer_bytes={cap}{' (the trajectory it replaces)' if max_buffer_bytes is None else ''}"
            "; use mode='checkpoint', a larger gamma, or raise max_buffer_bytes.")
    reversible.check_w0_fits(inner.theta0, frac_bits)
    return num, den, words, inner.p * 16 + buffer_bytes


def _reversible(inner, frac_bits, num, den, words, state_bytes, where):
    """Exact fixed-point forward and reverse (module docstring); raises
    FixedPointOverflow when the state leaves int64, RuntimeError if theta_0,
    v_0 do not come back bit for bit. Memory: the int64 theta_q, v_q, the bit
    buffer, theta and the adjoints tb, vb in X's dtype (float64 adjoints would
    carry precision the step back does not have: u = vb + alpha tb enters the
    model in X's dtype and H u comes back in it; the mixed sums stay float64;
    u is formed in vb's storage, so it reaches the model without a copy). The
    fixed-point passes
    run over CHUNK elements at a time (their int64 scratch is a chunk's), the
    buffer one limb-major block per chunk."""
    from ..kernels.cpu import fixed_point as fp, heavy_ball as hb
    from ..kernels.cpu.hypergrad_reversible import step_words
    p, T = inner.p, inner.T
    w = step_words(T, num, den)
    scale = -(1.0 - inner.gamma) * math.ldexp(1.0, frac_bits)  # one rounded product per element
    inv = math.ldexp(1.0, -frac_bits)
    chunks = [slice(lo, min(lo + CHUNK, p)) for lo in range(0, p, CHUNK)]
    thq, vq = np.empty(p, np.int64), np.zeros(p, np.int64)
    for sl in chunks:  # fits: checked by the plan
        fp.encode(inner.theta0[sl].astype(np.float64), thq[sl], frac_bits)
    bufs = [np.zeros((words, sl.stop - sl.start), np.uint32) for sl in chunks]
    incr, codes, rem, hi = (np.empty(min(CHUNK, p), np.int64) for _ in range(4))
    theta = np.empty(p, inner.dtype)  # theta_t decoded, the model's input
    watch = _watcher(inner.gamma)
    for t in range(T):
        fp.decode_into(thq, inv, theta)
        g = inner.grad_pass_x(theta)[0]
        watch(np.asarray(g, np.float64), t)
        for c, sl in enumerate(chunks):
            n = sl.stop - sl.start
            hb.exact_increment(g[sl], scale, incr[:n], codes[:n])
            status, which, j = hb.exact_forward(thq[sl], vq[sl], bufs[c], incr[:n], codes[:n],
                                                w[t + 1], num, den, inner.alpha, rem[:n], hi[:n])
            if status != fp.OK:
                name = "theta" if which == hb.THETA_STATE else "v"
                e = 63 - frac_bits
                what = "is not finite" if status == fp.NOT_FINITE else \
                    f"left the fixed-point range [-2**{e}, 2**{e})"
                raise fixed_point.FixedPointOverflow(
                    f"mode='reversible'{where}: {name}[{sl.start + j}] at step {t + 1} of {T} "
                    f"{what} with frac_bits={frac_bits}; lower frac_bits, or alpha if training "
                    "diverges, or rescale the data. No result was returned.")
        del g
    fp.decode_into(thq, inv, theta)
    theta_T = theta.copy()
    value, tb = inner.outer(theta_T, inner.dtype)  # the adjoints in X's dtype: docstring
    vb = np.zeros(p, inner.dtype)
    dXp, dlam = np.zeros((inner.k, inner.d)), np.zeros(inner.n_lam)
    for t in range(T - 1, -1, -1):
        hb.exact_reverse_theta(thq, vq, inner.alpha)
        u = inner.direction(tb, vb)
        inner.back_lam(thq * inv, u, dlam)  # float64 theta_t, freed before the passes
        fp.decode_into(thq, inv, theta)
        g, state = inner.grad_pass_x(theta)
        for c, sl in enumerate(chunks):  # the forward's integers, then v_t
            n = sl.stop - sl.start
            hb.exact_increment(g[sl], scale, incr[:n], codes[:n])
            hb.exact_reverse(vq[sl], bufs[c], incr[:n], w[t + 1], num, den, rem[:n], hi[:n])
        del g
        inner.back_rows(theta, u, tb, vb, dXp, state)
        del state
    recovered = not vq.any() and not any(b.any() for b in bufs)
    for sl in chunks:  # theta_0 re-encoded a chunk at a time
        n = sl.stop - sl.start
        fp.encode(inner.theta0[sl].astype(np.float64), incr[:n], frac_bits)
        recovered &= bool((thq[sl] == incr[:n]).all())
    if not recovered:
        raise RuntimeError(f"mode='reversible'{where}: the reverse sweep did not recover w0 bit "
                           "for bit (the model's gradient is not a deterministic function of "
                           "theta?), so the hypergradient is not trustworthy; use "
                           "mode='checkpoint'.")
    info = dict(mode="reversible", backend="generic", T=T, w0_recovered=True,
                frac_bits=frac_bits, gamma_fraction=(num, den), buffer_words=words,
                state_bytes=state_bytes, diverged_at=watch.step())
    return inner.result(value, dXp, dlam, theta_T, info, where)
