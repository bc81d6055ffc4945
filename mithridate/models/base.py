"""The model interface the hypergradient engine and the trainers run on.

A model is a training objective over one flat parameter vector theta, laid out
in named groups (:class:`~mithridate.models.layout.Layout`), with one L2
hyperparameter per penalised group (lam, a float64 vector of length n_lam)::

    objective(theta) = loss(theta; X, y) + L2(theta; lam)

``loss`` is the mean data term of training (sample-weighted where the model
has weights); ``data_loss`` is the outer objective of the bilevel problem, the
plain mean loss on validation rows (never weighted, never regularised).
Arrays are numpy in and out; X is (n, d), y (n,); theta and u (p,). The engine
needs, per problem:

- ``layout(d)`` for d features, and ``features(p)``, its inverse (d from len(theta));
  ``regularizer(d)`` is the L2 component over that layout (or the sum of a model's
  components, models.wasserstein: the regulariser's ``hvp_at`` then depends on theta);
- ``loss_grad(theta, X, y) -> (value, grad)``, ``loss_hvp(theta, u, X, y)``,
  ``loss_hessian(theta, X, y) -> (p, p) float64`` (training data term);
- ``mixed_rows(theta, u, X, y, rows) -> (len(rows), d)``: d/dX[rows] (grad . u)
  (the regulariser does not depend on X);
- ``data_loss_grad(theta, X, y) -> (value, grad)`` (outer objective);
- ``check_data(X, y, name)`` and ``torch_objective(theta, X, y, lam)`` (the
  test oracle: the same objective on torch tensors, differentiable by autograd);
- attribute ``fused``: "linear" when the compiled linear loops run this model
  exactly, else None (the engine then drives these primitives).

Optional: ``grad_pass(theta, X, y, lam) -> (grad, state)`` and
``back(theta, u, X, y, lam, rows, state=None) -> (hvp, mixed_rows)``: the
engine's step back, both products from one pass where the model can, reusing
the state of the gradient's pass at the same theta (a network's activations;
``pass_bytes(X)`` its size, 0 by default: the defaults keep none); and
``loss_factor(theta, X, y)``, R with loss Hessian R^T R / n (None
by default), for implicit mode's n x n (Woodbury) solve.

Everything else is derived here from those primitives and the L2 component.
``loss_grad_batch`` is the trainers' hook for B problems at once; the default
loops, a model whose kernels take a batch overrides it.
"""
import numpy as np

from .regularizers import L2


class Model:
    fused = None

    # -- what a model implements ------------------------------------------------
    def layout(self, d):
        raise NotImplementedError

    def features(self, p):
        raise NotImplementedError

    def loss_grad(self, theta, X, y):
        raise NotImplementedError

    def loss_hvp(self, theta, u, X, y):
        raise NotImplementedError

    def loss_hessian(self, theta, X, y):
        raise NotImplementedError

    def mixed_rows(self, theta, u, X, y, rows):
        raise NotImplementedError

    def data_loss_grad(self, theta, X, y):
        raise NotImplementedError

    def check_data(self, X, y, name):
        raise NotImplementedError

    def torch_objective(self, theta, X, y, lam):
        raise NotImplementedError

    # -- derived ----------------------------------------------------------------
    def regularizer(self, d):
        """The regulariser over ``layout(d)``, built once per d: the L2 component here; a
        model with more components (models.wasserstein.Robust) returns their sum, whose
        hyperparameters form the one lam vector (layout(d).n_lam entries)."""
        cache = self.__dict__.setdefault("_regularizers", {})
        if d not in cache:
            cache[d] = L2(self.layout(d))
        return cache[d]

    def loss_factor(self, theta, X, y):
        """R (n, p) with loss Hessian exactly R^T R / n, where the model has one (linear
        models: sqrt(l'') [X 1]); None otherwise. Lets implicit mode solve in n x n when n < p."""
        return None

    def data_loss(self, theta, X, y):
        """Outer objective: mean loss on (X, y), no regulariser."""
        return self.data_loss_grad(theta, X, y)[0]

    def objective(self, theta, X, y, lam):
        reg = self.regularizer(X.shape[-1])
        return self.loss_grad(theta, X, y)[0] + reg.value(theta, reg.check_lam(lam))

    def grad(self, theta, X, y, lam):
        reg = self.regularizer(X.shape[-1])
        return self.loss_grad(theta, X, y)[1] + reg.grad(theta, reg.check_lam(lam))

    def hvp(self, theta, u, X, y, lam):
        reg = self.regularizer(X.shape[-1])
        return self.loss_hvp(theta, u, X, y) + reg.hvp_at(theta, u, reg.check_lam(lam))

    def mixed_lam(self, theta, u, lam):
        """d/dlam (grad . u), shape (n_lam,)."""
        reg = self.regularizer(self.features(theta.shape[-1]))
        return reg.mixed_lam(theta, u, reg.check_lam(lam))

    def lam_tangent(self, theta, lam):
        """d grad / d lam_j for every hyperparameter, shape (n_lam, p) float64 (forward mode's
        tangent sources; L2: exp(lam_g) theta_g on group g)."""
        reg = self.regularizer(self.features(theta.shape[-1]))
        return reg.lam_tangent(theta, reg.check_lam(lam))

    def grad_pass(self, theta, X, y, lam):
        """(grad(theta), state): state is what ``back`` at this theta may reuse (None here)."""
        return self.grad(theta, X, y, lam), None

    def pass_bytes(self, X):
        """Bytes of one grad_pass state on X (the engine's memory accounting)."""
        return 0

    def back(self, theta, u, X, y, lam, rows, state=None):
        """(hvp(theta, u), mixed_rows(theta, u, rows)): the engine's step back; a model
        that shares one pass for both (the network's R-op) overrides it."""
        return self.hvp(theta, u, X, y, lam), self.mixed_rows(theta, u, X, y, rows)

    def hessian(self, theta, X, y, lam):
        """The training objective's (p, p) Hessian in float64."""
        reg = self.regularizer(X.shape[-1])
        H = self.loss_hessian(theta, X, y)
        reg.add_hessian(H, theta, reg.check_lam(lam))
        return H

    def loss_grad_batch(self, theta, X, y):
        """Training data term for B problems: theta (B, p), X (n, d) shared or
        (B, n, d), y (n,) or (B, n). Returns (values (B,), grads (B, p))."""
        out = [self.loss_grad(th, X if X.ndim == 2 else X[b], y if y.ndim == 1 else y[b])
               for b, th in enumerate(theta)]
        return np.array([v for v, _ in out]), np.stack([g for _, g in out])
