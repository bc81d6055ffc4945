"""Mini-batch SGD for the linear model on the CPU (numba): every epoch in one call.

The step is mithridate.models.training.sgd's generic loop for a LinearModel,
theta <- theta - lr (g + r), g the batch's mean data gradient and r the
regulariser's gradient, in the same arithmetic: g is accumulated exactly as
kernels.cpu.linear's streaming pass does for one row chunk (row blocks of
``_block_rows`` rows, z and X^T c in X's dtype per block, float64 across
blocks, then cast to X's dtype), r = float(reg_j theta_j) cast to X's dtype,
and the update in X's dtype. The batch's rows are gathered into a small
buffer (read twice per block from cache) instead of copying X per epoch.
"""
import numpy as np
from numba import njit

from ._math import JIT
from .linear import _axpy_rows, _block_rows, _dot_rows, _terms


@njit(**JIT)
def _epochs(X, y, theta, reg, orders, lr, batch, block, fit_b, code):
    """theta (p,) in X's dtype, updated in place over orders (epochs, n): per epoch
    the rows in that order, ceil(n / batch) steps. reg (p,) float64: exp(lam_g)
    on the penalised entries, 0 elsewhere."""
    n, d = X.shape
    p = theta.shape[0]
    cast = X.dtype.type
    step = cast(lr)
    Xb = np.empty((min(batch, n), d), dtype=X.dtype)
    yb = np.empty(min(batch, n), dtype=y.dtype)
    w = np.empty(d, dtype=X.dtype)
    g = np.zeros(d + 1)
    gb = np.zeros(d + 1, dtype=X.dtype)
    z = np.empty(block)
    coef = np.empty(block)
    t = np.empty(block)
    bits = np.empty(block, dtype=np.int64)
    for e in range(orders.shape[0]):
        for i0 in range(0, n, batch):
            m = min(batch, n - i0)
            for i in range(m):
                r = orders[e, i0 + i]
                yb[i] = y[r]
                for j in range(d):
                    Xb[i, j] = X[r, j]
            for j in range(d):
                w[j] = theta[j]
            bias = np.float64(theta[d]) if fit_b else 0.0
            g[:] = 0.0
            for r0 in range(0, m, block):
                k = min(block, m - r0)
                _dot_rows(Xb, r0, k, w, bias, z)
                _terms(code, z, yb[r0:r0 + k], None, k, coef, None, t, bits)
                _axpy_rows(Xb, r0, k, coef, gb, fit_b)
                for j in range(d + 1):
                    g[j] += gb[j]
                    gb[j] = 0
            for j in range(p):
                gj = cast(g[j] / m)
                rj = cast(reg[j] * np.float64(theta[j]))
                theta[j] = theta[j] - step * (gj + rj)


def epochs(X, y, theta, reg, orders, lr, batch_size, fit_intercept, loss_code):
    """Run every epoch of orders (epochs, n) int64 on theta (p,) (updated in place)."""
    _epochs(X, y, theta, reg, orders, lr, batch_size, _block_rows(X.shape[1], X.itemsize),
            fit_intercept, loss_code)
