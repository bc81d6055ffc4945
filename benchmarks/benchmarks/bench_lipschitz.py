"""Batched Lipschitz constants of paper 000 (``ops.lipschitz``): B parameter
vectors against one X, the tight bound fused with its matrix product.
``numpy_matmul`` is the yardstick: the B x d by d x n product the tight bound
contains. Backends without this op, or that cannot run here (triton without
a CUDA GPU), raise NotImplementedError in ``setup``. GPU backends get CUDA
tensors and are synchronised after each call.
"""
from mithridate import backends, ops
from mithridate.bench import make_problem, skip_reason, synchronizer, to_device

for _name in ("numba", "torch"):  # import before asv forks, as in bench_linear
    if backends.unavailable_reason(_name) is None:
        backends.lipschitz_module(_name)


class BatchedLipschitz:
    params = [["numba", "triton", "torch", "numpy_matmul"], ["tight", "paper"],
              ["logistic", "squared"], [8, 64], ["float32", "float64"]]
    param_names = ["backend", "bound", "loss", "B", "dtype"]

    def setup(self, backend, bound, loss, B, dtype):
        if backend == "numpy_matmul":
            if bound != "tight" or loss != "logistic":
                raise NotImplementedError("one yardstick row per size is enough")
        elif backend not in backends.LIPSCHITZ:
            raise NotImplementedError(f"no lipschitz kernel for backend {backend!r}")
        elif skip_reason(backend):
            raise NotImplementedError(skip_reason(backend))
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
