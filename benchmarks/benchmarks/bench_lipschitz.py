"""Batched Lipschitz constants of paper 000 (``ops.lipschitz``): B parameter
vectors against one X, the tight bound fused with its matrix product.
``numpy_matmul`` is the yardstick: the B x d by d x n product the tight bound
contains. Backends without this op raise NotImplementedError in ``setup``.
"""
from mithridate import backends, ops
from mithridate.bench import make_problem, skip_reason

for _name in ("numba", "torch"):  # import before asv forks, as in bench_linear
    if backends.unavailable_reason(_name) is None:
        backends.lipschitz_module(_name)


class BatchedLipschitz:
    params = [["numba", "torch", "numpy_matmul"], ["tight", "paper"], ["logistic", "squared"],
              [8, 64], ["float32", "float64"]]
    param_names = ["backend", "bound", "loss", "B", "dtype"]

    def setup(self, backend, bound, loss, B, dtype):
        if backend == "numpy_matmul":
            if bound != "tight" or loss != "logistic":
                raise NotImplementedError("one yardstick row per size is enough")
        elif backend not in backends.LIPSCHITZ or skip_reason(backend):
            raise NotImplementedError(f"no lipschitz kernel for backend {backend!r} here")
        self.theta, _, self.X, self.y = make_problem(20_000, 100, dtype, batch=B)
        self.W = self.theta[:, :-1]
        self.run = (lambda: self.W @ self.X.T) if backend == "numpy_matmul" else \
            (lambda: ops.lipschitz(self.theta, self.X, self.y, loss=loss, bound=bound,
                                   backend=backend))
        self.run()

    def time_lipschitz(self, *params):
        self.run()

    def peakmem_lipschitz(self, *params):
        self.run()
