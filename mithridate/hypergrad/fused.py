"""The numba backend of the hypergradient engine: the fused loops of the
linear model (kernels/cpu/hypergrad.py), the packing of their training rows,
and the single, batched and shared-rows routes. Mode ``reversible`` runs in
reversible.py and ``implicit`` in implicit.py, both on this backend."""
import numpy as np

from .problem import MODES
from .result import HyperGrad

FUSED_MODES = ("trajectory", "checkpoint", "forward")  # the modes `run` takes


class Packed:
    """The training rows [Xc; Xp] of one problem (X (n, d)) or of B problems
    (X (B, n, d)) in one buffer: the clean rows are copied in once, the k
    poisoning rows into the tail on each ``fill``."""

    def __init__(self, Xc, yc, k, B=None):
        nc, d = Xc.shape[-2:]
        lead = () if B is None else (B,)
        self.nc = nc
        self.X = np.empty(lead + (nc + k, d), Xc.dtype)
        self.y = np.empty(lead + (nc + k,), yc.dtype)
        self.X[..., :nc, :] = Xc
        self.y[..., :nc] = yc

    def fill(self, Xp, yp):
        self.X[..., self.nc:, :] = Xp
        self.y[..., self.nc:] = yp
        return self.X, self.y


def run(problems, mode, sched, info, groups=(), rows=None):
    """Modes trajectory, checkpoint, forward of a list of Problems, one
    HyperGrad each. sched: the reverse sweep's schedule.Schedule (the
    engine's plan; trajectory: plan(T, T); None for forward); groups: index
    lists of problems sharing their clean rows (``shared_groups``); rows: the
    packed (X, y) of a batch, (B, n, d)."""
    import numba
    if len(problems) > 1 and len(problems) >= numba.get_num_threads():
        return batch(problems, mode, sched, info, groups, rows)
    return [single(pb, mode, sched, info(pb)) for pb in problems]


def value(problems, info):
    """Validation loss and theta_T only (training, then one validation pass)."""
    from ..kernels.cpu import hypergrad as kernel
    out = []
    for pb in problems:
        val, theta, step = kernel.value(*numba_args(pb))
        out.append(HyperGrad(float(val), None, None, theta_out(pb, theta),
                             dict(info(pb), diverged_at=int(step))))
    return out


def _schedule_info(info, sched, p):
    """The stored states of a reverse sweep walking `sched` for p-vectors."""
    info["state_bytes"] = sched.state_bytes(p)
    info["recomputed"] = sched.recomputed


def single(pb, mode, sched, info):
    from ..kernels.cpu import hypergrad as kernel
    args = numba_args(pb)
    dt = pb.Xc.dtype
    if mode == "forward":
        value, glam, theta, info["diverged_at"] = kernel.forward(*args)
        return HyperGrad(float(value), None, float(glam), theta_out(pb, theta), info)
    k = pb.Xp.shape[0]
    gX = np.empty((k, pb.d))
    X, y, Xv, yv, *rest = args
    _schedule_info(info, sched, pb.d + 1)
    value, glam, theta, info["diverged_at"] = kernel.reverse(
        X, y, k, Xv, yv, *rest, sched.actions, sched.theta_only, gX)
    return HyperGrad(float(value), gX.astype(dt), float(glam), theta_out(pb, theta), info)


def batch(problems, mode, sched, info, groups=(), rows=None):
    """All problems in one compiled call, parallel over problems (same bits
    as single calls); in trajectory and forward modes, the `groups` sharing
    their clean rows take the matrix-matrix route instead (same values to
    rounding). rows: the packed (X, y) of all problems, else stacked here."""
    from ..kernels.cpu import hypergrad as kernel
    from ..kernels.cpu.linear import LOSS_CODES
    results = [None] * len(problems)
    for idx in (groups if mode in ("trajectory", "forward") else []):
        for i, r in zip(idx, shared([problems[i] for i in idx], mode, info)):
            if mode == "trajectory":  # every theta stored, as sched = plan(T, T) counts
                _schedule_info(r.info, sched, problems[i].d + 1)
            results[i] = r
    rest = [i for i, r in enumerate(results) if r is None]
    if not rest:
        return results
    if rows is None:
        X = np.stack([pb.rows()[0] for pb in problems])
        y = np.stack([pb.rows()[1] for pb in problems])
    else:
        X, y = rows
    if len(rest) < len(problems):
        X, y = X[rest], y[rest]
    problems = [problems[i] for i in rest]
    pb0 = problems[0]
    B, k, d, dt = len(problems), pb0.Xp.shape[0], pb0.d, pb0.Xc.dtype
    Xv, yv, theta0, e = _batch_inputs(problems)
    common = (LOSS_CODES[pb0.loss], pb0.fit_intercept, theta0, pb0.alpha, pb0.gamma, e, pb0.T,
              *kernel.layout(X.shape[1], d, X.itemsize), *kernel.layout(Xv.shape[1], d, X.itemsize))
    out, theta_T = np.empty((B, 3)), np.empty((B, d + 1))
    infos = [info(pb) for pb in problems]
    if mode == "forward":
        kernel.forward_batch(X, y, Xv, yv, *common, out, theta_T)
        gX = [None] * B
    else:
        for i in infos:
            _schedule_info(i, sched, d + 1)
        dXp = np.empty((B, k, d))
        kernel.reverse_batch(X, y, k, Xv, yv, *common, sched.actions, sched.theta_only, dXp, out,
                             theta_T)
        gX = dXp.astype(dt)
    for j, (i, pb) in enumerate(zip(rest, problems)):
        infos[j]["diverged_at"] = int(out[j, 2])
        results[i] = HyperGrad(float(out[j, 0]), gX[j], float(out[j, 1]),
                               theta_out(pb, theta_T[j]), infos[j])
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


def shared_groups(Xc, yc, B):
    """Index lists of runs of consecutive problems of a batch of B with the
    same clean rows (a shared 2-D Xc, or equal slices of a (B, n, d) Xc that
    repeats each repetition's rows), where the matrix-matrix route pays
    (SHARED_MIN_*). Depends on the clean rows only: an Engine finds them once."""
    from ..kernels.cpu import hypergrad_shared as route
    if Xc.shape[-1] < route.SHARED_MIN_FEATURES:
        return []
    if Xc.ndim == 2:
        runs = [list(range(B))]
    else:
        same = lambda a, b: np.array_equal(a[:1], b[:1]) and np.array_equal(a, b)
        runs = [[0]]
        for i in range(1, B):
            j = runs[-1][0]
            if same(Xc[j], Xc[i]) and same(yc[j], yc[i]):
                runs[-1].append(i)
            else:
                runs.append([i])
    return [r for r in runs if len(r) >= route.SHARED_MIN_GROUP]


def shared(problems, mode, info):
    """Trajectory RMD or forward mode for problems sharing Xc, yc:
    hypergrad_shared.shared_parts, one part of the problems per numba thread."""
    import numba
    from ..kernels.cpu import hypergrad as kernel, hypergrad_shared
    from ..kernels.cpu.linear import _one_blas_thread
    from ..kernels.cpu.linear import LOSS_CODES
    pb0 = problems[0]
    G, d = len(problems), pb0.d
    Xv, yv, theta0, e = _batch_inputs(problems)
    Xp = np.stack([pb.Xp for pb in problems])
    yp = np.stack([pb.yp for pb in problems])
    dXp, out, theta_T = np.empty(Xp.shape), np.empty((G, 3)), np.empty((G, d + 1))
    with _one_blas_thread():
        hypergrad_shared.shared_parts(mode != "forward", pb0.Xc, pb0.yc, Xp, yp, Xv, yv,
                         LOSS_CODES[pb0.loss], pb0.fit_intercept, theta0, pb0.alpha, pb0.gamma,
                         e, pb0.T, *kernel.layout(Xv.shape[1], d, Xp.itemsize),
                         min(G, numba.get_num_threads()), dXp, out, theta_T)
    gX = [None] * G if mode == "forward" else dXp.astype(pb0.Xc.dtype)
    infos = [info(pb) for pb in problems]
    for i, bad in zip(infos, out[:, 2]):
        i["diverged_at"] = int(bad)
    return [HyperGrad(float(out[b, 0]), gX[b], float(out[b, 1]), theta_out(pb, theta_T[b]),
                      infos[b]) for b, pb in enumerate(problems)]


def numba_args(pb):
    """(X, y, Xv, yv, code, fit_b, theta0, alpha, gamma, e, T, groups, block,
    v_groups, v_block, n_threads) for kernels/cpu/hypergrad.py."""
    import numba
    from ..kernels.cpu.linear import LOSS_CODES
    from ..kernels.cpu.hypergrad import layout
    X, y = pb.rows()
    (n, d), nv = X.shape, pb.Xv.shape[0]
    theta0 = np.zeros(d + 1)
    theta0[:pb.theta0.shape[0]] = pb.theta0
    return (X, y, pb.Xv, pb.yv, LOSS_CODES[pb.loss], pb.fit_intercept, theta0, pb.alpha,
            pb.gamma, float(np.exp(pb.lam)), pb.T, *layout(n, d, X.itemsize),
            *layout(nv, d, X.itemsize), numba.get_num_threads())


def theta_out(pb, theta):
    return theta[:pb.d + pb.fit_intercept].astype(pb.Xc.dtype)
