"""The prepared hypergradient engine: validate and pack the clean and
validation rows once, then run many calls that change only the poisoning
rows, lam and w0 (an attack's inner loop). See the package docstring for the
math and ``hypergrad`` for every argument."""
import math

import numpy as np

from .. import fixed_point
from .._validation import as_number, check_choice, check_memory
from ..errors import DivergenceError
from . import divergence, dual, fused
from .implicit import CHOLESKY_MAX
from .problem import (LOSSES, backend_modes, check_call, check_fixed, check_mode, check_settings,
                      problems)
from .result import HyperGrad

NEEDS = ("all", "lam", "value")
NATIVE = ("cpp", "cuda")
TORCH_ROUTE = ("torch", "triton")  # the network's routes on torch tensors (mlp_torch)
# what to change when a mode's memory does not fit
FIXES = {"trajectory": "use mode='checkpoint' or 'reversible' (less memory per step), fewer "
                       "steps T, or smaller batches",
         "checkpoint": "use mode='reversible', fewer checkpoints, or smaller batches",
         "reversible": "use a larger gamma (a shorter bit buffer), fewer steps T, or smaller "
                       "batches"}


class Engine:
    """Hypergradients of A(theta_T) = mean validation loss for one set of
    clean rows (Xc, yc) and validation rows (Xv, yv): (nc, d) or (B, nc, d),
    shared or with a leading axis of B problems. Everything but the per-call
    arrays is checked here, once; ``run`` checks only Xp, yp, lam, w0.

    model: a mithridate.models Model (default LinearModel()); the other
    keywords as in ``hypergrad``. ``backend="auto"`` asks the registry
    (mithridate.backends, honouring MITHRIDATE_BACKEND).

    The network (model=MLP(...)) takes the registry's ``mlp`` hot path: "numba"
    (auto's choice for host data) is the generic engine over the model's numpy
    primitives, every mode; "torch" and "triton" run mithridate.hypergrad.mlp_torch
    (the B problems of a call in one batched pass: cuBLAS/BLAS GEMMs, its Triton
    kernels or their torch forms) on ``device`` ("cpu", "cuda"; None: the GPU where
    one is visible; auto with device="cuda" picks as for CUDA tensors), modes
    trajectory, checkpoint, reversible, forward (and need="value"). Arrays stay
    numpy in and out; the fixed rows go to the device once.
    """

    def __init__(self, Xc, yc, Xv, yv, *, model=None, T, alpha, gamma=0.0, mode="trajectory",
                 backend="auto", checkpoints="sqrt", max_states=None, frac_bits=None,
                 max_buffer_bytes=None, tol=1e-6, on_divergence="raise", device=None,
                 form="auto"):
        check_choice("form", form, dual.FORMS)
        if model is None:
            from ..models import LinearModel
            model = LinearModel()
        self.model = model
        loss = getattr(model, "loss", None)  # labels are checked for the linear losses
        self._device = None  # the network's torch route (mlp_torch): its torch device
        torch_route = False
        if model.fused == "linear":
            check_choice("loss", loss, LOSSES)
            self.backend, modes = backend_modes(backend, Xc, Xv)
        elif _is_network(model):
            self.backend, modes = _network_route(backend, device)
            torch_route = self.backend in TORCH_ROUTE
        else:  # the generic engine, on the model's own primitives
            if backend != "auto":
                raise ValueError(f"backend={backend!r}: {model!r} has no fused loop, so it runs "
                                 "on the generic engine over the model's own primitives (their "
                                 "backend is the model's); pass backend='auto'.")
            from . import generic
            self.backend = "generic"
            modes = tuple(m for m in generic.MODES if m != "value") + ("implicit",)
        if device is not None and not torch_route:
            raise ValueError(f"device={device!r} applies to the network's torch route "
                             "(model=MLP(...), backend='torch' or 'triton'); leave it None.")
        check_mode(mode, self.backend, modes)
        if torch_route:
            from . import mlp_torch
            self._device = mlp_torch.check_route(self.backend, device, mode)
        self.mode = mode
        self.T, self.alpha, self.gamma = check_settings(T, alpha, gamma)
        self._fixed = check_fixed(Xc, yc, Xv, yv, loss)
        layout = model.layout(self._fixed.d)
        self._p, self._n_lam = layout.size, layout.n_lam
        if max_states is not None and mode != "checkpoint":
            raise ValueError(f"max_states={max_states!r} applies to mode='checkpoint' only; "
                             f"leave it None for mode={mode!r}.")
        from .schedule import plan
        plan(min(self.T, 2), checkpoints, max_states)  # checks checkpoints in every mode
        self._schedule = None  # the reverse sweep's one schedule (trajectory: every theta stored)
        if mode in ("trajectory", "checkpoint"):
            # a plan holds >= 3 action rows per step (and trajectory every state): refuse a T
            # beyond the machine before building it
            states = self.T * self._p * 8 if mode == "trajectory" else 0
            check_memory(self.T * 48 + states, f"mode={mode!r}: the schedule of T={self.T} steps",
                         FIXES[mode])
            self._schedule = plan(self.T, self.T if mode == "trajectory" else checkpoints,
                                  max_states)
        for name, value in (("frac_bits", frac_bits), ("max_buffer_bytes", max_buffer_bytes)):
            if value is not None and mode != "reversible":
                raise ValueError(f"{name}={value!r} applies to mode='reversible' only; "
                                 f"leave it None for mode={mode!r}.")
        if mode == "reversible":  # refused here, not at the first run
            from . import reversible
            reversible.gamma_fraction(self.gamma)
            reversible.check_frac_bits(frac_bits)
            reversible.check_max_buffer_bytes(max_buffer_bytes)
        self.frac_bits, self.max_buffer_bytes = frac_bits, max_buffer_bytes
        divergence.check_option(on_divergence)
        self.on_divergence = on_divergence
        self.tol = as_number("tol", tol, "the implicit mode's stationarity tolerance")
        self._settings = (self.T, self.alpha, self.gamma, loss,
                          getattr(model, "fit_intercept", None), model)
        self._packs, self._groups, self._memory_checked = {}, {}, set()
        self._on_device = {}  # the torch route's device copies of the fixed rows
        self.form, self._gram = form, None
        if form == "gram":
            _check_gram(self)

    def run(self, Xp, yp, lam, w0=None, *, need="all"):
        """HyperGrad of the poisoning rows Xp (k, d) or (B, k, d), labels yp,
        lam (a number, or (B,) for a batch) and w0 (zeros by default).
        need: "all" (value, grad_Xp, grad_lam by the engine's mode), "lam"
        (value, grad_lam by forward mode; grad_Xp None) or "value" (value and
        theta_T by training only; grad_Xp, grad_lam None)."""
        check_choice("need", need, NEEDS)
        B, lam, w0 = check_call(self._fixed, Xp, yp, lam, w0, self._p, self._settings[3],
                                self._n_lam)
        mode = {"all": self.mode, "lam": "forward", "value": "value"}[need]
        X = y = None
        if self.backend in ("numba", "generic"):
            X, y = self._pack(Xp.shape[-2], B).fill(Xp, yp)
        pbs = problems(self._fixed, Xp, yp, B, lam, w0, self._settings, X, y)
        self._check_memory(pbs, mode, B)
        try:
            results = self._results(pbs, mode, (X, y) if B is not None else None)
        except fixed_point.FixedPointOverflow as err:  # reversible: diverged, or frac_bits too high?
            if self.model.fused == "linear":  # the diagnosis trains the linear model
                _diagnose_overflow(pbs, err)
            raise
        steps = [_diverged_at(pb, r) for pb, r in zip(pbs, results)]
        divergence.report(pbs, steps, self.on_divergence)
        if self.on_divergence == "warn":
            for r, step in zip(results, steps):
                r.info["diverged_at"] = step
        return results[0] if B is None else _stack(results)

    def _pack(self, k, B):
        """The packed training rows for k poisoning rows (kept per (k, B))."""
        pack = self._packs.get((k, B))
        if pack is None:
            pack = self._packs[(k, B)] = fused.Packed(self._fixed.Xc, self._fixed.yc, k, B)
        return pack

    def _results(self, pbs, mode, rows):
        """list[HyperGrad], one per problem, from the backend that runs `mode`."""
        name = self.backend
        info = lambda pb: dict(mode=mode, backend=name, T=pb.T)
        if name == "generic":
            return self._generic(pbs, mode)
        if self._device is not None:
            from . import mlp_torch
            results = mlp_torch.run_problems(self.model, pbs, mode, ops=name, device=self._device,
                                             cache=self._on_device, **self._options(mode))
            for r in results:
                r.info["backend"] = name
            return results
        if mode == "implicit":
            from .implicit import implicit
            return [implicit(pb, name, self.tol, info(pb)) for pb in pbs]
        if name in NATIVE:
            from . import native
            reversible = mode == "reversible"
            return native.run(pbs, mode, name, self.frac_bits if reversible else None,
                              self.max_buffer_bytes if reversible else None)
        if mode == "reversible":
            from .reversible import run
            return run(pbs, self.frac_bits, self.max_buffer_bytes)
        if name == "torch":
            from . import reference
            return reference.value(pbs, info) if mode == "value" else reference.run(pbs, mode, info)
        if self._gram_pays(pbs, mode):
            if self._gram is None:  # K's fixed blocks, once per engine
                self._gram = dual.Gram(self._fixed.Xc, self._fixed.Xv)
            return dual.run(pbs, mode, self._gram, info)
        if mode == "value":
            return fused.value(pbs, info)
        return fused.run(pbs, mode, self._schedule, info, self._shared_groups(len(pbs)), rows)

    def _gram_pays(self, pbs, mode):
        """Whether this call takes the Gram form (dual.py): form="gram" (checked at
        construction; theta_0 = 0 here) or form="auto" where dual.pays."""
        if self.form == "primal" or self.backend != "numba" or self.model.fused != "linear":
            return False
        w0_zero = not any(pb.theta0.any() for pb in pbs)
        if self.form == "gram":
            if not w0_zero:
                raise ValueError("form='gram' trains from w0 = 0 (the weights then stay in the "
                                 "span of the training rows); drop w0 or pass form='primal'.")
            return True
        import numba
        return dual.pays(self._fixed, pbs[0].Xp.shape[0], w0_zero, mode, numba.get_num_threads())

    def _generic(self, pbs, mode):
        from . import generic
        if mode != "implicit":
            reversible = mode == "reversible"
            return generic.run(self.model, pbs, mode,
                               schedule=self._schedule if mode == "checkpoint" else None,
                               frac_bits=self.frac_bits if reversible else None,
                               max_buffer_bytes=self.max_buffer_bytes if reversible else None)
        from .implicit import implicit_model
        out = []
        for pb, trained in zip(pbs, generic.run(self.model, pbs, "value")):
            info = dict(trained.info, mode="implicit")
            if info["diverged_at"] >= 0:  # no stationary point: nan, reported by run()
                out.append(HyperGrad(math.nan, np.full(pb.Xp.shape, np.nan, pb.Xp.dtype),
                                     math.nan if self._n_lam == 1 else np.full(self._n_lam, np.nan),
                                     trained.theta_T, info))
                continue
            X, y = pb.rows()
            rows = np.arange(pb.Xc.shape[0], X.shape[0])
            out.append(implicit_model(self.model, trained.theta_T, X, y, rows, pb.Xv, pb.yv,
                                      np.atleast_1d(pb.lam), self.tol, info))
        return out

    def _options(self, mode):
        """The schedule and reversible options a mode's route takes."""
        reversible = mode == "reversible"
        return dict(schedule=self._schedule if mode in ("trajectory", "checkpoint") else None,
                    frac_bits=self.frac_bits if reversible else None,
                    max_buffer_bytes=self.max_buffer_bytes if reversible else None)

    def _shared_groups(self, B):
        if B not in self._groups:
            self._groups[B] = fused.shared_groups(self._fixed.Xc, self._fixed.yc, B) \
                if B > 1 else []
        return self._groups[B]

    def _check_memory(self, pbs, mode, B):
        """The states `mode` stores against the memory available, once per shape."""
        key = (mode, pbs[0].Xp.shape[0], B)
        if key in self._memory_checked:
            return
        if self.backend == "generic":
            from . import generic
            mode_ = "value" if mode == "implicit" else mode
            state = generic.state_bytes(self.model, pbs[0], mode_,
                                        self._schedule if mode == "checkpoint" else None,
                                        self.frac_bits, self.max_buffer_bytes)
            need, what = len(pbs) * state, f"the stored states of T={self.T} steps ({mode})"
        elif self._device is not None:
            from . import mlp_torch
            need = mlp_torch.state_bytes(self.model, pbs, mode, **self._options(mode))
            what = f"the rows and the states of T={self.T} steps ({mode}) on {self._device}"
        else:
            need, what = _memory(pbs, mode, self.backend, self._schedule, self.frac_bits,
                                 self.max_buffer_bytes)
        fix = FIXES.get(mode, "use smaller batches or fewer rows")
        batch = f" for {len(pbs)} problems" if len(pbs) > 1 else ""
        what = f"mode={mode!r} on backend={self.backend!r}{batch}: {what}"
        if self._device is not None and self._device.type == "cuda":
            from . import mlp_torch
            mlp_torch.check_device_memory(need, what, fix, self._device)
        else:
            check_memory(need, what, fix)
        self._memory_checked.add(key)


def _check_gram(engine):
    """form='gram' asked: refuse what the Gram form does not run, before any work."""
    if engine.backend != "numba" or engine.model.fused != "linear":
        raise ValueError(f"form='gram' runs the linear model's numba loops; backend "
                         f"{engine.backend!r} with {engine.model!r} has none: pass form='auto'.")
    if engine.mode not in dual.MODES:
        raise ValueError(f"form='gram' runs modes {', '.join(dual.MODES[:2])} (and "
                         f"need='value'), not mode={engine.mode!r}: pass form='auto' or 'primal'.")
    if engine._fixed.B is not None:
        raise ValueError("form='gram' needs clean and validation rows shared by every problem "
                         "(2-D Xc, Xv), not a leading batch axis: pass form='auto' or 'primal'.")


def _is_network(model):
    from ..models.mlp import MLP
    return isinstance(model, MLP)


def _network_route(backend, device):
    """(engine backend, its modes) of the network: the registry's choice for hot path
    ``mlp`` ("numba": the generic engine)."""
    from .. import backends
    if device not in (None, "cpu", "cuda"):
        raise ValueError(f"device={device!r} must be None, 'cpu' or 'cuda'.")
    name = backends.select("mlp", backend, gpu=device == "cuda")
    if name == "numba":
        from . import generic
        return "generic", tuple(m for m in generic.MODES if m != "value") + ("implicit",)
    from .mlp_torch import MODES
    return name, MODES


def _memory(pbs, mode, backend, sched, frac_bits, max_buffer_bytes):
    """Bytes a call allocates, about (every problem's states at once: the
    shared-Xc route holds them together), and what those bytes are; sched:
    the reverse sweep's schedule (trajectory or checkpoint)."""
    pb = pbs[0]
    B, T, d, p = len(pbs), pb.T, pb.d, pb.d + 1
    n = pb.Xc.shape[0] + pb.Xp.shape[0]
    copies = 0 if backend in NATIVE else B * n * d * pb.Xc.itemsize  # [Xc; Xp] per problem
    if mode == "reversible":
        from . import reversible
        f = reversible.check_frac_bits(frac_bits)
        state = reversible.plan(pb, f, max_buffer_bytes)[3]
        return copies + B * state, "its fixed-point states and bit buffers"
    if backend == "torch":  # the autograd graph keeps a few n- and p-vectors per step
        return copies + B * T * (n + p) * 8 * 8, f"the autograd graph of T={T} steps"
    if mode == "implicit":
        solve = p * p * 8 + n * p * 8 if p <= CHOLESKY_MAX else 0
        return copies + solve, "the float64 Hessian and design matrix"
    if mode in ("forward", "value"):
        return copies, "the training rows"
    return copies + B * sched.state_bytes(p), f"the stored states of T={T} steps ({mode})"


def _diverged_at(pb, result):
    """The step the backend flagged (info["diverged_at"], popped), else T if
    a result is nan/inf anyway (e.g. the final iterate), else None."""
    step = result.info.pop("diverged_at", -1)
    if step is not None and step >= 0:
        return int(step)
    return pb.T if divergence.diverged(result) else None


def _diagnose_overflow(pbs, err):
    """A fixed-point overflow in mode='reversible': raise DivergenceError
    (chained to it) if the float training diverges, else return."""
    from ..kernels.cpu import hypergrad as kernel
    for i, pb in enumerate(pbs):
        X, y, _, _, *rest, _, _, n_threads = fused.numba_args(pb)
        step = int(kernel.train(X, y, *rest, n_threads)[2])
        if step >= 0:
            steps = [None] * len(pbs)
            steps[i] = step
            try:
                divergence.report(pbs, steps, "raise")
            except DivergenceError as div:
                raise div from err


def _stack(results):
    """One HyperGrad of (B, ...) arrays; info keys equal across problems stay
    scalars, the others become lists."""
    first = results[0]
    info = {key: (val if all(r.info.get(key) == val for r in results)
                  else [r.info.get(key) for r in results]) for key, val in first.info.items()}
    info["B"] = len(results)
    gX = None if first.grad_Xp is None else np.stack([r.grad_Xp for r in results])
    glam = None if first.grad_lam is None else np.array([r.grad_lam for r in results])
    return HyperGrad(np.array([r.value for r in results]), gX, glam,
                     np.stack([r.theta_T for r in results]), info)
