"""Compile every numba kernel signature the package uses, ahead of the first call.

numba caches each compiled kernel (``cache=True``) in ``__pycache__`` beside
its source file (or under ``NUMBA_CACHE_DIR``; a user-wide cache dir when the
package folder is read-only). An entry stays valid while the source file's
content (numba 0.68 checks its sha256, so reinstalling the same version keeps
it; older releases its mtime and size), numba's version and the CPU stay the
same. With an empty cache the first hypergradient call of a mode spends
15-40 s compiling; with a warm one it loads in about a second. ``warmup``
fills the cache by running every public entry point on tiny problems, once per
float dtype, one task per process (a compile is single-threaded). Then one
more process runs every task again and counts what still compiles: numba
rewrites a kernel's whole cache index when it adds a signature, so two
processes adding signatures to one kernel at once can drop one of them; the
check compiles, and so caches, whatever was dropped.

The tasks call the public API only (``hypergrad``, ``ops``, the trainers), so a new
signature a kernel change brings is covered by the call that needs it.
"""
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

import numpy as np

DTYPES = ("float64", "float32")
T = 3  # inner steps: enough for checkpoint mode to recompute a segment (T = 1 would not)


def _data(dt, n, d, B=None, seed=0):
    """X (n, d) or (B, n, d) and labels {0, 1} in dtype dt."""
    rng = np.random.default_rng(seed)
    shape = (n, d) if B is None else (B, n, d)
    X = rng.standard_normal(shape).astype(dt)
    return X, (rng.random(shape[:-1]) < 0.5).astype(dt)


def _problem(dt, d=4, B=None, shared_clean=False):
    """(Xc, yc, Xp, yp, Xv, yv): 16 clean, 2 poisoning, 8 validation rows;
    B problems with their own clean rows, or one set shared by reference."""
    Xc, yc = _data(dt, 16, d, None if shared_clean else B, seed=1)
    Xp, yp = _data(dt, 2, d, B, seed=2)
    Xv, yv = _data(dt, 8, d, seed=3)
    return Xc, yc, Xp, yp, Xv, yv


def _hypergrad(dt, mode, form="primal", **shape):
    from .hypergrad import hypergrad
    B = shape.get("B")
    lam = -2.0 if B is None else np.full(B, -2.0)
    hypergrad(*_problem(dt, **shape), lam=lam, T=T, alpha=0.1, gamma=0.5, mode=mode,
              backend="numba", form=form)


def _gram(dt):
    """The Gram form (hypergrad/dual.py) of modes trajectory, forward and value."""
    from .hypergrad import Engine
    for mode in ("trajectory", "forward"):
        _hypergrad(dt, mode, form="gram", B=5, shared_clean=True)
    Xc, yc, Xp, yp, Xv, yv = _problem(dt)
    Engine(Xc, yc, Xv, yv, T=T, alpha=0.1, form="gram").run(Xp, yp, -2.0, need="value")


def _batched(dt):
    """The batch route (one compiled call over B >= numba's threads problems)."""
    import numba
    for mode in ("trajectory", "checkpoint", "forward"):
        _hypergrad(dt, mode, B=max(2, numba.get_num_threads()))


def _shared(dt):
    """The shared-clean-rows route (matrix-matrix products over the group)."""
    import numba
    from .kernels.cpu import hypergrad_shared as route
    B = max(route.SHARED_MIN_GROUP, numba.get_num_threads())
    for mode in ("trajectory", "forward"):
        _hypergrad(dt, mode, d=route.SHARED_MIN_FEATURES, B=B, shared_clean=True)


def _ops_calls(dt):
    """(theta, X, y, sample_weight) covering every route of the linear ops:
    one problem, B thetas streaming one X, B thetas by matrix products (the
    GEMM_MIN_* sizes), B problems with their own X; with and without weights."""
    from .kernels.cpu import linear
    rng = np.random.default_rng(4)
    wide = max(linear.GEMM_MIN_FEATURES, 4)
    for B, d, own in ((None, 4, False), (2, 4, False), (linear.GEMM_MIN_BATCH, wide, False),
                      (2, 4, True)):
        X, y = _data(dt, 16, d, B if own else None)
        theta = rng.standard_normal((d + 1,) if B is None else (B, d + 1)).astype(dt)
        for s in (None, np.ones(y.shape, dt)):
            yield theta, X, y, s


def _loss_grad(dt):
    from . import ops
    for theta, X, y, s in _ops_calls(dt):
        ops.loss_grad(theta, X, y, lam=-2.0, sample_weight=s, backend="numba")


def _hvp(dt):
    from . import ops
    for theta, X, y, s in _ops_calls(dt):
        ops.hvp(theta, theta, X, y, lam=-2.0, sample_weight=s, backend="numba")


def _mixed(dt):
    from . import ops
    for theta, X, y, s in _ops_calls(dt):
        ops.mixed(theta, theta, X, y, np.arange(2), lam=-2.0, sample_weight=s, backend="numba")


def _lipschitz(dt):
    from . import ops
    for B in (None, 2):
        X, y = _data(dt, 16, 4)
        theta = np.ones((5,) if B is None else (B, 5), dt)
        for bound in ("tight", "paper"):
            ops.lipschitz(theta, X, y, loss="logistic", bound=bound, backend="numba")


def _training(dt):
    """The trainers' compiled inner loop: one problem, B problems on one X or
    their own, and mini-batch SGD."""
    from .models import LinearModel
    from .models.training import gradient_descent, sgd
    model = LinearModel()
    X, y = _data(dt, 16, 4)
    XB, yB = _data(dt, 16, 4, B=2)
    gradient_descent(model, X, y, -2.0, T=T, alpha=0.1)
    gradient_descent(model, X, y, np.full(2, -2.0), T=T, alpha=0.1)
    gradient_descent(model, XB, yB, np.full(2, -2.0), T=T, alpha=0.1)
    sgd(model, X, y, -2.0, lr=0.1, batch_size=4, epochs=1, random_state=0)


# name -> task(dtype), the slowest first (so that the pool ends together)
JOBS = {
    "hypergrad.trajectory": lambda dt: _hypergrad(dt, "trajectory"),
    "hypergrad.reversible": lambda dt: _hypergrad(dt, "reversible"),
    "hypergrad.forward": lambda dt: _hypergrad(dt, "forward"),
    "hypergrad.batched": _batched,
    "hypergrad.shared": _shared,
    "hypergrad.gram": _gram,
    "hypergrad.checkpoint": lambda dt: _hypergrad(dt, "checkpoint"),
    "hypergrad.implicit": lambda dt: _hypergrad(dt, "implicit"),
    "ops.hvp": _hvp,
    "ops.loss_grad": _loss_grad,
    "ops.mixed": _mixed,
    "ops.lipschitz": _lipschitz,
    "models.training": _training,
}


def _run_task(name, dt):
    """Run one task in this process: (seconds, names of the kernels it compiled)."""
    from numba.core import event

    compiled = []

    class Count(event.Listener):
        def on_start(self, ev):
            fn = ev.data["dispatcher"].py_func
            if fn.__module__.startswith("mithridate"):
                compiled.append(f"{fn.__module__}.{fn.__qualname__}")

        def on_end(self, ev):
            pass

    listener = Count()
    event.register("numba:compile", listener)
    t0 = time.perf_counter()
    try:
        JOBS[name](dt)
    finally:
        event.unregister("numba:compile", listener)
    return time.perf_counter() - t0, compiled


def _in_subprocess(tasks):
    """Run tasks, in order, in a fresh interpreter: {task: (seconds, compiled)}.
    A plain subprocess, not multiprocessing: that re-imports the caller's
    __main__, which fails for stdin scripts and some notebooks."""
    code = ("import json, sys; from mithridate.warmup import _run_task; "
            "print(json.dumps([_run_task(j, dt) for j, dt in json.loads(sys.argv[1])]))")
    # run where this package's parent is: "-c" puts the working directory first on sys.path
    parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code, json.dumps(tasks)], capture_output=True,
                         text=True, cwd=parent)
    if out.returncode != 0:
        raise RuntimeError(f"warm-up task(s) {tasks} failed (exit {out.returncode}):\n"
                           f"{out.stderr[-4000:]}")
    return {tuple(t): tuple(r) for t, r in zip(tasks, json.loads(out.stdout.splitlines()[-1]))}


def warmup(jobs=None, dtypes=DTYPES, processes=None, progress=True):
    """Fill numba's cache for ``jobs`` (names of JOBS; default all) in each of
    ``dtypes``, ``processes`` tasks at a time (default: one per core), each
    task in a fresh interpreter. Returns {"seconds": {(job, dtype): s},
    "recompiled": {(job, dtype): [kernel names]}}: what the final check still
    had to compile (empty lists once the cache is complete)."""
    jobs = list(JOBS) if jobs is None else list(jobs)
    unknown = [j for j in jobs if j not in JOBS]
    if unknown:
        raise ValueError(f"unknown warm-up jobs {unknown}; choose from {list(JOBS)}.")
    bad = [dt for dt in dtypes if dt not in DTYPES]
    if bad or not dtypes:
        raise ValueError(f"dtypes={list(dtypes)} must be a non-empty subset of {list(DTYPES)}.")
    if processes is not None and (isinstance(processes, bool) or not isinstance(processes, int)
                                  or processes < 1):
        raise ValueError(f"processes={processes!r} must be a positive int (or None: one per core).")
    tasks = [(j, dt) for j in jobs for dt in dtypes]
    processes = min(len(tasks), processes or os.cpu_count() or 1)
    from tqdm import tqdm
    seconds = {}
    with tqdm(total=len(tasks) + 1, desc="numba warm-up", unit="task", disable=not progress) as bar:
        with ThreadPoolExecutor(processes) as pool:  # threads that each wait on a subprocess
            futures = {pool.submit(_in_subprocess, [task]): task for task in tasks}
            for done in as_completed(futures):
                seconds[futures[done]] = done.result()[futures[done]][0]
                bar.set_postfix_str("/".join(futures[done]))
                bar.update()
        bar.set_postfix_str("check")
        recompiled = {task: compiled for task, (_, compiled) in _in_subprocess(tasks).items()}
        bar.update()
    return {"seconds": seconds, "recompiled": recompiled}
