"""A diverging inner training loop: the error message, and raise or warn.

Every backend flags the first inner step t whose squared training-gradient
norm is nan/inf or beyond GROWTH times its start / (1 - gamma)^2 (the check
and why it is safe: kernels/cpu/hypergrad.py). This module turns the flag into a DivergenceError (or a
DivergenceWarning with ``on_divergence="warn"``) that names t, the
hyperparameters and the likely fix. Heavy-ball steps are stable on a
quadratic of curvature L iff alpha (1 - gamma) L < 2 (1 + gamma), so the
message compares alpha with 2 (1 + gamma) / ((1 - gamma) L), L estimated
here by power iteration on X (on the error path only).
"""
import math
import warnings

import numpy as np

from ..errors import DivergenceError, DivergenceWarning

ON_DIVERGENCE = ("raise", "warn")
_CURVATURE = {"logistic": 0.25, "squared": 1.0}  # max l''
_POWER_STEPS = 30


def _data_curvature(pb):
    """(L_data, max |x|): an estimate of the largest eigenvalue of the data
    Hessian bound max l'' [X 1]^T [X 1] / n, and the largest |feature|."""
    blocks = (pb.Xc, pb.Xp)
    xmax = max(float(np.max(np.abs(B))) for B in blocks)
    if not math.isfinite(xmax) or xmax == 0:
        return (math.inf if not math.isfinite(xmax) else 0.0), xmax
    n = sum(B.shape[0] for B in blocks)
    v = np.random.default_rng(0).standard_normal(pb.d + 1)
    v[pb.d] *= bool(pb.fit_intercept)
    lam = 0.0
    for _ in range(_POWER_STEPS):  # on A / xmax: nothing overflows
        v /= np.linalg.norm(v)
        w = np.zeros(pb.d + 1)
        for B in blocks:
            u = (B @ v[:pb.d].astype(B.dtype)).astype(np.float64) / xmax
            u += v[pb.d] / xmax
            w[:pb.d] += (B.T @ u.astype(B.dtype)).astype(np.float64) / xmax
            w[pb.d] += bool(pb.fit_intercept) * u.sum() / xmax
        lam = float(v @ w)
        v = w
    with np.errstate(over="ignore"):
        scale = np.float64(xmax) * np.float64(xmax)  # numpy: inf, not OverflowError
    return float(_CURVATURE.get(pb.loss, 1.0) * lam / n * scale), xmax


def details(pb, step):
    """The facts a divergence message states, for Problem `pb` flagged at `step`
    (a model with several hyperparameters: the largest exp(lam_g) counts)."""
    lam = float(np.max(pb.lam))
    e = math.exp(lam) if lam < 709 else math.inf
    L_data, xmax = _data_curvature(pb)
    L = L_data + e
    bound = 2 * (1 + pb.gamma) / ((1 - pb.gamma) * L) if L > 0 else math.inf
    return dict(step=int(step), T=pb.T, alpha=pb.alpha, gamma=pb.gamma, lam=lam, e=e,
                curvature=L, data_curvature=L_data, stable_alpha=bound, x_max=xmax,
                dtype=pb.Xc.dtype.name)


def message(det, where="", alpha_name="alpha", lam_term=None):
    """The error text for `det` (details()) in the caller's terms: an attack
    names its own step size and says how its lam gives the L2 strength
    (``lam_term``, default "exp(lam) = ... from lam=...")."""
    a, bound, L = det["alpha"], det["stable_alpha"], det["curvature"]
    lam_term = lam_term or f"exp(lam) = {det['e']:.3g} from lam={det['lam']:g}"
    head = (f"{where}the inner training diverged by step {det['step']} of T={det['T']}: its "
            f"training gradient became nan/inf or its squared norm grew past {_growth():g} / "
            "(1 - gamma)^2 times its value at w0, so the hypergradient would be garbage.")
    if not math.isfinite(det["data_curvature"]):
        why = (f" The features are too large for {det['dtype']} arithmetic (largest |feature| "
               f"{det['x_max']:.3g}: X^T X overflows); standardise X.")
    elif a >= bound:
        why = (f" {alpha_name}={a:g} exceeds the stable step 2 (1 + gamma) / ((1 - gamma) L) "
               f"= {bound:.3g} (gamma={det['gamma']:g}), where L ~ {L:.3g} is the curvature of "
               f"the training objective: {det['data_curvature']:.3g} from the data plus "
               f"{lam_term}. Lower {alpha_name} below {bound:.3g}")
        if det["e"] > det["data_curvature"]:
            why += ", or lower lam"
        why += f", or standardise X (largest |feature| {det['x_max']:.3g})."
    else:
        why = (f" {alpha_name}={a:g} is within the stable step {bound:.3g} for the curvature "
               f"L ~ {L:.3g}, so the values overflowed {det['dtype']}: the features (largest "
               f"|feature| {det['x_max']:.3g}) or w0 are too large; standardise X or scale w0.")
    return head + why


def _growth():
    from ..kernels.cpu.hypergrad import GROWTH
    return GROWTH


def check_option(on_divergence):
    if on_divergence not in ON_DIVERGENCE:
        raise ValueError(f"on_divergence={on_divergence!r} is not one of {list(ON_DIVERGENCE)} "
                         "(raise: a DivergenceError; warn: a DivergenceWarning and the diverged "
                         "values).")


def diverged(result):
    """Whether a HyperGrad holds a nan or inf."""
    parts = (result.value, result.grad_lam, result.theta_T, result.grad_Xp)
    return not all(np.isfinite(p).all() for p in parts if p is not None)


def report(problems, steps, on_divergence, stacklevel=3):
    """Raise (or warn about) the flagged problems: steps[i] is problem i's
    diverged step or None. Returns nothing when none is flagged."""
    flagged = [(i, s) for i, s in enumerate(steps) if s is not None]
    if not flagged:
        return
    i, step = flagged[0]
    where = f"problem {i}: " if len(problems) > 1 else ""
    det = details(problems[i], step)
    text = message(det, where)
    if len(flagged) > 1:
        text += f" ({len(flagged)} of {len(problems)} problems diverged: {[j for j, _ in flagged][:10]}.)"
    if on_divergence == "raise":
        raise DivergenceError(text, step=det["step"], problem=i if len(problems) > 1 else None,
                              details=det)
    warnings.warn(text.replace("would be garbage", "is returned as computed"), DivergenceWarning,
                  stacklevel=stacklevel)


def to_dtype(a, dtype, where):
    """a (float64, from a compiled loop) in the caller's dtype; values past that
    dtype's range are an error, not a silent inf (finite inputs only: a
    flagged divergence is reported by `report`)."""
    top = float(np.abs(a).max(initial=0.0))
    limit = float(np.finfo(dtype).max)
    if math.isfinite(top) and top > limit:
        raise OverflowError(
            f"{where}: the hypergradient wrt Xp reaches {top:.3g}, beyond the "
            f"{np.dtype(dtype).name} range ({limit:.3g}). The reverse sweep grew although the "
            "training gradient did not: alpha is likely too large for the curvature (the "
            "forward steps may be held back by a coarse frac_bits); lower alpha, or pass "
            "float64 data.")
    return a.astype(dtype)
