"""Model tier: when a closed file becomes due despite the write-back delay.

"Commit" means now (a bundle being committed has every file due at once) and an unmount
drains now (:meth:`Journal.sync_now`); every other file waits for the delay.
"""

from __future__ import annotations

import time

from crashdb import CrashingCacheDB

from hcafs.cache.journal import Journal

DELAY = 3600.0


def _two_bundles(tmp_path) -> tuple[Journal, int, int]:
    journal = Journal(CrashingCacheDB(str(tmp_path / "hcafs.db")))
    journal.add_bundle("a", "11111111-1111-4111-8111-111111111111", None, [])
    journal.add_bundle("b", "22222222-2222-4222-8222-222222222222", None, [])
    first = journal.add_file("a", "x.bin")
    second = journal.add_file("b", "y.bin")
    journal.closed(first, 3)
    journal.closed(second, 3)
    return journal, first, second


def test_fresh_files_wait_for_the_delay(tmp_path):
    journal, _, _ = _two_bundles(tmp_path)
    assert journal.due(time.time(), DELAY) == []


def test_a_bundle_being_committed_is_due_at_once(tmp_path):
    journal, first, _ = _two_bundles(tmp_path)
    journal.request_commit("a")
    assert [r.id for r in journal.due(time.time(), DELAY)] == [first]


def test_sync_now_makes_every_file_closed_so_far_due(tmp_path):
    journal, first, second = _two_bundles(tmp_path)
    journal.sync_now()
    assert [r.id for r in journal.due(time.time(), DELAY)] == [first, second]
    time.sleep(0.01)
    later = journal.add_file("a", "z.bin")  # written after the drain began: waits
    journal.closed(later, 1)
    assert later not in [r.id for r in journal.due(time.time(), DELAY)]
