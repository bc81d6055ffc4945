"""Wasserstein-robust fits: ``fit_batch`` against fitting the same problems one by one.

Both sides use the solver ``fit`` uses (the interior point of ``defenses.barrier``
for these convex forms), so the ratio is the gain of batching alone: one Newton
run whose passes over each training set serve all its settings at once, against
one run per problem. Synthetic data of the paper-000 shapes: Wine (n = 800,
d = 11, features on scales 0.1..10 like the raw data) and Adult (n = 24,000,
d = 14); 8 training sets (e.g. poisoning fractions or seeds) x 8 settings = 64
problems, except Adult (4 x 4 = 16: one by one takes half a minute).
"""
import numpy as np
from sklearn.base import clone

from mithridate.defenses import WassersteinRobustClassifier, WassersteinRobustRegressor, fit_batch

C1C2 = {"c1": [0.0, 0.01, 0.1, 1.0], "c2": [0.0, 0.1]}
RHOS = [1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0]
PROBLEMS = {  # name: (estimator, params, loss, (S, n, d))
    "wine-squared-paper-c1c2": (WassersteinRobustRegressor(), C1C2, "squared", (8, 800, 11)),
    "wine-squared-exact": (WassersteinRobustRegressor(regularizer="exact"), {"rho": RHOS},
                           "squared", (8, 800, 11)),
    "wine-logistic-paper": (WassersteinRobustClassifier(), {"rho": RHOS}, "logistic", (8, 800, 11)),
    "adult-logistic-paper": (WassersteinRobustClassifier(), {"rho": RHOS[2:6]}, "logistic",
                             (4, 24_000, 14)),
}


def make_sets(loss, S, n, d, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((S, n, d)) * np.geomspace(0.1, 10, d)
    z = X @ (rng.standard_normal(d) / np.geomspace(0.1, 10, d)) / np.sqrt(d)
    if loss == "logistic":
        return X, (rng.random((S, n)) < 1 / (1 + np.exp(-3 * z))).astype(float)
    return X, 5 + z + 0.5 * rng.standard_normal((S, n))


def one_by_one(estimator, X, y, params):
    from sklearn.model_selection import ParameterGrid
    return [[clone(estimator).set_params(**p).fit(Xs, ys) for p in ParameterGrid(params)]
            for Xs, ys in zip(X, y)]


class FitBatch:
    params = [list(PROBLEMS), ["batched", "one_by_one"]]
    param_names = ["problem", "mode"]
    number = 1
    repeat = (1, 3, 120.0)
    timeout = 600

    def setup(self, problem, mode):
        estimator, params, loss, shape = PROBLEMS[problem]
        X, y = make_sets(loss, *shape)
        fit = fit_batch if mode == "batched" else one_by_one
        self.run = lambda: fit(estimator, X, y, params)
        clone(estimator).fit(X[0][:50], y[0][:50])  # compiles the numba kernels it calls

    def time_fit(self, problem, mode):
        self.run()
