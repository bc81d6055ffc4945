"""Parsers for the file-backed data sets (numpy only; no pickle).

Each loader resolves its files (see fetch), checks their sha256, and parses
the checked bytes.
"""
import io
import struct

import numpy as np

from .dataset import Dataset
from .fetch import CorruptFileError, expected_sha256, read_verified, resolve
from .registry import SOURCES

SUBSETS = ("train", "test")


def _read(name, files, path, download, sha256=None, allow_unverified=False):
    """(origin, {file: checked content}) for `files` of data set `name`."""
    source = SOURCES[name]
    digests = expected_sha256(source, files, sha256, allow_unverified)
    origin, paths = resolve(source, files, path, download, digests)
    return origin, {f: read_verified(paths[f], source.file(f), digests[f]) for f in files}


def _check_subset(subset, allowed=SUBSETS):
    if subset not in allowed:
        raise ValueError(f"subset must be one of {allowed}, got {subset!r}")


def load_wine(path=None, download=True):
    """Red Wine Quality (1,599 x 11); y = quality score (3..8), a regression target."""
    f = "winequality-red.csv"
    origin, data = _read("wine-quality", [f], path, download)
    text = data[f].decode("ascii")
    header = [h.strip('"') for h in text.split("\n", 1)[0].split(";")]
    table = np.loadtxt(io.StringIO(text), delimiter=";", skiprows=1, ndmin=2)
    return Dataset(table[:, :-1], table[:, -1], "wine-quality", header[:-1], "regression",
                   {"origin": origin, "target": header[-1]})


BOSTON_COLUMNS = ("CRIM", "ZN", "INDUS", "CHAS", "NOX", "RM", "AGE", "DIS", "RAD", "TAX",
                  "PTRATIO", "B", "LSTAT")


def load_boston(path=None, download=True):
    """Boston Housing (506 x 13, UCI housing.data); y = MEDV ($1000s), regression."""
    f = "housing.data"
    origin, data = _read("boston-housing", [f], path, download)
    table = np.loadtxt(io.BytesIO(data[f]), ndmin=2)
    return Dataset(table[:, :-1], table[:, -1], "boston-housing", BOSTON_COLUMNS,
                   "regression", {"origin": origin, "target": "MEDV"})


ADULT_COLUMNS = ("age", "workclass", "fnlwgt", "education", "education-num",
                 "marital-status", "occupation", "relationship", "race", "sex",
                 "capital-gain", "capital-loss", "hours-per-week", "native-country")
ADULT_CATEGORICAL = ("workclass", "education", "marital-status", "occupation",
                     "relationship", "race", "sex", "native-country")


def _adult_rows(text, skip):
    lines = text.splitlines()[skip:]
    return [line.split(", ") for line in lines if line.strip()]


def load_adult(subset="all", path=None, download=True):
    """Adult / Census Income: adult.data (32,561 rows) then adult.test (16,281).

    Categorical attributes become integers (paper 000 "translates categorical
    attributes to integers"): the code of a value is its index among the sorted
    distinct values of that column over train+test, so codes do not depend on
    `subset`; a missing value "?" is a category of its own (it sorts first, code
    0, in the columns that have it). `meta["categories"]` maps each categorical
    column to its values in code order. y = 1 for income ">50K", 0 for "<=50K".
    `subset`: "all" (train then test; `meta["n_train"]` rows of train), "train", "test".
    """
    _check_subset(subset, ("all",) + SUBSETS)
    origin, data = _read("adult", ["adult.data", "adult.test"], path, download)
    train = _adult_rows(data["adult.data"].decode("ascii"), 0)
    test = _adult_rows(data["adult.test"].decode("ascii"), 1)  # line 1: "|1x3 Cross validator"
    rows = train + test
    if any(len(r) != 15 for r in rows):
        raise CorruptFileError("adult.data/adult.test: a row does not have 15 fields")
    cols = list(zip(*rows))
    X = np.empty((len(rows), len(ADULT_COLUMNS)))
    categories = {}
    for j, name in enumerate(ADULT_COLUMNS):
        if name in ADULT_CATEGORICAL:
            values, codes = np.unique(np.array(cols[j]), return_inverse=True)
            X[:, j] = codes
            categories[name] = tuple(values.tolist())
        else:
            X[:, j] = np.array(cols[j], dtype=np.float64)
    labels = np.array([v.rstrip(".") for v in cols[14]])
    if not np.isin(labels, (">50K", "<=50K")).all():
        raise CorruptFileError("adult.data/adult.test: income labels other than <=50K, >50K")
    y = (labels == ">50K").astype(np.float64)
    rows_of = {"all": slice(None), "train": slice(0, len(train)),
               "test": slice(len(train), None)}[subset]
    meta = {"origin": origin, "target": "income>50K", "categories": categories,
            "n_train": len(train) if subset == "all" else None, "subset": subset}
    return Dataset(X[rows_of], y[rows_of], "adult", ADULT_COLUMNS, "binary", meta)


def _parse_idx(data, name, ndim):
    """Parse an IDX array of uint8 (ndim 1: labels, 3: images) from decompressed bytes."""
    magic = 0x800 + ndim
    head = 4 + 4 * ndim
    if len(data) < head or struct.unpack(">i", data[:4])[0] != magic:
        raise CorruptFileError(f"{name}: not an IDX file with magic {magic}")
    dims = struct.unpack(f">{ndim}i", data[4:head])
    if len(data) != head + int(np.prod(dims)):
        raise CorruptFileError(f"{name}: {len(data) - head} data bytes, header says {dims}")
    return np.frombuffer(data, np.uint8, offset=head).reshape(dims[0], -1 if ndim > 1 else 1)


def _load_idx(name, classes, subset, path, download, class_names):
    _check_subset(subset)
    prefix = "train" if subset == "train" else "t10k"
    fx, fy = f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"
    origin, data = _read(name, [fx, fy], path, download)
    images, labels = _parse_idx(data[fx], fx, 3), _parse_idx(data[fy], fy, 1)[:, 0]
    if len(images) != len(labels):
        raise CorruptFileError(f"{fx} has {len(images)} images but {fy} {len(labels)} labels")
    meta = {"origin": origin, "subset": subset, "class_names": class_names}
    pixels = tuple(f"pixel{i}" for i in range(images.shape[1]))
    if classes is None:
        return Dataset(images / 255.0, labels, name, pixels, "multiclass", meta)
    a, b = _check_pair(classes, len(class_names))
    keep = (labels == a) | (labels == b)
    meta["classes"] = {0: (a, class_names[a]), 1: (b, class_names[b])}
    return Dataset(images[keep] / 255.0, labels[keep] == b, name, pixels, "binary", meta)


def _check_pair(classes, k):
    try:
        a, b = (int(c) for c in classes)
    except (TypeError, ValueError):
        raise ValueError(f"classes must be a pair of labels, e.g. (0, 8), got {classes!r}") from None
    if a == b or not (0 <= a < k and 0 <= b < k):
        raise ValueError(f"classes must be two different labels in 0..{k - 1}, got {classes!r}")
    return a, b


def load_mnist(classes=(0, 8), subset="train", path=None, download=True):
    """MNIST digits, pixels scaled to [0, 1] (784 features).

    `classes=(a, b)`: the binary task a vs b with y = 0 for a and 1 for b
    (default 0 vs 8, paper 002: 11,774 train / 1,954 test images); `classes=None`:
    all ten digits, y = the digit. `subset`: "train" (60,000) or "test" (10,000).
    """
    return _load_idx("mnist", classes, subset, path, download, tuple(str(d) for d in range(10)))


FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot")


def load_fashion_mnist(classes=(0, 2), subset="train", path=None, download=True):
    """Fashion-MNIST, pixels scaled to [0, 1] (784 features).

    Default `classes=(0, 2)`: T-shirt/top (y = 0) vs Pullover (y = 1), paper 002:
    12,000 train / 2,000 test images. Otherwise as load_mnist.
    """
    return _load_idx("fashion-mnist", classes, subset, path, download, FASHION_CLASSES)


def load_dogfish(subset="train", path=None, download=True, sha256=None,
                 allow_unverified=False):
    """ImageNet dog vs fish Inception-v3 features of Koh & Liang (2017), 2,048 features.

    The npz files hold ``inception_features_val`` and ``labels`` (0/1, kept as
    stored: 0 = dog, 1 = fish in the order of the name, as Koh & Liang's loader
    builds them; their poisoning code maps them to -1/+1). No checksum of them is published:
    pass `sha256={file name: hex}` of a copy you trust, or `allow_unverified=True`
    (warns). Parsed with ``allow_pickle=False``.
    """
    _check_subset(subset)
    f = f"dogfish_900_300_inception_features_{subset}.npz"
    origin, data = _read("dogfish", [f], path, download, sha256, allow_unverified)
    try:
        with np.load(io.BytesIO(data[f]), allow_pickle=False) as npz:
            X, y = npz["inception_features_val"], npz["labels"]
    except (ValueError, KeyError, OSError) as e:
        raise CorruptFileError(f"{f}: not an npz with inception_features_val and labels "
                               f"({e})") from None
    return Dataset(X.reshape(len(X), -1), y.ravel(), "dogfish",
                   tuple(f"inception{i}" for i in range(X[0].size)), "binary",
                   {"origin": origin, "subset": subset, "classes": {0: "dog", 1: "fish"}})
