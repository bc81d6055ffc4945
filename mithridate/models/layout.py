"""Parameter layout: one flat vector theta of named groups, one hyperparameter per penalised group."""
from dataclasses import dataclass


@dataclass(frozen=True)
class Layout:
    """``groups``: ((name, size), ...) in flat order; ``penalised``: the names
    that carry an L2 hyperparameter, in the order of the lam vector."""
    groups: tuple
    penalised: tuple

    def __post_init__(self):
        groups = tuple((str(name), int(size)) for name, size in self.groups)
        names = [name for name, _ in groups]
        if not groups or len(set(names)) != len(names) or any(size < 1 for _, size in groups):
            raise ValueError(f"groups={self.groups!r} must be a non-empty tuple of (name, size) "
                             "pairs with distinct names and sizes >= 1.")
        penalised = tuple(self.penalised)
        unknown = [g for g in penalised if g not in names]
        if unknown or len(set(penalised)) != len(penalised):
            raise ValueError(f"penalised={self.penalised!r} must name distinct groups of {names}.")
        object.__setattr__(self, "groups", groups)
        object.__setattr__(self, "penalised", penalised)
        starts, start = {}, 0
        for name, size in groups:
            starts[name] = slice(start, start + size)
            start += size
        object.__setattr__(self, "_slices", starts)

    @property
    def size(self):
        """p, the length of theta."""
        return sum(size for _, size in self.groups)

    @property
    def n_lam(self):
        """Length of the lam vector."""
        return len(self.penalised)

    def slice(self, name):
        """theta[layout.slice(name)] is group ``name``."""
        try:
            return self._slices[name]
        except KeyError:
            raise KeyError(f"no group {name!r}; the groups are {[g for g, _ in self.groups]}.") from None
