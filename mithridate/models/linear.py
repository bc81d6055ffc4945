"""Linear models (logistic, squared, absolute loss) on the fused kernels of mithridate.ops.

theta = [w; b] (b present with fit_intercept), z = X w + b. Groups ("w", d)
[, ("b", 1)]; lam = (lam_w,) or, with penalize_intercept, (lam_w, lam_b): the
intercept gets its own hyperparameter. Sample weights s (``with_weights``)
weight the training data term 1/n sum_i s_i l(z_i, y_i); the outer objective
``data_loss`` stays the plain mean loss.
"""
import numpy as np

from .. import backends, ops
from .._validation import (LOSSES, as_bool, check_array, check_choice, check_labels, check_shape,
                           check_weights, dtype_name)
from .base import Model
from .layout import Layout



class LinearModel(Model):
    def __init__(self, loss="logistic", fit_intercept=True, penalize_intercept=False,
                 backend="auto"):
        check_choice("loss", loss, LOSSES)
        check_choice("backend", backend, backends.BACKENDS)
        as_bool("fit_intercept", fit_intercept)
        as_bool("penalize_intercept", penalize_intercept)
        if penalize_intercept and not fit_intercept:
            raise ValueError("penalize_intercept=True needs fit_intercept=True (there is no "
                             "intercept to penalise).")
        self.loss, self.backend = loss, backend
        self.fit_intercept, self.penalize_intercept = bool(fit_intercept), bool(penalize_intercept)
        self.loss_code = LOSSES.index(loss)  # = kernels.cpu.linear.LOSS_CODES[loss]
        self.sample_weight = None
        self.fused = "linear" if not penalize_intercept else None

    def __repr__(self):
        w = "" if self.sample_weight is None else f", sample_weight=({len(self.sample_weight)},)"
        return (f"LinearModel(loss={self.loss!r}, fit_intercept={self.fit_intercept}, "
                f"penalize_intercept={self.penalize_intercept}, backend={self.backend!r}{w})")

    def with_weights(self, sample_weight):
        """This model with the training rows weighted by ``sample_weight`` (n,), finite, >= 0
        (one weight per training row, poisoning rows included); runs on the generic engine."""
        s = np.ascontiguousarray(sample_weight)
        check_array("sample_weight", s, (1,))
        check_weights(s)
        out = LinearModel(self.loss, self.fit_intercept, self.penalize_intercept, self.backend)
        out.sample_weight, out.fused = s, None
        return out

    # -- interface --------------------------------------------------------------
    def layout(self, d):
        groups = (("w", d), ("b", 1)) if self.fit_intercept else (("w", d),)
        return Layout(groups, ("w", "b") if self.penalize_intercept else ("w",))

    def features(self, p):
        return p - self.fit_intercept

    def check_data(self, X, y, name):
        """X (n, d) float array, y (n,) of its dtype, labels {0, 1} for the logistic loss;
        ``name`` ("train", "validation", ...) heads the error."""
        try:
            check_array("X", X, (2,))
            check_array("y", y, (1,), dtype_name(X))
            check_shape("y", y, X.shape[:1])
            check_labels(y, self.loss)
            if self.sample_weight is not None and name == "train":
                check_shape("sample_weight", self.sample_weight, X.shape[:1])
        except (TypeError, ValueError) as err:
            raise type(err)(f"{name} data: {err}") from None

    def loss_grad(self, theta, X, y):
        value, g = ops.loss_grad(theta, X, y, **self._options(X, True))
        return float(value), g

    def loss_grad_batch(self, theta, X, y):
        """One kernel call (for X shared: one matrix-matrix product over the B thetas).
        The trainers' inner loop: its data were checked once (check_data), so on numba
        the kernel runs without ops' per-call checks; the trainer checks its result."""
        if X.ndim == 3 and y.ndim == 1:
            y = np.ascontiguousarray(np.broadcast_to(y, X.shape[:2]))
        opts = self._options(X, True)
        if backends.select("linear", opts.pop("backend"), X) != "numba":
            return ops.loss_grad(theta, X, y, **self._options(X, True))
        kernel = backends.implementation("linear", "numba")
        return kernel.loss_grad(theta, X, y, opts.pop("sample_weight"), opts.pop("lam"),
                                penalize_intercept=False, **opts)

    def loss_hvp(self, theta, u, X, y):
        return ops.hvp(theta, u, X, y, **self._options(X, True))

    def mixed_rows(self, theta, u, X, y, rows):
        return ops.mixed(theta, u, X, y, np.asarray(rows), **self._options(X, True))[0]

    def data_loss_grad(self, theta, X, y):
        value, g = ops.loss_grad(theta, X, y, **self._options(X, False))
        return float(value), g

    def loss_factor(self, theta, X, y):
        """R (n, p) float64 with loss Hessian R^T R / n: R = sqrt(c) [X 1], c_i = s_i l''(z_i)
        (logistic sqrt(l'') = 1 / (2 cosh(z/2)), no overflow); None for the absolute loss."""
        if self.loss == "absolute":
            return None  # zero curvature almost everywhere
        n, d = X.shape
        if self.loss == "logistic":
            z = X @ theta[:d].astype(X.dtype) + (theta[d] if self.fit_intercept else 0)
            r = 0.5 / np.cosh(0.5 * z.astype(np.float64))
        else:
            r = np.ones(n)
        if self.sample_weight is not None:
            r *= np.sqrt(self.sample_weight)
        R = np.empty((n, d + self.fit_intercept))
        np.multiply(X, r[:, None], out=R[:, :d])
        if self.fit_intercept:
            R[:, d] = r
        return R

    def loss_hessian(self, theta, X, y):
        """A^T diag(c) A / n, A = [X 1], as ONE symmetric BLAS product R^T R / n (float64)."""
        R = self.loss_factor(theta, X, y)
        if R is None:
            p = X.shape[1] + self.fit_intercept
            return np.zeros((p, p))
        H = R.T @ R  # numpy runs A.T @ A as one syrk
        H /= X.shape[0]
        return H

    def torch_objective(self, theta, X, y, lam):
        """The training objective for one problem on torch tensors (the autograd oracle)."""
        import torch
        from ..reference import linear as ref
        s = None if self.sample_weight is None else \
            torch.as_tensor(self.sample_weight, dtype=X.dtype)[None]
        data = ref.objective(theta[None], X, y[None], s, None, self.loss, self.fit_intercept,
                             False)[0]
        layout = self.layout(X.shape[-1])
        return data + ref.l2(theta, lam, [layout.slice(g) for g in layout.penalised])

    def _options(self, X, weighted):
        """ops keywords: the data term alone (the L2 component adds the regulariser),
        weighted by the sample weights when ``weighted`` (broadcast for a 3-D X)."""
        s = self.sample_weight if weighted else None
        if s is not None:
            s = np.ascontiguousarray(np.broadcast_to(s.astype(X.dtype, copy=False), X.shape[:-1]))
        return dict(loss=self.loss, lam=None, sample_weight=s, fit_intercept=self.fit_intercept,
                    backend=self.backend)
