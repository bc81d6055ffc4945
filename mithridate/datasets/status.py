"""What is present and valid: the data behind ``mithridate datasets list|verify``."""
from .fetch import CorruptFileError, locate, read_verified, search_dirs
from .registry import SOURCES

EMBEDDED_FROM = {"digits": "scikit-learn", "diabetes": "scikit-learn",
                 "breast-cancer": "scikit-learn", "gaussian-2d": "generated"}


def where(source):
    """"env", "cache", "partial" (some files in some searched folder) or "missing"."""
    origin, _ = locate(source)
    if origin != "missing":
        return origin
    present = any((d / f.name).is_file() for _, d in search_dirs(source) for f in source.files)
    return "partial" if present else "missing"


def list_rows():
    """[(name, folder, where, files)] for every data set, file-backed then embedded."""
    rows = [(s.name, s.folder, where(s), ", ".join(f.name for f in s.files))
            for s in SOURCES.values()]
    return rows + [(n, "-", "embedded", src) for n, src in EMBEDDED_FROM.items()]


def verify_rows(source):
    """[(state, file, detail)] per file: state is "ok", "corrupt", "unverified" or "missing".

    Each file is taken from the first searched folder holding it and always re-hashed.
    """
    rows = []
    for spec in source.files:
        found = [(o, d / spec.name) for o, d in search_dirs(source) if (d / spec.name).is_file()]
        label = f"{source.folder}/{spec.name}"
        if not found:
            places = " or ".join(str(d) for _, d in search_dirs(source))
            rows.append(("missing", label, f"put it in {places}"))
            continue
        origin, path = found[0]
        if spec.sha256 is None:
            rows.append(("unverified", label, f"{origin}: {path} (no published sha256)"))
            continue
        try:
            read_verified(path, spec, spec.sha256, use_cache=False)
            rows.append(("ok", label, f"{origin}: {path}"))
        except CorruptFileError as e:
            rows.append(("corrupt", label, str(e)))
    return rows
