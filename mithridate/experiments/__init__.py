"""Sweeps: declarative specs, batched execution (in-process, process pool, Ray),
a resumable SQLite results store, and the registry of reproducible figures.

Importing this package stays light: pandas, tqdm, matplotlib and ray load only
when a sweep runs, a frame is built or a plot is drawn.
"""
from .registry import (EXPERIMENTS, FIGURES, Experiment, Figure, experiment, get_experiment,
                       get_figure, load_builtin, register_figure)
from .runner import SweepError, run_sweep
from .spec import SpecError, SweepSpec, config_key
from .store import ResultsStore, StoreError, StoreMismatchError

__all__ = ["EXPERIMENTS", "FIGURES", "Experiment", "Figure", "experiment", "get_experiment",
           "get_figure", "load_builtin", "register_figure", "SweepError", "run_sweep",
           "SpecError", "SweepSpec", "config_key", "ResultsStore", "StoreError",
           "StoreMismatchError"]
