"""The run directory: results.sqlite (one row per trial) plus content-addressed artifacts.

Each trial's row is also written as artifacts/<key>/row.json before the database row, so a
corrupted database is rebuilt from the artifacts and no finished trial is ever lost.

Locked is not corrupted. Another process holding results.sqlite (SQLITE_BUSY/SQLITE_LOCKED:
a second sweep committing, an import, a `sqlite3` shell) is waited on for at most `timeout`
seconds (default 60, L4OPT_DB_TIMEOUT) and then refused with a BadInput saying so; nothing is
renamed or rebuilt. A database is corrupted only when the file does not open as a database or
`PRAGMA quick_check` fails, and only a writer (a sweep) moves it aside and rebuilds it from
the artifacts; a reader (Store(..., readonly=True): reports, bundles, refits) never changes the
run directory.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
import urllib.parse
from pathlib import Path

import numpy as np

from l4opt.errors import BadInput
from l4opt.spec import row as rowspec
from l4opt.files import (check_inside, file_sha256, safe_mkdir, safe_output, safe_write,
                         sweep_stale_tmp)

STORE_SCHEMA = 1
DB_NAME = "results.sqlite"
DEFAULT_TIMEOUT = 60.0  # seconds a busy database is waited on


class Store:
    """Results and artifacts of one run directory."""

    def __init__(self, run_dir: str | Path, readonly: bool = False,
                 timeout: float | None = None):
        self.run_dir = Path(run_dir)
        self.readonly = readonly
        self.timeout = db_timeout(timeout)
        self.notes: list[str] = []
        self.artifacts = self.run_dir / "artifacts"
        self.db_path = self.run_dir / DB_NAME
        if not readonly:
            _prepare_writable(self.run_dir)
            safe_mkdir(self.artifacts, self.run_dir)
        self.con = open_db(self)

    def locked(self, fn, *args):
        """fn(*args) with a busy database waited on (bounded), then a BadInput saying so."""
        return retry_locked(self.db_path, self.timeout, lambda: fn(*args))

    def _insert(self, row: dict) -> None:
        if self.readonly:
            raise BadInput(f"{self.db_path} was opened read-only; rows are written by a sweep")

        def go():
            with self.con:
                self.con.execute("INSERT OR REPLACE INTO trials VALUES (?, ?, ?, ?, ?, ?)",
                                 (row["key"], row.get("workload"), row.get("recipe"),
                                  row.get("status"), row.get("created_at"),
                                  json.dumps(row, default=_json_default)))
        self.locked(go)

    # ------------------------------------------------------------ trials
    def artifact_dir(self, key: str) -> Path:
        """artifacts/<key>/, made inside the run directory (a symlinked one is refused), with
        the temporary files a killed writer of this host left there removed."""
        if self.readonly:
            raise BadInput(f"{self.run_dir} was opened read-only; artifacts are written by a "
                           f"sweep")
        d = safe_mkdir(self.artifacts / _safe_key(key), self.run_dir)
        sweep_stale_tmp(d)  # what a killed writer of this host left (its pid is gone)
        return d

    def put(self, row: dict) -> None:
        """Record a finished (or failed) trial: row.json first, then the database (a row
        whose insert fails, e.g. on a lock, is taken back from its row.json on the next open)."""
        d = self.artifact_dir(row["key"])
        safe_write(d / "row.json", json.dumps(row, indent=1, default=_json_default),
                   self.run_dir, what=f"the row of trial {row['key']}")
        try:
            self._insert(row)
        except BadInput as exc:
            raise BadInput(f"{exc}. The row is kept in {d / 'row.json'} and taken into the "
                           f"database when the run directory is next opened") from exc

    def update(self, key: str, **fields) -> dict:
        row = self.row(key)
        if row is None:
            raise BadInput(f"no trial {key!r} in {self.db_path}")
        row.update(fields)
        self.put(row)
        return row

    def row(self, key: str) -> dict | None:
        r = self.locked(lambda: self.con.execute(
            "SELECT row FROM trials WHERE key = ?", (key,)).fetchone())
        return _parse_row(self, key, r[0]) if r else None

    def cached(self, key: str) -> dict | None:
        """The stored row when the trial finished (ok, collapsed or no-op: all are results) and
        its artifacts are intact, else None."""
        row = self.row(key) or (None if self.readonly else adopt_orphan(self, key))
        if not row or rowspec.status(row) not in rowspec.RESULT_STATUSES:
            return None
        for name, art in (row.get("artifacts") or {}).items():
            p = self.run_dir / art["path"]
            if not p.exists() or file_sha256(p) != art["sha256"]:
                self.notes.append(f"trial {key} ({row.get('recipe')}): artifact {name} "
                                  f"{'missing' if not p.exists() else 'corrupted'}; recomputing")
                return None
        return row

    def rows(self, workload: str | None = None) -> list[dict]:
        q, args = "SELECT key, row FROM trials", ()
        if workload:
            q, args = q + " WHERE workload = ?", (workload,)
        got = self.locked(lambda: self.con.execute(q + " ORDER BY created_at", args).fetchall())
        return [r for r in (_parse_row(self, k, t) for k, t in got) if r is not None]

    def register(self, key: str, name: str, path: Path) -> dict:
        """An artifact entry (relative path + content hash) for a row's `artifacts`."""
        return {"path": str(Path(path).resolve().relative_to(self.run_dir.resolve())),
                "sha256": file_sha256(path)}

    # ------------------------------------------------------------ arrays
    def load_arrays(self, name: str) -> dict[str, np.ndarray] | None:
        """A dict of named arrays saved by save_arrays (e.g. a model's outputs by name)."""
        return load_arrays(self, name)

    def save_arrays(self, name: str, arrays: dict[str, np.ndarray]) -> None:
        d = safe_mkdir(self.artifacts / "arrays", self.run_dir)
        with safe_output(d / f"{_safe_key(name)}.npz", self.run_dir, f"cached arrays {name}") as t:
            np.savez(t, __names__=np.array(list(arrays)),
                     **{f"a{i}": a for i, a in enumerate(arrays.values())})

    def close(self) -> None:
        self.con.close()


# ------------------------------------------------------------------ helpers of Store

def db_timeout(timeout: float | None = None) -> float:
    """Seconds to wait on a busy results.sqlite: the argument, else L4OPT_DB_TIMEOUT, else 60."""
    if timeout is None:
        text = os.environ.get("L4OPT_DB_TIMEOUT", "")
        try:
            timeout = float(text) if text else DEFAULT_TIMEOUT
        except ValueError:
            raise BadInput(f"L4OPT_DB_TIMEOUT={text!r} is not a number of seconds") from None
    if not timeout >= 0:
        raise BadInput(f"database timeout {timeout!r} must be a number of seconds >= 0")
    return float(timeout)


def is_lock(exc: BaseException) -> bool:
    """SQLITE_BUSY / SQLITE_LOCKED: another process holds the database. Never corruption."""
    msg = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in msg or "busy" in msg)


def locked_error(db_path: Path, timeout: float) -> BadInput:
    return BadInput(
        f"{db_path.name} is locked by another process for more than {timeout:g} s ({db_path}); "
        f"nothing was changed: let the other sweep/import finish (or stop it) and run again, or "
        f"wait longer with L4OPT_DB_TIMEOUT=SECONDS")


def retry_locked(db_path: Path, timeout: float, fn):
    """fn() retried while the database is busy, for at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if not is_lock(exc):
                raise BadInput(f"cannot use {db_path}: {exc}") from exc
            if time.monotonic() >= deadline:
                raise locked_error(db_path, timeout) from exc
            time.sleep(0.05)


def _prepare_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise BadInput(f"run directory {run_dir} is not writable ({exc.strerror or exc}); "
                       f"choose another with --out / run_dir=") from exc


def _setup(con: sqlite3.Connection) -> None:
    with con:
        con.execute("CREATE TABLE IF NOT EXISTS trials (key TEXT PRIMARY KEY, workload TEXT, "
                    "recipe TEXT, status TEXT, created_at TEXT, row TEXT NOT NULL)")
        con.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT)")
        con.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(STORE_SCHEMA),))


def _connect(store: Store) -> sqlite3.Connection:
    """A checked connection; sqlite3.DatabaseError (not OperationalError) or a failed
    quick_check mean corruption; a lock is waited on and then refused (retry_locked)."""
    check_inside(store.db_path, store.run_dir)  # a symlinked results.sqlite is refused
    busy = min(store.timeout, 1.0)
    if store.readonly:
        uri = f"file:{urllib.parse.quote(str(store.db_path.resolve()))}?mode=ro"
        con = sqlite3.connect(uri, uri=True, timeout=busy)
    else:
        con = sqlite3.connect(store.db_path, timeout=busy)
    try:
        if not store.readonly:
            store.locked(_setup, con)
        ok = store.locked(lambda: con.execute("PRAGMA quick_check").fetchone()[0])
        if ok != "ok":
            raise sqlite3.DatabaseError(f"quick_check: {ok}")
        return con
    except BaseException:
        con.close()
        raise


def open_db(store: Store) -> sqlite3.Connection:
    """The database of a store; a writer moves a corrupted one aside and rebuilds it from the
    artifacts' row.json files; a reader only says so."""
    if store.readonly and not store.db_path.exists():
        raise BadInput(f"{store.run_dir} holds no {DB_NAME}: run `l4opt sweep WORKLOAD --out "
                       f"{store.run_dir}` first")
    try:
        con = _connect(store)
    except sqlite3.OperationalError as exc:  # not corruption: permissions, I/O
        raise BadInput(f"cannot open {store.db_path}: {exc}") from exc
    except sqlite3.DatabaseError as exc:
        if store.readonly:
            raise BadInput(f"{store.db_path} is corrupted ({exc}); nothing was changed: a sweep "
                           f"into {store.run_dir} moves it aside and rebuilds it from "
                           f"artifacts/*/row.json") from exc
        moved = store.db_path.with_name(f"{DB_NAME}.corrupt-{int(time.time())}")
        os.replace(store.db_path, moved)
        for side in ("-wal", "-shm", "-journal"):
            Path(str(store.db_path) + side).unlink(missing_ok=True)
        store.con = con = _connect(store)
        n = _rebuild(store)
        store.notes.append(f"{store.db_path} was corrupted ({exc}); moved to {moved.name} and "
                           f"rebuilt {n} rows from the artifacts")
        return con
    if not store.readonly:
        store.con = con
        _adopt_orphans(store)
    return con


def read_row_file(store: Store, key: str) -> dict | None:
    """artifacts/<key>/row.json when it is a readable regular file (no link) holding that
    trial's row, else None."""
    f = store.artifacts / key / "row.json"
    try:
        check_inside(f, store.run_dir)
        row = json.loads(f.read_text()) if f.is_file() else None
    except (OSError, ValueError, RecursionError):
        return None
    return row if isinstance(row, dict) and row.get("key") == key else None


def _row_files(store: Store):
    """(key, row) of every readable artifacts/<key>/row.json."""
    for f in sorted(store.artifacts.glob("*/row.json")):
        row = read_row_file(store, f.parent.name)
        if row is not None:
            yield f.parent.name, row


def _rebuild(store: Store) -> int:
    n = 0
    for _, row in _row_files(store):
        store._insert(row)
        n += 1
    return n


def _adopt_orphans(store: Store) -> None:
    """row.json files whose database insert did not happen (a kill, a lock) are taken back."""
    have = {k for (k,) in store.locked(lambda: store.con.execute(
        "SELECT key FROM trials").fetchall())}
    n = 0
    for key, row in _row_files(store):
        if key not in have:
            store._insert(row)
            n += 1
    if n:
        store.notes.append(f"{n} finished trial(s) whose database row was not written were "
                           f"taken back from their row.json")


def adopt_orphan(store: Store, key: str) -> dict | None:
    """A row.json whose database insert a kill interrupted (put writes the file first):
    taken back into the database, so a finished trial is not recomputed."""
    row = read_row_file(store, key)
    if row is not None:
        store._insert(row)
    return row


def _parse_row(store: Store, key: str, text: str) -> dict | None:
    """A database row; one whose JSON does not parse is read from its row.json, else left
    out with a note (a bad row is not a corrupted database)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        row = read_row_file(store, key)
    if row is None:
        store.notes.append(f"row {key} in {store.db_path.name} is unreadable and has no row.json")
    return row


def _safe_key(key: str) -> str:
    if not isinstance(key, str) or not key or key in (".", "..") or "/" in key or "\0" in key \
            or "\\" in key:
        raise BadInput(f"trial key {key!r} is not a safe directory name")
    return key


def load_arrays(store: Store, name: str) -> dict[str, np.ndarray] | None:
    p = store.artifacts / "arrays" / f"{name}.npz"
    if not p.exists():
        return None
    try:
        check_inside(p, store.run_dir)
        with np.load(p, allow_pickle=False) as z:
            names = [str(x) for x in z["__names__"]]
            return {n: z[f"a{i}"] for i, n in enumerate(names)}
    except Exception:
        store.notes.append(f"cached arrays {p.name} unreadable; recomputing")
        if not store.readonly and not p.is_symlink():
            p.unlink(missing_ok=True)
        return None


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    return str(o)
