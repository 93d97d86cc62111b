"""Model tier: the catalog kept up to date through ``/v1/events``, against a real
``hcafs serve`` (behind a fault proxy that counts requests and can take ``/events`` away).

* A refresh with nothing changed is one request; creates and deletes made through the API
  show up, deletions leave the listing.
* A late commit (a version older than the events already read) shows up.
* A server without ``/events`` (404) is listed whole, as before.
* A first listing stopped part-way resumes from where it stopped; until it completes, a
  lookup asks the server and a miss is not remembered.
"""

from __future__ import annotations

import itertools
import uuid

import pytest
from fixtures.dss_server import ADMIN, DSSServer
from fixtures.faults import Fault, FaultyHttpProxy
from fixtures.publishing import publish

import hcafs.cache.catalog as catalog_module
from hcafs.cache.cachedb import CacheDB, mtime_ns
from hcafs.cache.catalog import Catalog
from hcafs.remote.client import DSSClient, RetryPolicy
from hcafs.versions import now_version

QUICK = RetryPolicy(attempts=2, base_delay=0.05, max_delay=0.1)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module (each test has its own proxy and cache, and compares its
    catalog with what the server lists, whatever earlier tests left there)."""
    work = tmp_path_factory.mktemp("events")
    staging = work / "staging"
    staging.mkdir()
    running = DSSServer(str(work / "server"), args=["--staging-root", str(staging)])
    running.start()
    try:
        yield running, staging
    finally:
        running.stop()


@pytest.fixture
def world(server):
    running, staging = server
    proxy = FaultyHttpProxy(running.url)
    try:
        yield running, staging, proxy
    finally:
        proxy.close()


def _served(client: DSSClient) -> list[str]:
    """Every bundle version the server lists now."""
    return sorted(f"{u}.{v}" for u, v in client.iter_bundles())


def _catalog(tmp_path, url: str) -> Catalog:
    client = DSSClient(url, token=ADMIN, retry=QUICK)
    return Catalog(CacheDB(str(tmp_path / "cache" / "hcafs.db")), client, ttl=300)


def _more(client: DSSClient, files: list[dict], count: int, version: str | None = None
          ) -> list[str]:
    """``count`` new bundle versions holding ``files`` (PUT /bundles each)."""
    made = []
    for _ in range(count):
        bundle = str(uuid.uuid4())
        at = version or now_version()
        status, _ = client.put_bundle(bundle, at, files)
        assert status == 201
        made.append(f"{bundle}.{at}")
    return made


def _files(client: DSSClient, fqid: str) -> list[dict]:
    return [{"uuid": f["uuid"], "version": f["version"], "name": f["name"],
             "indexed": f["indexed"]} for f in client.get_bundle(*fqid.split(".", 1))["files"]]


def _requests(proxy: FaultyHttpProxy, since: int, part: str) -> int:
    return sum(1 for seen in proxy.seen[since:] if part in seen.path)


def test_a_refresh_applies_creates_and_deletes_and_costs_one_request_when_idle(tmp_path,
                                                                               world):
    server, staging, proxy = world
    client = DSSClient(server.url, token=ADMIN)
    first, _ = publish(client, staging, {"a.txt": b"alpha\n"})
    catalog = _catalog(tmp_path, proxy.url)
    catalog.refresh()
    assert catalog.bundles() == _served(client) and first in catalog.bundles()
    assert catalog.complete

    mark = len(proxy.seen)
    catalog.refresh()
    assert _requests(proxy, mark, "/v1/events") == 1
    assert _requests(proxy, mark, "/v1/bundles") == 0
    assert catalog.bundles() == _served(client)

    made = _more(client, _files(client, first), 3)
    client.delete_bundle(*first.split(".", 1), reason="test")
    mark = len(proxy.seen)
    catalog.refresh()
    assert catalog.bundles() == _served(client)
    assert set(made) <= set(catalog.bundles()) and first not in catalog.bundles()
    assert _requests(proxy, mark, "/v1/bundles") == 0  # events only, no listing

    # Every version of one bundle deleted at once (the event has no version).
    client.delete_bundle(made[0].split(".", 1)[0], None, reason="test")
    catalog.refresh()
    assert catalog.bundles() == _served(client) and made[0] not in catalog.bundles()

    # Kept across a restart: the cursor is in the cache, the next refresh is events.
    again = _catalog(tmp_path, proxy.url)
    assert again.complete and again.bundles() == _served(client)
    mark = len(proxy.seen)
    again.refresh()
    assert _requests(proxy, mark, "/v1/bundles") == 0
    assert again.bundles() == _served(client)


def test_a_late_commit_older_than_the_events_read_shows_up(tmp_path, world):
    server, staging, proxy = world
    client = DSSClient(server.url, token=ADMIN)
    first, _ = publish(client, staging, {"a.txt": b"alpha\n"})
    catalog = _catalog(tmp_path, proxy.url)
    catalog.refresh()
    later = _more(client, _files(client, first), 1)
    catalog.refresh()
    # A version chosen an hour ago, committed only now: older than every event read.
    late = _more(client, _files(client, first), 1, version="2026-01-01T000000.000000Z")
    catalog.refresh()
    assert catalog.bundles() == _served(client)
    assert {first, *later, *late} <= set(catalog.bundles())


def test_a_server_without_events_is_listed_whole(tmp_path, world):
    server, staging, proxy = world
    client = DSSClient(server.url, token=ADMIN)
    first, _ = publish(client, staging, {"a.txt": b"alpha\n"})
    proxy.when(Fault.error(404), path="/v1/events", times=1000)
    catalog = _catalog(tmp_path, proxy.url)
    catalog.refresh()
    made = _more(client, _files(client, first), 2)
    client.delete_bundle(*first.split(".", 1), reason="test")
    mark = len(proxy.seen)
    catalog.refresh()
    assert catalog.bundles() == _served(client)
    assert set(made) <= set(catalog.bundles()) and first not in catalog.bundles()
    assert _requests(proxy, mark, "/v1/bundles/all") >= 1
    mark = len(proxy.seen)
    catalog.refresh()  # /events is not asked again on this server
    assert _requests(proxy, mark, "/v1/events") == 0
    assert catalog.bundles() == _served(client)


def test_a_first_listing_cut_short_resumes_and_is_never_shown_complete(tmp_path, world,
                                                                      monkeypatch):
    server, staging, proxy = world
    monkeypatch.setattr(catalog_module, "LISTING_PAGE", 10)
    client = DSSClient(server.url, token=ADMIN)
    first, _ = publish(client, staging, {"a.txt": b"alpha\n"})
    files = _files(client, first)  # read now: the version deleted below may be ``first``
    _more(client, files, 24)
    made = _served(client)

    earlier = FaultyHttpProxy(server.url)  # the server's address before the restart
    catalog = _catalog(tmp_path, earlier.url)
    catalog.refresh(pages=1)  # then the process "dies": nothing more is written
    earlier.close()
    assert not catalog.complete and catalog.bundle_count() == 10

    restarted = _catalog(tmp_path, proxy.url)
    assert not restarted.complete and restarted.bundles() == made[:10]
    # Not listed yet: asked of the server, and a miss is asked again, not remembered.
    assert restarted.has_bundle(made[-1])
    missing = f"{uuid.uuid4()}.{now_version()}"
    mark = len(proxy.seen)
    assert not restarted.has_bundle(missing) and not restarted.has_bundle(missing)
    assert _requests(proxy, mark, "/v1/bundles/") == 2

    # Changes while it was down: one listed version deleted, one new one.
    client.delete_bundle(*made[0].split(".", 1), reason="test")
    extra = _more(client, files, 1)
    mark = len(proxy.seen)
    restarted.refresh(pages=1)
    assert not restarted.complete and restarted.bundle_count() == 20
    # Resumed, not started over, and at the server's address now.
    assert "search_after" in proxy.seen[mark].path
    restarted.refresh()
    assert restarted.complete
    restarted.refresh()  # the events since the listing began
    assert restarted.bundles() == _served(client)
    assert made[0] not in restarted.bundles() and extra[0] in restarted.bundles()


def test_creates_at_the_page_boundaries_of_a_first_listing_all_show_up(tmp_path, world,
                                                                       monkeypatch):
    """Between two pages of a first listing, versions are created just past the last row
    listed (a new version of its bundle: the page boundary), before it, and after it; once
    the listing completes, the next refresh (events since the listing began) has them all."""
    server, staging, proxy = world
    monkeypatch.setattr(catalog_module, "LISTING_PAGE", 10)
    client = DSSClient(server.url, token=ADMIN)
    first, _ = publish(client, staging, {"a.txt": b"alpha\n"})
    files = _files(client, first)
    made = [first, *_more(client, files, 24)]
    catalog = _catalog(tmp_path, proxy.url)
    pages = 0
    while not catalog.complete:
        catalog.refresh(pages=1)
        pages += 1
        last = catalog.bundles()[-1]
        boundary = f"{last.split('.', 1)[0]}.{now_version()}"
        before = f"00000000-{uuid.uuid4().hex[:4]}-4000-8000-{uuid.uuid4().hex[:12]}." \
            f"{now_version()}"  # sorts before every row listed so far
        for fqid in (boundary, before):
            status, _ = client.put_bundle(*fqid.split(".", 1), files)
            assert status == 201
        made += [boundary, before, *_more(client, files, 1)]
    assert pages >= 3
    catalog.refresh()
    assert catalog.bundles() == _served(client)
    assert set(made) <= set(catalog.bundles())


def test_bundles_readdir_is_streamed_by_offset_from_sqlite(tmp_path):
    """The adapter's READDIRPLUS for bundles/: every row once, in order, whether the kernel
    goes on from where its buffer ended or asks an arbitrary offset; a row deleted before
    the page holding it is read is not shown.  Each row's mtime is its version's."""
    from hcafs.cache.blobcache import BlobCache
    from hcafs.model.entries import version_mtime
    from hcafs.model.tree import Tree
    from hcafs.mount import fuse_ops

    db = CacheDB(str(tmp_path / "hcafs.db"))
    rows = sorted(f"{uuid.UUID(int=n)}.2026-01-01T{n % 24:02d}0000.{n:06d}Z" for n in range(2500))
    db.db().conn.executemany("insert into bundles values (?, ?, ?, ?)",
                             [(f, *f.split(".", 1), mtime_ns(f.split(".", 1)[1]))
                              for f in rows])
    catalog = Catalog(db, None, ttl=300)
    ops = fuse_ops.Operations(Tree(catalog, BlobCache(str(tmp_path / "b"), db, 1 << 20)),
                              (1.0, 1.0, 1.0), lambda: None, lambda: None)
    handle = ops.opendir("/bundles")
    seen, offset = [], 0
    while True:  # a buffer of 333 entries, and one more that did not fit
        batch = []
        for name, attrs, following in ops.readdir_plus("/bundles", offset, handle):
            if len(batch) == 333:
                break
            batch.append((name, following))
            if name not in (".", ".."):
                version = name.split(".", 1)[1]
                assert attrs["st_mtime"] == int(version_mtime(version) * 1e9)
                assert attrs["st_mtime"] == ops.getattr(f"/bundles/{name}")["st_mtime"]
        if not batch:
            break
        seen += [name for name, _ in batch]
        offset = batch[-1][1]
    assert seen == [".", "..", *rows]
    assert [n for n, _, _ in ops.readdir_plus("/bundles", 1502, handle)][:2] == rows[1500:1502]
    ops.releasedir("/bundles", handle)

    handle = ops.opendir("/bundles")
    head = [n for n, _, _ in itertools.islice(ops.readdir_plus("/bundles", 0, handle), 502)]
    catalog.forget_bundle(rows[2000])  # in a page not read yet
    rest = [n for n, _, _ in ops.readdir_plus("/bundles", 502, handle)]
    assert head[2:] + rest == rows[:2000] + rows[2001:]
    ops.releasedir("/bundles", handle)


def test_a_cache_from_before_the_bundle_times_keeps_its_listing(tmp_path):
    """A cache DB written before the rows carried their mtime (no ``mtime_ns``, migration
    not applied) is migrated at its first open: every row kept, each with its version's
    time, as readdir shows it."""
    from hcafs.model.entries import version_mtime

    path = str(tmp_path / "hcafs.db")
    old = CacheDB(path).db().conn
    rows = sorted((f"{uuid.uuid4()}.2026-0{n % 9 + 1}-1{n % 10}T{n % 24:02d}3000.{n:06d}Z")
                  for n in range(50))
    old.executemany("insert into bundles (fqid, uuid, version) values (?, ?, ?)",
                    [(f, *f.split(".", 1)) for f in rows])
    old.execute("alter table bundles drop column mtime_ns")
    old.execute("delete from _sqlite_migrations where name = 'm008_bundle_times'")
    old.close()

    catalog = Catalog(CacheDB(path), None, ttl=300)
    assert catalog.bundle_rows(limit=100) == [
        (f, int(version_mtime(f.split(".", 1)[1]) * 1e9)) for f in rows]
    assert all(mtime > 0 for _, mtime in catalog.bundle_rows(limit=100))
