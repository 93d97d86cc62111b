"""Model tier: the journal's transitions on a real SQLite file, and crashes inside them.

Each change of the model is one journal transaction.  For every change below, the test
counts the statements it runs, then runs it again on the same starting state once per
statement with a failure injected just before that statement, and checks that the database
is exactly as it was: nothing half-done survives.  The last run lets the change finish and
checks that it did change the database (so the comparison can fail).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from types import SimpleNamespace

import pytest
from crashdb import CrashingCacheDB, InjectedCrash

from hcafs.cache import journal as j
from hcafs.cache.journal import Journal
from hcafs.checksums import checksum_bytes
from hcafs.remote.bulk_import import BulkImportClient
from hcafs.sync.drs_queue import DrsQueue

REMOTE_FILE = {"name": "old/a.txt", "size": 3, "indexed": False, "uuid": "u-a",
               "version": "2020-01-01T000000.000000Z", "sha256": "s", "sha1": "s1",
               "crc32c": "c", "s3_etag": "e", "content-type": "text/plain"}
INFO = SimpleNamespace(uuid="u-imp", version="2021-01-01T000000.000000Z", size=5,
                       sha256="5" * 64, sha1="1" * 40, crc32c="cccccccc", s3_etag="e" * 32,
                       content_type="application/octet-stream")


def _base(journal: Journal) -> dict:
    """Two pending bundles: files, a directory, a queued .drs import, a submitted one."""
    journal.add_bundle("b", "11111111-1111-4111-8111-111111111111", None, [])
    journal.add_bundle("w", "22222222-2222-4222-8222-222222222222", "2020-01-01T000000.000000Z",
                       [REMOTE_FILE])
    ids = {"a": journal.add_file("b", "a.txt"), "dir": journal.add_file("b", "d", j.DIR),
           "child": journal.add_file("b", "d/c.txt"), "target": journal.add_file("b", "t.txt"),
           "drs": journal.add_file("b", "x.bin.drs", j.DRS),
           "drs2": journal.add_file("b", "y.bin.drs", j.DRS)}
    journal.drs_queued(ids["drs"], 20, "b", "x.bin", "drs://h/x", "{}", "[]", "SKIP")
    journal.drs_queued(ids["drs2"], 20, "b", "y.bin", "drs://h/y", "{}", "[]", "SKIP")
    key = journal.claim_batch(1e12, 1)  # the first one is being submitted
    journal.batch_submitted(key, "job-1")
    ids["import"] = journal.job_items("job-1")[0][0]
    ids["batch"] = key
    return ids


Change = Callable[[Journal, dict], object]

CHANGES: dict[str, Change] = {
    "add_bundle": lambda jn, ids: jn.add_bundle("new", "33333333-3333-4333-8333-333333333333",
                                               "2020", [REMOTE_FILE, {**REMOTE_FILE,
                                                                      "name": "b.txt"}]),
    "add_file": lambda jn, ids: jn.add_file("b", "fresh.txt"),
    "mark_dirty": lambda jn, ids: jn.mark_dirty(ids["a"], size=7, to_local=True),
    "remove_file (unlink of a queued .drs)": lambda jn, ids: jn.remove_file(ids["drs2"]),
    "rename (replacing a file)": lambda jn, ids: jn.rename("b", "a.txt", "t.txt"),
    "rename (a directory with children)": lambda jn, ids: jn.rename("b", "d", "e"),
    "rename into another bundle": lambda jn, ids: jn.rename("b", "d", "moved", "w"),
    "drop_bundle": lambda jn, ids: jn.drop_bundle("b"),
    "commit_version": lambda jn, ids: jn.commit_version("b"),
    "committed": lambda jn, ids: jn.committed("b", "1111.2020"),
    "begin_staging": lambda jn, ids: jn.begin_staging(ids["a"], 1),
    "failed": lambda jn, ids: jn.failed(ids["a"], 1, "boom"),
    "drs_queued (release of a .drs file)": lambda jn, ids: jn.drs_queued(
        ids["drs2"], 30, "b", "z.bin", "drs://h/z", "{}", "[]", "RENAME"),
    "drs_rejected": lambda jn, ids: jn.drs_rejected(ids["drs2"], 3, "invalid .drs file"),
    "claim_batch": lambda jn, ids: jn.claim_batch(1e12, 100),
    "batch_submitted (an answer seen again)": lambda jn, ids: jn.batch_submitted(
        ids["batch"], "job-2"),
    "job_seen": lambda jn, ids: jn.job_seen("job-1", "RUNNING", 1, 0),
    "imports_failed": lambda jn, ids: jn.imports_failed([ids["import"]], "5104: nope"),
    "import_retry": lambda jn, ids: jn.import_retry(ids["import"], "503: later"),
    "import_done": lambda jn, ids: jn.import_done(
        ids["import"], "b", ids["drs"], "OVERWRITE", [("x.bin", INFO), ("a.txt", INFO)]),
}


@pytest.mark.parametrize("name", list(CHANGES))
def test_a_crash_between_any_two_statements_leaves_nothing_half_done(tmp_path, name):
    change = CHANGES[name]
    counting = CrashingCacheDB(str(tmp_path / "count" / "hcafs.db"))
    ids = _base(Journal(counting))
    counting.count_from_here()
    change(Journal(counting), ids)
    statements = counting.statements
    assert statements >= 1
    for crash in range(1, statements + 2):
        db = CrashingCacheDB(str(tmp_path / f"run{crash}" / "hcafs.db"))
        journal = Journal(db)
        ids = _base(journal)
        before = db.snapshot()
        db.crash_at(crash)
        if crash <= statements:
            with pytest.raises(InjectedCrash):
                change(journal, ids)
            assert db.snapshot() == before, f"statement {crash} of {statements} left a trace"
        else:
            change(journal, ids)
            assert db.snapshot() != before


# ---------------------------------------------------------------- transitions


@pytest.fixture
def journal(tmp_path) -> Journal:
    return Journal(CrashingCacheDB(str(tmp_path / "hcafs.db")))


def test_a_file_goes_dirty_staging_registering_synced(journal):
    journal.add_bundle("b", "11111111-1111-4111-8111-111111111111", None, [])
    file_id = journal.add_file("b", "a.txt")
    assert journal.file_by_id(file_id).state == j.DIRTY
    assert [r.id for r in journal.due(now=1e12, delay=0)] == [file_id]
    file_uuid, version = journal.begin_staging(file_id, 1)
    assert journal.begin_staging(file_id, 1) == (file_uuid, version)  # fixed once
    assert journal.file_by_id(file_id).state == j.STAGING
    sums = checksum_bytes(b"abc")
    assert journal.staged(file_id, 1, sums, "text/plain")
    assert journal.file_by_id(file_id).state == j.REGISTERING
    assert journal.registered(file_id, 1)
    row = journal.file_by_id(file_id)
    assert (row.state, row.synced_generation, row.sha256) == (j.SYNCED, 1, sums.sha256)
    assert journal.summary()["pending_files"] == 0


def test_a_write_during_an_upload_wins_over_its_result(journal):
    journal.add_bundle("b", "11111111-1111-4111-8111-111111111111", None, [])
    file_id = journal.add_file("b", "a.txt")
    journal.begin_staging(file_id, 1)
    journal.mark_dirty(file_id)  # generation 2 while generation 1 uploads
    assert not journal.staged(file_id, 1, checksum_bytes(b"abc"), "text/plain")
    assert not journal.registered(file_id, 1)
    row = journal.file_by_id(file_id)
    assert (row.state, row.generation, row.file_version) == (j.DIRTY, 2, None)
    assert journal.begin_staging(file_id, 1) is None  # stale


def test_failures_back_off_on_the_shared_schedule_and_are_shown(journal):
    journal.add_bundle("b", "11111111-1111-4111-8111-111111111111", None, [])
    file_id = journal.add_file("b", "a.txt")
    delays = [journal.failed(file_id, 1, f"try {n}") for n in range(12)]
    assert delays[:3] == [2.0, 4.0, 8.0] and max(delays) == delays[-1] == 300.0
    summary = journal.summary()
    assert summary["errors"] == [{"bundle": "b", "path": "a.txt", "error": "try 11",
                                  "attempts": 12}]
    assert journal.due(now=0, delay=0) == []  # not before next_try


def test_a_drs_file_is_queued_then_replaced_by_its_import(journal):
    journal.add_bundle("b", "11111111-1111-4111-8111-111111111111", None, [])
    drs = journal.add_file("b", "x.bin.drs", j.DRS)
    assert journal.drs_queued(drs, 20, "b", "x.bin", "drs://h/x", "{}", "[]", "SKIP")
    assert journal.file_by_id(drs).state == j.QUEUED and journal.imports_waiting("b") == 1
    key = journal.claim_batch(1e12, 100)
    assert [r[1] for r in journal.batch(key)] == ["drs://h/x"]
    journal.batch_submitted(key, "job")
    # A rewrite while the import runs is noted, not queued a second time.
    assert not journal.drs_queued(drs, 21, "b", "x.bin", "drs://h/other", "{}", "[]", "SKIP")
    assert "ignored" in journal.file_by_id(drs).error
    (import_id, bundle, name, drs_file_id, conflict), = journal.job_items("job")
    journal.import_done(import_id, bundle, drs_file_id, conflict, [(name, INFO)])
    assert journal.file_by_id(drs) is None
    imported = journal.file("b", "x.bin")
    assert (imported.kind, imported.state, imported.file_uuid) == (j.REMOTE, j.SYNCED, "u-imp")
    assert journal.imports_waiting("b") == 0 and journal.submitted_jobs() == []


def _sent(journal: Journal, path: str, conflict: str) -> tuple:
    drs = journal.add_file("b", f"{path}.drs", j.DRS)
    assert journal.drs_queued(drs, 20, "b", path, "drs://h/x", "{}", "[]", conflict)
    journal.batch_submitted(journal.claim_batch(1e12, 100), f"job-{path}-{conflict}")
    (item,) = journal.job_items(f"job-{path}-{conflict}")
    return drs, item


def test_a_landed_import_keeps_a_local_file_of_its_name_unless_told_to_overwrite(journal):
    """The server knows only the names of its import project, not the pending bundle's:
    RENAME lands beside a local file of the same name (``_1_NAME``), SKIP lands nothing,
    and only OVERWRITE replaces it."""
    journal.add_bundle("b", "11111111-1111-4111-8111-111111111111", None, [])
    local = journal.add_file("b", "x")
    journal.add_file("b", "_1_x")
    said = {}
    for conflict in ("RENAME", "SKIP"):
        _, (import_id, bundle, name, drs_file_id, conflict) = _sent(journal, "x", conflict)
        said[conflict] = journal.import_done(import_id, bundle, drs_file_id, conflict,
                                             [(name, INFO)])
        assert journal.file("b", "x").id == local, conflict
    assert said["RENAME"] == j.Landed(placed=["_2_x"])
    assert said["SKIP"] == j.Landed(kept=["x"])
    assert journal.file("b", "_2_x").file_uuid == "u-imp"  # the first free name
    _, (import_id, bundle, name, drs_file_id, conflict) = _sent(journal, "x", "OVERWRITE")
    journal.import_done(import_id, bundle, drs_file_id, conflict, [(name, INFO)])
    assert journal.file("b", "x").kind == j.REMOTE


def test_an_import_whose_drs_file_was_removed_lands_nothing(journal):
    journal.add_bundle("b", "11111111-1111-4111-8111-111111111111", None, [])
    drs, (import_id, bundle, name, drs_file_id, conflict) = _sent(journal, "gone", "SKIP")
    journal.remove_file(drs)  # rm while the import was under way
    assert journal.import_done(import_id, bundle, drs_file_id, conflict, [(name, INFO)]
                               ) == j.Landed(removed=True)
    assert journal.file("b", "gone") is None
    assert journal.imports_waiting("b") == 0


def test_a_jobs_landed_imports_are_one_transaction(journal):
    journal.add_bundle("b", "11111111-1111-4111-8111-111111111111", None, [])
    drs = [journal.add_file("b", f"x{n}.bin.drs", j.DRS) for n in range(3)]
    for n, file_id in enumerate(drs):
        journal.drs_queued(file_id, 20, "b", f"x{n}.bin", f"drs://h/x{n}", "{}", "[]", "SKIP")
    journal.batch_submitted(journal.claim_batch(1e12, 100), "job")
    items = journal.job_items("job")
    landed = [(i, b, f, c, [(name, INFO)]) for i, b, name, f, c in items]
    broken = landed[:2] + [(*landed[2][:4], [(items[2][2], None)])]  # a record without info
    with pytest.raises(AttributeError):
        journal.imports_done(broken)
    assert [journal.file_by_id(f).kind for f in drs] == [j.DRS] * 3  # none of them landed
    journal.imports_done(landed)
    assert all(journal.file_by_id(f) is None for f in drs)
    assert [journal.file("b", f"x{n}.bin").state for n in range(3)] == [j.SYNCED] * 3
    assert journal.imports_waiting("b") == 0 and journal.submitted_jobs() == []


def test_a_failed_import_marks_its_drs_file(journal):
    journal.add_bundle("b", "11111111-1111-4111-8111-111111111111", None, [])
    drs = journal.add_file("b", "x.bin.drs", j.DRS)
    journal.drs_queued(drs, 20, "b", "x.bin", "drs://h/x", "{}", "[]", "SKIP")
    key = journal.claim_batch(1e12, 100)
    journal.imports_failed([r[0] for r in journal.batch(key)], "5104: checksum")
    row = journal.file_by_id(drs)
    assert row.state == j.ERROR and "5104" in row.error
    assert journal.import_failures("b") == ["x.bin: 5104: checksum"]
    assert journal.summary()["import_errors"][0]["error"] == "5104: checksum"


def test_a_retried_import_waits_its_turn(journal):
    journal.add_bundle("b", "11111111-1111-4111-8111-111111111111", None, [])
    drs = journal.add_file("b", "x.bin.drs", j.DRS)
    journal.drs_queued(drs, 20, "b", "x.bin", "drs://h/x", "{}", "[]", "SKIP")
    key = journal.claim_batch(1e12, 100)
    journal.batch_submitted(key, "job")
    journal.import_retry(journal.job_items("job")[0][0], "503: busy")
    assert journal.claim_batch(0, 100) is None  # next_try is in the future
    assert journal.claim_batch(1e12, 100) is not None


def test_a_commit_keeps_its_version_across_retries_and_then_drops_the_files(journal):
    journal.add_bundle("b", "11111111-1111-4111-8111-111111111111", None, [])
    journal.add_file("b", "a.txt")
    journal.request_commit("b")
    version = journal.commit_version("b")
    journal.commit_failed("b", "503", give_up=False)
    assert journal.commit_version("b") == version
    journal.commit_failed("b", "409 refused", give_up=True)
    assert journal.bundle("b").state == j.OPEN and journal.commit_version("b") != version
    journal.committed("b", "11111111-1111-4111-8111-111111111111.v")
    assert journal.bundle("b").state == j.COMMITTED and journal.files("b") == []


def test_a_job_with_nothing_landed_records_nothing_and_takes_no_write_lock(journal,
                                                                          tmp_path):
    """Every item of a finished job failed or was skipped: recording its landed items is
    a no-op, not a write transaction that waits behind another writer."""
    journal.add_bundle("b", "11111111-1111-4111-8111-111111111111", None, [])
    other = sqlite3.connect(str(tmp_path / "hcafs.db"), timeout=0)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        started = time.monotonic()
        journal.imports_done([])
        assert time.monotonic() - started < 1.0
    finally:
        other.rollback()
        other.close()


def test_the_id_of_a_removed_file_is_never_given_to_another(journal):
    """An id names a file's data and guards each sync step (with its generation): a file
    made after the newest one was removed (rm while it uploads) gets an id of its own."""
    journal.add_bundle("b", "11111111-1111-4111-8111-111111111111", None, [])
    first = journal.add_file("b", "a.txt")
    removed = journal.add_file("b", "big.bin")
    journal.remove_file(removed)
    made = journal.add_file("b", "wanted.txt")
    assert made not in (first, removed) and made > removed
    assert journal.staged(removed, 1, checksum_bytes(b"x"), "text/plain") is False
    assert journal.file_by_id(made).state == j.DIRTY


def test_a_journal_of_an_earlier_release_is_migrated_with_its_rows(tmp_path):
    """m010 makes pending_files again (AUTOINCREMENT): rows and indexes are kept, and an id
    removed after the migration is not given out again."""
    from hcafs.cache import cachedb

    path = str(tmp_path / "hcafs.db")
    old = cachedb.sqlite_utils.Database(path)
    cachedb.migrations.apply(old, stop_before="m010_pending_ids_never_reused")
    old["pending_bundles"].insert({"name": "b", "uuid": "u", "state": j.OPEN,
                                   "changed": 1.0})
    for n in (1, 2, 3):
        old["pending_files"].insert({"id": n, "bundle": "b", "path": f"f{n}", "kind": j.LOCAL,
                                     "state": j.DIRTY, "generation": 1})
    old.conn.close()
    journal = Journal(cachedb.CacheDB(path))
    assert [journal.file_by_id(n).path for n in (1, 2, 3)] == ["f1", "f2", "f3"]
    with pytest.raises(sqlite3.IntegrityError):  # the (bundle, path) index came along
        journal.cachedb.db().execute("insert into pending_files (bundle, path, kind, state) "
                                     "values ('b', 'f1', 'local', 'dirty')")
    journal.remove_file(3)
    assert journal.add_file("b", "f4") == 4


def test_a_bundles_idle_clock_restarts_at_each_close(journal, monkeypatch):
    """--auto-commit waits for a bundle idle since its last change: the close of a file
    written for a while counts, not only the first write after its open."""
    journal.add_bundle("b", "11111111-1111-4111-8111-111111111111", None, [])
    clock = [1000.0]
    monkeypatch.setattr(j.time, "time", lambda: clock[0])
    file_id = journal.add_file("b", "slow.txt")
    journal.mark_dirty(file_id)
    clock[0] = 1010.0
    journal.closed(file_id, 10)
    assert journal.bundle("b").changed == 1010.0


def test_a_rename_of_a_drs_file_whose_import_was_sent_is_refused_in_its_transaction(journal):
    """The flusher may claim a batch at any moment: the journal checks inside the rename's
    own transaction, for the file and for the .drs files in a directory."""
    from hcafs.errors import Busy

    journal.add_bundle("b", "11111111-1111-4111-8111-111111111111", None, [])
    journal.add_file("b", "d", j.DIR)
    drs, _ = _sent(journal, "d/x", "SKIP")
    for old, new in (("d/x.drs", "d/y.drs"), ("d", "e")):
        with pytest.raises(Busy):
            journal.rename("b", old, new, kind=j.DRS if old.endswith(".drs") else None)
    assert journal.file_by_id(drs).path == "d/x.drs"


def test_import_projects_are_named_from_a_key_of_the_cache_dir_and_the_identity(journal, tmp_path):
    """A working copy's uuid is public: its imports' project is not named after it, but
    derived from a random key the cache dir makes once (the same after a restart, another
    in another cache dir), so no other identity can make that project first."""
    def queue(of: Journal, token: str | None = None) -> DrsQueue:
        return DrsQueue(of, BulkImportClient("http://127.0.0.1:9", token), None, limit=10,
                        window=60, default_conflict="SKIP", resolver={})

    bundle = "11111111-1111-4111-8111-111111111111"
    project = queue(journal).project(bundle)
    assert project.startswith("hcafs/") and bundle not in project
    assert queue(Journal(CrashingCacheDB(str(tmp_path / "hcafs.db")))).project(bundle) == \
        project  # the cache dir opened again
    assert queue(journal).project("22222222-2222-4222-8222-222222222222") != project
    elsewhere = Journal(CrashingCacheDB(str(tmp_path / "other.db")))
    assert queue(elsewhere).project(bundle) != project
    # Mounted again with another token: projects of its own, none of the first identity's
    assert queue(journal, "another-token").project(bundle) not in (project, bundle)
    assert "another-token" not in queue(journal, "another-token").project(bundle)
