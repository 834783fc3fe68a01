"""A lock is not corruption (issue 18): a real second process holds results.sqlite with
BEGIN EXCLUSIVE for longer than the timeout beside a report-style read and a sweep's put;
nothing is renamed, the holder's commit succeeds, and the row lands after the release."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time

import pytest

from l4opt.errors import BadInput
from l4opt.results.rundir import load_run, read_rows
from l4opt.results.store import Store

HOLD = """
import sqlite3, sys, time
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("BEGIN EXCLUSIVE")
con.execute("INSERT INTO trials VALUES ('holder', 'w', 'r', 'ok', '0', '{\\"key\\": \\"holder\\"}')")
print("held", flush=True)
sys.stdin.readline()  # held until the test says so
con.execute("COMMIT")
print("committed", flush=True)
"""


@pytest.fixture()
def run(tmp_path):
    d = tmp_path / "run"
    s = Store(d)
    s.put({"key": "first", "status": "ok", "created_at": "1"})
    s.close()
    return d


def _hold(run):
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(run / "results.sqlite")],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


@pytest.fixture()
def holder(run):
    p = _hold(run)
    yield p
    if p.poll() is None:
        p.kill()
        p.wait()


def _release(p) -> None:
    p.stdin.write("go\n")
    p.stdin.flush()
    assert p.stdout.readline().strip() == "committed"
    assert p.wait(timeout=30) == 0


def test_a_lock_held_past_the_timeout_is_refused_and_nothing_is_renamed(run):
    writer = Store(run, timeout=0.5)  # a sweep opened before the lock was taken
    before = sorted(os.listdir(run))
    holder = _hold(run)
    t0 = time.monotonic()
    for read in (lambda: read_rows(run, timeout=0.5),
                 lambda: Store(run, readonly=True, timeout=0.5)):
        with pytest.raises(BadInput, match=r"results.sqlite is locked by another process for "
                                           r"more than 0.5 s"):
            read()
    with pytest.raises(BadInput, match="locked by another process") as e:
        writer.put({"key": "second", "status": "ok", "created_at": "2"})
    assert "row.json" in str(e.value)  # the row is kept, and says where
    with pytest.raises(BadInput, match="locked by another process"):
        Store(run, timeout=0.5)  # a second sweep starting now
    assert time.monotonic() - t0 < 15  # bounded: about 4 x 0.5 s
    assert sorted(os.listdir(run)) == before + ["results.sqlite-journal"]  # the holder's
    _release(holder)  # the lock holder's commit succeeds: its row is not lost
    writer.close()
    store = Store(run, timeout=5)  # the next open takes the kept row back
    assert {r["key"] for r in store.rows()} == {"first", "second", "holder"}
    assert any("taken back" in n for n in store.notes)
    store.close()
    assert not [f for f in os.listdir(run) if "corrupt" in f]


def test_a_lock_shorter_than_the_timeout_is_waited_on(run, holder):
    import threading

    threading.Timer(1.0, _release, args=(holder,)).start()
    t0 = time.monotonic()
    writer = Store(run, timeout=30)
    writer.put({"key": "second", "status": "ok", "created_at": "2"})
    assert 0.5 <= time.monotonic() - t0 < 25
    assert {r["key"] for r in read_rows(run)[0]} == {"first", "second", "holder"}
    writer.close()


def test_the_timeout_comes_from_the_environment(run, holder, monkeypatch):
    monkeypatch.setenv("L4OPT_DB_TIMEOUT", "0.2")
    with pytest.raises(BadInput, match="more than 0.2 s"):
        load_run(run)
    monkeypatch.setenv("L4OPT_DB_TIMEOUT", "soon")
    with pytest.raises(BadInput, match="L4OPT_DB_TIMEOUT"):
        Store(run)


def test_only_a_writer_moves_a_corrupted_database_and_rebuilds_it(run):
    (run / "results.sqlite").write_bytes(b"SQLite format 3\x00" + os.urandom(4096))
    with pytest.raises(BadInput, match="corrupted.*nothing was changed"):
        read_rows(run)
    assert not [f for f in os.listdir(run) if "corrupt" in f]
    store = Store(run)
    assert [r["key"] for r in store.rows()] == ["first"]
    assert any("corrupted" in n and "rebuilt 1 rows" in n for n in store.notes)
    store.close()
    assert [f for f in os.listdir(run) if f.startswith("results.sqlite.corrupt-")]


def test_a_not_a_database_file_is_corruption_but_a_bad_row_is_not(run):
    con = sqlite3.connect(run / "results.sqlite")
    con.execute("UPDATE trials SET row = '{not json' WHERE key = 'first'")
    con.commit()
    con.close()
    rows, notes = read_rows(run)  # the row is read from its row.json; nothing moved
    assert [r["key"] for r in rows] == ["first"]
    assert not [f for f in os.listdir(run) if "corrupt" in f]


def test_readers_refuse_a_run_directory_that_does_not_exist(tmp_path):
    with pytest.raises(BadInput, match="does not exist"):
        read_rows(tmp_path / "nope")
    assert not (tmp_path / "nope").exists()


def test_a_read_only_run_directory_is_read(run):
    os.chmod(run, 0o555)
    try:
        rows, _ = read_rows(run)
        assert [r["key"] for r in rows] == ["first"]
    finally:
        os.chmod(run, 0o755)
