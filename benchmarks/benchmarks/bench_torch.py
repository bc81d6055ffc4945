"""A torch training loop on the fused kernels (``mithridate.torch``): 200 SGD
steps of L2-regularised logistic regression (lam = -2), ``fused`` on
``mithridate.torch.linear_objective`` against ``torch``, autograd on the
reference objective's torch ops, same data and start. ``cuda`` runs the fused
loop on the triton kernels; ``setup`` raises NotImplementedError where the
device is absent, which asv records as skipped.
"""
import torch

from mithridate.bench import make_problem, skip_reason, synchronizer, train_logistic

STEPS = 200


class TorchTraining:
    params = [["fused", "torch"], ["cpu", "cuda"], [(20_000, 100), (512, 784)],
              ["float32", "float64"]]
    param_names = ["route", "device", "shape", "dtype"]

    def setup(self, route, device, shape, dtype):
        backend = "triton" if device == "cuda" else "numba"
        reason = skip_reason(backend)
        if reason:
            raise NotImplementedError(reason)
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
