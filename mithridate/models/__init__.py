"""Models: parameter layout, objective, gradient, HVP and mixed products for the
hypergradient engine and the trainers (see base.Model for the interface)."""
from .base import Model
from .layout import Layout
from .linear import LabelFeature, LinearModel
from .mlp import MLP
from .regularizers import L2
from .torch_module import TorchModule
from .wasserstein import Robust, Wasserstein

__all__ = ["Model", "Layout", "L2", "LabelFeature", "LinearModel", "MLP", "Robust", "TorchModule",
           "Wasserstein"]
