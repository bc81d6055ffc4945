"""Exact reversible fixed point (``mithridate.fixed_point``) on each backend of
the registry's hot path ``fixed_point``, as in ``mithridate bench``: encode n
float64 values (``numpy_floats``: numpy's rint(x * 2^40), the yardstick), and
one step pair, mul then unmul by 9/10 with the buffer a 1000-step reversible
run needs (yardstick: the float multiply and divide it replaces). GPU
backends get CUDA tensors; ``setup`` raises NotImplementedError where a
backend cannot run, which asv records as skipped.
"""
from mithridate.bench import fixed_point_calls, synchronizer

from . import implementing, preload, require

preload("fixed_point")


class FixedPoint:
    params = [["fixed_point_encode", "fixed_point_step"], implementing("fixed_point") +
              ["numpy_floats"], [1 << 16, 1 << 18]]
    param_names = ["op", "backend", "n"]

    def setup(self, op, backend, n):
        if backend != "numpy_floats":
            require("fixed_point", backend)
        ours, floats, _, _ = fixed_point_calls(op, "auto" if backend == "numpy_floats" else backend,
                                               n, steps=1000)  # auto: host data
        sync = synchronizer(backend)
        call = floats if backend == "numpy_floats" else ours
        self.run = lambda: (call(), sync())
        self.run()  # compile / warm up

    def time_op(self, *params):
        self.run()
