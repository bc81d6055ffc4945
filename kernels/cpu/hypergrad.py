"""Compiled hypergradient loops for linear models (numba).

One call runs all T steps of heavy-ball gradient descent and, for RMD, the
whole reverse sweep, walking a checkpoint schedule (mithridate/hypergrad/
schedule.py: trajectory, sqrt segments, revolve) (or, for ``forward``, the
tangent recursion for lam): no Python between steps. Per step the forward reads the rows once for the
gradient; the reverse reads them once for the HVP and the mixed products of
the k poisoning rows (the last k of X) come out of the same pass.

Step (heavy_ball.py: Maclaurin et al. 2015; gamma = 0 is plain GD), v_0 = 0:
    v_{t+1} = gamma v_t - (1 - gamma) g(theta_t),   theta_{t+1} = theta_t + alpha v_{t+1},
    g = 1/n X^T l'(z) + exp(lam) [w; 0],  z = X w + b.
State is float64; the row passes read X in its own dtype (as kernels/cpu/linear.py).
theta has d + 1 slots here; slot d is the intercept (kept 0 without one).

Threading: a pass is one parallel region of ``n_threads`` workers; worker w
always takes the same contiguous run of row groups, so on a small problem
each core keeps its share of X in its own L2 across the T steps. The groups
are fixed by the shape alone and reduced in order (float64), so the bits do
not depend on the thread count. Within a group, rows go in cache-sized blocks:
z = X_blk th is computed, then the block is read again from cache for X^T c.
All buffers live in one workspace allocated per hypergradient call.

Batches (``*_batch``): one parallel region over the B problems for the whole
call, each problem run serially by one worker with the very same group
partials and reduction order, so each result equals its single call bit for
bit. Problems sharing their clean rows Xc can instead go together
(``*_shared``, trajectory and forward modes): per step the clean rows enter as BLAS
matrix-matrix products over the group, the k poisoning rows per problem; same
values up to rounding (the summation order differs).

Divergence: every forward step also sums G_t = ||g(theta_t)||^2 over the
gradient it has just formed (O(d) per step: no extra read of X, and not the
loss, whose log terms the gradient-only passes skip); the first t with G_t
nan, inf or above GROWTH G_0 / (1 - gamma)^2 is recorded (``watch``), and the
caller (mithridate.hypergrad) raises or warns. A stable heavy-ball run stays
far below that bound: on a quadratic each eigencomponent of the gradient
obeys |g_t,i| <= c |g_0,i|, c^2 ~ 0.5 / (1 - gamma)^2 (c = 1 for plain GD;
measured c^2 = 360 at gamma = 0.9, 3e4 at 0.99), so G_t <= c^2 G_0 whatever
the conditioning, while a step past 2 (1 + gamma) / ((1 - gamma) L) grows G
geometrically and crosses the bound within a few dozen steps.
"""
import numpy as np
from numba import njit, prange

from . import heavy_ball
from ._math import JIT
from .linear import NARROW, _axpy2_rows, _axpy_rows, _dot2_rows, _dot_rows, _terms

BLOCK_BYTES = 1 << 17     # rows per block: re-read from cache for X^T c; long enough
                          # for the vectorised loss terms (8-row blocks cost 3x)
GROUP_ELEMS = 1 << 17     # about this many elements of X per reduction group
MAX_GROUPS = 64
FLUSH_ROWS = 1024          # rows summed in X's dtype before a float64 flush
GROWTH = 1e6              # divergence bound (see the module docstring); = kGrowth in csrc/include/hypergrad.h
# typed flags (numpy scalars, not Python literals): numba compiles a callee once per literal argument value
_T, _F, _0, _1 = np.bool_(True), np.bool_(False), np.int64(0), np.int64(1)


def layout(n, d, itemsize):
    """(groups, block): row-group bounds (n_groups + 1,) and rows per block.
    n_groups is a power of two (balanced over 2, 4, 8... threads)."""
    block = max(4, BLOCK_BYTES // (d * itemsize) // 4 * 4)
    want = max(1, min(MAX_GROUPS, n * d // GROUP_ELEMS, n // 4))
    n_groups = 1 << (want.bit_length() - 1)
    return (np.arange(n_groups + 1, dtype=np.int64) * n) // n_groups, block


@njit(**JIT)
def workspace(X, groups, block, n_threads):
    """Buffers of _pass: group partials (float64), per-worker scratch and
    per-worker accumulators in X's dtype (zero between passes). At most one
    worker per group: a one-group problem runs serially, with no parallel
    launch per pass."""
    d = X.shape[1]
    n_groups = groups.shape[0] - 1
    n_threads = min(n_threads, n_groups)
    return (np.zeros((n_groups, 2, d + 1)), np.zeros(n_groups),
            np.zeros((n_threads, 5, block)), np.zeros((n_threads, block), dtype=np.int64),
            np.zeros((n_threads, 2, d + 1), dtype=X.dtype))


@njit(**JIT)
def _groups(X, y, code, fit_b, th, u, want_g, want_h, groups, g0, g1, block, ws, w, k, rows):
    """Row groups g0..g1-1 of _pass with worker w's scratch; partials into ws."""
    n, d = X.shape
    part, part_loss, scratch, all_bits, acc = ws
    first = n - k
    z = scratch[w, 0]
    xu = scratch[w, 1]
    c1 = scratch[w, 2]
    c2 = scratch[w, 3]
    t = scratch[w, 4]
    bits = all_bits[w]
    gb = acc[w, 0]
    hb = acc[w, 1]
    for grp in range(g0, g1):
        i1 = groups[grp + 1]
        total = 0.0
        since = 0
        for j in range(d + 1):
            part[grp, 0, j] = 0.0
            part[grp, 1, j] = 0.0
        for r0 in range(groups[grp], i1, block):
            m = min(block, i1 - r0)
            # squared HVP needs X u only, except on the poisoning rows
            need_z = want_g or code == 0 or r0 + m > first
            if want_h and need_z:
                _dot2_rows(X, r0, m, th, th[d], u, u[d], z, xu)
            elif want_h:
                _dot_rows(X, r0, m, u, u[d], xu)
            else:
                _dot_rows(X, r0, m, th, th[d], z)
            if need_z:
                total += _terms(code, z, y[r0:r0 + m], None, m, c1, c2, t, bits)
            for i in range(max(0, first - r0), m):
                rows[0, r0 + i - first] = c1[i]
                rows[1, r0 + i - first] = c2[i]
                rows[2, r0 + i - first] = xu[i]
            if want_h:
                for i in range(m):
                    c2[i] = xu[i] * (c2[i] if need_z else 1.0)
            if want_g and want_h and d >= NARROW:  # forward mode: both sums per read of the
                _axpy2_rows(X, r0, m, c1, c2, gb, hb, fit_b)  # block (narrow rows: 0.85x)
            else:
                if want_g:
                    _axpy_rows(X, r0, m, c1, gb, fit_b)
                if want_h:
                    _axpy_rows(X, r0, m, c2, hb, fit_b)
            # sums in X's dtype over at most FLUSH_ROWS rows (or one block), then float64:
            # the float32 accumulation does not grow with the group's size
            since += m
            if since < FLUSH_ROWS and r0 + block < i1:
                continue
            since = 0
            if want_g:
                for j in range(d + 1):
                    part[grp, 0, j] += gb[j]
                    gb[j] = 0
            if want_h:
                for j in range(d + 1):
                    part[grp, 1, j] += hb[j]
                    hb[j] = 0
        part_loss[grp] = total


@njit(**JIT)
def _reduce(ws, want_g, want_h, g, h):
    """Sum the group partials in order (deterministic); returns the loss sum."""
    part, part_loss = ws[0], ws[1]
    total = 0.0
    for grp in range(part_loss.shape[0]):
        total += part_loss[grp]
    if want_g:
        _sum_rows(part[:, 0], g)
    if want_h:
        _sum_rows(part[:, 1], h)
    return total


@njit(parallel=True, **JIT)
def _pass(X, y, code, fit_b, th, u, want_g, want_h, groups, block, ws, g, h, k, rows):
    """One read of X: g = X^T l'(z) if want_g, h = X^T (l''(z) (X u)) if
    want_h (row sums, not divided by n), z = X th; th, u (d + 1,) in X's
    dtype. For the last k rows, rows[0], rows[1], rows[2] = l'(z), l''(z),
    x.u[:d] + u[d] (k = 0: none). Returns sum_i l(z_i) (when z is computed).
    ws's worker count sets the parallel width; 1 runs serially in the caller
    (for the batched loops, which are parallel over problems)."""
    n_threads = ws[4].shape[0]
    n_groups = groups.shape[0] - 1
    if n_threads == 1:
        _groups(X, y, code, fit_b, th, u, want_g, want_h, groups, _0, n_groups, block, ws, _0,
                k, rows)
    else:
        for w in prange(n_threads):
            _groups(X, y, code, fit_b, th, u, want_g, want_h, groups,
                    w * n_groups // n_threads, (w + 1) * n_groups // n_threads, block, ws, w,
                    k, rows)
    return _reduce(ws, want_g, want_h, g, h)


@njit(**JIT)
def _sum_rows(parts, out):
    """out = parts[0] + parts[1] + ... in that order (an element loop: a slice
    assignment pulls numba's error-message code into the compile)."""
    for j in range(out.shape[0]):
        out[j] = parts[0, j]
    for i in range(1, parts.shape[0]):
        row = parts[i]
        for j in range(out.shape[0]):
            out[j] += row[j]


@njit(**JIT)
def _cast(src, dst):
    for j in range(src.shape[0]):
        dst[j] = src[j]


@njit(**JIT)
def new_watch():
    """The divergence record of one problem: [limit (nan until step 0), first bad step (-1)]."""
    return np.array([np.nan, -1.0])


@njit(**JIT)
def _watch(gg, gamma, t, watch):
    """Record step t in watch if the squared gradient norm gg at theta_t is
    nan/inf or past the growth limit set at step 0 (module docstring)."""
    if watch[1] >= 0:
        return
    if np.isnan(watch[0]):
        watch[0] = GROWTH * gg / ((1.0 - gamma) * (1.0 - gamma))
    if not (np.isfinite(gg) and gg <= watch[0]):
        watch[1] = t


@njit(**JIT)
def _descend(X, y, code, fit_b, theta, v, alpha, gamma, e, steps, groups, block, ws, t0, watch):
    """`steps` heavy-ball steps from (theta, v) = step t0, in place; checks
    each gradient into `watch` (new_watch(); a recomputation passes a
    finished one, watch[1] >= 0, to skip the check)."""
    n, d = X.shape
    g = np.empty(d + 1)
    h = np.empty(d + 1)
    thx = np.empty(d + 1, dtype=X.dtype)
    rows = np.empty((3, 0))
    for t in range(steps):
        _cast(theta, thx)
        _pass(X, y, code, fit_b, thx, thx, _T, _F, groups, block, ws, g, h, _0, rows)
        gg = _objective(g, theta, n, e)
        heavy_ball.step(theta, v, g, alpha, gamma)
        _watch(gg, gamma, t0 + t, watch)


@njit(**JIT)
def _objective(g, theta, n, e):
    """g = g / n + e [w; 0] in place (the row sums of _pass to the training
    objective's gradient at theta); returns ||g||^2 (the divergence check's G_t)."""
    d = g.shape[0] - 1
    gg = 0.0
    for j in range(d + 1):
        g[j] = g[j] / n + (e * theta[j] if j < d else 0.0)
        gg += g[j] * g[j]
    return gg


@njit(**JIT)
def _validation(Xv, yv, code, fit_b, theta, groups, block, n_threads, grad):
    """Mean validation loss at theta (no regulariser); its gradient into grad."""
    nv = Xv.shape[0]
    thx = np.empty(theta.shape[0], dtype=Xv.dtype)
    _cast(theta, thx)
    ws = workspace(Xv, groups, block, n_threads)
    total = _pass(Xv, yv, code, fit_b, thx, thx, _T, _F, groups, block, ws, grad,
                  np.empty(theta.shape[0]), _0, np.empty((3, 0)))
    grad /= nv
    return total / nv


@njit(**JIT)
def train(X, y, code, fit_b, theta0, alpha, gamma, e, T, groups, block, n_threads):
    """theta_T, the full training gradient there (objective incl. L2) and the
    first diverged step (-1: none; T: theta_T itself)."""
    n, d = X.shape
    ws = workspace(X, groups, block, n_threads)
    theta = theta0.copy()
    watch = new_watch()
    _descend(X, y, code, fit_b, theta, np.zeros(d + 1), alpha, gamma, e, T, groups, block, ws, 0,
             watch)
    g = np.empty(d + 1)
    thx = np.empty(d + 1, dtype=X.dtype)
    _cast(theta, thx)
    _pass(X, y, code, fit_b, thx, thx, _T, _F, groups, block, ws, g, np.empty(d + 1), _0,
          np.empty((3, 0)))
    g /= n
    for j in range(d):
        g[j] += e * theta[j]
    _watch((g * g).sum(), gamma, T, watch)
    return theta, g, np.int64(watch[1])


@njit(**JIT)
def value(X, y, Xv, yv, code, fit_b, theta0, alpha, gamma, e, T, groups, block, v_groups,
          v_block, n_threads):
    """(validation loss at theta_T, theta_T, first diverged step or -1): `train`,
    then the outer value, no adjoint."""
    theta, _, bad = train(X, y, code, fit_b, theta0, alpha, gamma, e, T, groups, block, n_threads)
    val = _validation(Xv, yv, code, fit_b, theta, v_groups, v_block, n_threads,
                      np.empty(theta.shape[0]))
    return val, theta, bad


ADVANCE, SAVE, RESTORE, REVERSE, VALUE = 0, 1, 2, 3, 4  # = mithridate/hypergrad/schedule.py


@njit(**JIT)
def reverse(X, y, k, Xv, yv, code, fit_b, theta0, alpha, gamma, e, T, groups, block,
             v_groups, v_block, n_threads, actions, theta_only, dXp):
    """Exact RMD walking a checkpoint schedule (mithridate/hypergrad/schedule.py:
    actions (m, 2) int64 rows (op, arg); theta_only (n_slots,) bool, the slots
    that store theta alone). One cursor (theta_t, v_t) from (theta0, 0):
    ADVANCE k runs k steps with the forward kernel (_descend; the steps before
    VALUE are the one forward pass and are checked for divergence, later ones
    are recomputations with the same bits), SAVE/RESTORE copy the cursor to/from
    a slot, VALUE takes the validation loss and its gradient at theta_T, and
    REVERSE t the adjoint step t + 1 -> t at the cursor's theta_t. Every
    schedule gives the same bits (plan(T, T), all thetas stored, is
    trajectory). Adjoints tb = dA/dtheta_{t+1}, vb = dA/dv_{t+1}; per step back,
    with u = vb + alpha tb (the adjoint of v_{t+1}):
        tb -= (1 - gamma) H(theta_t) u,   vb = gamma u,
        dXp -= (1 - gamma) d/dXp (g . u),   dlam -= (1 - gamma) e w_t . u_w.
    Writes dXp (k, d) float64; returns (value, dlam, theta_T, first diverged
    step or -1)."""
    n, d = X.shape
    ws = workspace(X, groups, block, n_threads)
    watch = new_watch()
    done = np.array([np.inf, 0.0])  # recomputations: already checked
    n_slots = theta_only.shape[0]
    v_slot = np.full(n_slots, -1, dtype=np.int64)  # row of a slot's v in slot_v
    n_v = 0
    for s in range(n_slots):
        if not theta_only[s]:
            v_slot[s] = n_v
            n_v += 1
    slot_theta = np.empty((n_slots, d + 1))
    slot_v = np.empty((n_v, d + 1))
    slot_t = np.zeros(n_slots, dtype=np.int64)
    theta = theta0.copy()
    theta_T = np.empty(d + 1)
    v = np.zeros(d + 1)
    t = 0
    value = 0.0
    reached = False  # VALUE done: every later ADVANCE recomputes
    tb = np.empty(d + 1)
    vb = np.zeros(d + 1)
    u = np.empty(d + 1)
    g = np.empty(d + 1)
    h = np.empty(d + 1)
    thx = np.empty(d + 1, dtype=X.dtype)
    ux = np.empty(d + 1, dtype=X.dtype)
    rows = np.empty((3, k))
    dXp[:] = 0.0
    dlam = 0.0
    for a in range(actions.shape[0]):
        op = actions[a, 0]
        arg = actions[a, 1]
        if op == ADVANCE:
            _descend(X, y, code, fit_b, theta, v, alpha, gamma, e, arg, groups, block, ws, t,
                     done if reached else watch)
            t += arg
        elif op == SAVE:
            slot_theta[arg] = theta
            if v_slot[arg] >= 0:
                slot_v[v_slot[arg]] = v
            slot_t[arg] = t
        elif op == RESTORE:
            theta[:] = slot_theta[arg]
            if v_slot[arg] >= 0:
                v[:] = slot_v[v_slot[arg]]
            t = slot_t[arg]
        elif op == VALUE:
            value = _validation(Xv, yv, code, fit_b, theta, v_groups, v_block, n_threads, tb)
            theta_T[:] = theta
            reached = True
        else:  # REVERSE at theta_t
            heavy_ball.direction(tb, vb, alpha, u)
            _cast(theta, thx)
            _cast(u, ux)
            _pass(X, y, code, fit_b, thx, ux, _F, _T, groups, block, ws, g, h, k, rows)
            dlam += _adjoint_step(theta, u, h, rows, tb, vb, dXp, n, gamma, e)
    return value, dlam, theta_T, np.int64(watch[1])


@njit(**JIT)
def _adjoint_step(th, u, h, rows, tb, vb, dXp, n, gamma, e):
    """One step back of the adjoints at theta_t = th, u = vb + alpha tb (the
    adjoint of v_{t+1}), h = X^T (l'' X u) and rows = (l', l'', x_r . u) of the
    k poisoning rows from the same pass; returns the step's d lam term.
        dXp -= (1 - gamma) d/dXp (g . u),   tb -= (1 - gamma) H u,   vb = gamma u
    (heavy_ball.adjoint); h is overwritten with H u = h / n + e [u_w; 0]."""
    k, d = dXp.shape
    s = 1.0 - gamma
    for r in range(k):  # mixed products d/dx_r (g . u) on the poisoning rows
        a = s * rows[1, r] * rows[2, r] / n
        b = s * rows[0, r] / n
        for j in range(d):
            dXp[r, j] -= a * th[j] + b * u[j]
    wu = 0.0
    for j in range(d):
        wu += th[j] * u[j]
    for j in range(d + 1):
        h[j] = h[j] / n + (e * u[j] if j < d else 0.0)
    heavy_ball.adjoint(tb, vb, u, h, gamma)
    return -s * e * wu


@njit(**JIT)
def forward(X, y, Xv, yv, code, fit_b, theta0, alpha, gamma, e, T, groups, block,
            v_groups, v_block, n_threads):
    """Forward mode for lam: carry dtheta/dlam and dv/dlam; the tangent of g is
    H_data dtheta + e (dw + w) (d/dlam of e w). One fused gradient+HVP read of
    X per step. Returns (value, dlam, theta_T, first diverged step or -1)."""
    n, d = X.shape
    ws = workspace(X, groups, block, n_threads)
    watch = new_watch()
    theta = theta0.copy()
    v = np.zeros(d + 1)
    dth = np.zeros(d + 1)
    dv = np.zeros(d + 1)
    g = np.empty(d + 1)
    h = np.empty(d + 1)
    thx = np.empty(d + 1, dtype=X.dtype)
    ux = np.empty(d + 1, dtype=X.dtype)
    rows = np.empty((3, 0))
    for t in range(T):
        _cast(theta, thx)
        _cast(dth, ux)
        _pass(X, y, code, fit_b, thx, ux, _T, _T, groups, block, ws, g, h, _0, rows)
        gg = 0.0
        for j in range(d + 1):
            gj = g[j] / n
            dgj = h[j] / n
            if j < d:
                gj += e * theta[j]
                dgj += e * (dth[j] + theta[j])
            gg += gj * gj
            g[j] = gj
            h[j] = dgj
        heavy_ball.step(theta, v, g, alpha, gamma)
        heavy_ball.step(dth, dv, h, alpha, gamma)  # the tangent takes the same linear step
        _watch(gg, gamma, t, watch)
    grad = np.empty(d + 1)
    value = _validation(Xv, yv, code, fit_b, theta, v_groups, v_block, n_threads, grad)
    return value, (grad * dth).sum(), theta, np.int64(watch[1])


@njit(parallel=True, **JIT)
def reverse_batch(X, y, k, Xv, yv, code, fit_b, theta0, alpha, gamma, e, T, groups, block,
                   v_groups, v_block, actions, theta_only, dXp, out, theta_T):
    """`reverse` for B problems, one schedule: X (B, n, d), y (B, n); Xv, yv
    with 1 (shared) or B leading; theta0 (B, d + 1), e (B,). Writes dXp (B, k,
    d), out (B, 3) = (value, dlam, first diverged step or -1), theta_T (B, d + 1)."""
    B = X.shape[0]
    for b in prange(B):
        p = 0 if Xv.shape[0] == 1 else np.int64(b)
        value, dlam, theta, bad = reverse(X[b], y[b], k, Xv[p], yv[p], code, fit_b, theta0[b],
                                           alpha, gamma, e[b], T, groups, block, v_groups,
                                           v_block, _1, actions, theta_only, dXp[b])
        out[b, 0] = value
        out[b, 1] = dlam
        out[b, 2] = bad
        theta_T[b] = theta


@njit(parallel=True, **JIT)
def forward_batch(X, y, Xv, yv, code, fit_b, theta0, alpha, gamma, e, T, groups, block,
                  v_groups, v_block, out, theta_T):
    """`forward` for B problems (shapes as in reverse_batch)."""
    B = X.shape[0]
    for b in prange(B):
        p = 0 if Xv.shape[0] == 1 else np.int64(b)
        value, dlam, theta, bad = forward(X[b], y[b], Xv[p], yv[p], code, fit_b, theta0[b], alpha,
                                     gamma, e[b], T, groups, block, v_groups, v_block, _1)
        out[b, 0] = value
        out[b, 1] = dlam
        out[b, 2] = bad
        theta_T[b] = theta
