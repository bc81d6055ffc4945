"""Hypergradients of the network (issue 10: mithridate.models.MLP on the
generic engine) at paper 002's size: 2048 x 128 x 32 x 1, 512 clean + 17
poisoning rows, 171 validation rows, float32, momentum 0.9, one lam per
layer; every mode at small T (20, 100; `mithridate bench --ops mlp` runs
T = 100, 300, 600, each record in a fresh process for its peak memory).

``reference`` is its own mode value: torch autograd through the unrolled
loop (mithridate.reference.mlp.unrolled), the baseline. ``setup`` raises
NotImplementedError (asv: skipped) where a combination cannot run here:
the reference without torch, or a mode whose warm-up call fails (implicit:
CG on the network's indefinite Hessian), with the reason.
"""
from mithridate import backends
from mithridate.bench import FULL, MLP_MODES, mlp_call
from mithridate.errors import SingularHessianError

MODES = list(MLP_MODES) + ["reference"]
TS = [20, 100]
CFG = {k: FULL["mlp"][k] for k in ("layers", "n", "k", "nv", "binomial_states")}


class Hypergradient:
    """One hypergradient of the network wrt Xp and the layers' lams."""
    params = [MODES, TS]
    param_names = ["mode", "T"]
    timeout = 900  # the reference at T = 100 takes minutes on 2 loaded cores
    number, repeat, warmup_time = 1, (1, 3, 60.0), 0

    def setup(self, mode, T):
        if mode == "reference" and backends.unavailable_reason("torch"):
            raise NotImplementedError(backends.unavailable_reason("torch"))
        try:
            mlp_call(mode, CFG, 2, "float32")()  # compile the kernels, warm BLAS and torch
        except SingularHessianError as e:  # asv: skipped, with the reason
            raise NotImplementedError(f"mode {mode}: {e}") from e
        self.call = mlp_call(mode, CFG, T, "float32")

    def time_hypergrad(self, mode, T):
        self.call()

    def peakmem_hypergrad(self, mode, T):
        self.call()
