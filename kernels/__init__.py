"""Compiled kernels of mithridate, installed as ``mithridate.kernels``.

The folder is ``kernels/`` at the top of the repository; setuptools maps it
onto ``mithridate.kernels`` (``package_dir`` in setup.py), so code and
tests import ``mithridate.kernels.cpu.linear``, never a top-level ``kernels``.
``cpu/`` holds the numba kernels (private ``_`` helpers behind the entry points
that mithridate's facades call), ``gpu/`` the triton kernels. Each module is
named for its hot path, the same name as its C++ twin in ``csrc/``, its facade
in ``mithridate/``, its tests and its benchmarks (README, "Where things are").
Nothing here validates input: the facades (mithridate.ops, mithridate.hypergrad,
mithridate.fixed_point) do, before any kernel runs.
"""
