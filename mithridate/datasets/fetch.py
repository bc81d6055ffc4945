"""Find, check and download data files.

Resolution order: an explicit ``path=`` folder, then ``$MITHRIDATE_DATA/<folder>/``,
then the user cache ``$XDG_CACHE_HOME/mithridate/<folder>/`` (default
``~/.cache/mithridate``), then a download from the data set's home into the cache.
Every file's sha256 is checked before it is parsed, and loaders parse the very
bytes that were checked (no window for the file to change in between).
"""
import gzip
import hashlib
import io
import os
import re
import shutil
import tempfile
import urllib.request
import warnings
import zlib
from pathlib import Path

# Module attribute so tests can serve downloads from a temporary folder.
_urlopen = urllib.request.urlopen

# (realpath, size, mtime_ns, sha256) of files whose checksum already matched in
# this process: repeated loads skip hashing.
_VERIFIED = set()


class DataNotFoundError(FileNotFoundError):
    """A data set's files are not in any searched folder and could not be downloaded."""


class CorruptFileError(OSError):
    """A data file's checksum does not match, or it cannot be decompressed."""


class ChecksumUnknownError(ValueError):
    """No sha256 is known for a file and the caller did not accept unverified data."""


def env_dir(source):
    """``$MITHRIDATE_DATA/<folder>`` or None when the variable is unset or empty."""
    root = os.environ.get("MITHRIDATE_DATA")
    return Path(root).expanduser() / source.folder if root else None


def cache_dir(source):
    """The user cache folder of `source` (honours ``XDG_CACHE_HOME``)."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root).expanduser() / "mithridate" / source.folder


def search_dirs(source):
    """[(origin, folder)] searched when no explicit path is given, in order."""
    dirs = [("env", env_dir(source)), ("cache", cache_dir(source))]
    return [(origin, d) for origin, d in dirs if d is not None]


def locate(source, files=None):
    """(origin, folder) of the first searched folder holding `files` (default: all of
    `source`'s), else ("missing", None)."""
    files = files or [f.name for f in source.files]
    for origin, d in search_dirs(source):
        if all((d / name).is_file() for name in files):
            return origin, d
    return "missing", None


def expected_sha256(source, files, sha256=None, allow_unverified=False):
    """{file name: sha256 or None} for `files`, from `sha256` overrides then the registry.

    Raises ChecksumUnknownError for a file with no known checksum unless
    `allow_unverified` (then warns: such a file is parsed unchecked).
    """
    sha256 = dict(sha256 or {})
    names = {f.name for f in source.files}
    for name, digest in sha256.items():
        if name not in names:
            raise ValueError(f"sha256: {name!r} is not a file of {source.name!r}; "
                             f"its files are {sorted(names)}")
        if not (isinstance(digest, str) and re.fullmatch(r"[0-9a-fA-F]{64}", digest)):
            raise ValueError(f"sha256[{name!r}] must be 64 hex digits, got {digest!r}")
    out = {n: (sha256.get(n) or source.file(n).sha256 or None) for n in files}
    unknown = [n for n, d in out.items() if d is None]
    if unknown and not allow_unverified:
        raise ChecksumUnknownError(
            f"no sha256 is known for {', '.join(unknown)} ({source.name}); pass "
            f"sha256={{'{unknown[0]}': '<64 hex digits>', ...}} with the checksums of a copy "
            f"you trust, or allow_unverified=True to load the files unchecked")
    if unknown:
        warnings.warn(f"{source.name}: loading {', '.join(unknown)} without a checksum "
                      f"(allow_unverified=True)", stacklevel=3)
    return {n: (d.lower() if d else None) for n, d in out.items()}


def _content(path, spec):
    """The bytes to checksum and parse: the file, or its decompressed content."""
    data = Path(path).read_bytes()
    if not spec.gunzip:
        return data
    try:
        # Bounded read: a corrupt or hostile stream cannot inflate without limit.
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as gz:
            out = gz.read(spec.size + 1 if spec.size else -1)
    except (OSError, EOFError, zlib.error) as e:
        raise CorruptFileError(f"{path}: cannot decompress ({e}); the file is truncated or "
                               f"damaged: delete it and fetch it again") from None
    if spec.size is not None and len(out) != spec.size:
        raise CorruptFileError(f"{path}: decompresses to {len(out)} bytes, expected "
                               f"{spec.size}: delete it and fetch it again")
    return out


def _check(path, spec, data, digest):
    got = hashlib.sha256(data).hexdigest()
    if got != digest:
        what = "decompressed content" if spec.gunzip else "file"
        raise CorruptFileError(f"{path}: sha256 of the {what} is {got}, expected {digest}; "
                               f"the file is corrupt or not {spec.name}: delete it and "
                               f"fetch it again")


def read_verified(path, spec, digest, use_cache=True):
    """The content of `path` (decompressed for ``.gz`` specs) after its sha256 matched.

    `digest` None skips the check (the caller accepted unverified data);
    `use_cache=False` hashes even a file this process already verified.
    """
    path = Path(path)
    st = path.stat()
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns, digest)
    data = _content(path, spec)
    if digest is not None and not (use_cache and key in _VERIFIED):
        _check(path, spec, data, digest)
        _VERIFIED.add(key)
    return data


def download(spec, folder, digest):
    """Fetch `spec.url` into `folder`/`spec.name`, checked, via a temp file and os.replace.

    A failed or mismatching download leaves nothing behind.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{spec.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, _urlopen(spec.url, timeout=60) as resp:
            shutil.copyfileobj(resp, out)
        if digest is not None:
            try:
                _check(spec.url, spec, _content(tmp, spec), digest)
            except CorruptFileError as e:
                raise CorruptFileError(f"download {e}") from None
        os.replace(tmp, folder / spec.name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return folder / spec.name


def resolve(source, files, path=None, download_missing=True, digests=None):
    """(origin, {file name: Path}) for `files` of `source`, in the resolution order.

    origin is "path", "env", "cache" or "download".

    `path`: a folder that must hold the files (no fallback). Otherwise the first
    complete searched folder; else missing files are downloaded into the cache.
    """
    names = list(files)
    if path is not None:
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise DataNotFoundError(f"path={str(path)!r} is not a folder; pass the folder "
                                    f"holding {', '.join(names)}")
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise DataNotFoundError(f"{source.name}: {', '.join(missing)} not found in "
                                    f"path={str(folder)!r}; put the files there")
        return "path", {n: folder / n for n in names}
    origin, folder = locate(source, names)
    if folder is not None:
        return origin, {n: folder / n for n in names}
    cache = cache_dir(source)
    missing = [source.file(n) for n in names if not (cache / n).is_file()]
    failure = "downloads disabled (download=False)"
    if download_missing:
        try:
            for spec in missing:
                download(spec, cache, (digests or {}).get(spec.name))
            return "download", {n: cache / n for n in names}
        except (OSError, ValueError) as e:
            if isinstance(e, CorruptFileError):
                raise
            failure = f"download failed: {e}"
    places = [f"{o} {d}" for o, d in search_dirs(source)]
    if env_dir(source) is None:
        places.insert(0, "$MITHRIDATE_DATA (not set)")
    raise DataNotFoundError(
        f"{source.name}: missing {', '.join(f.name for f in missing)}; searched "
        f"{'; '.join(places)}; {failure} (from {source.files[0].url.rsplit('/', 1)[0]}/). "
        f"Put the files in {cache} or in <dir>/{source.folder}/ with MITHRIDATE_DATA=<dir>, "
        f"or pass path=<folder>")
