"""Defences against data poisoning: Wasserstein distributionally-robust estimators (paper 000)."""
from .batch import BatchResult, fit_batch
from .wdro import WassersteinRobustClassifier, WassersteinRobustRegressor

__all__ = ["WassersteinRobustRegressor", "WassersteinRobustClassifier", "fit_batch", "BatchResult"]
