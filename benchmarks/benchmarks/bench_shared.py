"""G problems sharing their clean rows at paper 002's size (529 clean rows,
17 poisoning rows per problem, 171 validation rows, d = 784, T = 150,
logistic loss): the shared-clean-rows loops (kernels/cpu/hypergrad_shared.py,
Xc read once per pass for all G) against G single-problem kernel calls on
[Xc; Xp[b]] (kernels/cpu/hypergrad.py), side by side; ratio = single / shared.
"""
import numpy as np

from mithridate.hypergrad.schedule import plan
from mithridate.kernels.cpu import hypergrad as single
from mithridate.kernels.cpu.hypergrad_shared import shared_parts

NC, K, NV, D, T = 529, 17, 171, 784, 150
ALPHA, GAMMA = 0.1, 0.5


def _data(G, dtype, seed=0):
    rng = np.random.default_rng(seed)
    scale = 1 / np.sqrt(D)
    Xc = (rng.normal(size=(NC, D)) * scale).astype(dtype)
    yc = (rng.random(NC) < 0.5).astype(dtype)
    Xp = (rng.normal(size=(G, K, D)) * scale).astype(dtype)
    yp = (rng.random((G, K)) < 0.5).astype(dtype)
    Xv = (rng.normal(size=(1, NV, D)) * scale).astype(dtype)
    yv = (rng.random((1, NV)) < 0.5).astype(dtype)
    return Xc, yc, Xp, yp, Xv, yv, np.zeros((G, D + 1)), np.exp(np.linspace(-3.0, 0.0, G))


class SharedCleanRows:
    params = [["trajectory", "forward"], ["float32", "float64"], [4, 8], ["shared", "single"]]
    param_names = ["mode", "dtype", "G", "route"]
    timeout = 300

    def setup(self, mode, dtype, G, route):
        import numba
        Xc, yc, Xp, yp, Xv, yv, theta0, e = _data(G, dtype)
        rev, nt = mode == "trajectory", numba.get_num_threads()
        v_layout = single.layout(NV, D, Xc.itemsize)
        if route == "shared":
            out, theta_T, dXp = np.empty((G, 3)), np.empty((G, D + 1)), np.empty((G, K, D))
            self.run = lambda: shared_parts(rev, Xc, yc, Xp, yp, Xv, yv, 0, True, theta0, ALPHA,
                                            GAMMA, e, T, *v_layout, nt, dXp, out, theta_T)
        else:
            Xs = [np.concatenate([Xc, Xp[b]]) for b in range(G)]
            ys = [np.concatenate([yc, yp[b]]) for b in range(G)]
            x_layout = single.layout(NC + K, D, Xc.itemsize)
            dXp = np.empty((K, D))
            traj = plan(T, T)  # trajectory: every theta stored

            def run():
                for b in range(G):
                    common = (0, True, theta0[b], ALPHA, GAMMA, e[b], T, *x_layout, *v_layout, nt)
                    if rev:
                        single.reverse(Xs[b], ys[b], K, Xv[0], yv[0], *common, traj.actions,
                                       traj.theta_only, dXp)
                    else:
                        single.forward(Xs[b], ys[b], Xv[0], yv[0], *common)
            self.run = run
        self.run()  # compile / warm up

    def time_group(self, *params):
        self.run()
