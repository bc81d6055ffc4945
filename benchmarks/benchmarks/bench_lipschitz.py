"""Batched Lipschitz constants of paper 000 (``ops.lipschitz``): B parameter
vectors against one X, the tight bound fused with its matrix product.
``numpy_matmul`` is the yardstick: the B x d by d x n product the tight bound
contains. Backends: the registry's for hot path ``lipschitz``; those that
cannot run here (triton without a CUDA GPU) raise NotImplementedError in
``setup``. GPU backends get CUDA tensors and are synchronised after each call.
"""
from mithridate import ops
from mithridate.bench import make_problem, synchronizer, to_device

from . import implementing, preload, require

preload("lipschitz")


class BatchedLipschitz:
    params = [implementing("lipschitz") + ["numpy_matmul"], ["tight", "paper"],
              ["logistic", "squared"], [8, 64], ["float32", "float64"]]
    param_names = ["backend", "bound", "loss", "B", "dtype"]

    def setup(self, backend, bound, loss, B, dtype):
        if backend == "numpy_matmul":
            if bound != "tight" or loss != "logistic":
                raise NotImplementedError("one yardstick row per size is enough")
        else:
            require("lipschitz", backend)
        theta, _, X, y = make_problem(20_000, 100, dtype, batch=B)
        theta, X, y = to_device((theta, X, y), backend)
        sync = synchronizer(backend)
        W = theta[:, :-1]
        self.run = (lambda: W @ X.T) if backend == "numpy_matmul" else \
            (lambda: (ops.lipschitz(theta, X, y, loss=loss, bound=bound, backend=backend), sync()))
        self.run()

    def time_lipschitz(self, *params):
        self.run()

    def peakmem_lipschitz(self, *params):
        self.run()
