"""mithridate.datasets: loaders on ../shared/data, checksums, resolution, download, splits, CLI."""
import gzip
import hashlib
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from mithridate import datasets as D
from mithridate.cli import main
from mithridate.datasets import fetch, registry

DATA = Path(os.environ.get("MITHRIDATE_DATA", "/nonexistent"))
needs_data = pytest.mark.skipif(not (DATA / "mnist").is_dir(),
                                reason="MITHRIDATE_DATA does not hold ../shared/data")


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No env folder, an empty cache, and any network access is an error."""
    monkeypatch.delenv("MITHRIDATE_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def offline(url, timeout=None):
        raise OSError(f"offline (test): {url}")
    monkeypatch.setattr(fetch, "_urlopen", offline)
    return tmp_path


def _copy(folder, dest):
    shutil.copytree(DATA / folder, dest / folder)
    return dest / folder


# ---------------------------------------------------------------- real files

@needs_data
def test_wine_boston_shapes_and_labels():
    w = D.load("wine-quality")
    assert w.X.shape == (1599, 11) and w.task == "regression" and w.meta["origin"] == "env"
    assert w.X.flags.c_contiguous and w.X.dtype == np.float64
    values, counts = np.unique(w.y, return_counts=True)
    assert dict(zip(values, counts)) == {3: 10, 4: 53, 5: 681, 6: 638, 7: 199, 8: 18}
    b = D.load("boston-housing")
    assert b.X.shape == (506, 13) and b.y.min() == 5.0 and b.y.max() == 50.0


@needs_data
def test_adult_encoding_and_labels():
    a = D.load_adult()
    assert a.X.shape == (48842, 14) and a.meta["n_train"] == 32561
    assert a.y[:32561].sum() == 7841 and a.y[32561:].sum() == 3846
    cats = a.meta["categories"]["workclass"]
    assert cats[0] == "?" and list(cats) == sorted(cats)
    assert (a.X[:, 1] == 0).sum() == 1836 + 963  # '?' workclass in train + test
    test = D.load_adult(subset="test")
    assert test.X.shape == (16281, 14)
    np.testing.assert_array_equal(test.X, a.X[32561:])  # codes independent of subset


@pytest.fixture(scope="module")
def mnist_train():
    if not (DATA / "mnist").is_dir():
        pytest.skip("MITHRIDATE_DATA does not hold ../shared/data")
    return D.load_mnist(classes=None)


def test_mnist_all_digits(mnist_train):
    assert mnist_train.X.shape == (60000, 784) and mnist_train.task == "multiclass"
    assert np.bincount(mnist_train.y.astype(int)).tolist() == [
        5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert 0.0 == mnist_train.X.min() and mnist_train.X.max() == 1.0
    assert abs(mnist_train.X.mean() - 0.1306604762738429) < 1e-12


@needs_data
def test_binary_pairs_of_paper002():
    m = D.load_mnist(subset="test")
    assert m.X.shape == (1954, 784) and np.bincount(m.y.astype(int)).tolist() == [980, 974]
    assert m.meta["classes"] == {0: (0, "0"), 1: (8, "8")}
    f = D.load_fashion_mnist(subset="test")
    assert f.X.shape == (2000, 784) and f.y.sum() == 1000
    assert f.meta["classes"][1] == (2, "Pullover")
    with pytest.raises(ValueError, match="classes"):
        D.load_mnist(classes=(3, 3))
    with pytest.raises(ValueError, match="subset"):
        D.load_mnist(subset="val")


# ---------------------------------------------------------------- corruption

@needs_data
def test_flipped_byte_is_named(isolated):
    folder = _copy("wine-quality", isolated)
    f = folder / "winequality-red.csv"
    raw = bytearray(f.read_bytes())
    raw[100] ^= 1
    f.write_bytes(raw)
    with pytest.raises(D.CorruptFileError, match="winequality-red.csv.*sha256"):
        D.load_wine(path=folder)


@needs_data
def test_truncated_gz_is_named(isolated):
    folder = _copy("mnist", isolated)
    f = folder / "t10k-labels-idx1-ubyte.gz"
    f.write_bytes(f.read_bytes()[:-50])
    with pytest.raises(D.CorruptFileError, match="t10k-labels-idx1-ubyte.gz"):
        D.load_mnist(subset="test", path=folder)


def test_recompressed_gz_verifies_by_content(isolated):
    """A different gzip wrapper of the canonical content is accepted (MNIST train images)."""
    spec = registry.FileSpec("x.gz", hashlib.sha256(b"abc").hexdigest(), 3, "", gunzip=True)
    for level in (1, 9):
        p = isolated / f"x{level}.gz"
        p.write_bytes(gzip.compress(b"abc", compresslevel=level, mtime=level))
        assert fetch.read_verified(p, spec, spec.sha256) == b"abc"
    p.write_bytes(gzip.compress(b"abd"))
    with pytest.raises(D.CorruptFileError, match="decompressed content"):
        fetch.read_verified(p, spec, spec.sha256)


# ---------------------------------------------------------------- resolution

def test_missing_offline_names_files_and_places(isolated):
    with pytest.raises(D.DataNotFoundError) as e:
        D.load_adult()
    msg = str(e.value)
    assert "adult.data" in msg and "adult.test" in msg and "MITHRIDATE_DATA" in msg
    assert str(isolated / "cache" / "mithridate" / "adult") in msg and "offline" in msg
    assert isinstance(e.value, FileNotFoundError)
    with pytest.raises(D.DataNotFoundError, match="download=False"):
        D.load_adult(download=False)
    with pytest.raises(D.DataNotFoundError, match="adult.test.*path="):
        (isolated / "empty").mkdir()
        D.load_adult(path=isolated / "empty")


def _fake_wine(root, label):
    """A one-row wine folder under `root`; returns (folder, sha256 of its csv)."""
    d = root / "wine-quality"
    d.mkdir(parents=True)
    content = f'"a";"quality"\n{label};5\n'.encode()
    (d / "winequality-red.csv").write_bytes(content)
    return d, hashlib.sha256(content).hexdigest()


def test_resolution_order(isolated, monkeypatch):
    roots = {"path": isolated / "p", "env": isolated / "env",
             "cache": isolated / "cache" / "mithridate"}
    made = {k: _fake_wine(root, i + 1.0) for i, (k, root) in enumerate(roots.items())}
    dirs, digests = {k: v[0] for k, v in made.items()}, {k: v[1] for k, v in made.items()}
    monkeypatch.setenv("MITHRIDATE_DATA", str(roots["env"]))
    spec = registry.SOURCES["wine-quality"].files[0]

    def load(kind, **kw):
        s = registry.Source("wine-quality", "wine-quality",
                            (registry.FileSpec(spec.name, digests[kind], None, spec.url),), "")
        monkeypatch.setitem(registry.SOURCES, "wine-quality", s)
        return D.load_wine(**kw)
    assert load("path", path=dirs["path"]).X[0, 0] == 1.0
    ds = load("env")
    assert ds.X[0, 0] == 2.0 and ds.meta["origin"] == "env"
    monkeypatch.delenv("MITHRIDATE_DATA")
    ds = load("cache")
    assert ds.X[0, 0] == 3.0 and ds.meta["origin"] == "cache"


# ---------------------------------------------------------------- download

@pytest.fixture
def served(isolated, monkeypatch):
    """Serve files of a fake data set from a folder, as urlopen would."""
    content = b'"a";"quality"\n7.5;6\n'
    server = isolated / "server"
    server.mkdir()
    (server / "winequality-red.csv").write_bytes(content)

    def opener(url, timeout=None):
        return open(server / url.rsplit("/", 1)[1], "rb")
    monkeypatch.setattr(fetch, "_urlopen", opener)

    def register(digest):
        spec = registry.FileSpec("winequality-red.csv", digest, len(content),
                                 "https://example.invalid/wine/winequality-red.csv")
        monkeypatch.setitem(registry.SOURCES, "wine-quality",
                            registry.Source("wine-quality", "wine-quality", (spec,), ""))
    return content, register, isolated / "cache" / "mithridate" / "wine-quality"


def test_download_writes_into_cache(served):
    content, register, cache = served
    register(hashlib.sha256(content).hexdigest())
    ds = D.load_wine()
    assert ds.meta["origin"] == "download" and ds.X[0, 0] == 7.5
    assert os.listdir(cache) == ["winequality-red.csv"]  # no temp file left
    assert D.load_wine().meta["origin"] == "cache"


def test_download_checksum_mismatch_leaves_nothing(served):
    _, register, cache = served
    register("0" * 64)
    with pytest.raises(D.CorruptFileError, match="download.*winequality-red.csv"):
        D.load_wine()
    assert not cache.exists() or os.listdir(cache) == []


def test_download_via_file_url(isolated, monkeypatch):
    """The real urllib opener, on a file:// URL."""
    import urllib.request
    monkeypatch.setattr(fetch, "_urlopen", urllib.request.urlopen)
    src = isolated / "f.bin"
    src.write_bytes(b"payload")
    spec = registry.FileSpec("f.bin", hashlib.sha256(b"payload").hexdigest(), 7, src.as_uri())
    out = fetch.download(spec, isolated / "dest", spec.sha256)
    assert out.read_bytes() == b"payload"


def test_dogfish_needs_a_checksum(isolated):
    with pytest.raises(D.ChecksumUnknownError, match="sha256=.*allow_unverified"):
        D.load_dogfish()
    with pytest.raises(ValueError, match="64 hex"):
        D.load_dogfish(sha256={"dogfish_900_300_inception_features_train.npz": "xyz"})


def test_dogfish_npz_without_pickle(isolated):
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    np.savez(buf, inception_features_val=rng.normal(size=(6, 2048)), labels=np.array([0, 1] * 3))
    name = "dogfish_900_300_inception_features_test.npz"
    d = isolated / "dog"
    d.mkdir()
    (d / name).write_bytes(buf.getvalue())
    ds = D.load_dogfish("test", path=d, sha256={name: hashlib.sha256(buf.getvalue()).hexdigest()})
    assert ds.X.shape == (6, 2048) and ds.y.tolist() == [0, 1] * 3
    with pytest.warns(UserWarning, match="without a checksum"):
        D.load_dogfish("test", path=d, allow_unverified=True)
    buf = io.BytesIO()
    np.savez(buf, inception_features_val=np.array([{"a": 1}], dtype=object), labels=[0])
    (d / name).write_bytes(buf.getvalue())
    with pytest.raises(D.CorruptFileError, match=name), pytest.warns(UserWarning):
        D.load_dogfish("test", path=d, allow_unverified=True)


# ---------------------------------------------------------------- embedded, dispatch

def test_embedded_defaults_offline(isolated):
    assert D.load("digits").X.shape == (1797, 64)
    assert D.load("digits", classes=(0, 8)).task == "binary"
    assert D.load("diabetes").X.shape == (442, 10)
    bc = D.load("breast-cancer")
    assert bc.X.shape == (569, 30) and set(bc.y) == {0.0, 1.0}
    with pytest.raises(ValueError, match="unknown data set 'nope'.*mnist"):
        D.load("nope")


def test_gaussian_2d_of_paper002():
    g = D.make_gaussian_2d(n_per_class=2000, seed=1)
    np.testing.assert_allclose(g.X[g.y == 0].mean(0), [-3, 0], atol=0.1)
    np.testing.assert_allclose(np.cov(g.X[g.y == 1].T), np.diag([2.5, 1.5]), atol=0.15)
    train, val = D.gaussian_2d_paper002(seed=3)
    assert train.X.shape == (32, 2) and val.X.shape == (64, 2)
    assert train.y.sum() == 16 and val.y.sum() == 32
    np.testing.assert_array_equal(D.gaussian_2d_paper002(seed=3)[1].X, val.X)


# ---------------------------------------------------------------- splits

def test_split_paper000():
    ds = D.load_diabetes()
    s = D.split_paper000(ds, seed=0)
    assert len(s.idx_train) + len(s.idx_test) == 442 and len(s.idx_test) == 221
    assert not set(s.idx_train) & set(s.idx_test)
    np.testing.assert_array_equal(s.X_test, ds.X[s.idx_test])
    np.testing.assert_array_equal(D.split_paper000(ds, seed=0).idx_train, s.idx_train)
    assert not np.array_equal(D.split_paper000(ds, seed=1).idx_train, s.idx_train)


@needs_data
def test_split_paper002_mnist():
    pool, test = D.load_mnist(), D.load_mnist(subset="test")
    s = D.split_paper002(pool, test, seed=4)
    assert s.X_train.shape == (512, 784) and s.X_val.shape == (171, 784)
    assert s.X_test.shape == (1954, 784)
    assert not set(s.idx_train) & set(s.idx_val)
    np.testing.assert_array_equal(D.split_paper002(pool, test, seed=4).idx_val, s.idx_val)
    with pytest.raises(ValueError, match="n_train"):
        D.split_paper002(pool, test, seed=0, n_train=20000)


# ---------------------------------------------------------------- CLI

@needs_data
def test_cli_list_and_verify(capsys):
    assert main(["datasets", "list"]) == 0
    out = capsys.readouterr().out
    assert "mnist" in out and "embedded" in out and "env" in out
    assert main(["datasets", "verify", "wine-quality", "mnist", "digits"]) == 0
    out = capsys.readouterr().out
    assert "5 ok" in out and "embedded" in out
    assert main(["datasets", "verify", "nope"]) == 2
    assert "unknown data set 'nope'" in capsys.readouterr().err


@needs_data
def test_cli_verify_corrupt_and_missing(isolated, monkeypatch, capsys):
    folder = _copy("boston-housing", isolated / "env")
    monkeypatch.setenv("MITHRIDATE_DATA", str(isolated / "env"))
    with open(folder / "housing.data", "r+b") as f:
        f.seek(10)
        f.write(b"9")
    assert main(["datasets", "verify", "boston-housing", "adult"]) == 1
    out = capsys.readouterr().out
    assert "CORRUPT" in out and "housing.data" in out
    assert "MISSING    adult/adult.data" in out
    assert main(["datasets", "verify", "adult"]) == 0
