"""One-pass input checks for large arrays (y, sample weights): three numpy
temporaries per check would cost more than the kernel they guard."""
import numpy as np
from numba import njit, prange

from ._math import JIT

RULES = {"finite": 0, "labels01": 1, "nonneg": 2}
SMALL = 1 << 14  # below this, one block: no threads to wake


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


def first_bad(a, rule):
    """Flat index of the first element of `a` breaking `rule` (a RULES key), or -1."""
    flat = a.reshape(-1)
    if not _count_bad(flat, RULES[rule], 1 if flat.size < SMALL else 64).any():
        return -1
    finite = np.isfinite(flat)  # slow path, only to name the culprit
    bad = {"finite": ~finite, "labels01": (flat != 0) & (flat != 1),
           "nonneg": ~(finite & (flat >= 0))}[rule]
    return int(np.argmax(bad))
