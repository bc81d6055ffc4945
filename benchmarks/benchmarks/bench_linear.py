"""Fused linear-model hot paths: loss/gradient, Hessian-vector product, mixed.

Logistic loss with intercept and lam = -2, as in ``mithridate bench``. The
``torch`` backend is the autograd reference, run on the CPU: compare its
rows with the others'. Backends: the registry's for hot path ``linear``;
GPU backends get CUDA tensors. ``setup`` raises NotImplementedError for
combinations this machine cannot run (triton without a GPU), which asv
records as skipped.
"""
import numpy as np

from mithridate import ops
from mithridate.bench import make_problem, synchronizer, to_device

from . import implementing, preload, require

LAM = -2.0
ROWS = np.arange(17)  # one batch of poisoning points, as in paper 002
OPS = ["loss_grad", "hvp", "mixed"]
BACKENDS = implementing("linear")
DTYPES = ["float32", "float64"]

preload("linear")


def _call(op, backend, theta, v, X, y):
    if op == "loss_grad":
        return ops.loss_grad(theta, X, y, lam=LAM, backend=backend)
    if op == "hvp":
        return ops.hvp(theta, v, X, y, lam=LAM, backend=backend)
    return ops.mixed(theta, v, X, y, ROWS, lam=LAM, backend=backend)


class _Linear:
    """Shared setup: data placed for the backend, one untimed call to compile/warm up."""

    def _prepare(self, op, backend, problem):
        require("linear", backend)
        self.op, self.backend = op, backend
        self.args = to_device(problem, backend)
        self.sync = synchronizer(backend)
        self.run()

    def run(self):
        _call(self.op, self.backend, *self.args)
        self.sync()


class LinearOps(_Linear):
    """One problem: theta (p,), X (n, d)."""
    params = [OPS, BACKENDS, [(100_000, 100), (2_000, 784)], DTYPES]
    param_names = ["op", "backend", "shape", "dtype"]

    def setup(self, op, backend, shape, dtype):
        self._prepare(op, backend, make_problem(*shape, dtype))

    def time_op(self, *params):
        self.run()

    def peakmem_op(self, *params):
        self.run()


class BatchedThetas(_Linear):
    """B parameter vectors against one X (20000, 100): one matrix-matrix pass.

    No mixed here: its reference materialises B copies of X (1 GB at B=64).
    """
    params = [["loss_grad", "hvp"], BACKENDS, [8, 64], DTYPES]
    param_names = ["op", "backend", "B", "dtype"]

    def setup(self, op, backend, B, dtype):
        self._prepare(op, backend, make_problem(20_000, 100, dtype, batch=B))

    def time_op(self, *params):
        self.run()

    def peakmem_op(self, *params):
        self.run()


class IndependentProblems(_Linear):
    """B independent problems: X (B, 2000, 100), y (B, 2000), theta (B, p)."""
    params = [OPS, BACKENDS, [8, 64], DTYPES]
    param_names = ["op", "backend", "B", "dtype"]

    def setup(self, op, backend, B, dtype):
        self._prepare(op, backend, make_problem(2_000, 100, dtype, batch=B, independent=True))

    def time_op(self, *params):
        self.run()

    def peakmem_op(self, *params):
        self.run()
