"""Any torch.nn.Module with a loss as a mithridate Model, by torch.func: the
same engine (mithridate.hypergrad.Engine, hypergrad(model=...)) then gives its
exact trajectory, checkpoint and reversible hypergradients (and forward,
implicit, value) wrt the poisoning rows and each group's lam.

Usage (a 2-D float32 feature matrix, labels {0, 1})::

    import numpy as np, torch
    from mithridate.hypergrad import hypergrad
    from mithridate.models.torch_module import TorchModule

    net = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    model = TorchModule(net)                   # one lam per weight matrix, biases free
    rng = np.random.default_rng(0)
    X = lambda n: rng.standard_normal((n, 10), dtype=np.float32)
    y = lambda n: (rng.random(n) < 0.5).astype(np.float32)
    w0 = model.init(10).astype(np.float32)     # the module's current parameters
    r = hypergrad(X(40), y(40), X(4), y(4), X(30), y(30), model=model, lam=[-3.0, -3.0],
                  w0=w0, T=50, alpha=0.5, gamma=0.9, mode="reversible")
    r.grad_Xp.shape, r.grad_lam.shape, r.info["w0_recovered"]   # (4, 10), (2,), True

theta: the module's parameters flattened (C order) in ``named_parameters()``
order, except that the members of one lam group sit together at the place of
the group's first member (a layout group is one contiguous slice). Layout
groups: each lam group, named by the group, and each unpenalised parameter,
named by its parameter name. ``groups``:

- ``"parameter"`` (default): one lam per penalised parameter, named by it;
  theta is then exactly named_parameters() order. For Linear layers: one lam
  per layer, as mithridate.models.MLP.
- ``"module"``: one lam ("module") for every penalised parameter.
- ``{group: [parameter names]}``: one lam per group, in the dict's order;
  parameters named in no group are not penalised (penalize_bias must stay False).

Penalised, with "parameter" and "module": parameters of >= 2 dimensions
(weight matrices, convolution kernels), and with ``penalize_bias=True`` also
those of < 2 (biases, norm scales, scalars). objective(theta) = mean loss +
sum_g exp(lam_g)/2 ||theta_g||^2, as every Model.

``loss``: "logistic" (labels {0, 1}: softplus(z) - y z), "squared"
((z - y)^2 / 2), or a callable(logits (n,), y (n,)) -> per-row losses (n,) of
torch operations, twice differentiable. The module maps X (n, d) to one logit
per row, (n,) or (n, 1): 2-D feature rows only for now (other input shapes are
refused). It must be a deterministic function of its parameters and X (put it
in eval() mode for dropout or batch norm: training-mode ones are refused).

Every call runs by torch.func in the module's own dtype (theta is cast to it;
the data must already be in it: refused otherwise), on CPU tensors sharing the
numpy arrays' memory: ``functional_call`` for the loss, ``grad``,
the HVP and the mixed rows as the ``vjp`` of ``grad`` (wrt theta, wrt the
input rows: reverse-over-reverse; ``back``, the engine's step back, takes both
from one vjp), ``loss_hessian`` by
``torch.func.hessian`` for p <= HESSIAN_MAX; ``logits(theta, X)`` predicts.
Determinism: each call pins torch's intra-op threads to ``num_threads``
(default 1; the caller's setting is restored after) and enables
torch.use_deterministic_algorithms, so the same theta gives the same bits
(reversible mode recomputes the gradient in its reverse sweep and asserts w0).

``init(d)`` is the module's current parameters; ``init(d, random_state)``
re-draws them by every submodule's ``reset_parameters()`` on a copy of the
module under torch.manual_seed(seed) (seed = random_state, or drawn from a
numpy Generator), leaving the module itself unchanged.
"""
import contextlib
import copy

import numpy as np

from .._validation import check_array, check_labels, check_shape, dtype_name
from .base import Model
from .layout import Layout
from .regularizers import L2

LOSSES = ("logistic", "squared")
GROUPS = ("module", "parameter")
HESSIAN_MAX = 2000  # implicit mode forms a Hessian only up to this p (hypergrad.implicit.CHOLESKY_MAX)
PROBE_ROWS = 2      # rows of the zero input that checks the module's output shape


class TorchModule(Model):
    fused = None

    def __init__(self, module, loss="logistic", groups="parameter", penalize_bias=False,
                 num_threads=1):
        import torch
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}.")
        params = list(module.named_parameters())
        if not params:
            raise ValueError(f"module {type(module).__name__} has no parameters; TorchModule "
                             "differentiates wrt the module's parameters, so it needs at least one.")
        for name, p in params:
            if not p.is_floating_point():
                raise TypeError(f"module parameter {name!r} has dtype {p.dtype}; every parameter "
                                "must be floating point (float32 or float64).")
            if p.device.type != "cpu":
                raise ValueError(f"module parameter {name!r} is on {p.device}; TorchModule runs "
                                 "on CPU tensors (numpy in and out): pass module.cpu().")
        dtypes = sorted({str(p.dtype) for _, p in params})
        if len(dtypes) > 1:
            raise TypeError(f"module parameters have mixed dtypes {dtypes}; cast the module to "
                            "one (module.float() or module.double()).")
        if dtypes[0] not in ("torch.float32", "torch.float64"):
            raise TypeError(f"module parameters have dtype {dtypes[0]}; use float32 or float64 "
                            "(module.float() or module.double()).")
        stochastic = [n for n, m in module.named_modules() if m.training and isinstance(
            m, (torch.nn.modules.dropout._DropoutNd, torch.nn.modules.batchnorm._BatchNorm))]
        if stochastic:
            raise ValueError(f"submodules {stochastic} are in training mode (dropout or batch "
                             "statistics make the loss depend on more than theta and X); pass "
                             "module.eval().")
        if not (loss in LOSSES if isinstance(loss, str) else callable(loss)):
            raise ValueError(f"loss={loss!r} must be one of {list(LOSSES)} or a callable"
                             "(logits, y) -> per-row losses.")
        if not isinstance(penalize_bias, (bool, np.bool_)):
            raise TypeError(f"penalize_bias must be True or False, got {penalize_bias!r}.")
        if isinstance(num_threads, bool) or not isinstance(num_threads, (int, np.integer)) \
                or num_threads < 1:
            raise ValueError(f"num_threads={num_threads!r} must be a positive int (torch's "
                             "intra-op threads during each call).")
        self.module, self.loss, self.groups = module, loss, groups
        self.penalize_bias, self.num_threads = bool(penalize_bias), int(num_threads)
        self.dtype = params[0][1].dtype
        self.np_dtype = np.dtype(str(self.dtype)[6:])
        shapes = {name: tuple(p.shape) for name, p in params}
        lam_groups = _lam_groups(groups, shapes, self.penalize_bias)
        order, layout_groups = _order(list(shapes), lam_groups, shapes)
        self._order, self._shapes = order, shapes
        self._layout = Layout(layout_groups, tuple(lam_groups))
        self.p = self._layout.size
        starts, start = {}, 0
        for name in order:
            size = int(np.prod(shapes[name], dtype=np.int64))
            starts[name] = (start, start + size)
            start += size
        self._spans = starts
        self._d = None  # the input width, known once layout(d) has probed the module

    def __repr__(self):
        loss = self.loss if isinstance(self.loss, str) else getattr(self.loss, "__name__", "callable")
        return (f"TorchModule({type(self.module).__name__}, p={self.p}, loss={loss!r}, "
                f"groups={self.groups!r}, penalize_bias={self.penalize_bias})")

    # -- interface --------------------------------------------------------------
    def layout(self, d):
        if d != self._d:
            self._probe(d)
            self._d = d
        return self._layout

    def features(self, p):
        if p != self.p:
            raise ValueError(f"theta has {p} entries but the module has p={self.p} parameters.")
        if self._d is None:
            raise ValueError("TorchModule knows its input width d once layout(d) has seen the "
                             "data (the engine calls it first); call model.layout(X.shape[1]).")
        return self._d

    def regularizer(self, d):
        """One L2 component for every d (the layout does not depend on it)."""
        if "_l2" not in self.__dict__:
            self._l2 = L2(self._layout)
        return self._l2

    def check_data(self, X, y, name):
        """X (n, d) of the parameters' dtype, y (n,) of it (labels {0, 1} for "logistic")."""
        try:
            check_array("X", X, (2,))
            self._check_X(X)
            check_array("y", y, (1,), dtype_name(X))
            check_shape("y", y, X.shape[:1])
            check_labels(y, self.loss if isinstance(self.loss, str) else None)
        except (TypeError, ValueError) as err:
            raise type(err)(f"{name} data: {err}") from None
        self.layout(X.shape[1])

    def loss_grad(self, theta, X, y):
        from torch.func import grad_and_value
        with self._pinned():
            th, Xt, yt = self._tensors(theta, X, y)
            g, value = grad_and_value(self._mean_loss)(th, Xt, yt)
        return float(value), g.numpy()

    data_loss_grad = loss_grad  # the outer objective is the same plain mean loss

    def loss_hvp(self, theta, u, X, y):
        """H u as the vjp of the gradient (H is symmetric): reverse-over-reverse ran 1.7x
        faster than forward-over-reverse (jvp of grad) on the CPU for a 784 x 64 x 1 net."""
        from torch.func import grad, vjp
        with self._pinned():
            th, Xt, yt = self._tensors(theta, X, y)
            ut = self._vector(u, "u")
            _, back = vjp(lambda t: grad(self._mean_loss)(t, Xt, yt), th)
            return back(ut)[0].numpy()

    def mixed_rows(self, theta, u, X, y, rows):
        """d/dX[rows] (grad . u): the vjp of the gradient wrt those input rows, cotangent u."""
        with self._pinned():
            return self._pullback(theta, u, X, y, rows, False)[0].numpy()

    def back(self, theta, u, X, y, lam, rows, state=None):
        """(hvp, mixed_rows) from ONE vjp of the gradient wrt (theta, X[rows]), cotangent u:
        7.0 ms instead of 4.1 + 6.1 for the two calls (784 x 64 x 1 net, 529 rows). No pass
        state is kept (pass_bytes 0: a graph per step would outweigh the stored thetas)."""
        with self._pinned():
            hu, mixed = self._pullback(theta, u, X, y, rows, True)
        reg = self.regularizer(None)
        return hu.numpy() + reg.hvp(u, reg.check_lam(lam)), mixed.numpy()

    def loss_hessian(self, theta, X, y):
        """(p, p) float64 by torch.func.hessian: for p <= HESSIAN_MAX only."""
        from torch.func import hessian
        if self.p > HESSIAN_MAX:
            raise ValueError(f"loss_hessian forms the {self.p} x {self.p} Hessian, over "
                             f"HESSIAN_MAX={HESSIAN_MAX} parameters; use loss_hvp (implicit "
                             "mode solves by CG on HVPs above that size).")
        with self._pinned():
            th, Xt, yt = self._tensors(theta, X, y)
            return hessian(self._mean_loss)(th, Xt, yt).double().numpy()

    def torch_objective(self, theta, X, y, lam):
        """The training objective on torch tensors (the tests' autograd oracle), in theta's
        dtype (a float64 theta runs the module's functions in float64)."""
        from ..reference.linear import l2
        layout = self.layout(X.shape[-1])
        return self._mean_loss(theta, X, y) + l2(theta, lam, [layout.slice(g)
                                                             for g in layout.penalised])

    # -- extras -----------------------------------------------------------------
    def logits(self, theta, X):
        """(n,) module outputs in X's dtype (prediction for "logistic": logits > 0)."""
        import torch
        with self._pinned(), torch.no_grad():
            th, Xt, _ = self._tensors(theta, X, None)
            return self._logits(th, Xt).numpy()

    def init(self, d, random_state=None):
        """theta0 float64 (p,): the module's current parameters (random_state None), or
        parameters re-drawn by reset_parameters() on a copy under a seeded torch generator."""
        import torch
        self.layout(d)
        module = self.module
        if random_state is not None:
            if isinstance(random_state, np.random.Generator):
                seed = int(random_state.integers(2**63 - 1))
            elif isinstance(random_state, (int, np.integer)) and not isinstance(random_state, bool):
                seed = int(random_state)
            else:
                raise TypeError(f"random_state must be None, an int seed or a numpy Generator, "
                                f"got {type(random_state).__name__}.")
            fixed = [f"{prefix}{'.' if prefix else ''}{n}"
                     for prefix, m in self.module.named_modules()
                     if not hasattr(m, "reset_parameters")
                     for n, _ in m.named_parameters(recurse=False)]
            if fixed:
                raise ValueError(f"init(random_state=...) re-draws parameters by each "
                                 f"submodule's reset_parameters(), but {fixed} belong to modules "
                                 "without one; pass random_state=None (the module's current "
                                 "parameters) or give those modules reset_parameters().")
            module = copy.deepcopy(self.module)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                for m in module.modules():
                    if next(m.parameters(recurse=False), None) is not None:
                        m.reset_parameters()
        params = dict(module.named_parameters())
        return np.concatenate([params[n].detach().reshape(-1).double().numpy()
                               for n in self._order])

    # -- internals --------------------------------------------------------------
    @contextlib.contextmanager
    def _pinned(self):
        """Fixed intra-op threads and deterministic algorithms for one call (restored)."""
        import torch
        threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
        if threads != self.num_threads:
            torch.set_num_threads(self.num_threads)
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(det)
            if threads != self.num_threads:
                torch.set_num_threads(threads)

    def _params(self, theta):
        """{name: view of theta} for functional_call."""
        return {n: theta[a:b].view(self._shapes[n]) for n, (a, b) in self._spans.items()}

    def _logits(self, theta, X):
        from torch.func import functional_call
        out = functional_call(self.module, self._params(theta), (X,))
        return out.reshape(X.shape[0])  # (n,) or (n, 1): checked by the probe

    def _per_row(self, z, y):
        import torch
        if self.loss == "logistic":  # softplus(z) - y z, finite derivatives for any z
            return -torch.nn.functional.logsigmoid(-z) - y * z
        if self.loss == "squared":
            return 0.5 * (z - y) ** 2
        return self.loss(z, y)

    def _mean_loss(self, theta, X, y):
        return self._per_row(self._logits(theta, X), y).mean()

    def _check_X(self, X):
        if X.ndim != 2:
            raise ValueError(f"X has shape {tuple(X.shape)}; TorchModule takes 2-D feature rows "
                             "(n, d) for now (flatten other inputs, and reshape inside the module).")
        if X.dtype != self.np_dtype:
            raise TypeError(f"X has dtype {X.dtype} but the module's parameters are "
                            f"{self.np_dtype}: cast the data (X.astype(numpy.{self.np_dtype})) or "
                            f"the module (module.{'double' if X.dtype == np.float64 else 'float'}()).")

    def _tensor(self, a):
        import torch
        a = np.ascontiguousarray(a)
        return torch.from_numpy(a if a.flags.writeable else a.copy())

    def _vector(self, a, name):
        a = np.asarray(a)
        if a.shape != (self.p,):
            raise ValueError(f"{name} has shape {a.shape}; the module has p={self.p} parameters.")
        return self._tensor(a.astype(self.np_dtype, copy=False))

    def _tensors(self, theta, X, y):
        """theta in the module's dtype, X (and y) as tensors sharing the numpy memory."""
        self._check_X(X)
        return (self._vector(theta, "theta"), self._tensor(X),
                None if y is None else self._tensor(np.asarray(y).astype(self.np_dtype, copy=False)))

    def _pullback(self, theta, u, X, y, rows, with_theta):
        """The vjp of grad(theta, X with X[rows] replaced) at the given rows, cotangent u:
        (d/dtheta, d/dX[rows]) of grad . u when with_theta, else (d/dX[rows],)."""
        import torch
        from torch.func import grad, vjp
        th, Xt, yt = self._tensors(theta, X, y)
        ut = self._vector(u, "u")
        idx = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64))
        g = lambda t, Xr: grad(self._mean_loss)(t, Xt.index_copy(0, idx, Xr), yt)
        if with_theta:
            return vjp(g, th, Xt[idx])[1](ut)
        return vjp(lambda Xr: g(th, Xr), Xt[idx])[1](ut)

    def _probe(self, d):
        """Run the module on zero rows (n, d): it must take them and give (n,) or (n, 1),
        and a callable loss must give (n,)."""
        import torch
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
            raise ValueError(f"d={d!r} must be a positive int (the number of features).")
        X = torch.zeros(PROBE_ROWS, int(d), dtype=self.dtype)
        with self._pinned(), torch.no_grad():
            try:
                out = self.module(X)
            except Exception as err:
                raise ValueError(f"the module does not take (n, d={d}) feature rows: "
                                 f"{type(err).__name__}: {err}") from None
            if not isinstance(out, torch.Tensor) or tuple(out.shape) not in (
                    (PROBE_ROWS,), (PROBE_ROWS, 1)):
                shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ValueError(f"the module maps ({PROBE_ROWS}, {d}) rows to {shape}; "
                                 "TorchModule needs one logit per row, (n,) or (n, 1).")
            if callable(self.loss) and not isinstance(self.loss, str):
                per_row = self.loss(out.reshape(PROBE_ROWS), torch.zeros(PROBE_ROWS,
                                                                         dtype=self.dtype))
                if not isinstance(per_row, torch.Tensor) or tuple(per_row.shape) != (PROBE_ROWS,):
                    shape = tuple(per_row.shape) if isinstance(per_row, torch.Tensor) \
                        else type(per_row).__name__
                    raise ValueError(f"loss(logits ({PROBE_ROWS},), y ({PROBE_ROWS},)) returned "
                                     f"{shape}; it must return the per-row losses ({PROBE_ROWS},).")


def _lam_groups(groups, shapes, penalize_bias):
    """{lam group: [parameter names]} in lam order, from the ``groups`` option."""
    names = list(shapes)
    if isinstance(groups, dict):
        if penalize_bias:
            raise ValueError("penalize_bias=True applies to groups='parameter' or 'module'; "
                             "with a dict name the biases in its groups instead.")
        if not groups:
            raise ValueError("groups={} penalises nothing; name at least one group "
                             "{name: [parameter names]}, or use groups='parameter' or 'module'.")
        out, seen = {}, {}
        for g, members in groups.items():
            if not isinstance(g, str) or isinstance(members, str) or not members:
                raise ValueError(f"groups={{{g!r}: {members!r}}}: each group is a str name with a "
                                 "non-empty list of parameter names.")
            members = list(members)
            unknown = [m for m in members if m not in shapes]
            if unknown:
                raise ValueError(f"groups[{g!r}] names {unknown}, not parameters of the module; "
                                 f"its parameters are {names}.")
            again = [m for m in members if m in seen]
            if again or len(set(members)) != len(members):
                raise ValueError(f"groups[{g!r}] repeats {again or members}: each parameter "
                                 "belongs to one group at most.")
            seen.update((m, g) for m in members)
            out[g] = [n for n in names if n in members]
        clash = [g for g in out if g in shapes and g not in seen]
        if clash:
            raise ValueError(f"group names {clash} are also names of unpenalised parameters; "
                             "rename the groups.")
        return out
    if groups not in GROUPS:
        raise ValueError(f"groups={groups!r} must be 'parameter', 'module' or a dict "
                         "{group name: [parameter names]}.")
    penalised = [n for n in names if penalize_bias or len(shapes[n]) >= 2]
    if not penalised:
        raise ValueError(f"the module has no parameter of >= 2 dimensions to penalise (its "
                         f"parameters: {names}); pass penalize_bias=True or a groups dict.")
    if groups == "module":
        if "module" in shapes and "module" not in penalised:
            raise ValueError("groups='module' names the lam group 'module', also the name of an "
                             "unpenalised parameter; use a groups dict.")
        return {"module": penalised}
    return {n: [n] for n in penalised}


def _order(names, lam_groups, shapes):
    """(parameter names in theta order, layout groups): named order, each lam group's
    members together at its first member's place."""
    group_of = {m: g for g, members in lam_groups.items() for m in members}
    order, layout, done = [], [], set()
    size = lambda n: int(np.prod(shapes[n], dtype=np.int64))
    for n in names:
        g = group_of.get(n)
        if g is None:
            order.append(n)
            layout.append((n, size(n)))
        elif g not in done:
            done.add(g)
            order.extend(lam_groups[g])
            layout.append((g, sum(size(m) for m in lam_groups[g])))
    return order, tuple(layout)
