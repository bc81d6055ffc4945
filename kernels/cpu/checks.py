"""One-pass input checks for large arrays (y, sample weights): three numpy
temporaries per check would cost more than the kernel they guard."""
import numpy as np
from numba import njit, prange

from ._math import JIT

RULES = {"finite": 0, "labels01": 1, "nonneg": 2}
SMALL = 1 << 14


@njit(parallel=True, **JIT)
def _count_bad(a, rule, n_blocks):
    n = a.shape[0]
    counts = np.zeros(n_blocks, dtype=np.int64)
    for k in prange(n_blocks):
        b = a[k * n // n_blocks:(k + 1) * n // n_blocks]
        c = 0
        for i in range(b.shape[0]):
            x = b[i]
            if rule == 0:
                c += not (abs(x) < np.inf)
            elif rule == 1:
                c += (x != 0.0) & (x != 1.0)
            else:
                c += not (0.0 <= x < np.inf)
        counts[k] = c
    return counts


def _bad_mask(flat, rule):
    finite = np.isfinite(flat)
    if rule == "finite":
        return ~finite
    if rule == "labels01":
        return (flat != 0) & (flat != 1)
    return ~(finite & (flat >= 0))


def first_bad(a, rule):
    """Flat index of the first element of `a` breaking `rule` (a RULES key), or -1."""
    flat = a.reshape(-1)
    # Small arrays: numpy's temporaries cost less than a parallel launch.
    if flat.size >= SMALL and not _count_bad(flat, RULES[rule], 64).any():
        return -1
    bad = _bad_mask(flat, rule)
    return int(np.argmax(bad)) if bad.any() else -1
