"""The sync engine without FUSE, on local staging (as the embedded default runs it), against a
real ``hcafs serve`` behind a fault proxy: what it does when the server's answers are lost.

Local staging records crc32c only (the server computes all four as it takes a file in), so
every path that ends in "synced" must take the server's four checksums; and a version the
server holds with other bytes must be left for a new one on every path that finds it, not
only right after put-file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path

import pytest
from fixtures.dss_server import ADMIN, DSSServer
from fixtures.faults import Fault, FaultyHttpProxy

from hcafs.cache.blobcache import BlobCache
from hcafs.cache.cachedb import CacheDB
from hcafs.cache.catalog import Catalog
from hcafs.cache.journal import ERROR, SYNCED, Journal
from hcafs.model.pending import PendingBundles
from hcafs.model.tree import Tree
from hcafs.remote.client import DSSClient
from hcafs.retry import RetryPolicy
from hcafs.sync.staging import LocalStager
from hcafs.sync.syncer import Syncer

LOST = 6  # the client's attempts at one request: each is relayed, its answer is cut off

QUICK = RetryPolicy(attempts=LOST, base_delay=0.05, max_delay=0.2)  # the client's, sooner


def _lose_answers(proxy: FaultyHttpProxy, times: int = LOST) -> Fault:
    """The server takes in every put-file of one attempt, and the mount hears none of its
    answers (a reset after the headers): the attempt fails with the file registered."""
    return proxy.when(Fault(cut_after=0), method="PUT", path="/v1/files/", times=times)


@pytest.fixture
def engine(tmp_path):
    staging = tmp_path / "staging"
    staging.mkdir()
    server = DSSServer(str(tmp_path / "server"), args=["--staging-root", str(staging)]).start()
    proxy = FaultyHttpProxy(server.url)
    db = CacheDB(str(tmp_path / "cache" / "hcafs.db"))
    journal = Journal(db)
    catalog = Catalog(db, None, ttl=300)
    blobs = BlobCache(str(tmp_path / "cache" / "blobs"), db, 64 * 1024 * 1024)
    tree = Tree(catalog, blobs)
    stager = LocalStager(str(staging))
    tree.pending = PendingBundles(journal, str(tmp_path / "cache" / "pending"), catalog, blobs,
                                  tree.fetcher, complete_sums=stager.complete_checksums)
    syncers: list[Syncer] = []

    def new_syncer() -> Syncer:  # a mount's engine; a second one is the next mount's
        client = DSSClient(proxy.url, token=ADMIN, retry=QUICK)
        syncers.append(Syncer(journal, tree.pending, stager, client, catalog, blobs, delay=0.0,
                              workers=1, creator_uid=0, auto_commit=None))
        return syncers[-1]

    tree.mkdir("/bundles/b")
    yield type("Engine", (), dict(server=server, proxy=proxy, journal=journal, tree=tree,
                                  syncer=new_syncer(), new_syncer=new_syncer, staging=staging,
                                  stager=stager))
    for syncer in syncers:
        syncer.stop()
    blobs.close()
    proxy.close()
    server.stop()


def _write(tree: Tree, path: str, data: bytes) -> None:
    handle = tree.create(path)
    assert tree.write(handle, data, 0) == len(data)
    tree.release(handle)


def _wait_for(journal: Journal, name: str, state: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = journal.file("b", name)
        if row.state == state and (state != SYNCED or row.synced_generation == row.generation):
            return row
        time.sleep(0.05)
    raise AssertionError(f"{name} not {state}: {journal.file('b', name)}")


def _staged_files(staging: Path) -> list[str]:
    return sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())


def _swap_before_the_server_reads(engine, name: str, data: bytes, other: bytes) -> str:
    """Write ``data`` as ``b/name`` and start the engine; while its first put-file is held,
    replace the staged copy with ``other``, then lose the answers of the whole attempt.
    The version the server took ``other`` in under is returned."""
    hold = threading.Event()
    put = engine.proxy.when(Fault(hold=hold, cut_after=0), method="PUT", path="/v1/files/")
    _write(engine.tree, f"/bundles/b/{name}", data)
    engine.syncer.start()
    try:
        assert put.reached.wait(30)
        [staged] = _staged_files(engine.staging)
        (engine.staging / staged).write_bytes(other)
        _lose_answers(engine.proxy, LOST - 1)  # the held one's answer is lost too
    finally:
        hold.set()
    return staged.split("/")[0].split(".", 1)[1]


def test_a_registration_whose_answer_was_lost_is_synced_with_the_servers_four_checksums(
        engine):
    """The server registers the file, but the mount hears none of its answers, so the
    attempt fails with the file registered.  The next attempt finds it registered: the row
    is synced with all four checksums from the server (the mount wrote only crc32c), and the
    staged copy is gone.  A file whose answer arrives needs no HEAD: the answer has them."""
    data, plain = os.urandom(300_000), os.urandom(1000)
    lost = _lose_answers(engine.proxy)
    # the HEAD that finds it registered is retried through two 503s
    busy = engine.proxy.when(Fault.error(503, retry_after="0"), method="HEAD", times=2)
    _write(engine.tree, "/bundles/b/lost.bin", data)
    assert engine.journal.file("b", "lost.bin").sha256 is None  # crc32c only, so far
    engine.syncer.start()
    assert lost.reached.wait(30)
    row = _wait_for(engine.journal, "lost.bin", SYNCED)
    assert row.attempts == 0 and row.error is None
    assert (row.sha256, row.sha1, row.s3_etag) == (
        hashlib.sha256(data).hexdigest(), hashlib.sha1(data).hexdigest(),
        hashlib.md5(data).hexdigest())
    info = DSSClient(engine.server.url, token=ADMIN).head_file(row.file_uuid, row.file_version)
    assert (info.sha256, info.crc32c) == (row.sha256, row.crc32c)
    puts = [s for s in engine.proxy.seen if s.method == "PUT" and "/v1/files/" in s.path]
    assert len(puts) == LOST  # then found registered: not staged nor put again
    assert busy.reached.is_set() and not any(rule.times for rule in engine.proxy.rules)
    assert _staged_files(engine.staging) == []
    _write(engine.tree, "/bundles/b/plain.bin", plain)
    row = _wait_for(engine.journal, "plain.bin", SYNCED)
    assert row.sha256 == hashlib.sha256(plain).hexdigest()
    assert not [s for s in engine.proxy.seen if s.method == "HEAD" and row.file_uuid in s.path]


def test_other_bytes_found_after_a_lost_answer_are_staged_under_a_new_version(engine):
    """The staged copy is replaced before the server takes it in, and the answer that would
    show the difference is lost.  The next attempt finds the version registered with other
    bytes: it takes a new version (staging again under the old one would be refused as
    'already exists' forever), and the server ends up holding what was written."""
    data, other = os.urandom(200_000), os.urandom(200_000)
    first_version = _swap_before_the_server_reads(engine, "swapped.bin", data, other)
    failed = _wait_for(engine.journal, "swapped.bin", ERROR)
    assert failed.file_version == first_version
    row = _wait_for(engine.journal, "swapped.bin", SYNCED)
    assert row.file_version != first_version
    assert row.sha256 == hashlib.sha256(data).hexdigest()
    client = DSSClient(engine.server.url, token=ADMIN)
    assert client.head_file(row.file_uuid, first_version).sha256 == \
        hashlib.sha256(other).hexdigest()  # the old version keeps what it was given
    assert client.head_file(row.file_uuid, row.file_version).sha256 == row.sha256
    # told by the HEAD before any put: nothing was staged or put again under the old version
    assert len([s for s in engine.proxy.seen
                if s.method == "PUT" and first_version in s.path]) == LOST
    assert _staged_files(engine.staging) == []


def test_other_bytes_found_by_a_refused_repeat_are_staged_under_a_new_version(engine):
    """As above, but the mount stops (as if it crashed) while it stages the file again under
    the old version.  The next mount's put-file under that version is refused as 'already
    exists'; the HEAD shows why, and the file takes a new version."""
    data, other = os.urandom(200_000), os.urandom(200_000)
    first_version = _swap_before_the_server_reads(engine, "again.bin", data, other)
    failed = _wait_for(engine.journal, "again.bin", ERROR)
    engine.syncer.stop()
    assert engine.journal.begin_staging(failed.id, failed.generation) == \
        (failed.file_uuid, first_version)  # where the stopped mount left it
    engine.new_syncer().start()
    row = _wait_for(engine.journal, "again.bin", SYNCED)
    assert row.file_version != first_version
    assert row.sha256 == hashlib.sha256(data).hexdigest()
    refused = [s for s in engine.proxy.seen if s.method == "PUT" and first_version in s.path]
    assert len(refused) == LOST + 1  # the lost ones, the refused repeat; then a new version
    assert _staged_files(engine.staging) == []


def test_a_version_whose_copy_failed_on_the_server_is_put_again(engine, caplog):
    """Every put-file of an attempt answers 503, so the file's version is fixed but not
    registered; meanwhile the server's record of a background copy of that version says
    the copy failed (written into its store: the fault), so its HEAD answers 422.  The next
    attempt stages and puts the file again under that version, which replaces the failed
    record, instead of asking the HEAD again and again."""
    caplog.set_level(logging.INFO, logger="hcafs.sync.syncer")
    data = os.urandom(100_000)
    engine.proxy.when(Fault.error(503, retry_after="0"), method="PUT", path="/v1/files/",
                      times=LOST)
    _write(engine.tree, "/bundles/b/failed.bin", data)
    engine.syncer.start()
    failed = _wait_for(engine.journal, "failed.bin", ERROR)
    engine.syncer.stop()
    name = f"{failed.file_uuid}.{failed.file_version}"
    record = {"task_id": "0", "state": "failed", "status": 502, "code": "source_unavailable",
              "title": "the source could not be read", "since": time.time()}
    copies = Path(engine.server.data_dir, "store", "copies")
    copies.mkdir(exist_ok=True)
    (copies / name).write_text(json.dumps(record))
    engine.new_syncer().start()
    row = _wait_for(engine.journal, "failed.bin", SYNCED)
    assert (row.file_uuid, row.file_version) == (failed.file_uuid, failed.file_version)
    assert row.sha256 == hashlib.sha256(data).hexdigest()
    heads = [s for s in engine.proxy.seen if s.method == "HEAD" and failed.file_uuid in s.path]
    assert len(heads) == 1  # asked once, then put again
    assert f"the server's copy of {name} failed (422 " in caplog.text, \
        caplog.text


def test_a_staged_copy_made_stale_by_a_rewrite_is_removed(engine):
    """The file is written again while its first content is being staged (the fault: the
    rewrite lands right after the staged copy is made).  That staged copy is removed, not
    left in the staging root, and the new content is synced under a version of its own."""
    first, second = os.urandom(50_000), os.urandom(60_000)
    stage = engine.stager.stage
    staged: list[str] = []

    def stage_then_rewrite(*args, **kwargs):
        answer = stage(*args, **kwargs)
        if not staged:
            staged.extend(_staged_files(engine.staging))
            _write(engine.tree, "/bundles/b/twice.bin", second)
        return answer

    engine.stager.stage = stage_then_rewrite
    _write(engine.tree, "/bundles/b/twice.bin", first)
    engine.syncer.start()
    row = _wait_for(engine.journal, "twice.bin", SYNCED)
    assert row.sha256 == hashlib.sha256(second).hexdigest() and row.generation == 2
    [stale] = staged
    assert not stale.startswith(f"{row.file_uuid}.{row.file_version}/")
    assert _staged_files(engine.staging) == []
    puts = [s for s in engine.proxy.seen if s.method == "PUT" and "/v1/files/" in s.path]
    assert len(puts) == 1  # the stale content was never put
