"""Model tier: an import job's document is written only over the version its holder read
(hcafs/server/imports.py ``Importer._save``).

The lease's fence stops a holder that lost its lease before it writes; the compare-and-swap
stops one that passed the fence and then stalled while another process took the job over
and wrote it.  The stall is a store whose next job write waits for the test (a fault: a
paused process or a slow disk)."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from hcafs.checksums import Checksums
from hcafs.server.imports import Importer, ImportLimits, _Due, _Landing
from hcafs.server.leases import LeaseLost, Leases
from hcafs.server.store import LocalStore

JOB = "hcafs-import-cas"


class _StallingStore(LocalStore):
    """A store whose next write of a job document waits until ``go`` is set."""

    def __init__(self, root: str):
        super().__init__(root)
        self.stall = False
        self.waiting, self.go = threading.Event(), threading.Event()

    def replace(self, key: str, data: bytes, tag: str) -> str | None:
        if key.startswith("imports/") and self.stall:
            self.stall = False
            self.waiting.set()
            self.go.wait(30)
        return super().replace(key, data, tag)


def _importer(store, holder: str, ttl: float, tmp_path) -> Importer:
    return Importer(store, None, ImportLimits(), str(tmp_path / f"spool-{holder}"),
                    workers=1, leases=Leases(store, ttl=ttl, holder=holder))


@pytest.fixture
def store(tmp_path):
    store = _StallingStore(str(tmp_path / "store"))
    store.create(f"imports/{JOB}", json.dumps({"id": JOB, "state": "SUBMITTED",
                                                "results": []}).encode())
    return store


def test_a_holder_that_stalled_past_the_fence_cannot_write_over_the_new_holder(
        store, tmp_path):
    first = _importer(store, "elsewhere:1:a", 0.6, tmp_path)
    second = _importer(store, "elsewhere:2:b", 30, tmp_path)
    try:
        assert first._hold(JOB)
        job, tag = first._load_versioned(JOB)
        job["state"] = "RESOLVING"
        store.stall = True
        outcome: list[object] = []

        def save() -> None:
            try:
                outcome.append(first._save(job, tag))
            except LeaseLost as exc:
                outcome.append(exc)

        stalled = threading.Thread(target=save)
        stalled.start()
        assert store.waiting.wait(10)  # past the fence, before the write
        time.sleep(0.8)  # the first holder's lease runs out meanwhile
        assert second._hold(JOB)
        taken, taken_tag = second._load_versioned(JOB)
        taken["state"] = "RUNNING"
        second._save(taken, taken_tag)
        store.go.set()
        stalled.join(10)
        assert len(outcome) == 1 and isinstance(outcome[0], LeaseLost), outcome
        assert "changed by another process" in str(outcome[0])
        assert json.loads(store.read(f"imports/{JOB}"))["state"] == "RUNNING"
    finally:
        first.close()
        second.close()


def test_each_write_is_over_the_version_the_holder_wrote_last(store, tmp_path):
    importer = Importer(store, None, ImportLimits(), str(tmp_path / "spool"), workers=1)
    try:
        job, tag = importer._load_versioned(JOB)
        for state in ("RESOLVING", "RUNNING", "FINISHED"):
            job["state"] = state
            tag = importer._save(job, tag)
            assert importer._load_versioned(JOB)[1] == tag
        store.write(f"imports/{JOB}", json.dumps(dict(job, state="RUNNING")).encode())
        with pytest.raises(LeaseLost):  # another writer: the tag no longer names it
            importer._save(job, tag)
        assert json.loads(store.read(f"imports/{JOB}"))["state"] == "RUNNING"
    finally:
        importer.close()


class _ChangedUnderneath(LocalStore):
    """A store in which another writer changes the job document just before this
    process's first swap of it (a fault)."""

    changed = False

    def replace(self, key: str, data: bytes, tag: str) -> str | None:
        if key.startswith("imports/") and not self.changed:
            self.changed = True
            job = json.loads(self.read(key))
            self.write(key, json.dumps(dict(job, state="RUNNING", by="another")).encode())
        return super().replace(key, data, tag)


class _AnswerLost(LocalStore):
    """A store whose first swap of a job document lands but is reported refused, as S3
    answers a resent conditional PUT whose first try landed (a fault)."""

    lost = False

    def replace(self, key: str, data: bytes, tag: str) -> str | None:
        done = super().replace(key, data, tag)
        if key.startswith("imports/") and not self.lost:
            self.lost = True
            return None
        return done


def _job_store(cls, tmp_path):
    store = cls(str(tmp_path / "store"))
    store.create(f"imports/{JOB}", json.dumps({"id": JOB, "state": "SUBMITTED", "owner": "a@b",
                                                "history": [], "results": []}).encode())
    store.write(f"import-running/{JOB}", b"{}")
    return store


def test_a_job_whose_document_changed_underneath_is_let_go_with_its_lease(tmp_path):
    store = _job_store(_ChangedUnderneath, tmp_path)
    importer = _importer(store, "elsewhere:3:c", 30, tmp_path)
    try:
        importer.start()
        deadline = time.monotonic() + 10
        while (store.read(f"leases/import-{JOB}") is not None or not store.changed) \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.changed
        assert store.read(f"leases/import-{JOB}") is None  # given back, not renewed
        assert importer.leases.held() == 0
        assert json.loads(store.read(f"imports/{JOB}"))["by"] == "another"
    finally:
        importer.close()


def test_a_refused_swap_that_finds_its_own_bytes_counts_as_written(tmp_path):
    store = _job_store(_AnswerLost, tmp_path)
    importer = Importer(store, None, ImportLimits(), str(tmp_path / "spool"), workers=1)
    try:
        job, tag = importer._load_versioned(JOB)
        job["state"] = "RESOLVING"
        tag = importer._save(job, tag)  # reported refused, yet ours: no LeaseLost
        assert store.lost and importer._load_versioned(JOB) == (job, tag)
        job["state"] = "RUNNING"
        importer._save(job, tag)
        assert json.loads(store.read(f"imports/{JOB}"))["state"] == "RUNNING"
    finally:
        importer.close()


def test_a_job_let_go_drops_what_it_fetched_ahead_and_its_staged_documents(tmp_path):
    """Units fetched ahead of their admission hold staged documents (temporary files of
    the store); a job given up (finished elsewhere, lost) drops them, not another job's."""
    store = LocalStore(str(tmp_path / "store"))
    importer = Importer(store, None, ImportLimits(), str(tmp_path / "spool"), workers=1)
    try:
        sums = Checksums(sha256="0" * 64, sha1="0" * 40, crc32c="0" * 8, s3_etag="0" * 32,
                         size=10)
        for job_id, index in (("lost", 0), ("lost", 1), ("kept", 0)):
            importer._ahead[(job_id, index)] = _Landing(
                sums, ("folder", "leaf"), "files/x", {}, {},
                store.stage([b"file", b"record", b"entry"]))
            importer._ahead_bytes += sums.size
        importer._let_go("lost")
        assert list(importer._ahead) == [("kept", 0)] and importer._ahead_bytes == 10
        assert len(_staged_files(store)) == 3
    finally:
        importer.close()
    assert importer._ahead == {} and _staged_files(store) == []


def _staged_files(store: LocalStore) -> list[str]:
    return [name for _, _, names in os.walk(os.path.join(store.root, ".tmp"))
            for name in names]


def test_a_job_a_thread_works_on_is_not_queued_again_until_done():
    """A rescan between a job's take and its lease claim found its lease free and queued
    it again: a second thread then worked the same job (and the one that lost the swap let
    go of the other's fetched units)."""
    due, stop = _Due(), threading.Event()
    due.put("job", "owner")
    assert due.take(stop) == ("job", "owner")
    due.put("job", "owner")  # the rescan, while the job is worked
    timer = threading.Timer(0.3, stop.set)
    timer.start()
    assert due.take(stop) is None  # nothing queued: the wait ran out
    timer.join()
    stop.clear()
    due.done("job", "owner")
    due.put("job", "owner", time.time())  # the work asked to come back: queued
    assert due.take(stop) == ("job", "owner")
