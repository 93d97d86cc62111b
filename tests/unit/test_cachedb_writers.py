"""CacheDB.atomic: this process's writers take turns on a lock, woken when the one before
commits (not after SQLite's busy handler's sleeps), and give up as SQLite would."""

from __future__ import annotations

import threading
import time

import pytest

from hcafs.cache import cachedb
from hcafs.cache.cachedb import CacheDB, DatabaseError


def _handover(db: CacheDB, hold: float, n: int) -> float:
    """Seconds from the first writer's commit until the waiting second writer goes."""
    holding, release = threading.Event(), threading.Event()
    went, committed = [], []

    def first():
        with db.atomic() as conn:
            conn.execute("insert into meta (key, value) values (?, '1')", [f"a{n}"])
            holding.set()
            release.wait(10)
        committed.append(time.monotonic())

    def second():
        holding.wait(10)
        with db.atomic() as conn:
            went.append(time.monotonic())
            conn.execute("insert into meta (key, value) values (?, '2')", [f"b{n}"])

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    holding.wait(10)
    time.sleep(hold)  # the second writer waits all along
    assert not went
    release.set()
    for thread in threads:
        thread.join(10)
    assert db.get_meta(f"a{n}") == "1" and db.get_meta(f"b{n}") == "2"
    return went[0] - committed[0] if went[0] > committed[0] else 0.0


def test_a_waiting_writer_goes_as_soon_as_the_one_before_commits(tmp_path):
    db = CacheDB(str(tmp_path / "hcafs.db"))
    delays = sorted(_handover(db, hold, n) for n, hold in
                    enumerate((0.1, 0.13, 0.17, 0.2, 0.24, 0.29, 0.33)))
    # SQLite's busy handler alone sleeps 1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100 ms
    # between tries: after 0.1-0.33 s of waiting its next try comes 0-100 ms late,
    # 25 ms in the middle.  Handed over on the lock, it goes at once.
    assert delays[len(delays) // 2] < 0.01, delays


def test_a_writer_held_up_too_long_gets_the_database_error(tmp_path, monkeypatch):
    monkeypatch.setattr(cachedb, "BUSY_SECONDS", 0.2)
    db = CacheDB(str(tmp_path / "hcafs.db"))
    holding, release = threading.Event(), threading.Event()

    def first():
        with db.atomic():
            holding.set()
            release.wait(10)

    thread = threading.Thread(target=first)
    thread.start()
    try:
        holding.wait(10)
        with pytest.raises(DatabaseError, match="database is locked"):
            with db.atomic():
                pass
    finally:
        release.set()
        thread.join(10)
    with db.atomic() as conn:  # free again
        conn.execute("insert into meta (key, value) values ('c', '3')")
    assert db.get_meta("c") == "3"
