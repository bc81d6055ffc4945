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

_KERNEL = None  # kernels.cpu.linear, looked up once (LinearModel._numba)


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

    # The primitives run inside trusted loops (trainers, the generic engine: thousands of
    # calls on data checked once by check_data), so on numba they call the kernel past
    # ops' per-call checks and the caller checks its results (the engine's divergence
    # watch, the trainers' finite check); any other backend takes ops' checked path.
    def loss_grad(self, theta, X, y):
        kernel = self._numba(X)
        if kernel is None:
            value, g = ops.loss_grad(theta, X, y, **self._options(X, True))
            return float(value), g
        value, g = kernel.loss_grad(*self._kernel_args(theta, X, y, True), None,
                                    **self._kernel_options())
        return float(value[0]), g[0]

    def loss_grad_batch(self, theta, X, y):
        """One kernel call (for X shared: one matrix-matrix product over the B thetas)."""
        if X.ndim == 3 and y.ndim == 1:
            y = np.ascontiguousarray(np.broadcast_to(y, X.shape[:2]))
        kernel = self._numba(X)
        if kernel is None:
            return ops.loss_grad(theta, X, y, **self._options(X, True))
        return kernel.loss_grad(theta, X, y, self._options(X, True)["sample_weight"], None,
                                **self._kernel_options())

    def loss_hvp(self, theta, u, X, y):
        kernel = self._numba(X)
        if kernel is None:
            return ops.hvp(theta, u, X, y, **self._options(X, True))
        th, X, y, s = self._kernel_args(theta, X, y, True)
        return kernel.hvp(th, u[None], X, y, s, None, **self._kernel_options())[0]

    def mixed_rows(self, theta, u, X, y, rows):
        kernel = self._numba(X)
        if kernel is None:
            return ops.mixed(theta, u, X, y, np.asarray(rows), **self._options(X, True))[0]
        th, X, y, s = self._kernel_args(theta, X, y, True)
        return kernel.mixed(th, u[None], X, y, s, None, np.asarray(rows, np.int64),
                            **self._kernel_options())[0][0]

    def data_loss_grad(self, theta, X, y):
        kernel = self._numba(X)
        if kernel is None:
            value, g = ops.loss_grad(theta, X, y, **self._options(X, False))
            return float(value), g
        value, g = kernel.loss_grad(*self._kernel_args(theta, X, y, False), None,
                                    **self._kernel_options())
        return float(value[0]), g[0]

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

    def _numba(self, X):
        """kernels.cpu.linear when this model's backend resolves to numba for X, else None."""
        global _KERNEL
        if backends.select("linear", self.backend, X) != "numba":
            return None
        if _KERNEL is None:  # the registry's lookup costs ~13 us a call
            _KERNEL = backends.implementation("linear", "numba")
        return _KERNEL

    def _kernel_args(self, theta, X, y, weighted):
        """(theta (1, p), X, y, sample weights or None) for one problem's kernel call."""
        return theta[None], X, y, self._options(X, weighted)["sample_weight"]

    def _kernel_options(self):
        return dict(loss=self.loss, fit_intercept=self.fit_intercept, penalize_intercept=False)

    def _options(self, X, weighted):
        """ops keywords: the data term alone (the L2 component adds the regulariser),
        weighted by the sample weights when ``weighted`` (broadcast for a 3-D X)."""
        s = self.sample_weight if weighted else None
        if s is not None:
            s = s.astype(X.dtype, copy=False)
            if X.ndim == 3:  # a read-only view: torch warns on those, so only when needed
                s = np.ascontiguousarray(np.broadcast_to(s, X.shape[:-1]))
        return dict(loss=self.loss, lam=None, sample_weight=s, fit_intercept=self.fit_intercept,
                    backend=self.backend)


class LabelFeature(Model):
    """A regression model on rows whose last column is the label: X = [features | y], so the
    engine's mixed product d/dX[rows] (grad . u) carries d/dy[rows] in its last column: the
    hypergradient wrt the poisoning labels of optimal regression attacks, in every mode,
    through the engine as it is. ``base``: a LinearModel with the squared or absolute loss
    (a classifier's labels are not continuous: refused). The y every call is also given must
    equal X[:, -1] (checked by check_data); the layout is base's on d - 1 features.

    Label column of the mixed product, for weighted squared loss (1/n) sum_i s_i l(z_i - y_i):
    d/dy_k (grad . u) = -(s_k / n) l''(r_k) ([x_k; 1] . u) (absolute loss: l'' = 0)."""
    fused = None

    def __init__(self, base):
        if not isinstance(base, LinearModel):
            raise TypeError(f"base must be a LinearModel, got {type(base).__name__}.")
        if base.loss == "logistic":
            raise ValueError("LabelFeature: the logistic loss is a classifier's, its labels are "
                             "{0, 1} and have no gradient; optimise labels for the squared (or "
                             "absolute) loss only, or keep the labels fixed.")
        self.base, self.loss = base, base.loss
        self.fit_intercept, self.sample_weight = base.fit_intercept, base.sample_weight

    def __repr__(self):
        return f"LabelFeature({self.base!r})"

    @staticmethod
    def _split(X):
        return np.ascontiguousarray(X[..., :-1]), np.ascontiguousarray(X[..., -1])

    def layout(self, d):
        if d < 2:
            raise ValueError(f"LabelFeature needs rows [features | y] with at least 2 columns, "
                             f"got d={d}.")
        return self.base.layout(d - 1)

    def features(self, p):
        return self.base.features(p) + 1

    def check_data(self, X, y, name):
        self.base.check_data(*self._split(X), name)
        if not np.array_equal(np.asarray(y), X[:, -1]):
            raise ValueError(f"{name} data: y must equal X[:, -1] (LabelFeature reads the label "
                             "from the last column); pass X = np.column_stack([X, y]) and that y.")

    def loss_grad(self, theta, X, y):
        return self.base.loss_grad(theta, *self._split(X))

    def loss_grad_batch(self, theta, X, y):
        return self.base.loss_grad_batch(theta, *self._split(X))

    def loss_hvp(self, theta, u, X, y):
        return self.base.loss_hvp(theta, u, *self._split(X))

    def loss_hessian(self, theta, X, y):
        return self.base.loss_hessian(theta, *self._split(X))

    def loss_factor(self, theta, X, y):
        return self.base.loss_factor(theta, *self._split(X))

    def data_loss_grad(self, theta, X, y):
        return self.base.data_loss_grad(theta, *self._split(X))

    def mixed_rows(self, theta, u, X, y, rows):
        Xf, yl = self._split(X)
        rows = np.asarray(rows)
        out = np.empty((rows.size, X.shape[1]), X.dtype)
        out[:, :-1] = self.base.mixed_rows(theta, u, Xf, yl, rows)
        if self.loss == "absolute":
            out[:, -1] = 0  # l'' = 0 almost everywhere
            return out
        d = Xf.shape[1]
        zu = Xf[rows] @ u[:d].astype(X.dtype) + (u[d] if self.fit_intercept else 0)
        s = 1.0 if self.sample_weight is None else self.sample_weight[rows]
        out[:, -1] = -(s * zu) / X.shape[0]
        return out

    def torch_objective(self, theta, X, y, lam):
        return self.base.torch_objective(theta, X[:, :-1], X[:, -1], lam)
