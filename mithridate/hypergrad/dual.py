"""The Gram (dual) form of the fused linear loops (kernels/cpu/hypergrad_dual.py):
for problems with no more training rows than features, started from theta_0 = 0,
every step multiplies by K = X X^T (n x n) instead of reading X (n x d) twice.

An Engine with ``form="auto"`` takes it where it pays (``pays``); the clean and
validation blocks of K are formed once per Engine (``Gram``, float64 products
rounded to X's dtype, one BLAS thread: the same bits every time), the poisoning
rows' blocks per call. Same results as the primal loops up to rounding."""
import numpy as np

from .result import HyperGrad

FORMS = ("auto", "primal", "gram")
MODES = ("trajectory", "forward", "value")  # the modes the Gram form runs


def pays(fixed, k, w0_zero, mode, threads):
    """Whether form="auto" takes the Gram form: shared clean and validation rows,
    theta_0 = 0, a mode it runs, and n threads < 2 d for n = nc + k training rows:
    a Gram step costs n^2 on one thread, the primal's 2 n d over ``threads``."""
    return (fixed.B is None and w0_zero and mode in MODES
            and (fixed.Xc.shape[0] + k) * threads < 2 * fixed.Xc.shape[1])


class Gram:
    """K's fixed blocks for clean rows Xc (nc, d) and validation rows Xv (nv, d):
    Kcc = Xc Xc^T and Kvc = Xv Xc^T, BLAS products in X's dtype (one thread: the
    same bits every time), as every product of the Gram form."""

    def __init__(self, Xc, Xv):
        from ..kernels.cpu.linear import _one_blas_thread
        self.dtype, self.Xc, self.Xv = Xc.dtype, Xc, Xv
        with _one_blas_thread():
            self.Kcc = Xc @ Xc.T
            self.Kvc = Xv @ Xc.T


def run(problems, mode, gram, info):
    """Modes trajectory, forward or value of problems sharing Xc, yc, Xv, yv from
    theta_0 = 0, in one compiled call: one HyperGrad each."""
    from ..kernels.cpu import hypergrad_dual as kernel
    from ..kernels.cpu.linear import LOSS_CODES, _one_blas_thread
    from .fused import theta_out
    pb0 = problems[0]
    G, (k, d), dt = len(problems), pb0.Xp.shape, gram.dtype
    nc, nv = gram.Xc.shape[0], gram.Xv.shape[0]
    n = nc + k
    what = {"value": kernel.VALUE, "forward": kernel.FORWARD, "trajectory": kernel.REVERSE}[mode]
    Xp = np.stack([pb.Xp for pb in problems])
    yp = np.stack([pb.yp for pb in problems]).astype(np.float64)
    kg = k if what == kernel.REVERSE else 0
    out, a_T = np.empty((G, 3)), np.empty((G, n + 1))
    A, S, C = np.empty((G, kg, n)), np.empty((G, kg)), np.empty((G, nv))
    Xp2 = Xp.reshape(G * k, d)
    with _one_blas_thread():  # 2-D products: one BLAS call each
        Kpc = (Xp2 @ gram.Xc.T).reshape(G, k, nc)
        Kpp = Xp @ Xp.transpose(0, 2, 1)
        Kvp = np.ascontiguousarray((gram.Xv @ Xp2.T).reshape(nv, G, k).transpose(1, 0, 2))
        kernel.run(what, gram.Kcc, Kpc, Kpp, gram.Kvc, Kvp,
                   np.asarray(pb0.yc, np.float64), yp, np.asarray(pb0.yv, np.float64),
                   LOSS_CODES[pb0.loss], pb0.fit_intercept, pb0.alpha, pb0.gamma,
                   np.exp([pb.lam for pb in problems]), pb0.T, kg, out, A, S, C, a_T)
        a, A = a_T[:, :n].astype(dt), A.astype(dt)  # the products in X's dtype
        w = a[:, :nc] @ gram.Xc + np.einsum("gk,gkd->gd", a[:, nc:], Xp)
        gX = None
        if kg:
            gX = ((A[:, :, :nc].reshape(G * kg, nc) @ gram.Xc).reshape(G, kg, d)
                  + A[:, :, nc:] @ Xp + S[:, :, None] * (C.astype(dt) @ gram.Xv)[:, None])
    theta = np.concatenate([w, a_T[:, n:]], axis=1)  # float64 again: theta_out casts
    results = []
    for b, pb in enumerate(problems):
        i = dict(info(pb), form="gram", diverged_at=int(out[b, 2]))
        if kg:
            i["state_bytes"], i["recomputed"] = pb.T * (2 * n + 1) * 8, 0
        results.append(HyperGrad(float(out[b, 0]), None if gX is None else gX[b],
                                 None if mode == "value" else float(out[b, 1]),
                                 theta_out(pb, theta[b]), i))
    return results
