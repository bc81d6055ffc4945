"""The result type of every hypergradient call."""
from dataclasses import dataclass, field

import numpy as np


@dataclass
class HyperGrad:
    """value: validation loss at theta_T; grad_Xp (k, d) (None in forward
    mode); grad_lam; theta_T = [w; b] (p,); info: mode details
    (``state_bytes``: the reverse sweep's stored states). A batched call
    returns value (B,), grad_Xp (B, k, d), grad_lam (B,), theta_T (B, p)."""
    value: float
    grad_Xp: np.ndarray
    grad_lam: float
    theta_T: np.ndarray
    info: dict = field(default_factory=dict)
