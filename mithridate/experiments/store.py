"""The results store: one SQLite file, ``OUT/results.sqlite``, one row per finished config.

Why SQLite: each finished batch is committed in one transaction, so a crash or
SIGKILL at any instant leaves every committed row intact and no partial batch
(WAL journal; ``synchronous=NORMAL`` is durable against process death, only a
power cut may drop the last commits). The config key is the primary key, so a
resumed sweep can neither duplicate nor overwrite a row. It is a single file
with no server, readable by any SQLite client; Parquet and CSV are export
formats (``export``), not the store, because appending to them is not atomic.
"""
import json
import os
import sqlite3
import stat
import time
from contextlib import closing
from pathlib import Path

from .spec import config_key

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, config TEXT NOT NULL,
                                    metrics TEXT NOT NULL, finished_at REAL NOT NULL);
"""


class StoreError(ValueError):
    """The output directory cannot hold a results store (the message says what to do)."""


class StoreMismatchError(StoreError):
    """The store in the output directory was made by a different spec."""


def _foreign(path, why):
    return StoreError(f"{path} is not a mithridate results store ({why}); it was left "
                      f"untouched: choose another --out directory")


def read_meta(path):
    """The meta table of the store at ``path``, or None where there is none yet, read
    without writing to the file: anything else there raises StoreError and stays as it was."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StoreError(f"cannot read {path}: {e.strerror}; choose another --out directory")
    if not stat.S_ISREG(st.st_mode):
        raise _foreign(path, "not a regular file")
    if st.st_size == 0:  # sqlite3 creates the file empty, before the first commit
        return None
    with open(path, "rb") as f:
        header = f.read(100)
    if not header.startswith(b"SQLite format 3\x00") or len(header) < 100:
        raise _foreign(path, "not an SQLite database")
    # Read-only; a WAL-mode file without its -wal companion is complete on its own and
    # opened immutable, or SQLite would create the -wal and -shm files beside it.
    wal = header[18] == 2 and not os.path.exists(f"{path}-wal")
    uri = f"{Path(path).resolve().as_uri()}?mode=ro{'&immutable=1' if wal else ''}"
    try:
        with closing(sqlite3.connect(uri, uri=True, timeout=60)) as db:
            tables = {t for (t,) in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            if tables != {"meta", "results"}:
                raise _foreign(path, f"it holds the tables {sorted(tables)}")
            meta = dict(db.execute("SELECT key, value FROM meta"))
    except sqlite3.Error as e:
        raise _foreign(path, str(e)) from None
    if "fingerprint" not in meta:
        raise _foreign(path, "its meta table has no fingerprint")
    return meta


class ResultsStore:
    """Open (or create) ``out_dir``/results.sqlite for ``spec``. Nothing is written
    before the file is known to be empty or a store of this very spec."""

    def __init__(self, out_dir, spec):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / "results.sqlite"
        self.spec = spec
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot write results to {self.out_dir}: {e.strerror}; choose a "
                             f"writable --out directory") from None
        self._check(read_meta(self.path))
        try:
            if not os.access(self.out_dir, os.W_OK):
                raise PermissionError(13, "Permission denied")
            self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        except (OSError, sqlite3.Error) as e:
            raise StoreError(f"cannot write results to {self.out_dir}: "
                             f"{getattr(e, 'strerror', None) or e}; choose a writable --out "
                             f"directory") from None
        try:
            self._open()
        except sqlite3.Error as e:  # locked, read-only...
            self._db.close()
            raise StoreError(f"cannot use {self.path}: {e}; choose a writable --out "
                             f"directory") from None
        except StoreError:
            self._db.close()
            raise

    def _check(self, meta):
        if meta is not None and meta["fingerprint"] != self.spec.fingerprint():
            other = json.loads(meta.get("spec", "{}")).get("name", "?")
            raise StoreMismatchError(
                f"{self.path} holds results of spec {other!r} (fingerprint "
                f"{meta['fingerprint'][:12]}), not of spec {self.spec.name!r} "
                f"(fingerprint {self.spec.fingerprint()[:12]}); nothing was changed: choose "
                f"another --out directory, or rerun the original spec to resume it")

    def _open(self):
        # Again under the write lock: another run may have created the store meanwhile.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            tables = {t for (t,) in self._db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            if tables - {"meta", "results"}:
                raise _foreign(self.path, f"it holds the tables {sorted(tables)}")
            for statement in SCHEMA.split(";")[:-1]:
                self._db.execute(statement)
            meta = dict(self._db.execute("SELECT key, value FROM meta"))
            if meta and "fingerprint" not in meta:
                raise _foreign(self.path, "its meta table has no fingerprint")
            if not meta:
                self._db.executemany("INSERT INTO meta VALUES (?, ?)", [
                    ("fingerprint", self.spec.fingerprint()),
                    ("spec", json.dumps(self.spec.to_dict(), sort_keys=True))])
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._check(meta or None)
        self._db.execute("PRAGMA journal_mode=WAL")  # only now that the file is ours
        self._db.execute("PRAGMA synchronous=NORMAL")

    def done(self):
        """Keys of the configs already finished."""
        return {k for (k,) in self._db.execute("SELECT key FROM results")}

    def add(self, rows):
        """Commit ``[(config, metrics), ...]`` in one transaction; a row already there
        is kept as it was (first result wins). A failed write (disk full, file made
        read-only) raises StoreError; the rows committed before stay."""
        now = time.time()
        records = [(config_key(c), json.dumps(c, sort_keys=True), json.dumps(m), now)
                   for c, m in rows]
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany("INSERT OR IGNORE INTO results VALUES (?, ?, ?, ?)",
                                     records)
        except sqlite3.Error as e:
            raise StoreError(f"cannot write to {self.path}: {e}; the rows committed before "
                             f"are kept: free space or restore write access, then rerun the "
                             f"same command to resume") from None

    def frame(self):
        """One row per finished config, config columns then metrics, in spec order."""
        import pandas as pd
        configs = self.spec.configs()
        stored = {k: (json.loads(m)) for k, m in
                  self._db.execute("SELECT key, metrics FROM results")}
        records = [{**c, **stored[k]} for c in configs if (k := config_key(c)) in stored]
        return pd.DataFrame.from_records(records, columns=None if records else list(configs[0]))

    def export(self, path):
        """Write ``frame()`` to ``path``: CSV or Parquet by suffix, replaced atomically."""
        path = Path(path)
        if path.suffix not in (".csv", ".parquet"):
            raise ValueError(f"export path {path} must end in .csv or .parquet")
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        frame = self.frame()
        try:
            if path.suffix == ".csv":
                frame.to_csv(tmp, index=False)
            else:
                frame.to_parquet(tmp, index=False)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def close(self):
        self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
