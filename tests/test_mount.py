"""``hcafs mount`` on real mounts against a real ``hcafs serve``."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from fixtures import free_port
from fixtures.dss_server import ADMIN, OTHER, USER, DSSServer
from fixtures.hcafs_mount import Mount, commit, needs_fuse, run_hcafs, wait_until
from fixtures.mounts import unmount_leftovers
from fixtures.publishing import publish

from hcafs.checksums import Checksummer
from hcafs.remote.client import DSSClient
from hcafs.versions import now_version, version_datetime

MiB = 1024 * 1024
pytestmark = needs_fuse


@pytest.fixture
def mounted(mount_world, tmp_path):
    with Mount(str(tmp_path), mount_world["server"].url, token=USER) as mount:
        yield mount


def test_layout_listing_and_stat(mount_world, mounted):
    root = Path(mounted.path)
    assert sorted(os.listdir(root)) == ["bundles", "collections", "files"]
    fqid = mount_world["fqid"]
    assert fqid in os.listdir(root / "bundles")
    bundle = root / "bundles" / fqid
    assert sorted(os.listdir(bundle)) == sorted(["metadata", "data", "empty.txt",
                                                 "caf\u00e9 \u2603.txt"])
    assert os.listdir(bundle / "data" / "reads") == ["r1.fastq"]
    for name, data in mount_world["files"].items():
        info = os.stat(bundle / name)
        assert info.st_size == len(data)
        file_version = mount_world["registered"][name][1]
        assert info.st_mtime == pytest.approx(version_datetime(file_version).timestamp(), 1)
    bundle_version = fqid.split(".", 1)[1]
    assert os.stat(bundle).st_mtime == pytest.approx(
        version_datetime(bundle_version).timestamp(), abs=1)
    # files/ is lookup only
    file_fqid = ".".join(mount_world["registered"]["metadata/cell.json"])
    assert os.listdir(root / "files") == []
    assert (root / "files" / file_fqid).read_bytes() == mount_world["files"]["metadata/cell.json"]
    # ls -l works and shows sizes
    listing = subprocess.run(["ls", "-l", str(bundle / "data" / "reads")], text=True,
                             capture_output=True, check=True).stdout
    assert str(24 * MiB + 12345) in listing


def test_reads_match_the_api(mount_world, mounted):
    client = mount_world["client"]
    name = "data/reads/r1.fastq"
    data = mount_world["files"][name]
    path = Path(mounted.path) / "bundles" / mount_world["fqid"] / name
    url = client.file_url(*mount_world["registered"][name])
    head = subprocess.run(["head", "-c", "1000", str(path)], capture_output=True,
                          check=True).stdout
    assert head == client.read_range(url, 0, 1000)
    tail = subprocess.run(["tail", "-c", "5000", str(path)], capture_output=True,
                          check=True).stdout
    assert tail == client.read_range(url, len(data) - 5000, len(data))
    rng = random.Random(11)
    fd = os.open(path, os.O_RDONLY)
    try:
        for _ in range(30):
            offset = rng.randrange(0, len(data))
            size = rng.choice([1, 17, 4096, 300_000, 2 * MiB])
            assert os.pread(fd, size, offset) == client.read_range(url, offset, offset + size)
    finally:
        os.close(fd)
    cat = subprocess.run(["cat", str(path)], capture_output=True, check=True).stdout
    assert hashlib.sha256(cat).hexdigest() == hashlib.sha256(data).hexdigest()
    for small in ("metadata/cell.json", "empty.txt", "caf\u00e9 \u2603.txt"):
        assert (Path(mounted.path) / "bundles" / mount_world["fqid"] / small).read_bytes() == \
            mount_world["files"][small]


def test_reading_a_range_fetches_about_that_range(mount_world, mounted):
    name = "data/reads/r1.fastq"
    path = Path(mounted.path) / "bundles" / mount_world["fqid"] / name
    sha = hashlib.sha256(mount_world["files"][name]).hexdigest()
    with open(path, "rb") as handle:
        handle.seek(20 * MiB)
        assert handle.read(MiB) == mount_world["files"][name][20 * MiB:21 * MiB]
    db = sqlite3.connect(os.path.join(mounted.cache_dir, "hcafs.db"))
    deadline = time.monotonic() + 10
    present = 0
    while not present and time.monotonic() < deadline:  # FUSE release is asynchronous
        time.sleep(0.1)
        present, complete = db.execute(
            "select present, complete from blobs where sha256 = ?", [sha]).fetchone()
    assert MiB <= present <= 3 * MiB, present
    assert complete == 0


def test_xattrs(mount_world, mounted):
    name = "metadata/cell.json"
    path = Path(mounted.path) / "bundles" / mount_world["fqid"] / name
    file_uuid, file_version = mount_world["registered"][name]
    info = mount_world["client"].head_file(file_uuid, file_version)
    dump = subprocess.run(["getfattr", "-d", "--absolute-names", str(path)], text=True,
                          capture_output=True, check=True).stdout
    expected = {"user.hca.uuid": file_uuid, "user.hca.version": file_version,
                "user.hca.sha256": info.sha256, "user.hca.sha1": info.sha1,
                "user.hca.crc32c": info.crc32c, "user.hca.s3_etag": info.s3_etag,
                "user.hca.content_type": info.content_type, "user.hca.indexed": "true"}
    for key, value in expected.items():
        assert f'{key}="{value}"' in dump
    bundle_dir = Path(mounted.path) / "bundles" / mount_world["fqid"]
    bundle_uuid, bundle_version = mount_world["fqid"].split(".", 1)
    assert os.getxattr(bundle_dir, "user.hca.uuid").decode() == bundle_uuid
    assert os.getxattr(bundle_dir, "user.hca.version").decode() == bundle_version
    assert os.getxattr(bundle_dir, "user.hca.creator_uid").decode() == "0"
    with pytest.raises(OSError) as missing:
        os.getxattr(path, "user.hca.nothing")
    assert missing.value.errno == errno.ENODATA


def test_collections_are_directories_of_symlinks(mount_world, mounted):
    collections = Path(mounted.path) / "collections"
    name = "my cells"  # unique among the caller's collections: the plain name
    assert os.listdir(collections) == [name]
    entries = sorted(os.listdir(collections / name))
    file_fqid = ".".join(mount_world["registered"]["metadata/cell.json"])
    assert entries == sorted([mount_world["fqid"], file_fqid])
    bundle_link = collections / name / mount_world["fqid"]
    assert os.readlink(bundle_link) == f"../../bundles/{mount_world['fqid']}"
    assert (bundle_link / "metadata" / "cell.json").read_bytes() == b'{"cells": 42}\n'
    assert (collections / name / file_fqid).read_bytes() == b'{"cells": 42}\n'


def test_collection_names_that_clash_carry_their_uuid(mount_world, tmp_path):
    client = DSSClient(mount_world["server"].url, token=OTHER)
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    for collection in (first, second):
        client.put_collection(collection, now_version(), "same/name", [])
    client.put_collection(str(uuid.uuid4()), now_version(), "..", [])
    with Mount(str(tmp_path), mount_world["server"].url, token=OTHER) as mount:
        names = sorted(os.listdir(Path(mount.path) / "collections"))
        assert names == sorted([f"same_name.{first}", f"same_name.{second}", "collection"])


def test_errno_where_it_belongs(mount_world, mounted):
    root = Path(mounted.path)
    bundle = root / "bundles" / mount_world["fqid"]
    cases = [
        (lambda: os.stat(root / "bundles" / "nope"), errno.ENOENT),
        (lambda: os.stat(bundle / "missing.txt"), errno.ENOENT),
        (lambda: os.stat(root / "files" / "not-an-fqid"), errno.ENOENT),
        (lambda: os.stat(root / "elsewhere"), errno.ENOENT),
        (lambda: open(bundle / "new.txt", "w"), errno.EROFS),
        (lambda: open(bundle / "metadata" / "cell.json", "r+b"), errno.EROFS),
        (lambda: os.mkdir(root / "files" / "x"), errno.EROFS),
        (lambda: os.unlink(bundle / "empty.txt"), errno.EROFS),
        (lambda: os.rename(bundle / "empty.txt", bundle / "e2"), errno.EROFS),
        (lambda: os.mkdir(root / "nowhere" / "x"), errno.ENOENT),
    ]
    for action, expected in cases:
        with pytest.raises(OSError) as caught:
            action()
        assert caught.value.errno == expected, (action, caught.value)


@pytest.mark.allow_daemon_errors(r"blobcache: content of \w+ failed its sha256 check",
                                 r"fuse_ops: read(_buf)? .*: downloaded bytes do not match sha256")
def test_corrupt_bytes_give_eio_and_are_discarded(mount_world, tmp_path):
    client = mount_world["client"]
    data = random.Random(3).randbytes(3 * MiB)
    fqid, registered = publish(client, mount_world["staging"], {"victim.bin": data})
    info = client.head_file(*registered["victim.bin"])
    blob = Path(mount_world["server"].data_dir) / "store" / "blobs" / \
        f"{info.sha256}.{info.sha1}.{info.s3_etag}.{info.crc32c}"
    original = blob.read_bytes()
    blob.write_bytes(bytes(len(original)))  # same size, wrong bytes
    try:
        with Mount(str(tmp_path), mount_world["server"].url, token=USER) as mount:
            path = Path(mount.path) / "bundles" / fqid / "victim.bin"
            with pytest.raises(OSError) as caught:
                path.read_bytes()
            assert caught.value.errno == errno.EIO
            assert "failed its sha256 check" in mount.log()
            blob.write_bytes(original)
            assert path.read_bytes() == data  # refetched, not served from the bad copy
    finally:
        blob.write_bytes(original)


def test_hostile_names_are_left_out(mount_world, tmp_path):
    client = mount_world["client"]
    _, registered = publish(client, mount_world["staging"], {"ok.txt": b"fine\n"})
    file_uuid, file_version = registered["ok.txt"]
    meta = client.head_file(file_uuid, file_version)
    entry = {"uuid": file_uuid, "version": file_version, "content-type": "text/plain",
             "size": 5, "indexed": False, "crc32c": meta.crc32c, "s3-etag": meta.s3_etag,
             "sha1": meta.sha1, "sha256": meta.sha256}
    names = ["ok.txt", "", ".", "..", "../escape.txt", "a/../../b", "/etc/passwd",
             "nul\x00name", "dir//double", "clash", "clash/child"]
    bundle, version = str(uuid.uuid4()), now_version()
    manifest = {"format": "0.0.1", "version": version, "creator_uid": 0,
                "files": [dict(entry, name=name) for name in names]}
    # A server that sends hostile names: its store holds a manifest the API would refuse.
    store = Path(mount_world["server"].data_dir) / "store" / "bundles"
    (store / f"{bundle}.{version}").write_text(json.dumps(manifest))
    with Mount(str(tmp_path), mount_world["server"].url, token=USER) as mount:
        root = Path(mount.path) / "bundles" / f"{bundle}.{version}"
        assert sorted(os.listdir(root)) == ["clash", "ok.txt"]
        assert (root / "ok.txt").read_bytes() == b"fine\n"
        assert (root / "clash").read_bytes() == b"fine\n"
        assert not (Path(mount.path) / "escape.txt").exists()
        log = mount.log()
        assert log.count("unsafe file name") == 8
        assert "clashes with another" in log


@pytest.mark.allow_daemon_errors(
    r"fuse_ops: (setxattr|read|read_buf) .*: GET http://127\.0\.0\.1:\d+/v1/\S+: ConnectionError")
def test_offline_serves_the_cache_and_says_so_once(tmp_path):
    staging = tmp_path / "staging"
    staging.mkdir()
    server = DSSServer(str(tmp_path / "server"), args=["--staging-root", str(staging)])
    server.start()
    try:
        client = DSSClient(server.url, token=USER)
        data = random.Random(5).randbytes(2 * MiB + 7)
        fqid, _ = publish(client, staging, {"a.bin": data, "b.bin": b"never read"})
        with Mount(str(tmp_path / "m"), server.url, token=USER,
                   args=["--refresh-ttl", "1"]) as mount:
            root = Path(mount.path) / "bundles" / fqid
            assert (root / "a.bin").read_bytes() == data
            server.stop()
            for _ in range(3):
                result = run_hcafs("refresh", mount.path, env=mount.env)
                assert result.returncode != 0
            assert fqid in os.listdir(Path(mount.path) / "bundles")
            assert sorted(os.listdir(root)) == ["a.bin", "b.bin"]
            assert (root / "a.bin").read_bytes() == data
            with pytest.raises(OSError) as caught:
                (root / "b.bin").read_bytes()
            assert caught.value.errno == errno.EIO
            assert mount.log().count("server unreachable") == 1
            server.start()
            mount.refresh()
            assert (root / "b.bin").read_bytes() == b"never read"
            assert "server reachable again" in mount.log()
        # remount with the server gone: everything cached is still there
        server.stop()
        with Mount(str(tmp_path / "m"), f"http://127.0.0.1:{server.port}",
                   token=USER) as mount:
            root = Path(mount.path) / "bundles" / fqid
            assert (root / "a.bin").read_bytes() == data
    finally:
        server.stop()


# ---------------------------------------------------------------- mount command errors


def _mount_fails(tmp_path, *args, env=None, prefix=()) -> str:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir(parents=True, exist_ok=True)
    command = list(args) or ["mount", str(mountpoint), "--dss-url", "http://127.0.0.1:9",
                             "--cache-dir", str(tmp_path / "cache")]
    full_env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path / "run"), **(env or {})}
    import sys
    result = subprocess.run([*prefix, sys.executable, "-m", "hcafs", *command],
                            capture_output=True, text=True, env=full_env, timeout=120)
    assert result.returncode != 0
    assert not os.path.ismount(mountpoint)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_mount_error_mountpoint_missing(tmp_path):
    line = _mount_fails(tmp_path, "mount", str(tmp_path / "absent"))
    assert "does not exist" in line


def test_mount_error_mountpoint_busy(mount_world, tmp_path):
    with Mount(str(tmp_path), mount_world["server"].url, token=USER) as mount:
        line = _mount_fails(tmp_path / "again", "mount", mount.path, "--dss-url",
                            mount_world["server"].url)
        assert "busy" in line


def test_mount_error_server_unreachable_nothing_cached(tmp_path):
    port = free_port()
    line = _mount_fails(tmp_path, "mount", str(tmp_path / "mnt"), "--dss-url",
                        f"http://127.0.0.1:{port}", "--cache-dir", str(tmp_path / "cache"))
    assert "unreachable and nothing is cached" in line


def test_mount_error_bad_token(mount_world, tmp_path):
    token = tmp_path / "token"
    token.write_text("not-a-real-token")
    line = _mount_fails(tmp_path, "mount", str(tmp_path / "mnt"), "--dss-url",
                        mount_world["server"].url, "--token-file", str(token), "--cache-dir",
                        str(tmp_path / "cache"))
    assert "rejected the token" in line
    assert "not-a-real-token" not in line


def test_mount_error_libfuse_missing(tmp_path):
    line = _mount_fails(tmp_path, env={"FUSE_LIBRARY_PATH": str(tmp_path / "libfuse3.so.3")})
    assert "libfuse3" in line and "apt-get install fuse3" in line


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="needs root and unshare to hide /dev/fuse")
def test_mount_error_no_dev_fuse(tmp_path):
    stand_in = tmp_path / "not-a-device"
    stand_in.write_text("")
    line = _mount_fails(tmp_path, prefix=("unshare", "-m", "sh", "-c",
                                           f"mount --bind {stand_in} /dev/fuse && "
                                           'exec "$@"', "sh"))
    assert "/dev/fuse is missing" in line


def test_embedded_default_mounts_a_working_filesystem(tmp_path):
    env = {"XDG_DATA_HOME": str(tmp_path / "data"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    with Mount(str(tmp_path), None, env=env) as mount:
        assert sorted(os.listdir(mount.path)) == ["bundles", "collections", "files"]
        tokens = tmp_path / "data" / "hcafs" / "server" / "tokens.json"
        assert oct(tokens.stat().st_mode & 0o777) == "0o600"
        token = next(iter(json.loads(tokens.read_text())))
        assert token not in mount.log()
        record = next((tmp_path / "run" / "hcafs").glob("*.json"))
        url = json.loads(record.read_text())["dss_url"]
        staging = tmp_path / "data" / "hcafs" / "server" / "staging"
        fqid, _ = publish(DSSClient(url, token=token), staging, {"hello.txt": b"hello\n"})
        mount.refresh()
        assert (Path(mount.path) / "bundles" / fqid / "hello.txt").read_bytes() == b"hello\n"
    assert not os.path.ismount(mount.path)


def test_files_written_to_the_embedded_default_carry_the_servers_four_checksums(tmp_path):
    """Local staging computes only crc32c (the embedded server computes all four as it
    takes the file in); once synced, a pending file's attributes and its bundle carry the
    server's four, for a file written in order and for one staged by a pass of its own."""
    env = {"XDG_DATA_HOME": str(tmp_path / "data"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    data = {"in-order.bin": os.urandom(3 * MiB + 5), "out-of-order.bin": os.urandom(MiB + 9)}
    with Mount(str(tmp_path), None, env=env, args=["--write-back-delay", "0.2"]) as mount:
        pending = Path(mount.path) / "bundles" / "sums"
        pending.mkdir()
        (pending / "in-order.bin").write_bytes(data["in-order.bin"])
        fd = os.open(pending / "out-of-order.bin", os.O_WRONLY | os.O_CREAT, 0o644)
        try:  # the tail first: no checksums while written, staging makes its own pass
            half = len(data["out-of-order.bin"]) // 2
            os.pwrite(fd, data["out-of-order.bin"][half:], half)
            os.pwrite(fd, data["out-of-order.bin"][:half], 0)
        finally:
            os.close(fd)
        for name in data:
            wait_until(lambda n=name: os.getxattr(pending / n, "user.hcafs.state") ==
                       b"synced", what=f"{name} synced")
        for name, content in data.items():
            summer = Checksummer(len(content))
            summer.update(content)
            assert os.getxattr(pending / name, "user.hca.sha256").decode() == \
                hashlib.sha256(content).hexdigest()
            assert os.getxattr(pending / name, "user.hca.sha1").decode() == \
                hashlib.sha1(content).hexdigest()
            assert os.getxattr(pending / name, "user.hca.s3_etag").decode() == \
                hashlib.md5(content).hexdigest()  # one part
            assert os.getxattr(pending / name, "user.hca.crc32c").decode() == \
                summer.result().crc32c
        fqid = commit(mount, "sums")
        assert (Path(mount.path) / "bundles" / fqid / "out-of-order.bin").read_bytes() == \
            data["out-of-order.bin"]
    assert "IntegrityError" not in mount.log() and " ERROR " not in mount.log()


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(n) for n in (task / "children").read_text().split()]
    return found


def test_a_killed_embedded_server_is_started_again_at_the_same_url(tmp_path):
    """The mount owns its embedded server: if it dies, the mount starts it again on the
    same port and says so, and reads and writes go on (nothing needs a remount)."""
    env = {"XDG_DATA_HOME": str(tmp_path / "data"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    with Mount(str(tmp_path), None, env=env, args=["--write-back-delay", "0.1"]) as mount:
        bundles = Path(mount.path) / "bundles"
        (bundles / "before").mkdir()
        (bundles / "before" / "a.txt").write_bytes(b"before\n")
        commit(mount, "before")
        record = json.loads(next((tmp_path / "run" / "hcafs").glob("*.json")).read_text())
        [server] = [pid for pid in _children(record["pid"])
                    if b"serve" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        os.kill(server, signal.SIGKILL)
        # Meanwhile the port stays the mount's: no other process can listen there and be
        # sent the mount's token.
        with socket.socket() as squatter:
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with pytest.raises(OSError) as taken:
                squatter.bind(("127.0.0.1", int(record["dss_url"].rsplit(":", 1)[1])))
            assert taken.value.errno == errno.EADDRINUSE
        wait_until(lambda: "is back at" in mount.log(), what="the server to be started again")
        log = mount.log()
        assert f"the embedded server (pid {server}) exited (killed by SIGKILL)" in log
        assert f"is back at {record['dss_url']}" in log  # the same URL as before
        (bundles / "after").mkdir()
        (bundles / "after" / "b.txt").write_bytes(b"after\n")
        fqid = commit(mount, "after")
        assert (bundles / fqid / "b.txt").read_bytes() == b"after\n"
        mount.refresh()
        assert (bundles / "before" / "a.txt").read_bytes() == b"before\n"
        again = int(re.search(r"is back at \S+ \(pid (\d+)\)", log).group(1))
    assert not os.path.ismount(mount.path)
    for pid in (server, again):  # the unmount stopped the server it started again
        assert not Path(f"/proc/{pid}").exists(), pid


def test_the_embedded_server_keeps_its_port_across_mounts_while_that_port_is_free(
        tmp_path):
    """The next mount starts the embedded server on the port it had (so URLs and drs://
    URIs written down still name it); a port taken meanwhile is said in the log, and the
    server starts on another."""
    env = {"XDG_DATA_HOME": str(tmp_path / "data"), "XDG_CACHE_HOME": str(tmp_path / "cache")}

    def served_at(mount: Mount) -> str:
        return json.loads(next((tmp_path / "run" / "hcafs").glob("*.json")).read_text()
                          )["dss_url"]

    with Mount(str(tmp_path), None, env=env) as mount:
        first = served_at(mount)
    with Mount(str(tmp_path), None, env=env) as mount:
        assert served_at(mount) == first
    port = int(first.rsplit(":", 1)[1].split("/", 1)[0])
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with Mount(str(tmp_path), None, env=env) as mount:
            moved = served_at(mount)
            assert moved != first
            assert f"port {port}, the embedded server's port at the last mount, is in use" \
                in mount.log()
            assert os.listdir(Path(mount.path) / "bundles") == []
    with Mount(str(tmp_path), None, env=env) as mount:  # the last port is now the new one
        assert served_at(mount) == moved
    # A FIFO, a link to a device, or junk planted there: passed over, said, never blocking
    port_file = tmp_path / "data" / "hcafs" / "server" / "embedded-port"
    for plant, said in ((lambda: os.mkfifo(port_file), "holds no port"),
                        (lambda: port_file.symlink_to("/dev/zero"), "is not read from"),
                        (lambda: port_file.write_text("+4447\n"), "holds no port")):
        port_file.unlink()
        plant()
        with Mount(str(tmp_path), None, env=env) as mount:
            assert served_at(mount).startswith("http://127.0.0.1:")
            assert said in mount.log(), said


def test_a_dead_mount_is_named_as_such_and_umount_clears_it(tmp_path):
    """After the daemon is killed, ``hcafs mount`` there says the mount is dead and what to
    do (not "does not exist" or "busy"), ``hcafs umount`` really unmounts it (a stat of
    it fails or is answered from the kernel's cache, so it looks unmounted), and the next
    mount finds the file that was waiting to sync."""
    env = {"XDG_DATA_HOME": str(tmp_path / "data"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    mount = Mount(str(tmp_path), None, env=env, args=["--write-back-delay", "3600"])
    try:
        with mount:
            bundles = Path(mount.path) / "bundles"
            (bundles / "kept").mkdir()
            (bundles / "kept" / "a.txt").write_bytes(b"waiting\n")
            os.listdir(mount.path)  # the kernel now holds the root's attributes
            record = json.loads(next((tmp_path / "run" / "hcafs").glob("*.json")).read_text())
            os.kill(record["pid"], signal.SIGKILL)
            wait_until(lambda: not Path(f"/proc/{record['pid']}").exists(), timeout=10,
                       what="the daemon to exit")
            status = run_hcafs("status", mount.path, env=mount.env)
            assert "NOT RUNNING" in status.stdout
            assert f"the daemon is gone: `hcafs umount {mount.path}`" in status.stdout
            again = run_hcafs(*mount.command(), env=mount.env)
            assert again.returncode != 0
            assert f"{mount.path} holds a dead hcafs mount" in again.stderr, again.stderr
            assert f"hcafs umount {mount.path}" in again.stderr
            cleared = run_hcafs("umount", mount.path, env=mount.env)
            assert cleared.returncode == 0, cleared.stderr
            assert f"(pid {record['pid']}) is gone" in cleared.stderr
            assert "leaving 1 files" in cleared.stderr
            assert mount.path not in Path("/proc/self/mountinfo").read_text()
        with Mount(str(tmp_path), None, env=env, args=["--write-back-delay", "0.1"]) as back:
            fqid = commit(back, "kept")
            assert (Path(back.path) / "bundles" / fqid / "a.txt").read_bytes() == b"waiting\n"
    finally:
        unmount_leftovers([mount.path])


def test_admin_token_sees_only_its_own_collections(mount_world, tmp_path):
    with Mount(str(tmp_path), mount_world["server"].url, token=ADMIN) as mount:
        assert os.listdir(Path(mount.path) / "collections") == []
