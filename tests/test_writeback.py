"""Write-back on real mounts: cp → put-file, commit → put/patch-bundle, crashes and faults.

The daemon stages to SeaweedFS (``--staging s3://...``) through a :class:`TcpGate` that can
throttle uploads, and talks to ``hcafs serve`` through a :class:`FaultyHttpProxy` that can
inject errors, resets, latency or hold a request; the server reads the staged objects from
SeaweedFS directly.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from fixtures.dss_server import ADMIN, USER, DSSServer
from fixtures.faults import Fault, FaultyHttpProxy, TcpGate
from fixtures.hcafs_mount import Mount, commit, needs_fuse, run_hcafs, wait_until
from fixtures.small_disk import small_disk

from hcafs.checksums import Checksummer
from hcafs.remote.client import DSSClient
from hcafs.versions import now_version

MiB = 1024 * 1024
pytestmark = needs_fuse


@dataclass
class Rig:
    server: DSSServer
    proxy: FaultyHttpProxy
    gate: TcpGate
    bucket: str
    env: dict
    work: Path

    def mount(self, where: Path, token: str = ADMIN, args: tuple = ()) -> Mount:
        return Mount(str(where), self.proxy.url, token=token, env=self.env, args=[
            "--staging", f"s3://{self.bucket}/staged", "--s3-endpoint", self.gate.endpoint,
            "--write-back-delay", "0.2", *args])

    def client(self, token: str = ADMIN) -> DSSClient:
        return DSSClient(self.server.url, token=token)

    def stored_files(self, file_uuid: str) -> list[str]:
        """Every version of a file the server's store holds."""
        folder = Path(self.server.data_dir) / "store" / "files"
        return sorted(p.name for p in folder.glob(f"{file_uuid}.*"))

    def stored_bundles(self, bundle_uuid: str) -> list[str]:
        folder = Path(self.server.data_dir) / "store" / "bundles"
        return sorted(p.name for p in folder.glob(f"{bundle_uuid}.*"))


@pytest.fixture(scope="module")
def rig(tmp_path_factory, seaweed):
    work = tmp_path_factory.mktemp("writeback")
    bucket = seaweed.make_bucket()
    server = DSSServer(str(work / "server"), env=seaweed.env()).start()
    proxy = FaultyHttpProxy(server.url)
    gate = TcpGate(seaweed.endpoint)
    try:
        yield Rig(server, proxy, gate, bucket, seaweed.env(), work)
    finally:
        proxy.close()
        gate.close()
        server.stop()


@pytest.fixture(autouse=True)
def clean_faults(rig):
    yield
    rig.proxy.rules.clear()
    rig.proxy.faults.clear()
    rig.gate.upload_rate = None


def make_tree(root: Path, big: int = 0) -> dict[str, bytes]:
    rng = random.Random(42)
    files = {
        "metadata/a.json": b'{"x": 1}\n',
        "metadata/deeper/b.json": b'{"y": [1, 2]}\n',
        "data/r1.fastq.gz": rng.randbytes(3 * MiB + 17),
        "empty.txt": b"",
        "\u00fcn\u00efc\u00f8d\u00e9/\u6587\u4ef6.txt": "\u2603 snow\n".encode(),
    }
    if big:
        files["data/big.bin"] = rng.randbytes(big)
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "empty-dir").mkdir(exist_ok=True)
    return files


def assert_bundle(client: DSSClient, fqid: str, files: dict[str, bytes]) -> dict:
    bundle = client.get_bundle(*fqid.split(".", 1))
    listed = {f["name"]: f for f in bundle["files"]}
    assert set(listed) == set(files)
    for name, data in files.items():
        assert listed[name]["size"] == len(data)
        assert listed[name]["sha256"] == hashlib.sha256(data).hexdigest()
        assert listed[name]["indexed"] == name.endswith(".json")
    return listed


# ---------------------------------------------------------------- end to end


@pytest.mark.hca_cli
def test_cp_tree_then_commit_makes_a_bundle(rig, tmp_path, hca_cli):
    source = tmp_path / "src"
    files = make_tree(source, big=64 * MiB + 3 * MiB)  # two S3 parts
    with rig.mount(tmp_path / "m") as mount:
        os.mkdir(f"{mount.path}/bundles/experiment-1")
        subprocess.run(["cp", "-r", f"{source}/.", f"{mount.path}/bundles/experiment-1/"],
                       check=True)
        pending = Path(mount.path) / "bundles" / "experiment-1"
        assert (pending / "data" / "r1.fastq.gz").read_bytes() == files["data/r1.fastq.gz"]
        fqid = commit(mount, "experiment-1")
        listed = assert_bundle(rig.client(), fqid, files)
        assert listed["data/r1.fastq.gz"]["s3_etag"]
        assert os.readlink(pending) == fqid
        committed = Path(mount.path) / "bundles" / fqid
        for name, data in files.items():
            assert hashlib.sha256((committed / name).read_bytes()).digest() == \
                hashlib.sha256(data).digest()
    cli = hca_cli(rig.server.url, token=ADMIN)
    bundle_uuid, version = fqid.split(".", 1)
    out = tmp_path / "download"
    cli.run("dss", "download", "--bundle-uuid", bundle_uuid, "--version", version,
            "--replica", "aws", "--download-dir", str(out))
    for name, data in files.items():
        got = (out / fqid / name).read_bytes()
        assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest(), name


def test_working_copy_becomes_a_new_version_and_rmdir_deletes(rig, tmp_path):
    source = tmp_path / "src"
    files = make_tree(source)
    with rig.mount(tmp_path / "m") as mount:
        os.mkdir(f"{mount.path}/bundles/base")
        subprocess.run(["cp", "-r", f"{source}/.", f"{mount.path}/bundles/base/"], check=True)
        first = commit(mount, "base")
        bundle_uuid = first.split(".", 1)[0]
        work = Path(mount.path) / "bundles" / bundle_uuid
        os.mkdir(work)
        assert sorted(os.listdir(work)) == sorted(
            ["metadata", "data", "empty.txt", "\u00fcn\u00efc\u00f8d\u00e9"])
        (work / "empty.txt").unlink()
        (work / "metadata" / "a.json").write_bytes(b'{"x": 2}\n')
        os.rename(work / "data", work / "reads")
        (work / "notes.txt").write_text("added\n")
        subprocess.run(["setfattr", "-n", "user.hca.indexed", "-v", "true",
                        str(work / "notes.txt")], check=True)
        second = commit(mount, bundle_uuid)
        assert second.split(".", 1)[0] == bundle_uuid and second != first
        client = rig.client()
        new = {f["name"]: f for f in client.get_bundle(bundle_uuid, second.split(".", 1)[1])
               ["files"]}
        assert sorted(new) == sorted(["metadata/a.json", "metadata/deeper/b.json",
                                      "reads/r1.fastq.gz", "notes.txt",
                                      "\u00fcn\u00efc\u00f8d\u00e9/\u6587\u4ef6.txt"])
        assert new["notes.txt"]["indexed"] is True
        assert new["metadata/a.json"]["sha256"] == hashlib.sha256(b'{"x": 2}\n').hexdigest()
        old = assert_bundle(client, first, files)
        assert new["reads/r1.fastq.gz"]["uuid"] == old["data/r1.fastq.gz"]["uuid"]
        # deletion: admin token through this mount
        os.rmdir(Path(mount.path) / "bundles" / first)
        assert first not in os.listdir(Path(mount.path) / "bundles")
        with pytest.raises(Exception) as gone:
            client.get_bundle(*first.split(".", 1))
        assert getattr(gone.value, "status", None) == 404
    with rig.mount(tmp_path / "user", token=USER) as mount:
        with pytest.raises(OSError) as refused:
            os.rmdir(Path(mount.path) / "bundles" / second)
        assert refused.value.errno == errno.EACCES
        assert "not authorized" in mount.log()
        assert rig.client().get_bundle(*second.split(".", 1))


def test_a_committed_file_copied_with_its_attributes(rig, tmp_path):
    """``cp -a`` and ``tar --xattrs`` of a committed file into a pending bundle copy it
    without the attributes a written file cannot keep (exit 0); ``cp --preserve=xattr``,
    which demands them, says "Operation not supported"; each refusal is in the log."""
    with rig.mount(tmp_path / "m") as mount:
        bundles = Path(mount.path) / "bundles"
        os.mkdir(bundles / "origin")
        (bundles / "origin" / "a.txt").write_bytes(b"alpha\n")
        committed = bundles / commit(mount, "origin")
        os.mkdir(bundles / "copies")
        subprocess.run(["cp", "-a", str(committed / "a.txt"), str(bundles / "copies" / "b")],
                       check=True)
        archive = tmp_path / "a.tar"
        subprocess.run(["tar", "--xattrs", "--xattrs-include=user.*", "-C", str(committed),
                        "-cf", str(archive), "a.txt"], check=True)
        os.mkdir(bundles / "copies" / "t")
        subprocess.run(["tar", "--xattrs", "--xattrs-include=user.*", "-C",
                        str(bundles / "copies" / "t"), "-xf", str(archive)], check=True,
                       capture_output=True)
        demanded = subprocess.run(["cp", "--preserve=xattr", str(committed / "a.txt"),
                                   str(bundles / "copies" / "c")], capture_output=True,
                                  text=True)
        assert demanded.returncode == 1 and "Operation not supported" in demanded.stderr
        for name in ("b", "t/a.txt", "c"):
            assert (bundles / "copies" / name).read_bytes() == b"alpha\n"
        # cp -a keeps the time: set on the open file (after its data, beside its
        # attributes), it is not replaced by the time of the close
        old = tmp_path / "old.txt"
        old.write_bytes(b"old\n" * 1000)
        os.utime(old, (1_000_000_000, 1_000_000_000))
        subprocess.run(["cp", "-a", str(old), str(bundles / "copies" / "old.txt")],
                       check=True)
        assert (bundles / "copies" / "old.txt").stat().st_mtime == 1_000_000_000
        with open(bundles / "copies" / "again.txt", "wb") as handle:
            handle.write(b"x")
            os.utime(handle.fileno(), (1_000_000_000, 1_000_000_000))
            os.setxattr(handle.fileno(), "user.hca.indexed", b"false")
            handle.write(b"y")  # a write after it: the time is the close's again
        assert (bundles / "copies" / "again.txt").stat().st_mtime > 1_000_000_000
        assert os.getxattr(bundles / "copies" / "b", "user.hca.indexed") == b"false"
        # Said once per attribute, for the first file (cp -a sets them on every file)
        said = [line for line in mount.log().splitlines()
                if "refused with ENOTSUP: user.hca.sha256 cannot be set" in line]
        assert len(said) == 1 and "setxattr /bundles/copies/b refused" in said[0], said


def test_collections_through_the_mount(rig, tmp_path):
    with rig.mount(tmp_path / "m") as mount:
        os.mkdir(f"{mount.path}/bundles/for-coll")
        Path(f"{mount.path}/bundles/for-coll/x.json").write_text("{}\n")
        fqid = commit(mount, "for-coll")
        collections = Path(mount.path) / "collections"
        os.mkdir(collections / "picked")
        client = rig.client()
        mine = {c["uuid"] for c in client.list_collections()}
        assert len(mine) >= 1
        os.symlink(f"../../bundles/{fqid}", collections / "picked" / fqid)
        assert (collections / "picked" / fqid / "x.json").read_text() == "{}\n"
        coll_uuid = os.getxattr(collections / "picked", "user.hca.uuid").decode()
        contents = client.get_collection(coll_uuid)["contents"]
        assert [(c["type"], f"{c['uuid']}.{c['version']}") for c in contents] == \
            [("bundle", fqid)]
        os.unlink(collections / "picked" / fqid)
        assert client.get_collection(coll_uuid)["contents"] == []
        os.rmdir(collections / "picked")
        assert "picked" not in os.listdir(collections)
        with pytest.raises(Exception) as gone:
            client.get_collection(coll_uuid)
        assert getattr(gone.value, "status", None) == 404


def test_concurrent_writers(rig, tmp_path):
    sources = []
    for n in range(4):
        source = tmp_path / f"src{n}"
        make_tree(source)
        (source / f"only-{n}.bin").write_bytes(os.urandom(2 * MiB + n))
        sources.append(source)
    with rig.mount(tmp_path / "m", args=("--upload-workers", "3")) as mount:
        os.mkdir(f"{mount.path}/bundles/shared")
        os.mkdir(f"{mount.path}/bundles/alone")
        copies = [subprocess.Popen(["cp", "-r", f"{s}/.",
                                    f"{mount.path}/bundles/shared/copy{n}/"])
                  for n, s in enumerate(sources)]
        copies.append(subprocess.Popen(["cp", "-r", f"{sources[0]}/.",
                                        f"{mount.path}/bundles/alone/"]))
        assert all(p.wait() == 0 for p in copies)
        fqid = commit(mount, "shared")
        expected = {}
        for n, source in enumerate(sources):
            for path in source.rglob("*"):
                if path.is_file():
                    expected[f"copy{n}/{path.relative_to(source)}"] = path.read_bytes()
        assert_bundle(rig.client(), fqid, expected)
        commit(mount, "alone")


def test_status_and_xattrs_show_what_is_pending(rig, tmp_path):
    rig.gate.upload_rate = 4 * MiB  # staging of the big file takes a few seconds
    with rig.mount(tmp_path / "m") as mount:
        pending = Path(mount.path) / "bundles" / "watched"
        os.mkdir(pending)
        (pending / "big.bin").write_bytes(os.urandom(12 * MiB))
        assert os.getxattr(pending / "big.bin", "user.hcafs.state") in (b"dirty", b"staging")
        deadline = time.monotonic() + 30
        seen = None
        while time.monotonic() < deadline:
            report = json.loads(run_hcafs("status", mount.path, "--json", env=mount.env).stdout)
            if report["in_flight"] and report["in_flight"][0]["sent"] > 0:
                seen = report
                break
            time.sleep(0.2)
        assert seen is not None, "no upload in flight was reported"
        assert seen["pending_files"] == 1 and seen["pending_bytes"] == 12 * MiB
        assert seen["in_flight"][0]["path"] == "big.bin"
        text = run_hcafs("status", mount.path, env=mount.env).stdout
        assert "big.bin" in text and "[" in text
        rig.gate.upload_rate = None
        commit(mount, "watched")
        report = json.loads(run_hcafs("status", mount.path, "--json", env=mount.env).stdout)
        assert report["pending_files"] == 0


def test_umount_waits_for_the_queue_or_leaves_it(rig, tmp_path):
    mount = rig.mount(tmp_path / "m", args=("--write-back-delay", "1"))
    mount.start()
    try:
        os.mkdir(f"{mount.path}/bundles/queued")
        Path(f"{mount.path}/bundles/queued/a.txt").write_text("a\n")
        result = run_hcafs("umount", mount.path, env=mount.env)
        assert result.returncode == 0, result.stderr
        assert not os.path.ismount(mount.path)
        db = sqlite3.connect(os.path.join(mount.cache_dir, "hcafs.db"))
        assert db.execute("select state from pending_files").fetchall() == [("synced",)]
        mount.start()
        Path(f"{mount.path}/bundles/queued/b.txt").write_text("b\n")
        result = run_hcafs("umount", "--no-wait", mount.path, env=mount.env)
        assert result.returncode == 0
        assert "resume at the next mount" in result.stderr
        mount.start()
        fqid = commit(mount, "queued")
        assert_bundle(rig.client(), fqid, {"a.txt": b"a\n", "b.txt": b"b\n"})
    finally:
        mount.stop()


@pytest.mark.allow_daemon_errors('commit of refused refused: 409 bundle_already_exists')
def test_a_refused_commit_says_why_and_keeps_the_bundle(rig, tmp_path):
    with rig.mount(tmp_path / "m") as mount:
        os.mkdir(f"{mount.path}/bundles/refused")
        Path(f"{mount.path}/bundles/refused/a.txt").write_text("a\n")
        rig.proxy.when(Fault.error(409, code="bundle_already_exists"), method="PUT",
                       path="/v1/bundles/")
        result = run_hcafs("commit", f"{mount.path}/bundles/refused", env=mount.env)
        assert result.returncode != 0
        assert "bundle_already_exists" in result.stderr
        assert (Path(mount.path) / "bundles" / "refused" / "a.txt").read_text() == "a\n"
        fqid = commit(mount, "refused")
        assert_bundle(rig.client(), fqid, {"a.txt": b"a\n"})


def test_changes_while_a_commit_is_sent_are_refused_with_ebusy_and_none_is_lost(rig,
                                                                                 tmp_path):
    """While put-bundle is in flight the bundle takes no change: a new file, a rewrite, a
    rename or an unlink there fails with EBUSY, explained in the log, so the server
    commits exactly what the bundle held and nothing written is dropped unseen."""
    gate = threading.Event()
    held = rig.proxy.when(Fault(hold=gate), method="PUT", path="/v1/bundles/")
    with rig.mount(tmp_path / "m") as mount:
        bundle = Path(mount.path) / "bundles" / "sealed"
        bundle.mkdir()
        (bundle / "a.txt").write_bytes(b"first\n")
        made: list[str] = []
        committing = threading.Thread(target=lambda: made.append(commit(mount, "sealed")))
        committing.start()
        try:
            assert held.reached.wait(120), "put-bundle was not sent"
            changes = {
                "new file": lambda: (bundle / "late.txt").write_bytes(b"late\n"),
                "rewrite": lambda: (bundle / "a.txt").write_bytes(b"rewritten\n"),
                "rename": lambda: os.rename(bundle / "a.txt", bundle / "b.txt"),
                "unlink": lambda: os.unlink(bundle / "a.txt"),
                "mkdir": lambda: os.mkdir(bundle / "sub"),
            }
            for what, change in changes.items():
                with pytest.raises(OSError) as refused:
                    change()
                assert refused.value.errno == errno.EBUSY, what
            assert (bundle / "a.txt").read_bytes() == b"first\n"
        finally:
            gate.set()
            committing.join(300)
        [fqid] = made
        assert_bundle(rig.client(), fqid, {"a.txt": b"first\n"})
        assert "being committed" in mount.log()
        with pytest.raises(OSError) as after:
            (bundle / "late.txt").write_bytes(b"late\n")
        assert after.value.errno in (errno.EROFS, errno.ENOENT)


def test_a_commit_held_by_a_file_open_for_writing_says_so_once_and_is_sent_at_close(
        rig, tmp_path):
    """A commit asked for while a file of the bundle is open for writing waits for its
    close: the log says so once, naming the file, and the commit then holds all it wrote."""
    with rig.mount(tmp_path / "m") as mount:
        bundle = Path(mount.path) / "bundles" / "held"
        bundle.mkdir()
        with open(bundle / "open.txt", "wb") as handle:
            handle.write(b"part one\n")
            handle.flush()
            os.setxattr(bundle, "user.hcafs.commit", b"1")
            wait_until(lambda: "commit of held waits: open.txt is open for writing"
                       in mount.log(), what="the explained wait")
            time.sleep(2)  # several sync passes go by while it waits
            status = json.loads(os.getxattr(bundle, "user.hcafs.status"))
            assert status["open_for_writing"] == ["open.txt"]  # what `hcafs commit` shows
            handle.write(b"part two\n")
        wait_until(lambda: "committed held as" in mount.log(), what="the commit")
        assert mount.log().count("commit of held waits") == 1
        fqid = re.search(r"committed held as (\S+)", mount.log()).group(1)
        assert_bundle(rig.client(), fqid, {"open.txt": b"part one\npart two\n"})


def _renameat2(old: Path, new: Path, flags: int) -> int:
    """``renameat2(2)``; 0, or the errno it failed with."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.renameat2(-100, os.fsencode(old), -100, os.fsencode(new), flags) == 0:
        return 0
    return ctypes.get_errno()


def test_renameat2_exchange_is_refused_and_noreplace_is_honoured(rig, tmp_path):
    """mfusepy drops renameat2's flags: RENAME_EXCHANGE (``mv --exchange``) became a plain
    rename that destroyed the other file.  Now it is EINVAL, explained in the log, and
    RENAME_NOREPLACE refuses an existing target (EEXIST)."""
    with rig.mount(tmp_path / "m") as mount:
        bundle = Path(mount.path) / "bundles" / "swap"
        bundle.mkdir()
        (bundle / "a").write_bytes(b"a\n")
        (bundle / "b").write_bytes(b"b, important\n")
        assert _renameat2(bundle / "a", bundle / "b", 2) == errno.EINVAL  # RENAME_EXCHANGE
        assert (bundle / "a").read_bytes() == b"a\n"
        assert (bundle / "b").read_bytes() == b"b, important\n"
        assert "an exchange of two names" in mount.log()
        assert _renameat2(bundle / "a", bundle / "b", 1) == errno.EEXIST  # RENAME_NOREPLACE
        assert (bundle / "b").read_bytes() == b"b, important\n"
        assert _renameat2(bundle / "a", bundle / "c", 1) == 0
        assert sorted(os.listdir(bundle)) == ["b", "c"]


def test_a_name_in_use_when_its_bundle_is_committed_works_at_the_first_access(rig,
                                                                               tmp_path):
    """A commit turns bundles/NAME from a directory into a symlink: the kernel, which held
    NAME as a directory (a shell had just used it), is told to look it up again, so the
    first read after the commit follows the link (no EIO), and a write there is EROFS."""
    with rig.mount(tmp_path / "m") as mount:
        bundle = Path(mount.path) / "bundles" / "used"
        bundle.mkdir()
        (bundle / "a.txt").write_bytes(b"alpha\n")
        assert (bundle / "a.txt").read_bytes() == b"alpha\n"  # the kernel holds the names
        os.setxattr(bundle, "user.hcafs.commit", b"1")
        wait_until(lambda: "committed used as" in mount.log(), what="the commit")
        assert (bundle / "a.txt").read_bytes() == b"alpha\n"
        assert os.path.islink(bundle)
        with pytest.raises(OSError) as refused:
            (bundle / "after.txt").write_bytes(b"late\n")
        assert refused.value.errno == errno.EROFS


# ---------------------------------------------------------------- faults


def test_server_faults_delay_but_never_drop(rig, tmp_path):
    source = tmp_path / "src"
    files = make_tree(source)
    for fault in (Fault.error(503, retry_after="0"), Fault(reset=True),
                  Fault.error(429, retry_after="1"), Fault.error(500), Fault(delay=2.0),
                  Fault(reset=True), Fault.error(502)):
        rig.proxy.when(fault, method="PUT", path="/v1/files/")
    rig.proxy.when(Fault(reset=True), method="PUT", path="/v1/bundles/")
    rig.proxy.when(Fault.error(504), method="PUT", path="/v1/bundles/")
    with rig.mount(tmp_path / "m") as mount:
        os.mkdir(f"{mount.path}/bundles/faulty")
        subprocess.run(["cp", "-r", f"{source}/.", f"{mount.path}/bundles/faulty/"],
                       check=True)
        fqid = commit(mount, "faulty")
        listed = assert_bundle(rig.client(), fqid, files)
    for entry in listed.values():
        assert rig.stored_files(entry["uuid"]) == [f"{entry['uuid']}.{entry['version']}"]
    assert rig.stored_bundles(fqid.split(".", 1)[0]) == [fqid]
    assert not any(rule.times for rule in rig.proxy.rules), \
        f"not every fault was hit: {[r for r in rig.proxy.rules if r.times]}"


def test_full_cache_disk_gives_enospc_and_keeps_earlier_files(rig, tmp_path):
    with small_disk(tmp_path / "small", "24m") as small:
        mount = Mount(str(tmp_path / "m"), rig.proxy.url, token=ADMIN, env=rig.env, args=[
            "--staging", f"s3://{rig.bucket}/staged", "--write-back-delay", "0.2",
            "--cache-dir", str(small / "cache"), "--log-file", str(tmp_path / "log")])
        with mount:
            pending = Path(mount.path) / "bundles" / "tight"
            pending.mkdir()
            early = os.urandom(4 * MiB)
            (pending / "early.bin").write_bytes(early)
            with pytest.raises(OSError) as full:
                with open(pending / "huge.bin", "wb") as handle:
                    for _ in range(64):
                        handle.write(os.urandom(MiB))
                        handle.flush()
            assert full.value.errno == errno.ENOSPC
            assert (pending / "early.bin").read_bytes() == early
            (pending / "huge.bin").unlink()
            fqid = commit(mount, "tight")
        assert_bundle(rig.client(), fqid, {"early.bin": early})


# ---------------------------------------------------------------- crashes


def _daemon_pid(mount: Mount) -> int:
    record = next((Path(mount.env["XDG_RUNTIME_DIR"]) / "hcafs").glob("*.json"))
    return json.loads(record.read_text())["pid"]


def _kill(mount: Mount) -> None:
    pid = _daemon_pid(mount)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    subprocess.run(["fusermount3", "-u", "-z", mount.path], check=False)


def _journal_state(mount: Mount, path: str) -> tuple[str, int]:
    db = sqlite3.connect(os.path.join(mount.cache_dir, "hcafs.db"), timeout=10)
    try:
        row = db.execute("select state, sent_bytes from pending_files where path = ?",
                         [path]).fetchone()
    finally:
        db.close()
    return row or ("", 0)


def _wait_for(predicate, timeout: float = 60) -> None:
    wait_until(predicate, timeout, interval=0.05)


def _exactly_once(rig: Rig, fqid: str, files: dict[str, bytes]) -> None:
    listed = assert_bundle(rig.client(), fqid, files)
    for name, entry in listed.items():
        assert rig.stored_files(entry["uuid"]) == [f"{entry['uuid']}.{entry['version']}"], name
    assert rig.stored_bundles(fqid.split(".", 1)[0]) == [fqid]


def test_crash_during_write(rig, tmp_path):
    mount = rig.mount(tmp_path / "m")
    mount.start()
    try:
        pending = Path(mount.path) / "bundles" / "crash-write"
        pending.mkdir()
        done = os.urandom(2 * MiB)
        (pending / "done.bin").write_bytes(done)
        writer_ready = threading.Event()
        errors: list[Exception] = []

        def write_forever() -> None:
            try:
                with open(pending / "partial.bin", "wb") as handle:
                    for _ in range(4096):
                        handle.write(b"z" * 65536)
                        handle.flush()
                        writer_ready.set()
            except OSError as exc:
                errors.append(exc)

        writer = threading.Thread(target=write_forever)
        writer.start()
        writer_ready.wait(10)
        time.sleep(0.3)
        _kill(mount)
        writer.join(30)
        assert errors, "the writer should have seen the daemon die"
        mount.start()
        partial = (pending / "partial.bin").read_bytes()
        assert partial and set(partial) == {ord("z")}
        fqid = commit(mount, "crash-write")
        _exactly_once(rig, fqid, {"done.bin": done, "partial.bin": partial})
    finally:
        mount.stop()


def test_crash_during_staging(rig, tmp_path):
    mount = rig.mount(tmp_path / "m")
    mount.start()
    try:
        pending = Path(mount.path) / "bundles" / "crash-stage"
        pending.mkdir()
        data = os.urandom(16 * MiB)
        rig.gate.upload_rate = 2 * MiB
        (pending / "slow.bin").write_bytes(data)
        _wait_for(lambda: _journal_state(mount, "slow.bin")[0] == "staging"
                  and _journal_state(mount, "slow.bin")[1] > 0)
        _kill(mount)
        rig.gate.upload_rate = None
        mount.start()
        fqid = commit(mount, "crash-stage")
        _exactly_once(rig, fqid, {"slow.bin": data})
    finally:
        mount.stop()


def test_crash_during_registration(rig, tmp_path):
    hold = threading.Event()
    put = rig.proxy.when(Fault(hold=hold), method="PUT", path="/v1/files/")
    mount = rig.mount(tmp_path / "m")
    mount.start()
    try:
        pending = Path(mount.path) / "bundles" / "crash-register"
        pending.mkdir()
        data = os.urandom(MiB)
        (pending / "r.bin").write_bytes(data)
        assert put.reached.wait(60)
        _kill(mount)
        hold.set()  # the PUT reaches the server after the daemon died
        time.sleep(0.5)
        mount.start()
        fqid = commit(mount, "crash-register")
        _exactly_once(rig, fqid, {"r.bin": data})
    finally:
        hold.set()
        mount.stop()


@pytest.mark.parametrize("working_copy", [False, True], ids=["put", "patch"])
def test_crash_during_commit(rig, tmp_path, working_copy):
    mount = rig.mount(tmp_path / "m")
    mount.start()
    try:
        name = f"crash-commit-{working_copy}"
        files = {"c.txt": b"commit me\n"}
        if working_copy:
            os.mkdir(f"{mount.path}/bundles/{name}-base")
            Path(f"{mount.path}/bundles/{name}-base/base.txt").write_text("base\n")
            base = commit(mount, f"{name}-base")
            name = base.split(".", 1)[0]
            files["base.txt"] = b"base\n"
        pending = Path(mount.path) / "bundles" / name
        pending.mkdir()
        (pending / "c.txt").write_bytes(files["c.txt"])
        hold = threading.Event()
        method = "PATCH" if working_copy else "PUT"
        request = rig.proxy.when(Fault(hold=hold), method=method, path="/v1/bundles/")
        assert os.path.isdir(pending)
        os.setxattr(pending, "user.hcafs.commit", b"1")
        assert request.reached.wait(60)
        _kill(mount)
        hold.set()  # the commit reaches the server after the daemon died
        time.sleep(0.5)
        mount.start()
        fqid = commit(mount, name)
        client = rig.client()
        listed = assert_bundle(client, fqid, files)
        for entry in listed.values():
            assert len(rig.stored_files(entry["uuid"])) == 1
        versions = rig.stored_bundles(fqid.split(".", 1)[0])
        assert versions == ([base, fqid] if working_copy else [fqid])
    finally:
        mount.stop()


def test_kill_during_many_small_files_loses_nothing(rig, tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    files = {f"f{n:03d}.txt": f"file {n}\n".encode() * (n + 1) for n in range(60)}
    for name, data in files.items():
        (source / name).write_bytes(data)
    mount = rig.mount(tmp_path / "m", args=("--upload-workers", "2"))
    mount.start()
    try:
        os.mkdir(f"{mount.path}/bundles/many")
        subprocess.run(["cp", "-r", f"{source}/.", f"{mount.path}/bundles/many/"], check=True)
        db = sqlite3.connect(os.path.join(mount.cache_dir, "hcafs.db"), timeout=10)
        _wait_for(lambda: db.execute("select count(*) from pending_files where state = "
                                     "'synced'").fetchone()[0] >= 10)
        db.close()
        _kill(mount)
        mount.start()
        fqid = commit(mount, "many")
        _exactly_once(rig, fqid, files)
    finally:
        mount.stop()


def test_version_files_are_client_chosen_before_the_first_attempt(rig, tmp_path):
    rig.proxy.when(Fault(reset=True), method="PUT", path="/v1/files/", times=2)
    with rig.mount(tmp_path / "m") as mount:
        pending = Path(mount.path) / "bundles" / "ids"
        pending.mkdir()
        (pending / "a.txt").write_text("a\n")
        _wait_for(lambda: _journal_state(mount, "a.txt")[0] == "synced")
        db = sqlite3.connect(os.path.join(mount.cache_dir, "hcafs.db"))
        file_uuid, version = db.execute("select file_uuid, file_version from pending_files "
                                        "where path = 'a.txt'").fetchone()
        tries = [s for s in rig.proxy.seen if s.method == "PUT" and file_uuid in s.path]
        assert len(tries) >= 3
        assert all(f"version={version}" in s.path for s in tries)
        assert rig.stored_files(file_uuid) == [f"{file_uuid}.{version}"]
        commit(mount, "ids")


def test_new_bundle_named_by_an_unused_uuid(rig, tmp_path):
    wanted = str(uuid.uuid4())
    with rig.mount(tmp_path / "m") as mount:
        os.mkdir(f"{mount.path}/bundles/{wanted}")
        Path(f"{mount.path}/bundles/{wanted}/a.txt").write_text("a\n")
        fqid = commit(mount, wanted)
        assert fqid.startswith(wanted + ".")
        assert now_version() > fqid.split(".", 1)[1]


def test_the_biggest_file_due_is_synced_first(rig, tmp_path):
    """Files due together (here: at the commit) go biggest first, whatever order they were
    written in, so a big file's long upload overlaps the small ones instead of trailing
    them.  One upload worker makes the order the log's order."""
    sizes = {"tiny.txt": 10, "small.bin": 50_000, "mid.bin": 300_000, "big.bin": 2 * MiB,
             "last-but-biggest.bin": 3 * MiB}
    with rig.mount(tmp_path / "m", args=("--upload-workers", "1",
                                         "--write-back-delay", "3600")) as mount:
        pending = Path(mount.path) / "bundles" / "order"
        pending.mkdir()
        for name, size in sizes.items():  # written smallest first
            (pending / name).write_bytes(os.urandom(size))
        commit(mount, "order")
        synced = re.findall(r"synced order/(\S+) as ", mount.log())
    assert synced == sorted(sizes, key=sizes.get, reverse=True)


@pytest.mark.allow_daemon_errors(r"sync of swapped/s\.bin failed .* as a new version")
def test_a_version_the_server_took_in_with_other_bytes_is_left_for_a_new_one(rig, seaweed,
                                                                           tmp_path):
    """Between staging and registration the staged object is replaced by other bytes under
    tags that match them, so the server takes in a wrong file, verified, under the version
    the mount chose.  The mount's HEAD shows the difference, the log names it, and the next
    attempt stages under a new version (that one would be refused as 'already exists'
    forever): the bundle gets the bytes that were written."""
    hold = threading.Event()
    put = rig.proxy.when(Fault(hold=hold), method="PUT", path="/v1/files/")
    data, other = os.urandom(200_000), os.urandom(200_000)
    s3 = seaweed.client()
    try:
        with rig.mount(tmp_path / "m") as mount:
            pending = Path(mount.path) / "bundles" / "swapped"
            pending.mkdir()
            (pending / "s.bin").write_bytes(data)
            assert put.reached.wait(60)
            [key] = [o["Key"] for o in s3.list_objects_v2(
                Bucket=rig.bucket, Prefix="staged/")["Contents"] if o["Key"].endswith("/s.bin")]
            summer = Checksummer(len(other))
            summer.update(other)
            tags = "&".join(f"{k}={v}" for k, v in summer.result().tags().items())
            s3.put_object(Bucket=rig.bucket, Key=key, Body=other, Tagging=tags)
            first_version = key.split("/")[-2].split(".", 1)[1]
            hold.set()
            fqid = commit(mount, "swapped")
            assert (Path(mount.path) / "bundles" / fqid / "s.bin").read_bytes() == data
            log = mount.log()
        [entry] = rig.client().get_bundle(*fqid.split(".", 1))["files"]
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["version"] != first_version
        assert re.search(r"sync of swapped/s\.bin failed \(retry in \d+s as a new version\): "
                         r"the server holds another sha256, sha1, crc32c, s3_etag for s\.bin",
                         log), log[-3000:]
    finally:
        hold.set()
