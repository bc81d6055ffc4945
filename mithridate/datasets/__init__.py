"""Data sets: loaders with resolution, checksums and download; embedded defaults; splits.

File-backed data sets are looked for in an explicit ``path=`` folder, then
``$MITHRIDATE_DATA/<folder>/``, then ``~/.cache/mithridate/<folder>/``
(``$XDG_CACHE_HOME`` honoured), then downloaded from their home into the cache.
Every file's sha256 is checked before parsing. ``load(name, **kw)`` dispatches
by name; every loader returns a :class:`Dataset`.
"""
from .dataset import Dataset
from .embedded import load_breast_cancer, load_diabetes, load_digits
from .fetch import ChecksumUnknownError, CorruptFileError, DataNotFoundError
from .loaders import (load_adult, load_boston, load_dogfish, load_fashion_mnist, load_mnist,
                      load_wine)
from .registry import SOURCES
from .splits import Split, split_paper000, split_paper002
from .synthetic import gaussian_2d_paper002, make_gaussian_2d

LOADERS = {
    "wine-quality": load_wine,
    "boston-housing": load_boston,
    "adult": load_adult,
    "mnist": load_mnist,
    "fashion-mnist": load_fashion_mnist,
    "dogfish": load_dogfish,
    "digits": load_digits,
    "diabetes": load_diabetes,
    "breast-cancer": load_breast_cancer,
    "gaussian-2d": make_gaussian_2d,
}
# Names that need no file: they work on a fresh offline machine.
EMBEDDED = ("digits", "diabetes", "breast-cancer", "gaussian-2d")


def names():
    """Every name `load` accepts."""
    return tuple(LOADERS)


def check_name(name):
    """`name` if known, else a ValueError listing the known names."""
    if name not in LOADERS:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(LOADERS)}")
    return name


def load(name, **kwargs):
    """Load data set `name` (see `names()`); `kwargs` go to its loader."""
    return LOADERS[check_name(name)](**kwargs)


__all__ = ["Dataset", "Split", "SOURCES", "LOADERS", "EMBEDDED", "names", "load",
           "check_name", "DataNotFoundError", "CorruptFileError", "ChecksumUnknownError",
           "load_wine", "load_boston", "load_adult", "load_mnist", "load_fashion_mnist",
           "load_dogfish", "load_digits", "load_diabetes", "load_breast_cancer",
           "make_gaussian_2d", "gaussian_2d_paper002", "split_paper000", "split_paper002"]
