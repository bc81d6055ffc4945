"""``hypergrad``: gradient of the validation loss after T inner steps wrt the
poisoning features and lam, one call (``Engine`` for many calls on the same
clean and validation rows). See the package docstring for the math."""
from .._validation import check_choice
from .engine import Engine
from .problem import LOSSES
from .result import HyperGrad

__all__ = ["hypergrad", "HyperGrad"]


def hypergrad(Xc, yc, Xp, yp, Xv, yv, *, lam, w0=None, T, alpha, gamma=0.0, loss="logistic",
              fit_intercept=True, model=None, mode="trajectory", backend="auto", tol=1e-6,
              checkpoints="sqrt", max_states=None, frac_bits=None, max_buffer_bytes=None,
              on_divergence="raise", device=None, form="auto"):
    """Hypergradients of A(theta_T) = mean validation loss wrt Xp and lam.

    Inner: T steps of heavy-ball GD (``gamma``; 0 = plain GD) with step
    ``alpha`` from ``w0`` (zeros by default; (d + fit_intercept,)) on
    1/n sum l over [Xc; Xp] + exp(lam)/2 ||w||^2 (labels yp fixed). Modes:
    ``trajectory`` (exact RMD storing theta_0..theta_T), ``checkpoint`` (exact
    RMD walking the checkpoint schedule mithridate.hypergrad.schedule.plan(T,
    checkpoints, max_states): ``checkpoints`` "sqrt" (ceil(sqrt(T)) stored
    states, fixed segments), an int (that many), or "binomial" (revolve: the
    fewest recomputed steps for ``max_states`` stored states); equal to
    trajectory bit for bit on numba and generic; ``info["recomputed"]`` counts
    the recomputed steps),
    ``reversible`` (exact reversal in fixed point with ``frac_bits`` fractional
    bits; the bit buffer may not exceed ``max_buffer_bytes`` per problem,
    default the size of the trajectory it replaces),
    ``forward`` (exact, lam only), ``implicit`` (eq. 4 at theta_T, exact only
    at a stationary point: ``info["grad_norm"]`` is the final training
    gradient norm, warned about above ``tol``).
    ``model``: a mithridate.models Model (default LinearModel(loss,
    fit_intercept)); one without a fused loop runs on the generic engine,
    lam then one value per penalised group. ``backend`` (the registry,
    mithridate.backends; ``auto``: by where the data lives, or
    MITHRIDATE_BACKEND): ``numba`` (compiled loops, every mode), ``torch``
    (autograd through the unrolled loop, which is also its checkpoint mode;
    for implicit only the training runs in torch), ``cpp``/``cuda`` (compiled
    extension, where built). The network (``model=MLP(...)``): "numba" (auto on
    host data: the generic engine), "torch" or "triton" (mithridate.hypergrad.mlp_torch
    on ``device``, see ``Engine``).
    ``form`` (numba, linear model): "primal" reads X each step; "gram" multiplies by
    K = X X^T instead (mithridate.hypergrad.dual: from w0 = 0, modes trajectory and
    forward, shared Xc and Xv; the same results up to rounding); "auto" takes the
    Gram form where it is cheaper (dual.pays: n threads < 2 d, n training rows).
    Arrays: numpy, one float dtype, C-contiguous; results in that dtype.

    Divergence: every mode and backend watches the training gradient at each
    inner step (no extra pass over X); if it becomes nan/inf or grows past a
    bound no stable run reaches (kernels/cpu/hypergrad.py), ``on_divergence="raise"``
    (default) raises mithridate.DivergenceError naming the step, alpha against
    the stable step for the estimated curvature, and the fix; ``"warn"``
    issues a DivergenceWarning and returns the diverged values, with
    ``info["diverged_at"]`` the step (None where the run was stable). Mode
    ``reversible`` raises in either case when its fixed point overflows (it
    has no values to return). Memory: the states each mode stores are checked
    against the memory available before any work (InsufficientMemoryError).

    Batched: Xp (B, k, d) and yp (B, k) give B independent problems; Xc, yc,
    Xv, yv, w0 are either shared (their single-problem shape) or carry a
    leading B axis, lam is a number or (B,). Returns one HyperGrad with value
    (B,), grad_Xp (B, k, d), grad_lam (B,), theta_T (B, p).
    """
    if model is None:
        from ..models import LinearModel
        check_choice("loss", loss, LOSSES)
        model = LinearModel(loss, fit_intercept)
    engine = Engine(Xc, yc, Xv, yv, model=model, T=T, alpha=alpha, gamma=gamma, mode=mode,
                    backend=backend, checkpoints=checkpoints, max_states=max_states,
                    frac_bits=frac_bits,
                    max_buffer_bytes=max_buffer_bytes, tol=tol, on_divergence=on_divergence,
                    device=device, form=form)
    return engine.run(Xp, yp, lam, w0)
