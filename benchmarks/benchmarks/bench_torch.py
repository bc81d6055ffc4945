"""A torch training loop on the fused kernels (``mithridate.torch``): 200 SGD
steps of L2-regularised logistic regression (lam = -2), ``fused`` on
``mithridate.torch.linear_objective`` against ``torch``, autograd on the
reference objective's torch ops, same data and start. ``backend``: the
registry's compiled ones for hot path ``linear``, each on its device (numba
on the CPU, triton on a CUDA GPU, where the torch route runs too); ``setup``
raises NotImplementedError where it cannot run, which asv records as skipped.
"""
import torch

from mithridate.bench import GPU_BACKENDS, make_problem, synchronizer, train_logistic

from . import implementing, require

STEPS = 200


class TorchTraining:
    params = [["fused", "torch"], implementing("linear", exclude=("torch",)),
              [(20_000, 100), (512, 784)], ["float32", "float64"]]
    param_names = ["route", "backend", "shape", "dtype"]

    def setup(self, route, backend, shape, dtype):
        require("linear", backend)
        device = "cuda" if backend in GPU_BACKENDS else "cpu"
        _, _, X, y = make_problem(*shape, dtype)
        self.X, self.y = torch.from_numpy(X).to(device), torch.from_numpy(y).to(device)
        self.route, self.backend = route, backend
        self.sync = synchronizer(backend)
        self.run()  # compile / warm up

    def run(self):
        train_logistic(self.X, self.y, steps=STEPS, route=self.route, backend=self.backend)
        self.sync()

    def time_train(self, *params):
        self.run()
