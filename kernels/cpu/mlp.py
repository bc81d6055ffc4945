"""Fused elementwise parts of the network (mithridate.models.MLP) on numba.

Each kernel is one serial pass (no reduction whose order depends on threads),
next to a BLAS matrix product of the caller:
- ``bias_act``: Z <- f(Z + b), D <- f'(Z + b) for leaky ReLU f (the forward's
  bias-add, activation and derivative mask in one pass). f'(x) is 1 for x > 0
  and negative_slope otherwise, as torch.nn.functional.leaky_relu's backward
  (exactly 0 included); f'' = 0 away from 0. Pass negative_slope in Z's
  dtype (the product then rounds as torch's).
- ``masked``: P <- D * (P + b) (the R-op's forward step R(h) = f'(z) R(z) with
  R(z)'s bias term; with b of length 0, the backward's delta mask D * P).
- ``head``: the logistic loss on logits z + b, labels y in {0, 1}: writes
  dl = l'(z) = sigmoid(z) - y and ddl = l''(z) = sigmoid(z)(1 - sigmoid(z)),
  returns sum l(z) accumulated in float64 in row order.
- ``add_scaled``: g <- g + c x, in place, c x rounded to g's dtype first: the
  same bits as numpy's ``g + L2.hvp(x)`` without its two p-vectors (strict
  flags: no fused multiply-add).
"""
import math

import numpy as np
from numba import njit

from ._math import JIT

STRICT = dict(cache=True, error_model="numpy")  # IEEE: products rounded as numpy's


@njit(**JIT)
def bias_act(Z, b, negative_slope, D):
    n, h = Z.shape
    for i in range(n):
        for j in range(h):
            z = Z[i, j] + b[j]
            if z > 0:
                Z[i, j] = z
                D[i, j] = 1
            else:
                Z[i, j] = z * negative_slope
                D[i, j] = negative_slope


@njit(**JIT)
def masked(P, D, b):
    n, h = P.shape
    if b.shape[0] == 0:
        for i in range(n):
            for j in range(h):
                P[i, j] = D[i, j] * P[i, j]
    else:
        for i in range(n):
            for j in range(h):
                P[i, j] = D[i, j] * (P[i, j] + b[j])


@njit(**JIT)
def head(z, b, y, dl, ddl):
    total = 0.0
    for i in range(z.shape[0]):
        x = np.float64(z[i] + b)
        e = math.exp(-abs(x))
        s = 1.0 / (1.0 + e) if x >= 0 else e / (1.0 + e)
        total += max(x, 0.0) + math.log1p(e) - np.float64(y[i]) * x
        dl[i] = s - y[i]
        ddl[i] = e / ((1.0 + e) * (1.0 + e))  # = s (1 - s) without the cancellation
    return total


@njit(**STRICT)
def add_scaled(g, x, c):
    r = np.empty(1, g.dtype)  # the store rounds c x to g's dtype, as numpy's assignment
    for j in range(g.shape[0]):
        r[0] = c * x[j]
        g[j] = g[j] + r[0]
