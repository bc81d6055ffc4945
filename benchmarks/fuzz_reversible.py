"""Fuzz the exact reversal of mode='reversible' through the public API.

    python benchmarks/fuzz_reversible.py --configs 100000 --seed 0 --backends numba,cpp

Configuration i is drawn from numpy.random.default_rng([seed, i]) (rerun one
with --only i): sizes, dtype, loss, intercept, gamma (simple, arbitrary and
near-1 fractions), frac_bits 1..62, T 1..60, w0 scale 1e-6..1e3, lam, alpha,
single or batched (B = 2..4), on each backend in turn. Every outcome is
classed as
  recovered   w0 came back bit for bit (info["w0_recovered"]);
  refused     rejected before any work (w0 outside the fixed point of frac_bits, ...);
  overflow    theta or v left int64, or the float training diverged: an error, no result;
  FAILED      anything else: "did not recover/restore w0", a wrong info flag, another error.
Exit status 1 if any configuration FAILED.
"""
import argparse
import sys
import time
import traceback
from collections import Counter

import numba
import numpy as np

from mithridate import DivergenceError
from mithridate.fixed_point import FixedPointOverflow
from mithridate.hypergrad import hypergrad

GAMMAS = (0.3, 0.5, 0.9, 0.99, 0.123456789)


def draw(seed, i, backend):
    """(args, kwargs, label) of configuration i for hypergrad."""
    rng = np.random.default_rng([seed, i])
    dtype = (np.float64, np.float32)[rng.integers(2)]
    d = int(min(1 + rng.geometric(1 / 12), 300))
    n, k, nv = int(rng.integers(2, 60)), int(rng.integers(1, 5)), int(rng.integers(2, 30))
    B = int(rng.integers(2, 5)) if rng.random() < 0.25 else 0
    fi = bool(rng.integers(2))
    scale = 10.0 ** rng.uniform(-1, 1)
    kind = rng.integers(3)
    if kind == 0:
        gamma = float(rng.choice(GAMMAS))
    elif kind == 1:  # a fraction with a small denominator
        den = int(rng.integers(2, 1000))
        gamma = int(rng.integers(1, den)) / den
    else:  # arbitrary, as a user types it
        gamma = round(float(rng.uniform(0.01, 0.99)), int(rng.integers(2, 8)))
    frac_bits = int(rng.integers(1, 63))
    T = int(rng.integers(1, 61))
    lead = (B,) if B else ()
    Xc = (rng.normal(size=(n, d)) * scale).astype(dtype)
    Xp = (rng.normal(size=lead + (k, d)) * scale).astype(dtype)
    Xv = (rng.normal(size=(nv, d)) * scale).astype(dtype)
    yc, yv = ((np.arange(m) % 2 == 0).astype(dtype) for m in (n, nv))
    yp = np.broadcast_to((np.arange(k) % 2 == 1).astype(dtype), lead + (k,)).copy()
    w0 = None
    if rng.random() < 0.8:
        w0 = (rng.normal(size=d + fi) * 10.0 ** rng.uniform(-6, 3)).astype(dtype)
    lam = rng.uniform(-6, 2, size=B) if B else float(rng.uniform(-6, 2))
    kw = dict(lam=lam, w0=w0, T=T, alpha=float(10.0 ** rng.uniform(-3, 0)) / scale**2, gamma=gamma,
              loss=("logistic", "squared")[rng.integers(2)], fit_intercept=fi, mode="reversible",
              backend=backend, frac_bits=frac_bits)
    label = (f"i={i} backend={backend} {np.dtype(dtype).name} {kw['loss']} fit_intercept={fi} "
             f"gamma={gamma!r} frac_bits={frac_bits} T={T} n={n} k={k} d={d} B={B or 1}")
    return (Xc, yc, Xp, yp, Xv, yv), kw, label


def classify(args, kw):
    """'recovered', 'refused', 'overflow', or ('FAILED', why)."""
    try:
        hg = hypergrad(*args, **kw)
    except FixedPointOverflow as err:
        return "refused" if "does not fit the fixed point" in str(err) else "overflow"
    except (DivergenceError, OverflowError):  # OverflowError: a result past X's dtype
        return "overflow"
    except Exception:  # noqa: BLE001 - every other outcome is a finding
        return "FAILED", traceback.format_exc(limit=3)
    if hg.info.get("w0_recovered") is not True:
        return "FAILED", f"returned with info={hg.info!r}"
    return "recovered"


def fuzz(configs, seed, backends, start=0, log=print):
    """Run configurations start..start+configs-1; return (Counter, failures)."""
    counts, failures = Counter(), []
    for i in range(start, start + configs):
        backend = backends[i % len(backends)]
        args, kw, label = draw(seed, i, backend)
        out = classify(args, kw)
        if isinstance(out, tuple):
            failures.append((label, out[1]))
            log(f"FAILED {label}\n{out[1]}")
            out = out[0]
        counts[out, backend] += 1
    return counts, failures


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", type=int, default=1000, help="number of configurations")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backends", default="numba,cpp", help="comma-separated: numba, cpp, cuda")
    ap.add_argument("--only", type=int, help="run configuration ONLY alone (a failure's i)")
    ap.add_argument("--threads", type=int, default=1,
                    help="numba threads (default 1: the bits do not depend on it, and thread "
                         "start-up dominates these small problems on a shared machine)")
    a = ap.parse_args(argv)
    numba.set_num_threads(a.threads)
    backends = a.backends.split(",")
    start, n = (a.only, 1) if a.only is not None else (0, a.configs)
    t0 = time.perf_counter()
    counts, failures = fuzz(n, a.seed, backends, start)
    wall = time.perf_counter() - t0
    print(f"{n} configurations, seed {a.seed}, backends {a.backends}, {a.threads} numba "
          f"thread(s): {wall:.0f} s")
    for backend in backends:
        row = {c: counts[c, backend] for c in ("recovered", "refused", "overflow", "FAILED")}
        print(f"  {backend:6s} " + "  ".join(f"{c} {v}" for c, v in row.items()))
    print(f"unrecovered or failed: {len(failures)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
