"""Hypergradients of the network (issue 10: mithridate.models.MLP on the
generic engine) at paper 002's size: 2048 x 128 x 32 x 1, 512 clean + 17
poisoning rows, 171 validation rows, float32, momentum 0.9, one lam per
layer; every mode at small T (20, 100; `mithridate bench --ops mlp` runs
T = 100, 300, 600, each record in a fresh process for its peak memory).

``reference`` is its own mode value: torch autograd through the unrolled
loop (mithridate.reference.mlp.unrolled), the baseline. ``threads``: the
BLAS (threadpoolctl) and torch intra-op thread count of both sides, held
from setup to teardown (torch's pool with 2 threads on 2 shared cores was
5-10x slower than with 1 in the issue-10 runs). ``setup`` raises
NotImplementedError (asv: skipped) where a combination cannot run here:
the reference without torch, or a mode whose warm-up call fails (implicit:
CG on the network's indefinite Hessian), with the reason.
"""
from threadpoolctl import threadpool_limits

from mithridate import backends
from mithridate.bench import FULL, MLP_MODES, mlp_call
from mithridate.errors import SingularHessianError

MODES = list(MLP_MODES) + ["reference"]
TS = [20, 100]
THREADS = [1, 2]
CFG = {k: FULL["mlp"][k] for k in ("layers", "n", "k", "nv", "binomial_states")}


class Hypergradient:
    """One hypergradient of the network wrt Xp and the layers' lams."""
    params = [MODES, TS, THREADS]
    param_names = ["mode", "T", "threads"]
    timeout = 900  # the reference at T = 100 takes minutes on 2 loaded cores
    number, repeat, warmup_time = 1, (1, 3, 60.0), 0

    def setup(self, mode, T, threads):
        if mode == "reference" and backends.unavailable_reason("torch"):
            raise NotImplementedError(backends.unavailable_reason("torch"))
        try:
            mlp_call(mode, CFG, 2, "float32")()  # compile the kernels, load BLAS and torch
        except SingularHessianError as e:  # asv: skipped, with the reason
            raise NotImplementedError(f"mode {mode}: {e}") from e
        self.torch = None if backends.unavailable_reason("torch") else __import__("torch")
        self.torch_threads = self.torch and self.torch.get_num_threads()
        self.limits = threadpool_limits(limits=threads)  # every pool is loaded by now
        if self.torch:
            self.torch.set_num_threads(threads)
        mlp_call(mode, CFG, 2, "float32")()  # warm at this thread count
        self.call = mlp_call(mode, CFG, T, "float32")

    def teardown(self, mode, T, threads):
        self.limits.restore_original_limits()
        if self.torch:
            self.torch.set_num_threads(self.torch_threads)

    def time_hypergrad(self, mode, T, threads):
        self.call()

    def peakmem_hypergrad(self, mode, T, threads):
        self.call()
