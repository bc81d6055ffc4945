"""Defences against data poisoning: Wasserstein distributionally-robust estimators (paper 000)."""
from .batch import BatchResult, fit_batch
from .rho import (concentration_radius, rho_bound, select_rho, theorem2_check,
                  wasserstein_distance)
from .wdro import WassersteinRobustClassifier, WassersteinRobustRegressor

__all__ = ["WassersteinRobustRegressor", "WassersteinRobustClassifier", "fit_batch", "BatchResult",
           "wasserstein_distance", "concentration_radius", "rho_bound", "select_rho",
           "theorem2_check"]
