"""Poisoning attacks. Simple attacks of paper 000 (label flipping, data
modification), single-config and batched over betas x seeds; the optimal,
hyperparameter-aware attack of paper 002 and its victim trainer, against the L2 or
the Wasserstein-robust defence (paper 000)."""
from .optimal import (Defence, OptimalPoisoning, PoisoningResult, evaluate, lam_clean, run_lockstep,
                      train_gd, train_sgd)
from .simple import (Poisoned, data_modification, data_modification_batch, label_flip,
                     label_flip_batch, label_set, label_set_batch, n_poisoned)

__all__ = ["Poisoned", "data_modification", "data_modification_batch", "label_flip",
           "label_flip_batch", "label_set", "label_set_batch", "n_poisoned",
           "Defence", "OptimalPoisoning", "PoisoningResult", "evaluate", "lam_clean", "run_lockstep",
           "train_gd", "train_sgd"]
