"""``hcafs commit`` and ``hcafs umount`` do not wait out the write-back delay.

Commit means now, an unmount drains now: with ``--write-back-delay 30`` a fresh file is
staged and registered at once when its bundle is committed, or when the mount is unmounted.
The limits asserted are generous (the machine may be loaded); the measured times are
printed (``pytest -s``) for the benchmark notes.
"""

from __future__ import annotations

import os
import sqlite3
import time

import pytest
from fixtures.dss_server import ADMIN, DSSServer
from fixtures.hcafs_mount import Mount, needs_fuse, run_hcafs

from hcafs.remote.client import DSSClient

pytestmark = needs_fuse
DELAY = "30"
LIMIT = 10.0  # seconds; the delay is 30, the aim under 3


@pytest.fixture(scope="module")
def server(tmp_path_factory, seaweed):
    work = tmp_path_factory.mktemp("write-now")
    server = DSSServer(str(work / "server"), env=seaweed.env()).start()
    try:
        yield server
    finally:
        server.stop()


def _mount(where, server, seaweed, bucket) -> Mount:
    return Mount(str(where), server.url, token=ADMIN, env=seaweed.env(), args=[
        "--staging", f"s3://{bucket}/staged", "--s3-endpoint", seaweed.endpoint,
        "--write-back-delay", DELAY])


def test_commit_does_not_wait_for_the_write_back_delay(server, seaweed, tmp_path):
    bucket = seaweed.make_bucket()
    with _mount(tmp_path / "m", server, seaweed, bucket) as mount:
        pending = os.path.join(mount.path, "bundles", "now")
        os.mkdir(pending)
        with open(os.path.join(pending, "one.txt"), "wb") as handle:
            handle.write(b"committed at once\n")
        started = time.monotonic()
        result = run_hcafs("commit", pending, "--timeout", "60", env=mount.env, timeout=90)
        took = time.monotonic() - started
        assert result.returncode == 0, result.stderr + mount.log()[-2000:]
        print(f"\nhcafs commit of a fresh one-file bundle: {took:.2f} s")
        assert took < LIMIT
        fqid = result.stdout.strip()
        files = DSSClient(server.url, token=ADMIN).get_bundle(*fqid.split(".", 1))["files"]
        assert [(f["name"], f["size"]) for f in files] == [("one.txt", 18)]


def test_umount_drains_without_waiting_for_the_delay(server, seaweed, tmp_path):
    bucket = seaweed.make_bucket()
    mount = _mount(tmp_path / "m", server, seaweed, bucket)
    mount.start()
    try:
        pending = os.path.join(mount.path, "bundles", "drained")
        os.mkdir(pending)
        with open(os.path.join(pending, "fresh.bin"), "wb") as handle:
            handle.write(b"x" * 4096)
        started = time.monotonic()
        result = run_hcafs("umount", mount.path, env=mount.env, timeout=90)
        took = time.monotonic() - started
    finally:
        mount.stop()
    assert result.returncode == 0, result.stderr + mount.log()[-2000:]
    print(f"\nhcafs umount of a mount with one fresh file: {took:.2f} s")
    assert took < LIMIT
    assert not os.path.ismount(mount.path)
    with sqlite3.connect(os.path.join(mount.cache_dir, "hcafs.db")) as db:
        file_uuid, version, state = db.execute(
            "select file_uuid, file_version, state from pending_files where path = ?",
            ["fresh.bin"]).fetchone()
    assert state == "synced"
    info = DSSClient(server.url, token=ADMIN).head_file(file_uuid, version)
    assert info.size == 4096
