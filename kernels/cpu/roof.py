"""CPU read-bandwidth roof: how fast one pass over a large array can go.

The fused linear-model kernels read X once per call, so the sustained read
bandwidth of an array well beyond the last-level cache is their speed limit.
``stream_probe`` streams such an array with the same threading scheme as the
kernels (``prange`` over blocks, one partial sum per block). The bandwidth of
a shared machine drifts (40-70 GB/s seen on one 2-core VM within minutes), so
``mithridate bench`` times the probe interleaved with each kernel it measures.
"""
import numpy as np
from numba import njit, prange

from ._math import JIT

_BLOCK = 1 << 16  # elements per block: large enough to amortise the loop, many per thread


@njit(parallel=True, **JIT)
def _stream_sum(a, block):
    """Sum of ``a``, each block reduced into its own slot (no shared accumulator)."""
    n = a.shape[0]
    n_blocks = (n + block - 1) // block
    partial = np.zeros(n_blocks)
    for k in prange(n_blocks):
        # Loop over a slice: indices provably >= 0, so no wraparound check
        # blocks SIMD (indexing a[i] directly runs ~3x slower).
        b = a[k * block:min(n, (k + 1) * block)]
        acc = 0.0
        for i in range(b.shape[0]):
            acc += b[i]
        partial[k] = acc
    return partial.sum()


def stream_probe(nbytes=512 << 20):
    """(call, nbytes): a zero-argument call that reads an ``nbytes`` float64 array once.

    The default 512 MiB is 16x a 32 MiB L3, so caches do not flatter the figure.
    """
    a = np.ones(nbytes // 8)
    _stream_sum(a, _BLOCK)  # compile (or load from cache) and fault the pages in
    return (lambda: _stream_sum(a, _BLOCK)), a.nbytes
