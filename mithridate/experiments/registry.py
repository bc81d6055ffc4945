"""Registries of experiments (what a sweep runs) and figures (what `reproduce` makes).

Experiments are looked up by name, never pickled, so a process-pool or Ray
worker resolves the same function by importing the module that registered it.
"""
import importlib
from dataclasses import dataclass
from typing import Callable

from .spec import SpecError

BUILTIN = ("mithridate.experiments.toy", "mithridate.experiments.quickstart",
           "mithridate.experiments.paper000", "mithridate.experiments.paper002",
           "mithridate.experiments.paper000_sensitivity", "mithridate.experiments.cross",
           "mithridate.experiments.paper000_optimal")


@dataclass(frozen=True)
class Experiment:
    """``fn(configs) -> list of metrics dicts``; one call gets configs equal on every
    parameter outside ``batch_keys``, so it can batch them into one kernel call.
    ``params``: the names fn may read besides ``seed`` (None: not declared)."""
    name: str
    fn: Callable
    batch_keys: tuple
    module: str
    params: frozenset = None

    def check(self, spec):
        """Refuse, before any work, a spec naming a parameter fn never reads: a misspelt
        name would be ignored and an unread grid axis would only repeat each config."""
        if self.params is None:
            raise SpecError(f"experiment {self.name!r} does not declare the parameters it "
                            f"reads: register it with @experiment(..., params=(...))")
        unread = sorted((set(spec.grid) | set(spec.fixed)) - self.params)
        if unread:
            raise SpecError(f"experiment {self.name!r} reads no parameter {unread}; it reads "
                            f"{sorted(self.params)} and seed: fix the spelling or remove them")


@dataclass(frozen=True)
class Figure:
    """A reproducible figure: ``spec(quick)`` -> SweepSpec, ``plot(frame, out_dir)`` ->
    written paths, ``summary(frame)`` -> text for summary.md and the terminal."""
    name: str
    description: str
    spec: Callable
    plot: Callable
    summary: Callable


EXPERIMENTS: dict = {}
FIGURES: dict = {}


def experiment(name, batch_keys=("seed",), params=None):
    """Register a module-level ``fn(configs: list[dict]) -> list[dict]`` under ``name``;
    ``params`` lists every config key fn may read except ``seed``."""
    if params is not None:
        if isinstance(params, str) or not all(isinstance(p, str) for p in params):
            raise TypeError(f"experiment {name!r}: params must be a sequence of parameter "
                            f"names, got {params!r}")
        params = frozenset(params) - {"seed"}
        stray = sorted(set(batch_keys) - params - {"seed"})
        if stray:
            raise ValueError(f"experiment {name!r}: batch_keys {stray} are not in params")

    def register(fn):
        if "<locals>" in fn.__qualname__:
            raise ValueError(f"experiment {name!r}: {fn.__qualname__} must be defined at module "
                             f"level so that worker processes can import it")
        old = EXPERIMENTS.get(name)
        if old is not None and (old.module, old.fn.__qualname__) != (fn.__module__,
                                                                     fn.__qualname__):
            raise ValueError(f"experiment name {name!r} is already registered by "
                             f"{old.module}.{old.fn.__qualname__}; choose another name")
        EXPERIMENTS[name] = Experiment(name, fn, tuple(batch_keys), fn.__module__, params)
        return fn
    return register


def register_figure(figure):
    FIGURES[figure.name] = figure
    return figure


def load_builtin():
    """Import the modules that register the built-in experiments and figures."""
    for module in BUILTIN:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:  # a missing dependency inside it is a real error
                raise


def get_experiment(name, module=None):
    """The registered experiment ``name``, importing ``module`` first if given."""
    if module is not None and name not in EXPERIMENTS:
        importlib.import_module(module)
    if name not in EXPERIMENTS:
        load_builtin()
    if name not in EXPERIMENTS:
        raise SpecError(f"unknown experiment {name!r}; known: {', '.join(sorted(EXPERIMENTS))}")
    return EXPERIMENTS[name]


def get_figure(name):
    load_builtin()
    if name not in FIGURES:
        raise SpecError(f"unknown figure {name!r}; known: {', '.join(sorted(FIGURES))} "
                        f"(see `mithridate reproduce --list`)")
    return FIGURES[name]
