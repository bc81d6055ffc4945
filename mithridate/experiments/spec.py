"""Sweep specifications: a grid, an experiment name and seeds, from TOML or Python.

A spec is data, not code, so that a results store can recognise the sweep that
made it (``fingerprint``) and a config can be named by a stable key
(``config_key``) across runs, processes and machines.
"""
import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

KEYS = ("name", "experiment", "grid", "seeds", "fixed")
SCALARS = (bool, int, float, str)
# The name is a folder under the results directory: one plain path component.
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
# The most configs a spec may enumerate (dicts in memory, rows in one store).
MAX_CONFIGS = 1_000_000


class SpecError(ValueError):
    """A malformed sweep specification (the message names the field and the fix)."""


def _canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def config_key(config):
    """The stable identity of one config: sha1 of its canonical JSON."""
    return hashlib.sha1(_canonical(config).encode()).hexdigest()


def _check_scalar(value, where):
    if not isinstance(value, SCALARS) or (isinstance(value, float) and not math.isfinite(value)):
        raise SpecError(f"{where} = {value!r}: values must be finite numbers, booleans or "
                        f"strings (not {type(value).__name__}, nan or inf)")


@dataclass(frozen=True)
class SweepSpec:
    """The cartesian product of ``grid`` x ``seeds``, each config merged with ``fixed``.

    Validated on construction; the experiment (registered, and reading every
    parameter named) is checked by ``from_dict``/``from_toml`` and by the runner.
    """
    name: str
    experiment: str
    grid: dict
    seeds: list
    fixed: dict = field(default_factory=dict)

    def __post_init__(self):
        for attr in ("name", "experiment"):
            if not isinstance(getattr(self, attr), str) or not getattr(self, attr):
                raise SpecError(f"{attr} must be a non-empty string, got "
                                f"{getattr(self, attr)!r}")
        if not NAME.fullmatch(self.name):
            raise SpecError(f"name = {self.name!r}: the name becomes a folder inside the output "
                            f"directory, so use up to 128 letters, digits, '_', '.' and '-', "
                            f"not starting with '.' (no absolute path, '..' or separator)")
        if not isinstance(self.grid, dict) or not self.grid:
            raise SpecError("grid must be a non-empty table of parameter = [values], e.g. "
                            "[grid] beta = [0.0, 0.1]")
        for key, values in self.grid.items():
            if not isinstance(values, (list, tuple)) or not values:
                raise SpecError(f"grid.{key} must be a non-empty list of values, got {values!r}")
            for v in values:
                _check_scalar(v, f"grid.{key}")
            if len({_canonical(v) for v in values}) != len(values):
                raise SpecError(f"grid.{key} lists a value twice: {list(values)!r}")
        if not isinstance(self.seeds, (list, tuple)) or not self.seeds:
            raise SpecError(f"seeds must be a non-empty list of integers, got {self.seeds!r}")
        if any(isinstance(s, bool) or not isinstance(s, int) for s in self.seeds):
            raise SpecError(f"seeds must be integers, got {list(self.seeds)!r}")
        if len(set(self.seeds)) != len(self.seeds):
            raise SpecError(f"seeds lists a seed twice: {list(self.seeds)!r}")
        if not isinstance(self.fixed, dict):
            raise SpecError(f"fixed must be a table of parameter = value, got {self.fixed!r}")
        for key, v in self.fixed.items():
            _check_scalar(v, f"fixed.{key}")
        clash = ({"seed"} | set(self.fixed)) & set(self.grid) | {"seed"} & set(self.fixed)
        if clash:
            raise SpecError(f"parameter(s) {sorted(clash)} appear twice: a parameter lives in "
                            f"one of grid or fixed, and 'seed' only in seeds")
        sizes = [len(v) for v in self.grid.values()] + [len(self.seeds)]
        if math.prod(sizes) > MAX_CONFIGS:
            axes = " x ".join(f"{n} {k}" for k, n in zip([*self.grid, "seeds"], sizes))
            raise SpecError(f"the grid makes {math.prod(sizes):,} configs ({axes}), over the "
                            f"limit of {MAX_CONFIGS:,} per sweep: split it into several specs")

    def configs(self):
        """Every config, grid values in key order, seeds varying fastest."""
        keys = list(self.grid)
        return [{**dict(zip(keys, combo)), **self.fixed, "seed": seed}
                for combo in itertools.product(*self.grid.values()) for seed in self.seeds]

    def fingerprint(self):
        """sha1 of what determines the results (the name is only a label)."""
        return config_key({"experiment": self.experiment, "grid": self.grid,
                           "seeds": list(self.seeds), "fixed": self.fixed})

    def to_dict(self):
        return {"name": self.name, "experiment": self.experiment, "grid": self.grid,
                "seeds": list(self.seeds), "fixed": self.fixed}

    @classmethod
    def from_dict(cls, d):
        """Validate a mapping (as read from TOML) and check it against its experiment."""
        from . import registry
        if not isinstance(d, dict):
            raise SpecError(f"a spec is a table of {', '.join(KEYS)}, got {type(d).__name__}")
        unknown = sorted(set(d) - set(KEYS))
        if unknown:
            raise SpecError(f"unknown key(s) {unknown}; a spec has only {', '.join(KEYS)}")
        missing = [k for k in ("experiment", "grid", "seeds") if k not in d]
        if missing:
            raise SpecError(f"missing key(s) {missing}; a spec needs experiment, grid and seeds")
        spec = cls(name=d.get("name", d["experiment"]), experiment=d["experiment"],
                   grid=d["grid"], seeds=d["seeds"], fixed=d.get("fixed", {}))
        registry.get_experiment(spec.experiment).check(spec)
        return spec

    @classmethod
    def from_toml(cls, path):
        try:
            import tomllib
        except ImportError:  # Python 3.10
            import tomli as tomllib
        path = Path(path)
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as e:
            raise SpecError(f"cannot read spec file {path}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise SpecError(f"spec file {path} is not valid TOML: {e}") from None
        try:
            return cls.from_dict(data)
        except SpecError as e:
            raise SpecError(f"{path}: {e}") from None
