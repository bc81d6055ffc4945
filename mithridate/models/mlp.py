"""A feed-forward network with leaky-ReLU hidden layers and a logistic output
(paper 002, section 5.2), in closed form on BLAS matrix products.

layers = (d, h_1, ..., h_{L-1}, 1): layer l computes z_l = h_{l-1} W_l + b_l,
h_l = f(z_l) for l < L (f = leaky ReLU, slope ``negative_slope`` below 0) and
the logit z_L (no activation); loss = mean softplus(z) - y z, labels {0, 1}.
theta = [W_1 (d_0, d_1) row-major; b_1; W_2; b_2; ...]; one lam per layer on
its weights (``penalize_bias``: the layer's bias shares its lam; default off,
the biases unpenalised).

Derivatives (X's dtype, numpy @ on BLAS; kernels/cpu/mlp.py for the fused
elementwise parts): the gradient by backprop; the Hessian-vector product
EXACTLY by the R-op (Pearlmutter 1994), a forward and a backward pass in the
direction u. Leaky ReLU is piecewise linear: f'' = 0 except on the
measure-zero kink, where f'(0) = negative_slope as torch's leaky_relu backward,
so the R-op has no f'' terms and is the exact Hessian of the piecewise-smooth
objective. The mixed product d/dX[rows] (grad . u) is the input gradient of
the same R-op pass (the X block of the joint (theta, X) Hessian times (u, 0)),
restricted to those rows; the lam mixed product is the L2 component's.
"""
import numpy as np

from .._validation import as_bool, check_array, check_choice, check_labels, check_shape, dtype_name
from .base import Model
from .layout import Layout

ACTIVATIONS = ("leaky_relu",)
HESSIAN_MAX = 4096  # loss_hessian forms p x p (p HVPs) up to this p; implicit mode then uses CG


class MLP(Model):
    loss = "logistic"
    fused = None

    def __init__(self, layers=(2048, 128, 32, 1), activation="leaky_relu", negative_slope=0.1,
                 penalize_bias=False):
        widths = tuple(layers) if isinstance(layers, (tuple, list)) else None
        if (widths is None or len(widths) < 2
                or not all(isinstance(w, (int, np.integer)) and not isinstance(w, bool) and w > 0
                           for w in widths)):
            raise ValueError(f"layers={layers!r} must be a tuple of >= 2 positive integer widths "
                             "(d, h_1, ..., 1), e.g. (d, 128, 32, 1).")
        if widths[-1] != 1:
            raise ValueError(f"layers={layers!r} must end in output width 1 (one logit for the "
                             "logistic loss), e.g. (d, 128, 32, 1).")
        check_choice("activation", activation, ACTIVATIONS)
        slope = float(negative_slope)
        if not (np.isfinite(slope) and slope >= 0):
            raise ValueError(f"negative_slope={negative_slope!r} must be a finite number >= 0 "
                             "(0 is ReLU).")
        as_bool("penalize_bias", penalize_bias)
        self.layers = tuple(int(w) for w in widths)
        self.activation, self.negative_slope = activation, slope
        self.penalize_bias = bool(penalize_bias)
        self.n_layers = len(self.layers) - 1

    def __repr__(self):
        return (f"MLP(layers={self.layers}, activation={self.activation!r}, "
                f"negative_slope={self.negative_slope}, penalize_bias={self.penalize_bias})")

    # -- layout -----------------------------------------------------------------
    def _check_width(self, d, what="the data"):
        if d != self.layers[0]:
            raise ValueError(f"layers={self.layers} starts with width {self.layers[0]} but "
                             f"{what} has {d} features; pass layers=({d}, "
                             f"{', '.join(map(str, self.layers[1:]))}).")

    def layout(self, d):
        """Groups W1, b1, W2, b2, ...; one lam per layer (order W1, W2, ...). With
        penalize_bias a layer's weights and bias are one group W{l} (same lam)."""
        self._check_width(d)
        groups = []
        for l, (a, b) in enumerate(zip(self.layers[:-1], self.layers[1:]), 1):
            if self.penalize_bias:
                groups.append((f"W{l}", a * b + b))
            else:
                groups += [(f"W{l}", a * b), (f"b{l}", b)]
        return Layout(tuple(groups), tuple(f"W{l}" for l in range(1, self.n_layers + 1)))

    def features(self, p):
        p0 = self.layout(self.layers[0]).size
        if p != p0:
            raise ValueError(f"theta has {p} parameters but MLP(layers={self.layers}) has {p0}.")
        return self.layers[0]

    def _params(self, theta):
        """[(W_l (a, b) view, b_l (b,) view)] of theta (the layout's order either way)."""
        out, k = [], 0
        for a, b in zip(self.layers[:-1], self.layers[1:]):
            out.append((theta[k:k + a * b].reshape(a, b), theta[k + a * b:k + a * b + b]))
            k += a * b + b
        return out

    def init(self, d, random_state=None):
        """theta_0 (float64): Xavier-uniform weights U(+-sqrt(6 / (d_in + d_out))),
        biases 1e-2 (paper 002, Appendix D.1), from numpy default_rng(random_state)."""
        self._check_width(d, "init's d")
        rng = np.random.default_rng(random_state)
        theta = np.empty(self.layout(d).size)
        for W, b in self._params(theta):
            r = np.sqrt(6.0 / (W.shape[0] + W.shape[1]))
            W[...] = rng.uniform(-r, r, W.shape)
            b[...] = 1e-2
        return theta

    def check_data(self, X, y, name):
        """X (n, d) float with d = layers[0], y (n,) of its dtype with labels {0, 1}."""
        try:
            check_array("X", X, (2,))
            check_array("y", y, (1,), dtype_name(X))
            check_shape("y", y, X.shape[:1])
            check_labels(y, self.loss)
            self._check_width(X.shape[1])
        except (TypeError, ValueError) as err:
            raise type(err)(f"{name} data: {err}") from None

    # -- passes -----------------------------------------------------------------
    def _forward(self, theta, X):
        """(h, D, z): h[l] = layer l's input (h[0] = X), D[l] = f' at layer l+1's
        pre-activation, z (n,) the logit without its bias."""
        from ..kernels.cpu.mlp import bias_act
        params = self._params(theta)
        h, D = [X], []
        for W, b in params[:-1]:
            Z = h[-1] @ W
            M = np.empty_like(Z)
            bias_act(Z, b, X.dtype.type(self.negative_slope), M)
            h.append(Z)
            D.append(M)
        return h, D, (h[-1] @ params[-1][0])[:, 0]

    def _head(self, theta, X, y):
        """The forward pass and the loss head: (h, D, value, dz (n, 1), ddz (n, 1)),
        dz = l'/n, ddz = l''/n in X's dtype."""
        from ..kernels.cpu.mlp import head
        h, D, z = self._forward(theta, X)
        n = X.shape[0]
        dl, ddl = np.empty((n, 1), X.dtype), np.empty((n, 1), X.dtype)
        value = head(z, theta[-1], y, dl[:, 0], ddl[:, 0]) / n
        dl *= X.dtype.type(1.0 / n)
        ddl *= X.dtype.type(1.0 / n)
        return h, D, value, dl, ddl

    def _deltas(self, theta, D, dz):
        """delta[l] = d loss / d z_{l+1} (n, d_{l+1}), by backprop from dz."""
        from ..kernels.cpu.mlp import masked
        params, none = self._params(theta), np.empty(0, dz.dtype)
        delta = [dz]
        for l in range(self.n_layers - 1, 0, -1):
            P = delta[0] @ params[l][0].T
            masked(P, D[l - 1], none)
            delta.insert(0, P)
        return delta

    def _grad_into(self, g, h, delta):
        for (W, b), hl, dl in zip(self._params(g), h, delta):
            np.matmul(hl.T, dl, out=W)
            b[...] = dl.sum(axis=0)
        return g

    def _pass(self, theta, X, y):
        """The forward and backprop pass at theta: (value, (h, D, delta, ddz)), the tuple
        what the R-op pass at the same theta reuses (grad_pass's state)."""
        h, D, value, dz, ddz = self._head(theta, X, y)
        return value, (h, D, self._deltas(theta, D, dz), ddz)

    def loss_grad(self, theta, X, y):
        value, (h, _, delta, _) = self._pass(theta, X, y)
        return float(value), self._grad_into(np.empty_like(theta), h, delta)

    def grad_pass(self, theta, X, y, lam):
        """(the training objective's gradient, the pass state ``back`` reuses at this theta)."""
        value, state = self._pass(theta, X, y)
        g = self._grad_into(np.empty_like(theta), state[0], state[2])
        return self._add_l2(g, theta, X.shape[-1], lam), state

    def _add_l2(self, out, x, d, lam):
        """out + L2.hvp(x, lam) in place (the L2 term's gradient at x = theta, or its
        Hessian times x = u): no p-vector temporaries, numpy's bits."""
        from ..kernels.cpu.mlp import add_scaled
        reg = self.regularizer(d)
        for s, sl in zip(np.exp(reg.check_lam(lam)), reg.slices):
            add_scaled(out[sl], x[sl], s)
        return out

    def pass_bytes(self, X):
        """Bytes of one grad_pass state on X: h, D, delta of every hidden layer, delta and
        l'' of the output (X itself is shared, not copied)."""
        hidden = sum(self.layers[1:-1])
        return X.shape[0] * (3 * hidden + 2) * X.dtype.itemsize

    def data_loss_grad(self, theta, X, y):
        return self.loss_grad(theta, X, y)

    def logits(self, theta, X):
        """(n,) logits in X's dtype (predict 1 where > 0)."""
        theta = np.asarray(theta).astype(X.dtype, copy=False)
        return self._forward(theta, X)[2] + theta[-1]

    def _rop(self, theta, u, X, y, rows, state=None):
        """The R-op pass in direction u, reusing ``state`` (grad_pass's at this theta) when
        given: (H u in X's dtype, d/dX[rows] (grad . u) or None)."""
        from ..kernels.cpu.mlp import masked
        h, D, delta, ddz = self._pass(theta, X, y)[1] if state is None else state
        params, V = self._params(theta), self._params(u)
        Rh = [None]  # R(h_0) = R(X) = 0
        for l in range(self.n_layers):
            Rz = h[l] @ V[l][0]
            if Rh[l] is not None:
                Rz += Rh[l] @ params[l][0]
            if l < self.n_layers - 1:
                masked(Rz, D[l], V[l][1])
                Rh.append(Rz)
            else:
                Rz += V[l][1]
        Rd = ddz * Rz  # R(delta_L) = l''/n R(z_L)
        Hu = np.empty_like(theta)
        HW = self._params(Hu)
        none = np.empty(0, X.dtype)
        for l in range(self.n_layers - 1, -1, -1):
            HWl, Hbl = HW[l]
            np.matmul(h[l].T, Rd, out=HWl)
            if Rh[l] is not None:
                HWl += Rh[l].T @ delta[l]
            Hbl[...] = Rd.sum(axis=0)
            if l > 0:
                nxt = Rd @ params[l][0].T
                nxt += delta[l] @ V[l][0].T
                masked(nxt, D[l - 1], none)
                Rd = nxt
        mixed = None
        if rows is not None:
            W1, V1 = params[0][0], V[0][0]
            # as (d, k) products (BLAS's faster side for few rows), then row-major
            mixed = np.ascontiguousarray((W1 @ Rd[rows].T + V1 @ delta[0][rows].T).T)
        return Hu, mixed

    def loss_hvp(self, theta, u, X, y):
        return self._rop(theta, u, X, y, None)[0]

    def mixed_rows(self, theta, u, X, y, rows):
        return self._rop(theta, u, X, y, np.asarray(rows))[1]

    def back(self, theta, u, X, y, lam, rows, state=None):
        """(hvp, mixed_rows) from one forward and R-op pass (the forward reused from
        ``state``, grad_pass's at this theta, when given)."""
        Hu, mixed = self._rop(theta, u, X, y, np.asarray(rows), state)
        return self._add_l2(Hu, u, X.shape[-1], lam), mixed

    def loss_hessian(self, theta, X, y):
        """The (p, p) loss Hessian in float64, by p exact HVPs (p <= HESSIAN_MAX)."""
        p = theta.shape[0]
        if p > HESSIAN_MAX:
            raise ValueError(f"loss_hessian forms the p x p Hessian only for p <= {HESSIAN_MAX}; "
                             f"this network has p={p}: use Hessian-vector products (loss_hvp; "
                             "implicit mode runs CG on them).")
        H = np.empty((p, p))
        e = np.zeros_like(theta)
        for j in range(p):
            e[j] = 1
            H[:, j] = self.loss_hvp(theta, e, X, y)
            e[j] = 0
        return 0.5 * (H + H.T)

    def torch_objective(self, theta, X, y, lam):
        """The training objective on torch tensors (reference.mlp), differentiable by autograd."""
        from ..reference import mlp as ref
        return ref.objective(self, theta, X, y, lam)
