"""Defences against data poisoning: Wasserstein distributionally-robust estimators (paper 000)."""
from .wdro import WassersteinRobustClassifier, WassersteinRobustRegressor

__all__ = ["WassersteinRobustRegressor", "WassersteinRobustClassifier"]
