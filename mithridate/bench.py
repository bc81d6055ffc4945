"""``mithridate bench``: every (hot path, backend) of the registry against a
reference and the memory roof.

Each fused linear-model kernel reads X once per call, so its speed limit is
the read bandwidth of X. For every op, backend, shape and dtype the run times
our backend, the reference (torch; numpy float arithmetic for the fixed
point) and the roof probe (CPU: a numba streaming sum over 512 MiB; GPU: a
torch sum over 1 GiB) side by side, calls interleaved so that a noisy
neighbour or a drift in bandwidth moves all three alike, and reports medians,
speedup = reference / ours and roof fraction = bytes moved / median / (probe
bytes / probe median). Ops map to the registry's hot paths (``OP_PATH``);
a (path, backend) that cannot run here is listed as skipped with the reason.

The network (op ``mlp``, issue 10) is measured differently: whole
hypergradients of models.MLP in every mode against the torch unrolled
reference, each (mode, T) record in a fresh subprocess for its peak extra
memory (mlp_measure), time the best of a few calls, and the growth with T.
"""
import os
import sys
import time

import numpy as np

from . import backends, ops

REFERENCE = "torch"  # the reference of every path it implements
CANDIDATES = tuple(b for b in backends.NAMES if b != REFERENCE)
GPU_BACKENDS = ("triton", "cuda")  # their data lives on the GPU, and so does their reference's
OP_PATH = {"loss_grad": "linear", "hvp": "linear", "loss_grad_batched": "linear",
           "lipschitz_batched": "lipschitz", "hypergrad": "hypergrad",
           "hypergrad_batched": "hypergrad", "torch_train": "linear",
           "fixed_point_encode": "fixed_point", "fixed_point_step": "fixed_point", "mlp": "mlp"}
OPS = tuple(OP_PATH)
BATCHED = ("loss_grad_batched", "lipschitz_batched")  # B thetas against one X
# Hypergradients (mithridate.hypergrad) against the torch unrolled loop: one
# problem per mode the backend runs (reversible against torch's trajectory:
# the same gradient), and a batch of reps x lams problems (each repetition's
# Xc shared by its lam settings, as in a paper 002 sweep) against single calls.
HYPERGRAD = ("hypergrad", "hypergrad_batched")
HYPERGRAD_MODES = ("trajectory", "checkpoint", "forward", "reversible")
HYPERGRAD_GAMMA = 0.5  # momentum: reversible needs some, the others cost the same with it
# Exact fixed point (mithridate.fixed_point) on n values: encode against
# numpy's rint(x * 2^f); one step = mul then unmul by 9/10 (a reversible
# step and its inverse, so repeated calls keep the buffer's size) against the
# float multiply and divide it replaces.
FIXED_POINT = ("fixed_point_encode", "fixed_point_step")
FIXED_POINT_BITS, FIXED_POINT_GAMMA = 40, (9, 10)
# The network (issue 10): hypergradients of models.MLP on the generic engine,
# every mode, against reference.mlp.unrolled (torch autograd through the
# unrolled loop), one record per (mode, T) each in a fresh subprocess so that
# its peak memory is its own (see mlp_measure).
MLP = "mlp"
MLP_MODES = {"trajectory": {}, "checkpoint": dict(checkpoints="sqrt"),
             "binomial": dict(mode="checkpoint", checkpoints="binomial"),
             "reversible": {}, "forward": {}, "implicit": {}}
MLP_GAMMA, MLP_ALPHA, MLP_LAM = 0.9, 0.05, -2.0  # reversible needs gamma > 0; lam per layer
MLP_DTYPES = ("float32",)
MLP_MMAP_THRESHOLD = 128 << 10  # glibc's default before it adapts
# The thread count of both sides, set in the child's environment before numpy and torch
# load: torch's intra-op pool and OpenBLAS's (ours) each get this many.
MLP_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
# A torch training loop (mithridate.torch): `steps` of SGD on L2-regularised
# logistic regression, the fused objective against autograd on torch ops.
TORCH_TRAIN = "torch_train"
BATCH = 64
LAM = -2.0

# (n, d) shapes; the batched op runs at batched_shape only. budget_s: time per
# measurement beyond MIN_REPEATS rounds (the reference is slow on large shapes).
# hypergrad: paper 002's size (512 clean + 17 poisoning rows, 171 validation
# rows, MNIST's d = 784, T = 150), batches of 10 repetitions x 4 lams.
FULL = dict(shapes=((100_000, 1000), (1_000_000, 100), (48_842, 14), (512, 784)),
            batched_shape=(100_000, 1000), budget_s=2.0, max_repeats=20,
            hypergrad=dict(n=512, k=17, nv=171, d=784, T=150, reps=10, lams=4),
            torch_train=dict(shape=(100_000, 100), steps=200),
            fixed_point=dict(n=1 << 22, steps=1000),
            mlp=dict(layers=(2048, 128, 32, 1), n=512, k=17, nv=171, Ts=(100, 300, 600),
                     repeats={100: 2, 300: 1, 600: 1}, binomial_states=10, tracemalloc=True,
                     timeout_s=3600, threads=(1, 2)))
QUICK = dict(shapes=((20_000, 100), (512, 784)),
             batched_shape=(20_000, 100), budget_s=0.2, max_repeats=10,
             hypergrad=dict(n=200, k=5, nv=50, d=64, T=20, reps=2, lams=2),
            torch_train=dict(shape=(4_000, 32), steps=50),
            fixed_point=dict(n=1 << 16, steps=100),
            mlp=dict(layers=(24, 8, 4, 1), n=40, k=3, nv=20, Ts=(4, 8), repeats={4: 2, 8: 2},
                     binomial_states=2, tracemalloc=True, timeout_s=120, threads=(1,)))
DTYPES = ("float32", "float64")
CACHE_BYTES = 64 << 20  # above this X streams from memory (twice a 32 MiB L3)
MIN_REPEATS = 3


def skip_reason(backend):
    """None if `backend` can be benchmarked here, else why not."""
    reason = backends.unavailable_reason(backend)
    if reason is None and backend in GPU_BACKENDS and not backends.cuda_available():
        reason = "no CUDA GPU (the triton interpreter is for tests on tiny shapes only)"
    return reason


def make_problem(n, d, dtype, batch=None, independent=False, seed=0):
    """Logistic-regression data with an intercept: (theta, v, X, y) as numpy arrays.

    theta and v are (p,), or (batch, p) when `batch` is given; with
    `independent` each of the batch problems has its own X (batch, n, d) and
    y (batch, n). z = X w + b stays O(1), in the loss's curved region.
    """
    rng = np.random.default_rng(seed)
    rows = (batch, n) if independent else (n,)
    X = rng.standard_normal(rows + (d,), dtype=np.float32).astype(dtype, copy=False)
    y = (rng.random(rows) < 0.5).astype(dtype)
    shape = (d + 1,) if batch is None else (batch, d + 1)
    theta = (rng.standard_normal(shape) / np.sqrt(d)).astype(dtype)
    v = rng.standard_normal(shape).astype(dtype)
    return theta, v, X, y


def hypergrad_data(n, k, nv, d, dtype, reps=None, lams=1, seed=0):
    """Arguments of mithridate.hypergrad.hypergrad for one poisoning problem,
    or (reps given) reps x lams problems in the batched form, each
    repetition's Xc shared by its lams settings (lam = log of 0.5 .. 10)."""
    rng = np.random.default_rng(seed)
    B = None if reps is None else reps * lams
    lead = () if B is None else (B,)
    Xc = rng.random((reps or 1, n, d), dtype=np.float32).astype(dtype)
    yc = (rng.random((reps or 1, n)) < 0.5).astype(dtype)
    Xc, yc = (Xc[0], yc[0]) if B is None else (np.repeat(Xc, lams, 0), np.repeat(yc, lams, 0))
    Xp = rng.random(lead + (k, d), dtype=np.float32).astype(dtype)
    yp = (rng.random(lead + (k,)) < 0.5).astype(dtype)
    Xv = rng.random((nv, d), dtype=np.float32).astype(dtype)
    yv = (np.arange(nv) % 2).astype(dtype)
    lam = np.log(np.geomspace(0.5, 10.0, lams)) if B is not None else np.log(5.0)
    return (Xc, yc, Xp, yp, Xv, yv), dict(lam=lam if B is None else np.tile(lam, reps))


def hypergrad_modes(backend):
    """The modes of HYPERGRAD_MODES that `backend` runs (its registry module's MODES)."""
    modes = backends.implementation("hypergrad", backend).MODES
    return tuple(m for m in HYPERGRAD_MODES if m in modes)


def _hypergrad_records(op, cfg, dt, backend, probe):
    """Records of one hypergrad op: ours, the torch reference (B calls for a
    batch; its trajectory mode for a mode it lacks) and, batched, B single
    calls of ours. Bytes: X read once per pass (forward T, reverse T,
    checkpoint's recomputation T more, reversible's T in reverse)."""
    from .hypergrad import hypergrad
    hg = dict(cfg["hypergrad"])
    batched = op == "hypergrad_batched"
    shape = dict(n=hg["n"], k=hg["k"], nv=hg["nv"], d=hg["d"])
    args, kw = hypergrad_data(**shape, dtype=dt, reps=hg["reps"] if batched else None,
                              lams=hg["lams"])
    kw.update(T=hg["T"], alpha=0.05, gamma=HYPERGRAD_GAMMA)
    one = lambda i, **o: hypergrad(*(a[i] for a in args[:4]), *args[4:], lam=kw["lam"][i],
                                   T=kw["T"], alpha=0.05, gamma=HYPERGRAD_GAMMA, **o)  # problem i
    B = len(kw["lam"]) if batched else 1
    ref_modes = backends.implementation("hypergrad", REFERENCE).MODES
    records = []
    for mode in (("trajectory",) if batched else hypergrad_modes(backend)):
        ref_mode = mode if mode in ref_modes else "trajectory"
        calls = [lambda: hypergrad(*args, mode=mode, backend=backend, **kw)]
        if batched:
            calls += [lambda: [one(i, mode=ref_mode, backend=REFERENCE) for i in range(B)],
                      lambda: [one(i, mode=mode, backend=backend) for i in range(B)]]
        else:
            calls.append(lambda: hypergrad(*args, mode=ref_mode, backend=REFERENCE, **kw))
        times, reps = _medians(calls + [probe[0]], synchronizer(backend), cfg["budget_s"],
                               cfg["max_repeats"])
        ours, ref = times[:2]
        passes = {"trajectory": 2, "checkpoint": 3, "forward": 1, "reversible": 2}[mode] * hg["T"]
        nbytes = B * passes * (hg["n"] + hg["k"]) * hg["d"] * np.dtype(dt).itemsize
        bw = probe[1] / times[-1]
        rec = dict(op=op, path="hypergrad", backend=backend, reference=REFERENCE,
                   reference_mode=ref_mode, shape=[hg["n"] + hg["k"], hg["d"]], dtype=dt,
                   batch=B if batched else None, mode=mode, T=hg["T"], gamma=HYPERGRAD_GAMMA,
                   median_s=ours, reference_median_s=ref, speedup=ref / ours, roof_gbps=bw / 1e9,
                   roof_fraction=nbytes / ours / bw, repeats=reps)
        if batched:
            rec.update(singles_median_s=times[2], batch_gain=times[2] / ours)
        records.append(rec)
    return records


def train_logistic(X, y, *, steps, route, backend="auto", lr=0.5, lam=LAM):
    """theta = [w; b] after `steps` of SGD from zeros on the logistic loss +
    exp(lam)/2 ||w||^2 (torch tensors X, y): ``route="fused"`` on
    :func:`mithridate.torch.linear_objective` (kernels of `backend`),
    ``"torch"`` by autograd on the reference objective's torch ops."""
    import torch
    from .reference.linear import objective
    from .torch import linear_objective
    theta = torch.zeros(X.shape[1] + 1, dtype=X.dtype, device=X.device, requires_grad=True)
    opt = torch.optim.SGD([theta], lr=lr)
    lam_t = torch.full((1,), lam, dtype=torch.float64, device=X.device)
    for _ in range(steps):
        opt.zero_grad()
        if route == "fused":
            value = linear_objective(theta, X, y, lam=lam, backend=backend)
        else:
            value = objective(theta[None], X, y, None, lam_t, "logistic", True, False)[0]
        value.backward()
        opt.step()
    return theta.detach()


def _torch_train_record(cfg, dt, backend, probe):
    """The fused training loop against the plain torch one on the same data.
    Bytes: X read once per step by the fused loop."""
    import torch
    tt = cfg["torch_train"]
    _, _, X, y = make_problem(*tt["shape"], dt)
    X, y = torch.from_numpy(X), torch.from_numpy(y)
    if backend in GPU_BACKENDS:
        X, y = X.cuda(), y.cuda()
    calls = [lambda r=r: train_logistic(X, y, steps=tt["steps"], route=r, backend=backend)
             for r in ("fused", "torch")]
    times, reps = _medians(calls + [probe[0]], synchronizer(backend), cfg["budget_s"],
                           cfg["max_repeats"])
    ours, ref = times[:2]
    bw = probe[1] / times[-1]
    return dict(op=TORCH_TRAIN, path="linear", backend=backend, reference=REFERENCE,
                shape=list(tt["shape"]), dtype=dt, batch=None,
                steps=tt["steps"], median_s=ours, reference_median_s=ref, speedup=ref / ours,
                roof_gbps=bw / 1e9, roof_fraction=tt["steps"] * X.numel() * X.element_size()
                / ours / bw, repeats=reps)


def fixed_point_calls(op, backend, n, steps):
    """(ours, reference, bytes moved, n_words) for a fixed-point op on n values:
    `backend`'s call and numpy's (torch's on the GPU) float arithmetic on the
    same values. Bytes: encode reads x and writes q; a step pair reads and
    writes q and a buffer of required_words(steps, 9, 10) words twice."""
    from . import fixed_point as fp
    f = FIXED_POINT_BITS
    num, den = FIXED_POINT_GAMMA
    w = fp.required_words(steps, num, den)
    x = np.random.default_rng(0).standard_normal(n)
    (xd,) = to_device((x,), backend)
    gpu = backend in GPU_BACKENDS
    if op == "fixed_point_encode":
        scale = 2.0 ** f
        rint = (lambda: (xd * scale).round().long()) if gpu else \
            (lambda: np.rint(x * scale).astype(np.int64))
        return lambda: fp.encode(xd, f, backend=backend), rint, 16 * n, w
    q = fp.encode(xd, f, backend=backend)
    buf = fp.new_buffer(n, w, device="cuda" if gpu else None)
    v = xd.clone() if gpu else x.copy()
    g = num / den

    def pair():
        fp.mul(q, num, den, buf, backend=backend)
        fp.unmul(q, num, den, buf, backend=backend)
    floats = (lambda: v.mul_(g).div_(g)) if gpu else \
        (lambda: np.divide(np.multiply(v, g, out=v), g, out=v))
    return pair, floats, 4 * (8 + 4 * w) * n, w


def _fixed_point_record(op, cfg, backend, probe):
    fc = cfg["fixed_point"]
    ours_call, ref_call, nbytes, w = fixed_point_calls(op, backend, fc["n"], fc["steps"])
    times, reps = _timed([ours_call, ref_call], probe[0], nbytes, synchronizer(backend), cfg)
    ours, ref = times[:2]
    bw = probe[1] / times[-1]
    rec = dict(op=op, path="fixed_point", backend=backend,
               reference="torch" if backend in GPU_BACKENDS else "numpy", shape=[fc["n"]],
               dtype="float64", batch=None, frac_bits=FIXED_POINT_BITS, median_s=ours,
               reference_median_s=ref, speedup=ref / ours, roof_gbps=bw / 1e9,
               roof_fraction=nbytes / ours / bw, repeats=reps)
    if op == "fixed_point_step":
        rec.update(n_words=w, num=FIXED_POINT_GAMMA[0], den=FIXED_POINT_GAMMA[1])
    return rec


def mlp_data(layers, n, k, nv, dtype, seed=0):
    """Seeded random standardised rows for the network: (Xc, yc, Xp, yp, Xv, yv),
    features centred and scaled by the clean rows' mean and standard deviation."""
    rng = np.random.default_rng(seed)
    d = layers[0]
    X = rng.standard_normal((n + k + nv, d))
    X = (X - X[:n].mean(0)) / X[:n].std(0)
    y = (rng.random(n + k + nv) < 0.5).astype(np.float64)
    X, y = X.astype(dtype), y.astype(dtype)
    return X[:n], y[:n], X[n:n + k], y[n:n + k], X[n + k:], y[n + k:]


def mlp_call(mode, cfg, T, dtype):
    """The zero-argument call of one mlp record: ours (models.MLP on the
    generic engine, `mode` a key of MLP_MODES) or, mode "reference", the torch
    unrolled loop (reference.mlp.unrolled) on the same data, theta0 and lam."""
    from .models import MLP as Network
    model = Network(layers=tuple(cfg["layers"]))
    Xc, yc, Xp, yp, Xv, yv = mlp_data(cfg["layers"], cfg["n"], cfg["k"], cfg["nv"], dtype)
    theta0 = model.init(cfg["layers"][0], random_state=0)
    lam = np.full(model.n_layers, MLP_LAM)
    if mode == "reference":
        import torch
        from .reference.mlp import unrolled
        X, y = torch.from_numpy(np.concatenate([Xc, Xp])), torch.from_numpy(np.concatenate([yc, yp]))
        Xv, yv = torch.from_numpy(Xv), torch.from_numpy(yv)
        rows = np.arange(cfg["n"], cfg["n"] + cfg["k"])
        return lambda: unrolled(model, X, y, Xv, yv, lam, theta0, T, MLP_ALPHA, MLP_GAMMA, rows)
    import warnings
    from .hypergrad import hypergrad
    kw = dict(dict(mode=mode), **MLP_MODES[mode])
    if mode == "binomial":
        kw["max_states"] = cfg["binomial_states"]

    w0 = theta0.astype(dtype)  # the inputs are made before the call, as the reference's

    def call():
        with warnings.catch_warnings():  # implicit after T steps: not stationary, said in info
            warnings.simplefilter("ignore", RuntimeWarning)
            return hypergrad(Xc, yc, Xp, yp, Xv, yv, lam=lam, w0=w0, T=T,
                             alpha=MLP_ALPHA, gamma=MLP_GAMMA, model=model, **kw)
    return call


def _rss_kib(field):
    """VmRSS or VmHWM (the peak since the last reset) of this process, KiB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _reset_peak():
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def mlp_measure(spec):
    """One mlp record, measured in this process (a fresh one: see mlp_records).

    A warm-up call at T = 2 first (numba kernels, BLAS and torch buffers), then
    peak extra memory = VmHWM after the first timed call minus VmRSS before it,
    VmHWM reset just before (/proc/self/clear_refs; where that is refused,
    getrusage's ru_maxrss, which then includes the warm-up's peak: said in
    memory_method); time = best of spec["repeats"] calls (wall; cpu_s: the process's CPU
    seconds, every thread, time.process_time, least over the calls: the load's share of the
    wall time is not in it); for our modes, with
    spec["tracemalloc"], one more call under tracemalloc (numpy's allocations
    and Python's heap)."""
    import gc
    import resource
    import tracemalloc
    mode, T, dtype, cfg = spec["mode"], spec["T"], spec["dtype"], spec["cfg"]
    try:
        mlp_call(mode, cfg, min(T, 2), dtype)()
        call = mlp_call(mode, cfg, T, dtype)
        gc.collect()
        rss0 = _rss_kib("VmRSS")
        method = "VmHWM-VmRSS" if _reset_peak() else "ru_maxrss-VmRSS"
        t0, c0 = time.perf_counter(), time.process_time()
        out = call()
        times, cpu = [time.perf_counter() - t0], [time.process_time() - c0]
        peak = _rss_kib("VmHWM") if method.startswith("VmHWM") else \
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        info = {} if mode == "reference" else out.info
        del out
        for _ in range(spec["repeats"] - 1):
            t0, c0 = time.perf_counter(), time.process_time()
            call()
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        traced = None
        if spec["tracemalloc"] and mode != "reference":
            gc.collect()
            tracemalloc.start()
            call()
            traced = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
    except Exception as e:  # the record says why (implicit: CG on an indefinite Hessian)
        return dict(error=f"{type(e).__name__}: {e}")
    from threadpoolctl import threadpool_info
    seen = {pool["internal_api"]: pool["num_threads"] for pool in threadpool_info()}
    if "torch" in sys.modules:
        seen["torch"] = sys.modules["torch"].get_num_threads()
    return dict(best_s=min(times), times_s=times, cpu_s=min(cpu), load=os.getloadavg()[0],
                peak_extra_bytes=max(peak - rss0, 0) * 1024, threads_seen=seen,
                memory_method=method, tracemalloc_peak_bytes=traced,
                recomputed=info.get("recomputed"), grad_norm=info.get("grad_norm"))


def _mlp_child():
    """Entry of the measuring subprocess: spec JSON on stdin, result JSON on stdout."""
    import json
    print(json.dumps(mlp_measure(json.load(sys.stdin))))


# The child's working directory: "-c" puts it first on sys.path, so from a source checkout
# the child would import the checkout's mithridate (no kernels inside) instead of the parent's.
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mlp_subprocess(spec, timeout_s):
    """mlp_measure(spec) in fresh Python processes (result dict, or error): the
    memory in one with glibc's mmap threshold fixed (MLP_MMAP_THRESHOLD: arrays
    above it are mapped and unmapped, so memory freed by the warm-up is not reused
    unseen, which glibc's dynamic threshold would do), the times in another with
    glibc's defaults (a fixed threshold maps every tensor of torch's graph fresh:
    3x the reference's time at T = 100); spec["threads"] BLAS and torch threads in
    both where given (MLP_THREAD_VARS)."""
    memory = _mlp_child_run(dict(spec, repeats=1), timeout_s, fixed_threshold=True)
    if "error" in memory:
        return memory
    timed = _mlp_child_run(dict(spec, tracemalloc=False), timeout_s, fixed_threshold=False)
    if "error" in timed:
        return timed
    return dict(memory, **{k: timed[k] for k in ("best_s", "times_s", "cpu_s", "load")},
                mmap_threshold_bytes=MLP_MMAP_THRESHOLD)


def _mlp_child_run(spec, timeout_s, fixed_threshold):
    import json
    import subprocess
    code = "from mithridate.bench import _mlp_child; _mlp_child()"
    env = dict(os.environ)
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    if fixed_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = str(MLP_MMAP_THRESHOLD)
    if spec.get("threads"):
        env.update({var: str(spec["threads"]) for var in MLP_THREAD_VARS})
    try:
        out = subprocess.run([sys.executable, "-c", code], input=json.dumps(spec),
                             capture_output=True, text=True, timeout=timeout_s, env=env,
                             cwd=PACKAGE_PARENT)
    except subprocess.TimeoutExpired:
        return dict(error=f"timed out after {timeout_s} s")
    if out.returncode != 0:
        return dict(error=f"exit {out.returncode}: {out.stderr.strip()[-400:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _fit(Ts, ys):
    """(intercept, slope) of the least-squares line y = a + b T (None with < 2 points)."""
    if len(Ts) < 2:
        return None, None
    b, a = np.polyfit(np.asarray(Ts, float), np.asarray(ys, float), 1)
    return float(a), float(b)


def mlp_records(cfg, backend, dtypes=MLP_DTYPES, modes=tuple(MLP_MODES), on_result=None):
    """(records, notes) of the network: one record per (mode, T, dtype) with
    the reference's time and peak extra memory at the same T (ratios
    ours / reference), and per (mode, dtype) the growth with T (least-squares
    lines of time and peak memory against T, slopes per step). `on_result`,
    if given, is called with each subprocess's (spec, result) as it comes."""
    records, notes = [], []
    for threads in cfg.get("threads", (None,)):
        recs, nts = _mlp_thread_records(cfg, backend, dtypes, modes, on_result, threads)
        records += recs
        notes += nts
    return records, notes


def _mlp_thread_records(cfg, backend, dtypes, modes, on_result, threads):
    """mlp_records at one thread count (None: the environment's)."""
    records, notes = [], []
    d = cfg["layers"][0]
    at = f" threads={threads}" if threads else ""
    for dt in dtypes:
        results = {}
        for mode in ("reference",) + tuple(modes):
            for T in cfg["Ts"]:
                spec = dict(mode=mode, T=T, dtype=dt, repeats=cfg["repeats"][T],
                            tracemalloc=cfg["tracemalloc"], threads=threads,
                            cfg={k: cfg[k] for k in ("layers", "n", "k", "nv", "binomial_states")})
                results[mode, T] = r = mlp_subprocess(spec, cfg["timeout_s"])
                if on_result:
                    on_result(spec, r)
                if "error" in r:
                    notes.append(f"mlp {mode} T={T} {dt}{at}: no record: {r['error']}")
        fits = {}
        for mode in ("reference",) + tuple(modes):
            ok = [T for T in cfg["Ts"] if "error" not in results[mode, T]]
            fits[mode] = (_fit(ok, [results[mode, T]["best_s"] for T in ok])[1],
                          _fit(ok, [results[mode, T]["peak_extra_bytes"] for T in ok])[1])
        for mode in modes:
            for T in cfg["Ts"]:
                r, ref = results[mode, T], results["reference", T]
                if "error" in r or "error" in ref:
                    continue
                records.append(dict(
                    op=MLP, path=MLP, backend=backend, reference=REFERENCE,
                    reference_mode="unrolled", shape=[cfg["n"] + cfg["k"], d],
                    layers=list(cfg["layers"]), dtype=dt, batch=None, threads=threads,
                    mode=MLP_MODES[mode].get("mode", mode), schedule=(
                        MLP_MODES[mode].get("checkpoints")), T=T, gamma=MLP_GAMMA,
                    max_states=cfg["binomial_states"] if mode == "binomial" else None,
                    best_s=r["best_s"], reference_best_s=ref["best_s"],
                    cpu_s=r["cpu_s"], reference_cpu_s=ref["cpu_s"],
                    speedup=ref["best_s"] / r["best_s"], repeats=len(r["times_s"]),
                    peak_extra_bytes=r["peak_extra_bytes"],
                    reference_peak_extra_bytes=ref["peak_extra_bytes"],
                    memory_ratio=r["peak_extra_bytes"] / max(ref["peak_extra_bytes"], 1),
                    memory_method=r["memory_method"],
                    mmap_threshold_bytes=r["mmap_threshold_bytes"],
                    tracemalloc_peak_bytes=r["tracemalloc_peak_bytes"],
                    time_per_step_s=fits[mode][0], memory_per_step_bytes=fits[mode][1],
                    reference_time_per_step_s=fits["reference"][0],
                    reference_memory_per_step_bytes=fits["reference"][1],
                    recomputed=r["recomputed"], grad_norm=r["grad_norm"], load=r["load"],
                    reference_load=ref["load"], threads_seen=r["threads_seen"],
                    reference_threads_seen=ref["threads_seen"]))
    return records, notes


def _fmt_bytes(b):
    if b is None:
        return "-"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(b) >= scale:
            return f"{b / scale:.3g} {unit}"
    return f"{b:.3g} B"


def format_mlp_table(records):
    """Aligned text table of the mlp records: time and peak extra memory vs the
    reference, and the growth per step (slopes of the fits against T)."""
    head = ("mode", "T", "dtype", "threads", "best", "reference", "speedup", "peak mem", "ref peak",
            "mem ratio", "tracemalloc", "time/step", "mem/step", "ref mem/step")
    rows = [head]
    for r in records:
        mode = r["mode"] + (f" {r['schedule']}" if r["schedule"] else "") + \
            (f" ({r['max_states']} states)" if r["max_states"] else "")
        rows.append((mode, str(r["T"]), r["dtype"], str(r["threads"] or "-"),
                     _fmt_time(r["best_s"]),
                     _fmt_time(r["reference_best_s"]), f"{r['speedup']:.2f}x",
                     _fmt_bytes(r["peak_extra_bytes"]), _fmt_bytes(r["reference_peak_extra_bytes"]),
                     f"{r['memory_ratio']:.3g}", _fmt_bytes(r["tracemalloc_peak_bytes"]),
                     "-" if r["time_per_step_s"] is None else _fmt_time(r["time_per_step_s"]),
                     _fmt_bytes(r["memory_per_step_bytes"]),
                     _fmt_bytes(r["reference_memory_per_step_bytes"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i < 4 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(row, widths))).rstrip() for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def to_device(arrays, backend):
    """Place numpy `arrays` where `backend` reads them (CUDA tensors for GPU backends)."""
    if backend not in GPU_BACKENDS:
        return arrays
    import torch
    return tuple(torch.from_numpy(a).cuda() for a in arrays)


def synchronizer(backend):
    """A callable that waits for `backend`'s queued work (a no-op on the CPU)."""
    if backend in GPU_BACKENDS:
        import torch
        return torch.cuda.synchronize
    return lambda: None


def _medians(fns, sync, budget_s, max_repeats):
    """Median seconds of each of `fns`, called in turn after one warm-up each."""
    for f in fns:
        f()
    sync()
    times = [[] for _ in fns]
    deadline = time.perf_counter() + budget_s
    while len(times[0]) < max_repeats and (len(times[0]) < MIN_REPEATS
                                          or time.perf_counter() < deadline):
        for f, ts in zip(fns, times):
            t0 = time.perf_counter()
            f()
            sync()
            ts.append(time.perf_counter() - t0)
    return [float(np.median(ts)) for ts in times], len(times[0])


def _calls(op, backend, theta, v, X, y):
    """The zero-argument calls to time: ours, the reference, then (loss_grad_batched)
    B single calls or (lipschitz_batched) the matrix product Theta X^T it contains."""
    if op == "lipschitz_batched":
        W = theta[:, :-1]
        return [lambda b=b: ops.lipschitz(theta, X, y, loss="logistic", bound="tight", backend=b)
                for b in (backend, REFERENCE)] + [lambda: W @ X.T]
    kw = dict(lam=LAM, fit_intercept=True)
    if op == "hvp":
        return [lambda b=b: ops.hvp(theta, v, X, y, backend=b, **kw) for b in (backend, REFERENCE)]
    calls = [lambda b=b: ops.loss_grad(theta, X, y, backend=b, **kw) for b in (backend, REFERENCE)]
    if op == "loss_grad_batched":
        calls.append(lambda: [ops.loss_grad(t, X, y, backend=backend, **kw) for t in theta])
    return calls


def roof_probe(device):
    """(call, nbytes): one streaming read of a large array on `device` ("cpu" or "cuda")."""
    if device == "cpu":
        from .kernels.cpu.roof import stream_probe
        return stream_probe()
    import torch
    a = torch.ones((1 << 30) // 4, device="cuda")
    return a.sum, a.numel() * 4


def runnable(op_names, backend_names):
    """(pairs, notes): for each hot path of `op_names` the backends of
    `backend_names` that implement it and can run here (with its reference),
    and a note for each (path, backend) left out, with the reason."""
    pairs, notes = {}, []
    for path in dict.fromkeys(OP_PATH[op] for op in op_names):
        if path != "fixed_point" and skip_reason(REFERENCE):  # nothing to compare with
            notes.append(f"skipped {path}: its reference {REFERENCE} is unavailable: "
                         f"{skip_reason(REFERENCE)}")
            continue
        pairs[path] = []
        for b in backend_names:
            reason = skip_reason(b) if (path, b) in backends.REGISTRY else \
                f"no {b} implementation (implemented: {', '.join(backends.implemented(path))})"
            if reason:
                notes.append(f"skipped {path} on {b}: {reason}")
            else:
                pairs[path].append(b)
    return pairs, notes


def _device(backend):
    return "cuda" if backend in GPU_BACKENDS else "cpu"


def run(op_names=OPS, backend_names=CANDIDATES, quick=False, progress=True):
    """Benchmark; returns (records, notes), notes being human-readable lines."""
    cfg = QUICK if quick else FULL
    pairs, notes = runnable(op_names, backend_names)
    on = {op: pairs.get(OP_PATH[op], []) for op in op_names}
    if not any(on.values()):
        return [], notes

    load = os.getloadavg()[0]  # other processes skew every timing below
    notes.append(f"load average {load:.2f} on {os.cpu_count()} CPUs at start")
    # The roof is timed in every measurement, interleaved with the calls, so
    # that a drift in the machine's bandwidth moves both sides of the ratio.
    probes = {dev: roof_probe(dev) for dev in {_device(b) for op, bs in on.items() if op != MLP
                                               for b in bs}}
    notes.append("roof: read bandwidth of a streaming sum over 512 MiB (CPU, numba) or 1 GiB "
                 "(GPU, torch), timed interleaved with each row whose data exceed the cache")

    single = [op for op in on if op not in BATCHED + HYPERGRAD + FIXED_POINT + (TORCH_TRAIN, MLP)]
    jobs = [(shape, dt, op, b) for shape in cfg["shapes"] for dt in DTYPES
            for op in single for b in on[op]]
    jobs += [(cfg["batched_shape"], dt, op, b) for op in on if op in BATCHED
             for dt in DTYPES for b in on[op]]
    jobs += [(None, dt, op, b) for op in on if op in HYPERGRAD + (TORCH_TRAIN,)
             for dt in DTYPES for b in on[op]]
    jobs += [(None, "float64", op, b) for op in on if op in FIXED_POINT for b in on[op]]
    for b in on.get(MLP, []):  # the network's engine runs on the CPU (numpy, numba kernels)
        if b in GPU_BACKENDS:
            notes.append(f"skipped mlp on {b}: the network's hypergradients run on the CPU "
                         "engine (mithridate.hypergrad.generic) only")
        else:
            jobs.append((None, None, MLP, b))

    from tqdm import tqdm
    records, data, key = [], {}, None
    for shape, dt, op, b in tqdm(jobs, desc="mithridate bench", file=sys.stderr,
                                 disable=not progress, leave=False):
        if op == MLP:  # its own timing and memory, fresh subprocesses per record
            notes.append("mlp: two subprocesses per record (memory with glibc's mmap threshold "
                         "fixed, times with its defaults); time = best of the repeats; peak "
                         "extra memory = peak RSS during the first timed call above the RSS "
                         "before it (memory_method); tracemalloc: numpy's peak, ours only")
            recs, mlp_notes = mlp_records(cfg["mlp"], b)
            records += recs
            notes += mlp_notes
            continue
        probe = probes[_device(b)]
        if op in HYPERGRAD:
            records += _hypergrad_records(op, cfg, dt, b, probe)
            continue
        if op == TORCH_TRAIN:
            records.append(_torch_train_record(cfg, dt, b, probe))
            continue
        if op in FIXED_POINT:
            records.append(_fixed_point_record(op, cfg, b, probe))
            continue
        batch = BATCH if op in BATCHED else None
        if (shape, dt, batch) != key:
            data.clear()  # free the previous size before allocating the next
            key = (shape, dt, batch)
            data["numpy"] = make_problem(*shape, dt, batch)
        if b not in data:
            data[b] = to_device(data["numpy"], b)
        theta, v, X, y = data[b]
        nbytes = data["numpy"][2].nbytes  # X, whichever device holds it
        times, reps = _timed(_calls(op, b, theta, v, X, y), probe[0], nbytes, synchronizer(b), cfg)
        ours, ref = times[:2]
        bw = probe[1] / times[-1]
        rec = dict(op=op, path=OP_PATH[op], backend=b, reference=REFERENCE, shape=list(shape),
                   dtype=dt, batch=batch, median_s=ours, reference_median_s=ref,
                   speedup=ref / ours, roof_gbps=bw / 1e9, roof_fraction=nbytes / ours / bw,
                   repeats=reps)
        if op == "loss_grad_batched":
            rec.update(singles_median_s=times[2], batch_gain=times[2] / ours)
        elif op == "lipschitz_batched":
            rec.update(matmul_median_s=times[2], matmul_ratio=ours / times[2])
        records.append(rec)
    return records, notes


def _timed(calls, probe, nbytes, sync, cfg):
    """Medians of `calls` and, last, of the roof probe: interleaved with them
    when their data exceed the cache, else apart (the probe would evict it)."""
    interleave = nbytes > CACHE_BYTES
    times, reps = _medians(calls + ([probe] if interleave else []), sync, cfg["budget_s"],
                           cfg["max_repeats"])
    if not interleave:
        times += _medians([probe], sync, float("inf"), 5)[0]
    return times, reps


def _fmt_time(s):
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if s >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s * 1e9:.3g} ns"


def format_table(records):
    """Aligned text table of `records` (the mlp records in their own table)."""
    net = [r for r in records if r["op"] == MLP]
    rest = [r for r in records if r["op"] != MLP]
    return "\n\n".join(([_format_kernels(rest)] if rest else []) +
                        ([format_mlp_table(net)] if net else []))


def _format_kernels(records):
    head = ("op", "backend", "shape", "dtype", "median", "reference", "speedup", "roof", "other")
    rows = [head]
    for r in records:
        shape = "x".join(map(str, r["shape"])) + (f" B={r['batch']}" if r["batch"] else "")
        other = [r["mode"] + ("" if r["reference_mode"] == r["mode"] else
                              f" (reference {r['reference_mode']})")] if "mode" in r else []
        other += [f"{r['steps']} steps"] if "steps" in r else []
        other += [f"{r['n_words']} words"] if "n_words" in r else []
        other += [f"{r['batch_gain']:.2f}x singles"] if "batch_gain" in r else []
        other += [f"{r['matmul_ratio']:.2f}x W@X^T"] if "matmul_ratio" in r else []
        if r["reference"] != REFERENCE:
            other.append(f"vs {r['reference']}")
        rows.append((r["op"], r["backend"], shape, r["dtype"], _fmt_time(r["median_s"]),
                     _fmt_time(r["reference_median_s"]), f"{r['speedup']:.2f}x",
                     f"{100 * r['roof_fraction']:.{0 if r['roof_fraction'] >= 0.1 else 1}f}%",
                     ", ".join(other)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    left = 4  # text columns left-aligned, numbers right-aligned
    lines = ["  ".join(c.ljust(w) if i < left else c.rjust(w)
                       for i, (c, w) in enumerate(zip(row, widths))).rstrip() for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
