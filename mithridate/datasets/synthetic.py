"""The generated 2-D Gaussian example of paper 002 (Figure 1, Appendix D.2)."""
import numpy as np

from .dataset import Dataset

# Appendix D.2: class i ~ N(mu_i, Sigma_i), both covariances diag(2.5, 1.5).
MEANS = np.array([[-3.0, 0.0], [3.0, 0.0]])
COV = np.diag([2.5, 1.5])


def _draw(n_per_class, rng, seed):
    X = np.concatenate([rng.multivariate_normal(m, COV, n_per_class) for m in MEANS])
    y = np.repeat([0.0, 1.0], n_per_class)
    return Dataset(X, y, "gaussian-2d", ("x1", "x2"), "binary",
                   {"origin": "generated", "seed": seed, "means": MEANS.tolist(),
                    "cov": COV.tolist()})


def make_gaussian_2d(n_per_class=16, seed=0):
    """`n_per_class` points of class 0 then of class 1, drawn with `seed`."""
    if not isinstance(n_per_class, (int, np.integer)) or n_per_class < 1:
        raise ValueError(f"n_per_class must be a positive int, got {n_per_class!r}")
    return _draw(n_per_class, np.random.default_rng(seed), seed)


def gaussian_2d_paper002(seed=0):
    """(train, validation) of Appendix D.2: 32 points (16 per class) and 64 (32 per class).

    Both come from one generator seeded with `seed` (train drawn first).
    """
    rng = np.random.default_rng(seed)
    return _draw(16, rng, seed), _draw(32, rng, seed)
