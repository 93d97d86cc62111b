"""Model tier: the catalog against a real ``hcafs serve`` that goes away.

"Unreachable never reads as deleted": a refresh that cannot reach the server raises and
changes nothing, in memory or in SQLite, and the mounted tree keeps showing what it had.
"""

from __future__ import annotations

import socket

import pytest
from crashdb import CrashingCacheDB, InjectedCrash
from fixtures.dss_server import ADMIN, DSSServer
from fixtures.publishing import publish

from hcafs.cache.blobcache import BlobCache
from hcafs.cache.cachedb import CacheDB
from hcafs.cache.catalog import Catalog
from hcafs.errors import NotFound, Unreachable
from hcafs.model.tree import Tree
from hcafs.remote.client import DSSClient, RetryPolicy

QUICK = RetryPolicy(attempts=2, base_delay=0.05, max_delay=0.1)


@pytest.fixture
def server(tmp_path):
    staging = tmp_path / "staging"
    staging.mkdir()
    server = DSSServer(str(tmp_path / "server"), args=["--staging-root", str(staging)])
    server.start()
    yield server, staging
    server.stop()


def _catalog(tmp_path, url: str) -> Catalog:
    client = DSSClient(url, token=ADMIN, retry=QUICK)
    return Catalog(CacheDB(str(tmp_path / "cache" / "hcafs.db")), client, ttl=300)


def test_a_refresh_with_the_server_stopped_keeps_every_bundle(tmp_path, server):
    dss, staging = server
    fqid, _ = publish(DSSClient(dss.url, token=ADMIN), staging, {"a.txt": b"alpha\n"})
    catalog = _catalog(tmp_path, dss.url)
    catalog.refresh()
    assert catalog.bundles() == [fqid] and catalog.health.online
    stamp = catalog.refreshed_at
    manifest = catalog.manifest(fqid)
    dss.stop()
    with pytest.raises(Unreachable):
        catalog.refresh()
    assert catalog.bundles() == [fqid] and catalog.refreshed_at == stamp
    assert not catalog.health.online
    assert catalog.manifest(fqid) == manifest  # kept for good, no network needed
    # A restart (a remount of the same cache dir) still sees it, offline.
    again = _catalog(tmp_path, dss.url)
    assert again.bundles() == [fqid] and again.refreshed_at == stamp
    tree = Tree(again, BlobCache(str(tmp_path / "blobs"), again.db, 1 << 20))
    assert [name for name, _ in tree.listdir("/bundles")] == [fqid]
    assert [name for name, _ in tree.listdir(f"/bundles/{fqid}")] == ["a.txt"]
    # Unknown versions are not "deleted" either: asking for one is an error, not ENOENT.
    with pytest.raises(Unreachable):
        again.manifest(fqid.split(".")[0] + ".2030-01-01T000000.000000Z")


def test_a_refresh_after_the_server_returns_sees_deletions(tmp_path, server):
    dss, staging = server
    client = DSSClient(dss.url, token=ADMIN)
    fqid, _ = publish(client, staging, {"a.txt": b"alpha\n"})
    catalog = _catalog(tmp_path, dss.url)
    catalog.refresh()
    dss.stop()
    with pytest.raises(Unreachable):
        catalog.refresh()
    dss.start()
    client.delete_bundle(*fqid.split(".", 1), reason="test")
    catalog.refresh()
    assert catalog.bundles() == [] and catalog.health.online
    with pytest.raises(NotFound):
        catalog.manifest(fqid.split(".")[0] + ".2030-01-01T000000.000000Z")


def test_a_closed_port_is_unreachable_not_empty(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens once closed
    catalog = _catalog(tmp_path, f"http://127.0.0.1:{port}")
    catalog.db.db()["bundles"].insert({"fqid": "u.v", "uuid": "u", "version": "v"})
    catalog = _catalog(tmp_path, f"http://127.0.0.1:{port}")
    with pytest.raises(Unreachable):
        catalog.refresh()
    assert catalog.bundles() == ["u.v"]


def test_a_refresh_that_fails_while_writing_changes_nothing(tmp_path, server):
    dss, staging = server
    client = DSSClient(dss.url, token=ADMIN, retry=QUICK)
    first, _ = publish(client, staging, {"a.txt": b"alpha\n"})
    db = CrashingCacheDB(str(tmp_path / "cache" / "hcafs.db"))
    catalog = Catalog(db, client, ttl=300)
    catalog.refresh()
    second, _ = publish(client, staging, {"b.txt": b"beta\n"})
    client.delete_bundle(*first.split(".", 1), reason="test")
    before, stamp = db.snapshot(), catalog.refreshed_at
    # Either nothing changed, or the events were applied with their cursor (one
    # transaction): never half of either.
    crash = 1
    while True:  # a failure before each statement of the refresh, until none is left
        db.crash_at(crash)
        try:
            catalog.refresh()
        except InjectedCrash:
            after = db.snapshot()
            if after != before:
                assert [r[0] for r in after["bundles"]] == [second], \
                    f"statement {crash} left a trace"
            assert catalog.bundles() == [r[0] for r in after["bundles"]]
            assert catalog.refreshed_at == stamp
            crash += 1
            continue
        break
    assert crash > 3  # the events' rows and cursor, the collections', the timestamp
    db.crash_at(10**9)  # disarmed: the refresh ran without reaching it
    assert catalog.bundles() == [second] and db.snapshot() != before
