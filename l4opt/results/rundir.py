"""Reading a run directory back without changing it: trials, sensitivity, lint and search
results, as the report and the dashboard read them. A reader never creates, moves or rebuilds
anything: a busy results.sqlite is waited on (bounded) and then refused, a corrupted one is
refused with what a sweep would do about it (Store(..., readonly=True))."""
from __future__ import annotations

import json
from pathlib import Path

from l4opt.errors import BadInput
from l4opt.results.store import DB_NAME, Store


def existing_run_dir(run_dir, verb: str) -> Path:
    """run_dir when it is an existing directory, else a BadInput naming it (nothing made)."""
    p = Path(run_dir)
    if not p.is_dir():
        raise BadInput(f"run directory {p} does not exist" + ("" if not p.exists() else
                       " as a directory") + f"; `l4opt {verb}` reads an existing run (made by "
                       f"`l4opt sweep WORKLOAD --out {p}`)")
    return p


def read_rows(run_dir, timeout: float | None = None) -> tuple[list[dict], list[str]]:
    """(rows, notes) of a run directory, read-only (works on a read-only run directory)."""
    store = Store(existing_run_dir(run_dir, "report"), readonly=True, timeout=timeout)
    try:
        return store.rows(), list(store.notes)
    finally:
        store.close()


def _load_json_dir(d: Path) -> list[tuple[str, dict]]:
    out = []
    for f in sorted(d.glob("*.json")) if d.is_dir() else []:
        try:
            data = json.loads(f.read_text())
            out.append((f.stem, data if isinstance(data, dict) else {"layers": data}))
        except (OSError, ValueError, RecursionError) as exc:
            out.append((f.stem, {"error": f"unreadable {f.name}: {exc}"}))
    return out


def load_searches(run_dir) -> list[tuple[str, dict]]:
    """The saved searches of a run directory (RUN_DIR/search/*.json) as (file stem, document)
    pairs in file order; an unreadable file is kept as {"error": ...}. The report and the
    dashboard both read searches through this."""
    return _load_json_dir(Path(run_dir) / "search")


def load_run(run_dir) -> dict:
    """Trials, sensitivity and lint results of a run directory, as the report reads them."""
    run_dir = Path(run_dir)
    if not (run_dir / DB_NAME).exists():
        raise BadInput(f"{run_dir} holds no {DB_NAME}: run `l4opt sweep WORKLOAD --out "
                       f"{run_dir}` first")
    rows, notes = read_rows(run_dir)
    return {"run_dir": run_dir, "rows": [r for r in rows if r.get("kind", "trial") == "trial"],
            "notes": notes, "sensitivity": _load_json_dir(run_dir / "sensitivity"),
            "lint": _load_json_dir(run_dir / "lint"),
            "search": load_searches(run_dir)}
