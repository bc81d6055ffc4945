"""Hypergradients (mithridate.hypergrad) at paper 002's size: 512 clean + 17
poisoning rows, 171 validation rows, d = 784, T = 150, logistic loss,
momentum 0.5 (mode reversible needs some; the cost is the same for all).

One problem per mode and backend of the registry's hot path ``hypergrad``
(``torch`` is the autograd reference through the unrolled loop), and a sweep
of 40 problems (10 repetitions x 4 lams, each repetition's Xc shared by its
lams) as one batched call or as 40 single calls. ``setup`` raises
NotImplementedError for combinations this machine cannot run (a mode a
backend lacks, an extension not built, cuda without a GPU), which asv
records as skipped.
"""
from mithridate import backends
from mithridate.bench import hypergrad_data
from mithridate.hypergrad import hypergrad

from . import implementing, preload, require

PAPER = dict(n=512, k=17, nv=171, d=784)
OPTS = dict(T=150, alpha=0.05, gamma=0.5)
MODES = ["trajectory", "checkpoint", "reversible", "forward", "implicit"]
BACKENDS = implementing("hypergrad")
DTYPES = ["float32", "float64"]

preload("hypergrad")


def _check(mode, backend):
    require("hypergrad", backend)
    if mode not in backends.implementation("hypergrad", backend).MODES:
        raise NotImplementedError(f"backend {backend} has no mode {mode}")


class HyperGradient:
    """One hypergradient; implicit runs the same T steps, then one solve."""
    params = [MODES, BACKENDS, DTYPES]
    param_names = ["mode", "backend", "dtype"]
    timeout = 300

    def setup(self, mode, backend, dtype):
        _check(mode, backend)
        self.args, kw = hypergrad_data(**PAPER, dtype=dtype)
        self.kw = dict(kw, mode=mode, backend=backend, **OPTS)
        self.run()  # compile / warm up

    def run(self):
        import warnings
        with warnings.catch_warnings():  # implicit after 150 steps: not yet stationary
            warnings.simplefilter("ignore", RuntimeWarning)
            hypergrad(*self.args, **self.kw)

    def time_hypergrad(self, *params):
        self.run()

    def peakmem_hypergrad(self, *params):
        self.run()


class Sweep:
    """40 problems, float32, trajectory mode: one batched call or 40 single calls."""
    params = [["batched", "singles"], implementing("hypergrad", exclude=("torch",))]
    param_names = ["how", "backend"]
    timeout = 600

    def setup(self, how, backend):
        _check("trajectory", backend)
        self.how, self.backend = how, backend
        self.args, self.kw = hypergrad_data(**PAPER, dtype="float32", reps=10, lams=4)
        self.run()

    def run(self):
        opts = dict(OPTS, backend=self.backend)
        if self.how == "batched":
            return hypergrad(*self.args, **self.kw, **opts)
        for i, lam in enumerate(self.kw["lam"]):
            hypergrad(*(a[i] for a in self.args[:4]), *self.args[4:], lam=lam, **opts)

    def time_sweep(self, *params):
        self.run()

    def peakmem_sweep(self, *params):
        self.run()


class ReversibleTarget:
    """Issue 5's targets at T = 1000, d = 784 (numba, float64, gamma = 0.9):
    reversible mode within 1.5x the time of trajectory mode and with at most
    1/20 of its stored state (track_: info["state_bytes"]; peakmem_ is the
    whole process, so the difference of the two modes is what to read)."""
    params = [["trajectory", "reversible"]]
    param_names = ["mode"]
    timeout = 600

    def setup(self, mode):
        self.args, kw = hypergrad_data(**PAPER, dtype="float64")
        self.kw = dict(kw, mode=mode, T=1000, alpha=0.05, gamma=0.9)
        hypergrad(*self.args, **dict(self.kw, T=2))  # compile / warm up

    def time_hypergrad(self, mode):
        hypergrad(*self.args, **self.kw)

    def peakmem_hypergrad(self, mode):
        hypergrad(*self.args, **self.kw)

    def track_state_bytes(self, mode):
        return hypergrad(*self.args, **self.kw).info["state_bytes"]

    track_state_bytes.unit = "bytes"
