"""Implicit-mode solve step at paper 002's size against torchopt's implicit differentiation.

512 clean + 17 poisoning rows, 171 validation rows, d = 784, logistic loss,
float64, theta at the training optimum (Newton, ||grad|| ~ 1e-16): the step
after training, i.e. the outer value and gradient, the Hessian solve and the
mixed products for grad_Xp and grad_lam. ``ours`` is
mithridate.hypergrad.implicit.implicit_model (CG on the fused HVP here);
``torchopt`` is torchopt.diff.implicit.custom_root on the same objective with
its CG solver (its default, normal-equation CG, measured slower). ``setup``
raises NotImplementedError for the peer where torchopt is not installed.
"""
import math
import warnings

import numpy as np

from mithridate.models import LinearModel

PAPER = dict(n=512, k=17, nv=171, d=784)
LAM = math.log(5.0)


def paper_problem(n, k, nv, d, seed=0):
    """Features uniform on [0, 1) (as mithridate bench), labels balanced, theta at the optimum."""
    rng = np.random.default_rng(seed)
    X = rng.random((n + k, d))
    y = (rng.random(n + k) < 0.5).astype(np.float64)
    Xv = rng.random((nv, d))
    yv = (np.arange(nv) % 2).astype(np.float64)
    model, lam = LinearModel(backend="numba"), np.array([LAM])
    theta = np.zeros(d + 1)
    for _ in range(50):
        g = model.grad(theta, X, y, lam)
        if np.linalg.norm(g) < 1e-13:
            break
        theta = theta - np.linalg.solve(model.hessian(theta, X, y, lam), g)
    return model, theta, X, y, np.arange(n, n + k), Xv, yv, lam


def torchopt_step(model, theta, X, y, rows, Xv, yv, lam):
    """The peer: a function computing (value, grad_Xp, grad_lam) by torchopt's custom_root."""
    import torch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torchopt
    n0, d = rows[0], X.shape[1]
    Xc, yc, yp, Xv_, yv_ = (torch.from_numpy(a) for a in (X[:n0], y[:n0], y[n0:], Xv, yv))
    th_star = torch.from_numpy(theta)

    def inner(th, Xp, lm):
        Xa, ya = torch.cat([Xc, Xp]), torch.cat([yc, yp])
        z = Xa @ th[:d] + th[d]
        return (torch.nn.functional.softplus(z) - ya * z).mean() + 0.5 * torch.exp(lm) * (th[:d] ** 2).sum()

    @torchopt.diff.implicit.custom_root(torch.func.grad(inner, argnums=0), argnums=(1, 2),
                                        solve=torchopt.linear_solve.solve_cg())
    def solver(th0, Xp, lm):
        return th_star.clone()

    def step():
        Xp = torch.from_numpy(X[rows]).requires_grad_(True)
        lm = torch.tensor(lam[0], dtype=torch.float64, requires_grad=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torchopt calls functorch.vjp
            th = solver(th_star, Xp, lm)
            z = Xv_ @ th[:d] + th[d]
            outer = (torch.nn.functional.softplus(z) - yv_ * z).mean()
            gX, gl = torch.autograd.grad(outer, (Xp, lm))
        return float(outer.detach()), gX.numpy(), float(gl)
    return step


class ImplicitSolve:
    params = [["ours", "torchopt"]]
    param_names = ["impl"]
    timeout = 300

    def setup(self, impl):
        if impl == "torchopt":
            try:
                import torchopt  # noqa: F401
            except ImportError as err:
                raise NotImplementedError(f"torchopt is not installed ({err})") from None
        problem = paper_problem(**PAPER)
        if impl == "ours":
            from mithridate.hypergrad.implicit import implicit_model
            self.step = lambda: implicit_model(*problem, 1e-6, {})
        else:
            self.step = torchopt_step(*problem)
        self.step()  # compile / warm up

    def time_solve_step(self, impl):
        self.step()
