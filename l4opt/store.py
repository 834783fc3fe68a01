"""The run directory: results.sqlite (one row per trial) plus content-addressed artifacts.

Each trial's row is also written as artifacts/<key>/row.json before the database row, so a
corrupted database is rebuilt from the artifacts and no finished trial is ever lost.
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np

from .errors import BadInput
from .export import file_sha256

SCHEMA_VERSION = 1
DB_NAME = "results.sqlite"


def content_key(*parts) -> str:
    """A short stable hash of JSON-serialisable parts."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def atomic_write(path, data: bytes) -> None:
    """Write a file so that a reader never sees it half-written: a temporary file beside
    `path` (one per process and thread), fsync, then rename over it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Store:
    """Results and artifacts of one run directory."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.notes: list[str] = []
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            probe = self.run_dir / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise BadInput(f"run directory {self.run_dir} is not writable ({exc.strerror or exc}); "
                           f"choose another with --out / run_dir=") from exc
        self.artifacts = self.run_dir / "artifacts"
        self.artifacts.mkdir(exist_ok=True)
        self.db_path = self.run_dir / DB_NAME
        self._open()

    # ------------------------------------------------------------ database
    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.db_path, timeout=30)
        con.execute("CREATE TABLE IF NOT EXISTS trials (key TEXT PRIMARY KEY, workload TEXT, "
                    "recipe TEXT, status TEXT, created_at TEXT, row TEXT NOT NULL)")
        con.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT)")
        con.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        ok = con.execute("PRAGMA quick_check").fetchone()[0]
        if ok != "ok":
            con.close()
            raise sqlite3.DatabaseError(ok)
        for (row,) in con.execute("SELECT row FROM trials"):
            json.loads(row)
        con.commit()
        return con

    def _open(self) -> None:
        try:
            self.con = self._connect()
        except (sqlite3.DatabaseError, json.JSONDecodeError) as exc:
            moved = self.db_path.with_name(f"{DB_NAME}.corrupt-{int(time.time())}")
            os.replace(self.db_path, moved)
            for side in ("-wal", "-shm", "-journal"):
                Path(str(self.db_path) + side).unlink(missing_ok=True)
            self.con = self._connect()
            n = self._rebuild()
            self.notes.append(f"{self.db_path} was corrupted ({exc}); moved to {moved.name} and "
                              f"rebuilt {n} rows from the artifacts")

    def _rebuild(self) -> int:
        n = 0
        for f in sorted(self.artifacts.glob("*/row.json")):
            try:
                row = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            self._insert(row)
            n += 1
        return n

    def _insert(self, row: dict) -> None:
        with self.con:
            self.con.execute(
                "INSERT OR REPLACE INTO trials VALUES (?, ?, ?, ?, ?, ?)",
                (row["key"], row.get("workload"), row.get("recipe"), row.get("status"),
                 row.get("created_at"), json.dumps(row, default=_json_default)))

    # ------------------------------------------------------------ trials
    def artifact_dir(self, key: str) -> Path:
        d = self.artifacts / key
        d.mkdir(parents=True, exist_ok=True)
        return d

    def put(self, row: dict) -> None:
        """Record a finished (or failed) trial: row.json first, then the database."""
        d = self.artifact_dir(row["key"])
        atomic_write(d / "row.json", json.dumps(row, indent=1, default=_json_default).encode())
        self._insert(row)

    def update(self, key: str, **fields) -> dict:
        row = self.row(key)
        if row is None:
            raise BadInput(f"no trial {key!r} in {self.db_path}")
        row.update(fields)
        self.put(row)
        return row

    def row(self, key: str) -> dict | None:
        r = self.con.execute("SELECT row FROM trials WHERE key = ?", (key,)).fetchone()
        return json.loads(r[0]) if r else None

    def cached(self, key: str) -> dict | None:
        """The stored row when the trial finished (ok or no-op: both are results) and its
        artifacts are intact, else None."""
        row = self.row(key) or self._orphan(key)
        if not row or row.get("status") not in ("ok", "no-op"):
            return None
        for name, art in (row.get("artifacts") or {}).items():
            p = self.run_dir / art["path"]
            if not p.exists() or file_sha256(p) != art["sha256"]:
                self.notes.append(f"trial {key} ({row.get('recipe')}): artifact {name} "
                                  f"{'missing' if not p.exists() else 'corrupted'}; recomputing")
                return None
        return row

    def _orphan(self, key: str) -> dict | None:
        """A row.json whose database insert a kill interrupted (put writes the file first):
        taken back into the database, so a finished trial is not recomputed."""
        f = self.artifacts / key / "row.json"
        try:
            row = json.loads(f.read_text()) if f.exists() else None
        except (OSError, json.JSONDecodeError):
            return None
        if row is None or row.get("key") != key:
            return None
        self._insert(row)
        return row

    def rows(self, workload: str | None = None) -> list[dict]:
        q, args = "SELECT row FROM trials", ()
        if workload:
            q, args = q + " WHERE workload = ?", (workload,)
        return [json.loads(r[0]) for r in self.con.execute(q + " ORDER BY created_at", args)]

    def register(self, key: str, name: str, path: Path) -> dict:
        """An artifact entry (relative path + content hash) for a row's `artifacts`."""
        return {"path": str(Path(path).resolve().relative_to(self.run_dir.resolve())),
                "sha256": file_sha256(path)}

    # ------------------------------------------------------------ arrays
    def load_arrays(self, name: str) -> dict[str, np.ndarray] | None:
        """A dict of named arrays saved by save_arrays (e.g. a model's outputs by name)."""
        p = self.artifacts / "arrays" / f"{name}.npz"
        if not p.exists():
            return None
        try:
            with np.load(p, allow_pickle=False) as z:
                names = [str(x) for x in z["__names__"]]
                return {n: z[f"a{i}"] for i, n in enumerate(names)}
        except Exception:
            self.notes.append(f"cached arrays {p.name} unreadable; recomputing")
            p.unlink(missing_ok=True)
            return None

    def save_arrays(self, name: str, arrays: dict[str, np.ndarray]) -> None:
        d = self.artifacts / "arrays"
        d.mkdir(exist_ok=True)
        tmp = d / f"{name}.tmp{os.getpid()}.npz"
        np.savez(tmp, __names__=np.array(list(arrays)),
                 **{f"a{i}": a for i, a in enumerate(arrays.values())})
        os.replace(tmp, d / f"{name}.npz")

    def close(self) -> None:
        self.con.close()


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    return str(o)
