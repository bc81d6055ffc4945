"""The one return type of every loader."""
from dataclasses import dataclass, field

import numpy as np

TASKS = ("binary", "multiclass", "regression")


@dataclass
class Dataset:
    """Features `X` (n, d) float64 C-contiguous, target `y` (n,) float64.

    `task`: "binary" (y in {0, 1}), "multiclass" (y in {0, ..., k-1}) or
    "regression". `meta` holds provenance (origin, files) and encodings.
    """
    X: np.ndarray
    y: np.ndarray
    name: str
    feature_names: tuple
    task: str
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.X = np.ascontiguousarray(self.X, dtype=np.float64)
        self.y = np.ascontiguousarray(self.y, dtype=np.float64)
        self.feature_names = tuple(self.feature_names)
        if self.X.ndim != 2 or self.y.ndim != 1 or len(self.X) != len(self.y):
            raise ValueError(f"{self.name}: X must be (n, d) and y (n,), got {self.X.shape} "
                             f"and {self.y.shape}")
        if len(self.feature_names) != self.X.shape[1]:
            raise ValueError(f"{self.name}: {len(self.feature_names)} feature_names for "
                             f"{self.X.shape[1]} columns")
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.task == "binary" and not np.isin(self.y, (0.0, 1.0)).all():
            raise ValueError(f"{self.name}: a binary task needs y in {{0, 1}}")

    @property
    def n_samples(self):
        return self.X.shape[0]

    @property
    def n_features(self):
        return self.X.shape[1]

    def subset(self, index):
        """The rows `index` (integer array or boolean mask) as a new Dataset."""
        return Dataset(self.X[index], self.y[index], self.name, self.feature_names,
                       self.task, dict(self.meta))
