"""The mount side of bulk DRS imports without FUSE: a real :class:`DrsQueue` on a real
journal (a temporary SQLite file) sends ``.drs`` requests to a real ``hcafs serve``'s bulk
import API, behind a relay that records every call, and the files come from a second
``hcafs serve``.  Counted: the create calls and their items (the server's audit record),
and each job's polls (the relay)."""

from __future__ import annotations

import hashlib
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from fixtures.drs_repo import max_in_period
from fixtures.dss_server import ADMIN, DSSServer
from fixtures.faults import FaultyHttpProxy
from fixtures.hcafs_mount import wait_until
from fixtures.publishing import publish

from hcafs.cache.cachedb import CacheDB
from hcafs.cache.journal import DRS, REMOTE, Journal
from hcafs.remote.bulk_import import BulkImportClient
from hcafs.remote.client import DSSClient
from hcafs.sync.drs_queue import SETTLE, WAIT, DrsQueue

LIMIT, WINDOW = 100, 4.0


@pytest.fixture
def peers(tmp_path: Path):
    staging = tmp_path / "external-staging"
    staging.mkdir()
    external = DSSServer(str(tmp_path / "external"),
                         args=["--staging-root", str(staging)]).start()
    importer = DSSServer(str(tmp_path / "importer"), args=[
        "--import-rate-limit", str(LIMIT), "--import-rate-window", str(WINDOW)]).start()
    relay = FaultyHttpProxy(importer.url)
    try:
        yield SimpleNamespace(external=external, staging=staging, importer=importer,
                              relay=relay)
    finally:
        relay.close()
        importer.stop()
        external.stop()


def _import(peers, tmp_path: Path, uris: list[str], timeout: float = 120,
            dss_url: str | None = None, journal: Journal | None = None,
            one_batch: bool = False) -> Journal:
    """Queue one ``.drs`` request per URI, as closed files would, and run the flusher
    until every import has landed.  The DSS is the importer, asked directly unless
    ``dss_url`` says otherwise; ``journal``: one made (and faulted) by the caller;
    ``one_batch``: every request is queued before the flusher starts, so a slow machine
    cannot split them into several jobs."""
    journal = journal or Journal(CacheDB(str(tmp_path / "cache" / "hcafs.db")))
    journal.add_bundle("b", str(uuid.uuid4()), None, [])
    queue = DrsQueue(journal, BulkImportClient(peers.relay.url, ADMIN),
                     DSSClient(dss_url or peers.importer.url, token=ADMIN), limit=LIMIT,
                     window=WINDOW,
                     default_conflict="SKIP", resolver={})
    if not one_batch:
        queue.start()
    try:
        for n, uri in enumerate(uris):
            file_id = journal.add_file("b", f"f{n:03d}.drs", DRS)
            queue.enqueue_file(file_id, "b", f"f{n:03d}.drs", uri.encode(), len(uri))
        if one_batch:
            queue.start()
        wait_until(lambda: not journal.imports_waiting("b"), timeout=timeout,
                   what="the imports to land")
    finally:
        queue.stop()
    return journal


def _log(peers) -> dict:
    import requests

    answer = requests.get(f"{peers.importer.url}/internal/imports/log", timeout=30,
                          headers={"Authorization": f"Bearer {ADMIN}"})
    answer.raise_for_status()
    return answer.json()


def test_calls_are_full_one_period_ahead_and_wait_for_the_window_not_longer(peers, tmp_path):
    blobs = {f"x{n:03d}": f"file {n}\n".encode() for n in range(250)}
    _, files = publish(DSSClient(peers.external.url, token=ADMIN), peers.staging, blobs)
    host = peers.external.url.split("://", 1)[1]
    uris = [f"drs://{host}/{'.'.join(files[name])}" for name in blobs]
    journal = _import(peers, tmp_path, uris)

    landed = {row.path: row for row in journal.files("b")}
    assert sorted(landed) == [f"f{n:03d}" for n in range(250)]
    assert all(row.kind == REMOTE and row.size == len(blobs[f"x{int(path[1:]):03d}"])
               for path, row in landed.items())
    log = _log(peers)
    calls = sorted((c for c in log["calls"] if not c["replay"]), key=lambda c: c["time"])
    # Full calls, not one a file: the first goes at once with what is queued (it opens
    # the period), the next fill what is left of it and of the period after it (to wait
    # at the server, fetched ahead): two periods' worth before the first period ends; the
    # rest waits for it to end (and for results to be applied: never more than two
    # periods' worth in flight), and goes then (woken, not on a later tick; the bound is
    # generous).
    sizes = [c["items"] for c in calls]
    assert sum(sizes) == 250 and max(sizes) == 100 and len(sizes) <= 6, sizes
    assert all(c["accepted"] for c in calls)
    start = calls[0]["time"]
    early = [c for c in calls if c["time"] - start < WINDOW - 0.1]
    assert sum(c["items"] for c in early) == 2 * LIMIT, sizes
    assert max(c["time"] for c in early) - start <= 1.5
    assert all(WINDOW - 0.1 <= c["time"] - start <= WINDOW + 3.0
               for c in calls if c not in early)
    admitted = sorted(a["time"] for a in log["admissions"])
    assert len(admitted) == 250
    assert max_in_period(admitted, WINDOW) <= LIMIT


def test_a_landed_file_is_headed_only_when_the_import_api_is_not_its_dss(peers, tmp_path):
    blobs = {f"h{n:02d}": f"headed {n}\n".encode() * (n + 1) for n in range(12)}
    _, files = publish(DSSClient(peers.external.url, token=ADMIN), peers.staging, blobs)
    host = peers.external.url.split("://", 1)[1]
    uris = [f"drs://{host}/{'.'.join(files[name])}" for name in blobs]

    def heads(relay) -> int:
        return sum(1 for seen in relay.seen
                   if seen.method == "HEAD" and seen.path.startswith("/v1/files/"))

    # The import API and the DSS are one server (one origin): the results carry the DSS
    # records, and no HEAD is sent.
    same = _import(peers, tmp_path / "same", uris[:6], dss_url=peers.relay.url)
    assert heads(peers.relay) == 0
    # Another origin for the DSS: what it stored is asked of it, one HEAD per file.
    second = FaultyHttpProxy(peers.importer.url)
    try:
        other = _import(peers, tmp_path / "other", uris[6:], dss_url=second.url)
        assert heads(second) == 6 and heads(peers.relay) == 0
    finally:
        second.close()
    dss = DSSClient(peers.importer.url)
    for journal in (same, other):
        rows = journal.files("b")
        assert len(rows) == 6
        for row in rows:
            info = dss.head_file(row.file_uuid, row.file_version)
            assert (row.size, row.sha256, row.sha1, row.crc32c, row.s3_etag,
                    row.content_type) == (info.size, info.sha256, info.sha1, info.crc32c,
                                          info.s3_etag, info.content_type)


def test_polling_starts_soon_backs_off_and_sees_finished_promptly(peers, tmp_path):
    blobs = {f"p{n:03d}": f"polled {n}\n".encode() * 4 for n in range(150)}
    _, files = publish(DSSClient(peers.external.url, token=ADMIN), peers.staging, blobs)
    host = peers.external.url.split("://", 1)[1]
    clock = time.time() - time.monotonic()  # the relay records monotonic times
    _import(peers, tmp_path, [f"drs://{host}/{'.'.join(files[n])}" for n in blobs])

    log = _log(peers)
    jobs = {job["id"]: job for job in log["jobs"]}
    assert len(jobs) in (2, 3)  # the first call may open the period with a few items
    polls: dict[str, list[float]] = {job_id: [] for job_id in jobs}
    for seen in peers.relay.seen:
        if seen.method == "GET" and seen.path.startswith("/v2/bulk/drs/imports/"):
            polls[seen.path.rsplit("/", 1)[1].split("?")[0]].append(seen.at + clock)
    for job_id, job in jobs.items():
        created = job["history"][0]["time"]
        finished = next(h["time"] for h in job["history"] if h["state"] == "FINISHED")
        times = sorted(polls[job_id])
        assert times, f"job {job_id} was never polled"
        assert times[0] - created <= 2.0  # soon after submission (at 0.25 s)
        # the last poll saw it FINISHED (a held poll starts up to WAIT s before the change
        # that answers it) ...
        assert times[-1] >= finished - WAIT - 0.5
        assert times[-1] - finished <= 3.0  # ... promptly: polls are at most 2 s apart
        # backing off: a job that lives D seconds gets a handful of polls, not D / 0.25,
        # besides the quick ones while its items are let in (SETTLE, every 0.25 s)
        assert len(times) <= 5 + SETTLE / 0.25 + (finished - created) / 2.0 * 1.5, \
            (job_id, times)
    # the polls name the version they hold: an unchanged job costs a 304, not its results
    answers = [line.split()[-2:] for line in peers.importer.log().splitlines()
               if "access: GET /v2/bulk/drs/imports/" in line]
    assert "304" in [status for status, _ in answers], answers
    # while its items are let in, a job's poll is held by the server until it changes
    # (Prefer: wait=2), so the polls of those seconds are few and long
    assert max(float(took.rstrip("s")) for _, took in answers) >= 1.0, answers


def test_results_whose_recording_failed_are_applied_again_to_the_right_items(peers, tmp_path,
                                                                            monkeypatch):
    """A fault: recording a finished job's landed items fails once (the database was
    locked, say).  The job is applied again from a full answer (its tag would get a 304:
    a finished job never changes), and each item still gets its own result although the
    job's first item, which failed for good, was recorded on the first try."""
    blobs = {f"r{n}": f"result {n}\n".encode() * n for n in range(1, 3)}  # sizes differ
    _, files = publish(DSSClient(peers.external.url, token=ADMIN), peers.staging, blobs)
    host = peers.external.url.split("://", 1)[1]
    missing = f"drs://{host}/{uuid.uuid4()}.2020-01-01T000000.000000Z"  # fails for good
    uris = [missing, *(f"drs://{host}/{'.'.join(files[name])}" for name in blobs)]
    journal = Journal(CacheDB(str(tmp_path / "cache" / "hcafs.db")))
    real, failures = journal.imports_done, []

    def fails_once(landed):
        if not failures:
            failures.append(len(landed))
            raise RuntimeError("database is locked (a fault)")
        real(landed)

    monkeypatch.setattr(journal, "imports_done", fails_once)
    _import(peers, tmp_path, uris, timeout=60, journal=journal, one_batch=True)
    assert failures == [2]  # the two files that land, refused once
    landed = {row.path: row for row in journal.files("b")}
    assert journal.file("b", "f000.drs").error  # the missing object: its own error
    for n, name in enumerate(blobs, start=1):
        row = landed[f"f{n:03d}"]
        assert (row.kind, row.size, row.sha256) == (
            REMOTE, len(blobs[name]), hashlib.sha256(blobs[name]).hexdigest())
