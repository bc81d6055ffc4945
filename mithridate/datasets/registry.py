"""What each file-backed data set is made of: file names, checksums, sizes, homes.

Checksums are those of ../shared/data (see its README). IDX ``.gz`` files are
checked by the sha256 of their *decompressed* content: the gzip wrapper can
legitimately differ between copies (the shared MNIST train-images file was
recompressed) while the IDX bytes are canonical.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class FileSpec:
    """One file: its name, sha256 and size, where it can be downloaded from.

    ``gunzip=True``: `sha256` and `size` are those of the decompressed content.
    ``sha256=None``: no published checksum is known (the caller must supply one).
    """
    name: str
    sha256: str | None
    size: int | None
    url: str
    gunzip: bool = False


@dataclass(frozen=True)
class Source:
    """A file-backed data set: the folder it lives in and its files."""
    name: str
    folder: str
    files: tuple
    home: str

    def file(self, name):
        return next(f for f in self.files if f.name == name)


_UCI = "https://archive.ics.uci.edu/ml/machine-learning-databases"
_LECUN = "http://yann.lecun.com/exdb/mnist"
_ZALANDO = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com"
_KOH = "http://mitra.stanford.edu/kundaje/pangwei"


def _idx(base, name, sha256, size):
    return FileSpec(name, sha256, size, f"{base}/{name}", gunzip=True)


SOURCES = {s.name: s for s in (
    Source("wine-quality", "wine-quality", (
        FileSpec("winequality-red.csv",
                 "4a402cf041b025d4566d954c3b9ba8635a3a8a01e039005d97d6a710278cf05e", 84199,
                 f"{_UCI}/wine-quality/winequality-red.csv"),
    ), "https://archive.ics.uci.edu/dataset/186/wine+quality"),
    Source("boston-housing", "boston-housing", (
        FileSpec("housing.data",
                 "baadf72995725d76efe787b664e1f083388c79ba21ef9a7990d87f774184735a", 49082,
                 f"{_UCI}/housing/housing.data"),
    ), "UCI Machine Learning Repository, Housing (StatLib)"),
    Source("adult", "adult", (
        FileSpec("adult.data",
                 "5b00264637dbfec36bdeaab5676b0b309ff9eb788d63554ca0a249491c86603d", 3974305,
                 f"{_UCI}/adult/adult.data"),
        FileSpec("adult.test",
                 "a2a9044bc167a35b2361efbabec64e89d69ce82d9790d2980119aac5fd7e9c05", 2003153,
                 f"{_UCI}/adult/adult.test"),
    ), "https://archive.ics.uci.edu/dataset/2/adult"),
    Source("mnist", "mnist", (
        _idx(_LECUN, "train-images-idx3-ubyte.gz",
             "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db", 47040016),
        _idx(_LECUN, "train-labels-idx1-ubyte.gz",
             "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5", 60008),
        _idx(_LECUN, "t10k-images-idx3-ubyte.gz",
             "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7", 7840016),
        _idx(_LECUN, "t10k-labels-idx1-ubyte.gz",
             "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2", 10008),
    ), _LECUN),
    Source("fashion-mnist", "fashion-mnist", (
        _idx(_ZALANDO, "train-images-idx3-ubyte.gz",
             "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888", 47040016),
        _idx(_ZALANDO, "train-labels-idx1-ubyte.gz",
             "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9", 60008),
        _idx(_ZALANDO, "t10k-images-idx3-ubyte.gz",
             "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b", 7840016),
        _idx(_ZALANDO, "t10k-labels-idx1-ubyte.gz",
             "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34", 10008),
    ), "https://github.com/zalandoresearch/fashion-mnist"),
    # Koh & Liang (2017) Inception-v3 features. No published checksum exists and no
    # copy could be reached to compute one: loads need sha256= or allow_unverified=True.
    Source("dogfish", "dogfish", (
        FileSpec("dogfish_900_300_inception_features_train.npz", None, None,
                 f"{_KOH}/dogfish_900_300_inception_features_train.npz"),
        FileSpec("dogfish_900_300_inception_features_test.npz", None, None,
                 f"{_KOH}/dogfish_900_300_inception_features_test.npz"),
    ), "Koh & Liang (2017), https://worksheets.codalab.org (influence functions)"),
)}
