"""The write path against real peers, with faults: registration waits for the staged object.

A :class:`FaultyHttpProxy` sits in front of SeaweedFS for both the mount and the server and
answers the first HEADs of one staged object with 404, as a store does that acknowledges a
PUT before every reader sees the object.  The mount must not register the file until the
object is visible, so the server never answers "source object ... does not exist" and the
sync log shows no failure.
"""

from __future__ import annotations

import os

import pytest
from fixtures.dss_server import ADMIN, DSSServer
from fixtures.faults import Fault, FaultyHttpProxy
from fixtures.hcafs_mount import Mount, commit, needs_fuse

from hcafs.remote.client import DSSClient

pytestmark = needs_fuse
LATE = 4  # HEADs of the late object answered 404


@pytest.fixture(scope="module")
def late_s3(seaweed):
    proxy = FaultyHttpProxy(seaweed.endpoint)
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, seaweed, late_s3):
    work = tmp_path_factory.mktemp("write-path")
    env = {**seaweed.env(), "AWS_ENDPOINT_URL_S3": late_s3.url, "AWS_ENDPOINT_URL": late_s3.url}
    server = DSSServer(str(work / "server"), env=env).start()
    try:
        yield server
    finally:
        server.stop()


def _commit_and_check(mount: Mount, server, bundle: str, files: dict[str, bytes]) -> None:
    """Write ``files`` into a new pending bundle, commit it, and check what the DSS lists."""
    with mount:
        pending = os.path.join(mount.path, "bundles", bundle)
        os.mkdir(pending)
        for name, data in files.items():
            with open(os.path.join(pending, name), "wb") as handle:
                handle.write(data)
        fqid = commit(mount, bundle, timeout=120)
    listed = DSSClient(server.url, token=ADMIN).get_bundle(*fqid.split(".", 1))["files"]
    assert sorted((f["name"], f["size"]) for f in listed) == \
        sorted((name, len(data)) for name, data in files.items())


def test_no_registration_before_the_staged_object_is_visible(server, seaweed, late_s3,
                                                              tmp_path):
    bucket = seaweed.make_bucket()
    late = late_s3.when(Fault.error(404), method="HEAD", path="/late.bin", times=LATE)
    mount = Mount(str(tmp_path / "m"), server.url, token=ADMIN, env=seaweed.env(), args=[
        "--staging", f"s3://{bucket}/staged", "--s3-endpoint", late_s3.url,
        "--write-back-delay", "0.2"])
    files = {"late.bin": os.urandom(300_000), "early.bin": os.urandom(1000)}
    _commit_and_check(mount, server, "late", files)
    heads = [s for s in late_s3.seen if s.method == "HEAD" and "/late.bin" in s.path]
    assert sum(1 for s in heads if s.fault is late) == LATE  # the object was late
    failures = [line for line in mount.log().splitlines() if "sync of" in line]
    assert failures == []
    puts = [s for s in late_s3.seen if s.method == "PUT" and "/late.bin" in s.path]
    assert len(puts) == 1  # waited for, not staged again


def test_small_files_cost_the_server_one_read_and_leave_no_staged_copy(server, seaweed,
                                                                      late_s3, tmp_path):
    """The server brings a small staged object in with one GET (headers and bytes, checked
    together; no HEAD), the mount confirms it with one HEAD, and the staged copies are
    deleted (many to a request) before the commit is reported."""
    bucket = seaweed.make_bucket()
    mount = Mount(str(tmp_path / "m"), server.url, token=ADMIN, env=seaweed.env(), args=[
        "--staging", f"s3://{bucket}/staged", "--s3-endpoint", late_s3.url,
        "--write-back-delay", "0.2"])
    files = {f"once-{n}.bin": os.urandom(100_000 + n) for n in range(3)}
    _commit_and_check(mount, server, "once", files)
    for name in files:
        seen = [s for s in late_s3.seen if s.path.split("?")[0].endswith(f"/{name}")]
        reads = [s for s in seen if s.method == "GET" and "tagging" not in s.path]
        assert len(reads) == 1, seen
        assert sum(1 for s in seen if s.method == "HEAD") == 1, seen
    deletes = [s for s in late_s3.seen if s.method == "POST" and
               s.path.startswith(f"/{bucket}?delete")]
    assert 1 <= len(deletes) <= len(files)
    left = seaweed.client().list_objects_v2(Bucket=bucket, Prefix="staged/")
    assert left.get("KeyCount", 0) == 0
