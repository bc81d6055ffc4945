"""Run a sweep: skip finished configs, batch the rest, execute, commit as batches finish.

Execution is delegated to existing engines: the calling process (workers=1),
a ``concurrent.futures.ProcessPoolExecutor`` (one machine) or Ray (a local or
existing cluster). In every case only this driver process writes the store,
one transaction per finished batch, in the order batches finish; so a killed
run keeps every committed batch and a rerun resumes after them. Pool workers die
with the driver, so a killed driver leaves no process behind.
"""
import ctypes
import json
import math
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import closing, contextmanager

from . import registry
from .spec import config_key
from .store import ResultsStore

MAX_BATCH = 64
EXECUTORS = ("local", "ray")


class SweepError(RuntimeError):
    """An experiment failed; the batches that finished before it are stored."""


class ConfigError(SweepError, ValueError):
    """An experiment refused a value of the spec (a ValueError or TypeError, or a
    declared parameter the spec lacks): bad input, exit code 2 on the command line."""


class AddressError(ValueError):
    """Nothing answers at the Ray address given."""


def make_batches(configs, batch_keys, max_batch=MAX_BATCH):
    """Group configs equal on every key outside ``batch_keys``, in first-seen order,
    at most ``max_batch`` per group, so one experiment call can batch its kernels."""
    groups = {}
    for c in configs:
        shared = json.dumps({k: v for k, v in c.items() if k not in batch_keys}, sort_keys=True)
        groups.setdefault(shared, []).append(c)
    return [g[i:i + max_batch] for g in groups.values() for i in range(0, len(g), max_batch)]


def run_batch(name, module, configs):
    """Run one batch in whatever process this is (resolving the experiment by name)."""
    metrics = registry.get_experiment(name, module).fn(configs)
    if not isinstance(metrics, list) or len(metrics) != len(configs):
        raise SweepError(f"experiment {name!r} must return one metrics dict per config "
                         f"({len(configs)}), got {type(metrics).__name__} "
                         f"of length {len(metrics) if hasattr(metrics, '__len__') else '?'}")
    out = []
    for config, m in zip(configs, metrics):
        if not isinstance(m, dict) or set(m) & set(config):
            raise SweepError(f"experiment {name!r} must return dicts of metrics whose names "
                             f"differ from the parameters {sorted(config)}, got {m!r}")
        out.append({k: v.item() if hasattr(v, "item") else v for k, v in m.items()})
    return out


def _failure(exp, batch, error):
    """The error to raise for ``error`` raised by ``exp`` on ``batch``."""
    config = batch[0]
    missing = error.args[0] if isinstance(error, KeyError) and error.args else None
    if isinstance(missing, str) and missing in exp.params and missing not in config:
        return ConfigError(f"experiment {exp.name!r} needs the parameter {missing!r} for "
                           f"{config}: add it to the spec's [fixed] or [grid]")
    if isinstance(error, (ValueError, TypeError)) and not isinstance(error, SweepError):
        return ConfigError(f"experiment {exp.name!r} refused {config}: {error}")
    return SweepError(f"experiment {exp.name!r} failed on {config}: {error!r}")


def _serial(exp, batches):
    for batch in batches:
        try:
            metrics = run_batch(exp.name, exp.module, batch)
        except Exception as e:
            raise _failure(exp, batch, e) from e
        yield batch, metrics


def _share_cores(threads):
    """Split the cores between the workers (numba, OpenMP and BLAS read these before
    they start), unless the user set them; oversubscribed threads that spin at every
    step cost far more than idle cores."""
    for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(var, str(threads))


PR_SET_PDEATHSIG = 1  # linux/prctl.h
WATCH_SECONDS = 0.5


def _exit_with(driver):
    """Make this process die with its parent ``driver``: Linux sends SIGKILL on the
    parent's death (the thread that spawned it, here the one that ran run_sweep); a
    thread polling the parent pid covers other systems, exiting within WATCH_SECONDS
    whenever the interpreter runs (a kernel holding the GIL delays it)."""
    if sys.platform.startswith("linux"):  # should it fail, the thread below still watches
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != driver:  # the driver died before the signal was armed
        os._exit(1)
    threading.Thread(target=_watch, args=(driver,), daemon=True,
                     name="mithridate-exit-with-driver").start()


def _watch(driver):
    while os.getppid() == driver:
        time.sleep(WATCH_SECONDS)
    os._exit(1)


def _init_worker(threads, driver):
    """Pool worker initializer."""
    _share_cores(threads)
    _exit_with(driver)


def _pool(exp, batches, workers):
    # spawn, not fork: forking a process that runs numba/OpenMP threads can deadlock.
    threads = max(1, (os.cpu_count() or 1) // workers)
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(threads, os.getpid()))
    try:
        futures = {pool.submit(run_batch, exp.name, exp.module, b): b for b in batches}
        error = None
        while futures:
            finished, _ = wait(futures, return_when=FIRST_COMPLETED)
            for f in finished:
                batch = futures.pop(f)
                if f.cancelled():
                    continue
                if f.exception() is not None:
                    if error is None:  # stop queued batches, keep those already running
                        error = (batch, f.exception())
                        for queued in futures:
                            queued.cancel()
                    continue
                yield batch, f.result()
        if error is not None:
            raise _failure(exp, *error) from error[1]
    finally:  # also when the caller stops early (a store error): run nothing more
        pool.shutdown(wait=True, cancel_futures=True)


RAY_CONNECT_SECONDS = 10.0


def _probe(address):
    """Refuse, within RAY_CONNECT_SECONDS, a host:port (or ray://host:port) where nothing
    accepts connections; ray.init would retry it for minutes. Other forms (auto) are
    Ray's to resolve."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), RAY_CONNECT_SECONDS).close()
    except OSError as e:
        raise AddressError(f"--address {address}: nothing answers there within "
                           f"{RAY_CONNECT_SECONDS:g} s ({e.strerror or e}); start the cluster "
                           f"(ray start --head) or give the address it printed") from None


def _ray(exp, batches, workers, address):
    import ray
    started = not ray.is_initialized()
    if started:
        if address is None:
            ray.init(num_cpus=workers if workers > 1 else None, include_dashboard=False,
                     log_to_driver=False, logging_level="warning")
        else:
            ray.init(address=address, log_to_driver=False, logging_level="warning")
    refs = {}
    try:
        task = ray.remote(num_cpus=1, max_retries=0)(run_batch)
        refs = {task.remote(exp.name, exp.module, b): b for b in batches}
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1)
            for ref in ready:
                batch = refs.pop(ref)
                try:
                    metrics = ray.get(ref)
                except ray.exceptions.RayTaskError as e:
                    raise _failure(exp, batch, e.cause) from None
                yield batch, metrics
    finally:  # an error, or the caller stopped early: cancel what is left
        for pending in refs:
            ray.cancel(pending)
        if started:
            ray.shutdown()


PROGRESS_VAR = "MITHRIDATE_PROGRESS"


def inner_progress():
    """Whether an experiment should show its own (inner) progress bars: not
    when the sweep runs with progress=False (read at call time, so pool
    workers started by that sweep see it too)."""
    return os.environ.get(PROGRESS_VAR, "1") != "0"


@contextmanager
def _inner_bars(progress):
    """progress=False silences the experiments' own bars too (inner_progress)."""
    old = os.environ.get(PROGRESS_VAR)
    os.environ[PROGRESS_VAR] = "1" if progress else "0"
    try:
        yield
    finally:
        if old is None:
            del os.environ[PROGRESS_VAR]
        else:
            os.environ[PROGRESS_VAR] = old


def run_sweep(spec, out_dir, executor="local", workers=1, address=None, progress=True):
    """Run the configs of ``spec`` not yet in ``out_dir``'s store; return the full frame."""
    from tqdm import tqdm
    if executor not in EXECUTORS:
        raise ValueError(f"executor={executor!r}: choose one of {', '.join(EXECUTORS)}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers={workers!r}: give a positive integer")
    if address is not None and executor != "ray":
        raise ValueError(f"address={address!r} joins a Ray cluster: use it with executor='ray'")
    exp = registry.get_experiment(spec.experiment)
    exp.check(spec)
    if address is not None:
        _probe(address)
    with ResultsStore(out_dir, spec) as store, _inner_bars(progress):
        configs = spec.configs()
        done = store.done()
        pending = [c for c in configs if config_key(c) not in done]
        batches = make_batches(pending, exp.batch_keys)
        if executor == "ray":
            results = _ray(exp, batches, workers, address)
        elif workers > 1 and len(batches) > 1:
            results = _pool(exp, batches, workers)
        else:
            results = _serial(exp, batches)
        with closing(results), tqdm(total=len(configs), initial=len(configs) - len(pending),
                                    unit="config", desc=spec.name, file=sys.stderr,
                                    disable=not progress) as bar:
            for batch, metrics in results:
                store.add(zip(batch, metrics))
                bar.update(len(batch))
        return store.frame()


def summary_table(frame, spec):
    """Mean and std over seeds of each numeric metric, per value of the other parameters."""
    params = [k for k in spec.grid if k != "seed"]
    metrics = [c for c in frame.columns if c not in spec.configs()[0]
               and frame[c].dtype.kind in "biuf"]
    if frame.empty or not metrics:
        return frame.head(0)
    table = frame.groupby(params, sort=False)[metrics].agg(["mean", "std"])
    table.columns = [f"{m} {stat}" for m, stat in table.columns]
    return table


def format_summary(frame, spec):
    import pandas as pd
    with pd.option_context("display.width", 200, "display.max_columns", 50,
                           "display.float_format", lambda v: f"{v:.4g}" if math.isfinite(v)
                           else str(v)):
        return summary_table(frame, spec).to_string()
