"""Model tier: a change made through the tree goes to the server, then updates the cached
rows it touched; no listing is fetched for it.  A 404 is remembered for a while.

The tree runs on a real catalog and SQLite, against a real ``hcafs serve`` reached through
a loopback relay that records every request (:class:`FaultyHttpProxy` with no faults).
"""

from __future__ import annotations

import errno
import time

import pytest
from fixtures.dss_server import USER
from fixtures.worlds import relayed_server

from hcafs.cache.blobcache import BlobCache
from hcafs.cache.cachedb import CacheDB
from hcafs.cache.catalog import Catalog
from hcafs.errors import (
    AlreadyExists,
    NotADirectory,
    NotEmpty,
    NotFound,
    ReadOnly,
    UsageError,
)
from hcafs.model.tree import Tree
from hcafs.remote.client import DSSClient, RetryPolicy

QUICK = RetryPolicy(attempts=2, base_delay=0.05, max_delay=0.1)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One server, relay and published bundle for the module (a server start is most of
    a test's time); each test gets its own cache, and leaves no collection behind."""
    with relayed_server(tmp_path_factory.mktemp("served"), USER) as served:
        yield {**served, "file": ".".join(served["registered"]["a.txt"])}


@pytest.fixture
def world(served, tmp_path):
    yield {**served, "work": tmp_path}
    for uuid in {c["uuid"] for c in served["client"].list_collections()}:
        served["client"].delete_collection(uuid)


def _tree(world, negative_ttl: float = 30.0, cache: str = "cache") -> Tree:
    client = DSSClient(world["proxy"].url, token=USER, retry=QUICK)
    db = CacheDB(str(world["work"] / cache / "hcafs.db"))
    catalog = Catalog(db, client, ttl=300, negative_ttl=negative_ttl)
    catalog.refresh()
    return Tree(catalog, BlobCache(str(world["work"] / cache / "blobs"), db, 1 << 26))


def _requests(world, since: int) -> list[str]:
    return [f"{s.method} {s.path.split('?')[0]}" for s in world["proxy"].seen[since:]]


def test_collection_changes_send_one_request_each_and_no_listing(world):
    tree = _tree(world)
    mark = len(world["proxy"].seen)
    tree.mkdir("/collections/picked")
    assert _requests(world, mark) == ["PUT /v1/collections"]
    assert [name for name, _ in tree.listdir("/collections")] == ["picked"]
    uuid = tree.catalog.collections()["picked"]["uuid"]

    mark = len(world["proxy"].seen)
    tree.symlink(f"../../bundles/{world['fqid']}", "/collections/picked/reads")
    tree.symlink(f"../../files/{world['file']}", f"/collections/picked/{world['file']}")
    assert _requests(world, mark) == [f"PATCH /v1/collections/{uuid}"] * 2
    assert tree.readlink("/collections/picked/reads") == f"../../bundles/{world['fqid']}"
    assert tree.getattr("/collections/picked/reads").kind == "link"
    assert sorted(n for n, _ in tree.listdir("/collections/picked")) == \
        sorted(["reads", world["file"]])
    on_server = world["client"].get_collection(uuid)["contents"]
    assert {f"{c['uuid']}.{c['version']}" for c in on_server} == {world["fqid"], world["file"]}

    with pytest.raises(NotEmpty):
        tree.rmdir("/collections/picked")
    mark = len(world["proxy"].seen)
    tree.unlink("/collections/picked/reads")
    tree.unlink(f"/collections/picked/{world['file']}")
    assert _requests(world, mark) == [f"PATCH /v1/collections/{uuid}"] * 2
    assert tree.listdir("/collections/picked") == []
    assert world["client"].get_collection(uuid)["contents"] == []

    mark = len(world["proxy"].seen)
    tree.rmdir("/collections/picked")
    assert _requests(world, mark) == [f"DELETE /v1/collections/{uuid}"]
    assert tree.listdir("/collections") == []
    with pytest.raises(NotFound):
        tree.getattr("/collections/picked")
    # What the rows say survives a restart, and matches the server's own listing.
    again = _tree(world)
    assert again.catalog.collections() == {}


def test_a_name_survives_a_restart_and_other_caches_show_the_fqid(world):
    tree = _tree(world)
    tree.mkdir("/collections/c1")
    tree.symlink(f"../../bundles/{world['fqid']}", "/collections/c1/reads")
    restarted = _tree(world)
    assert [n for n, _ in restarted.listdir("/collections/c1")] == ["reads"]
    elsewhere = _tree(world, cache="other-cache")
    assert [n for n, _ in elsewhere.listdir("/collections/c1")] == [world["fqid"]]


def test_names_that_clash_and_two_names_for_one_item_are_refused(world):
    tree = _tree(world)
    tree.mkdir("/collections/c1")
    tree.symlink(f"../../bundles/{world['fqid']}", "/collections/c1/reads")
    with pytest.raises(AlreadyExists, match="as 'reads'"):
        tree.symlink(f"../../bundles/{world['fqid']}", "/collections/c1/again")
    with pytest.raises(AlreadyExists):
        tree.symlink(f"../../files/{world['file']}", "/collections/c1/reads")
    with pytest.raises(UsageError, match="named after its"):
        tree.symlink(f"../../files/{world['file']}", f"/collections/c1/{world['fqid']}")
    with pytest.raises(UsageError):
        tree.symlink("../../elsewhere/x", "/collections/c1/x")
    with pytest.raises(ReadOnly):
        tree.symlink(f"../../bundles/{world['fqid']}", "/bundles/link")
    with pytest.raises(AlreadyExists):
        tree.mkdir("/collections/c1")


def test_a_missing_fqid_costs_one_request_until_it_expires(world):
    tree = _tree(world, negative_ttl=1.0)
    missing = world["file"].split(".")[0] + ".2030-01-01T000000.000000Z"
    mark = len(world["proxy"].seen)
    for _ in range(5):
        with pytest.raises(NotFound):
            tree.getattr(f"/files/{missing}")
        with pytest.raises(NotFound):
            tree.getattr(f"/bundles/{missing}")
    assert len(_requests(world, mark)) == 2  # one HEAD /files, one GET /bundles
    time.sleep(1.2)
    with pytest.raises(NotFound):
        tree.getattr(f"/files/{missing}")
    assert len(_requests(world, mark)) == 3


def test_a_file_listed_as_a_directory_is_enotdir_not_einval(world):
    tree = _tree(world)
    with pytest.raises(NotADirectory) as raised:
        tree.listdir(f"/bundles/{world['fqid']}/a.txt")
    assert raised.value.errno == errno.ENOTDIR


def test_mkdir_of_a_bundle_without_staging_says_what_to_pass(world):
    with pytest.raises(ReadOnly, match="--staging"):
        _tree(world).mkdir("/bundles/new")
