""".drs link files on real mounts: queued, batched and rate-limited imports through the bulk
DRS import API of a real ``hcafs serve``, from a second ``hcafs serve`` acting as the
external DRS repository."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sqlite3
import threading
import uuid
from pathlib import Path

import pytest
from fixtures.drs_repo import max_in_period
from fixtures.dss_server import ADMIN
from fixtures.faults import Fault
from fixtures.hcafs_mount import commit, needs_fuse, run_hcafs, wait_until
from fixtures.publishing import publish
from fixtures.worlds import DrsWorld

from hcafs.remote.client import DSSClient
from hcafs.versions import now_version

MiB = 1024 * 1024
pytestmark = needs_fuse


def bundle_files(drs_world: DrsWorld, fqid: str) -> dict[str, dict]:
    client = DSSClient(drs_world.dss.url, token=ADMIN)
    return {f["name"]: f for f in client.get_bundle(*fqid.split(".", 1))["files"]}


def test_drs_files_become_imported_files(drs_world, tmp_path):
    data = {"reads.fastq": random.Random(1).randbytes(3 * MiB),
            "meta.json": b'{"ok": true}\n'}
    external = DSSClient(drs_world.external.url, token=ADMIN)
    bundle_fqid, files = publish(external, drs_world.external_staging, data)
    with drs_world.mount(tmp_path / "m") as mount:
        pending = Path(mount.path) / "bundles" / "imported"
        pending.mkdir()
        (pending / "reads.fastq.drs").write_text(drs_world.drs_uri(files["reads.fastq"]) + "\n")
        (pending / "sub").mkdir()
        (pending / "sub" / "anything.drs").write_text(json.dumps({
            "drs_uri": drs_world.drs_uri(files["meta.json"]), "name": "renamed.json",
            "metadata": {"study": "x"}, "tags": ["t1"]}))
        (pending / "whole.drs").write_text(drs_world.drs_uri(bundle_fqid))
        wait_until(lambda: not any(p.name.endswith(".drs") for p in pending.rglob("*")),
                   what="imports to land")
        # The kernel forgot the landed .drs files, though it had them cached (the entry
        # timeout is 30 s): a stat right after the listing says they are gone.
        wait_until(lambda: not any(p.exists() for p in (
            pending / "reads.fastq.drs", pending / "sub" / "anything.drs",
            pending / "whole.drs")), timeout=3, what="the .drs files to be forgotten")
        assert (pending / "reads.fastq").read_bytes() == data["reads.fastq"]
        assert (pending / "sub" / "renamed.json").read_bytes() == data["meta.json"]
        assert sorted(os.listdir(pending / "whole")) == ["meta.json", "reads.fastq"]
        assert os.getxattr(pending / "reads.fastq", "user.hcafs.state") == b"synced"
        fqid = commit(mount, "imported")
    listed = bundle_files(drs_world, fqid)
    expected = {"reads.fastq": data["reads.fastq"], "sub/renamed.json": data["meta.json"],
                "whole/meta.json": data["meta.json"], "whole/reads.fastq": data["reads.fastq"]}
    assert sorted(listed) == sorted(expected)
    for name, blob in expected.items():
        assert listed[name]["sha256"] == hashlib.sha256(blob).hexdigest()


def test_a_drs_file_saved_through_a_temporary_name_is_imported(drs_world, tmp_path):
    """``rsync`` and editors write NAME.drs as a temporary file, then rename it: the rename
    makes it an import request; a .drs file renamed to a plain name is committed as bytes."""
    data = random.Random(5).randbytes(MiB)
    external = DSSClient(drs_world.external.url, token=ADMIN)
    _, files = publish(external, drs_world.external_staging, {"reads.fastq": data})
    uri = drs_world.drs_uri(files["reads.fastq"]) + "\n"
    with drs_world.mount(tmp_path / "m") as mount:
        pending = Path(mount.path) / "bundles" / "saved"
        pending.mkdir()
        (pending / ".reads.fastq.drs.Xy12ab").write_text(uri)
        os.rename(pending / ".reads.fastq.drs.Xy12ab", pending / "reads.fastq.drs")
        with open(pending / "note.drs", "w") as note:  # renamed before its import is sent
            note.write(uri)
            note.flush()
            os.rename(pending / "note.drs", pending / "note.txt")
        wait_until(lambda: (pending / "reads.fastq").exists(), what="the import to land")
        assert (pending / "reads.fastq").read_bytes() == data
        assert not (pending / "reads.fastq.drs").exists()
        fqid = commit(mount, "saved")
    listed = bundle_files(drs_world, fqid)
    assert sorted(listed) == ["note.txt", "reads.fastq"]
    assert listed["reads.fastq"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert listed["note.txt"]["sha256"] == hashlib.sha256(uri.encode()).hexdigest()


def test_invalid_and_failing_imports_are_visible_and_harm_nothing(drs_world, tmp_path):
    good = random.Random(2).randbytes(MiB)
    external = DSSClient(drs_world.external.url, token=ADMIN)
    _, files = publish(external, drs_world.external_staging,
                       {"good.bin": good, "corrupt.bin": random.Random(3).randbytes(MiB)})
    info = external.head_file(*files["corrupt.bin"])
    blob = Path(drs_world.external.data_dir) / "store" / "blobs" / \
        f"{info.sha256}.{info.sha1}.{info.s3_etag}.{info.crc32c}"
    blob.write_bytes(bytes(info.size))  # the repository now serves the wrong bytes
    with drs_world.mount(tmp_path / "m") as mount:
        pending = Path(mount.path) / "bundles" / "mixed"
        pending.mkdir()
        (pending / "good.bin.drs").write_text(drs_world.drs_uri(files["good.bin"]))
        (pending / "junk.drs").write_text("this is not a drs uri")
        (pending / "badjson.drs").write_text('{"drs_uri": ')
        (pending / "nohost.drs").write_text("drs://no-such-host.invalid/abc")
        missing = f"{uuid.uuid4()}.{now_version()}"
        (pending / "missing.drs").write_text(drs_world.drs_uri(missing))
        (pending / "corrupt.bin.drs").write_text(drs_world.drs_uri(files["corrupt.bin"]))
        (pending / "keep.txt").write_text("local file\n")
        wait_until(lambda: (pending / "good.bin").exists(), what="the good import")
        for name in ("junk.drs", "badjson.drs"):
            error = os.getxattr(pending / name, "user.hcafs.error").decode()
            assert "invalid .drs file" in error
        wait_until(lambda: all(_has_error(pending / n) for n in
                               ("nohost.drs", "missing.drs", "corrupt.bin.drs")),
                   what="per-item errors")
        assert b"5104" in os.getxattr(pending / "corrupt.bin.drs", "user.hcafs.error")
        assert not (pending / "corrupt.bin").exists()
        report = json.loads(run_hcafs("status", mount.path, "--json", env=mount.env).stdout)
        errored = {e["path"].rpartition("/")[2] for e in report["import_errors"]}
        assert {"junk.drs", "badjson.drs"} <= errored
        assert "invalid .drs file" in mount.log()
        assert (pending / "good.bin").read_bytes() == good
        # a commit cannot complete while imports failed: it says why, the bundle stays
        result = run_hcafs("commit", str(pending), env=mount.env)
        assert result.returncode != 0 and "imports failed" in result.stderr
        for name in ("junk.drs", "badjson.drs", "nohost.drs", "missing.drs",
                     "corrupt.bin.drs"):
            (pending / name).unlink()
        fqid = commit(mount, "mixed")
    assert sorted(bundle_files(drs_world, fqid)) == ["good.bin", "keep.txt"]


def _has_error(path: Path) -> bool:
    try:
        return bool(os.getxattr(path, "user.hcafs.error"))
    except OSError:
        return False


def test_batching_respects_100_items_and_the_window(tmp_path, seaweed):
    drs_world = DrsWorld(tmp_path / "world", seaweed, limit=100, window=4)
    try:
        external = DSSClient(drs_world.external.url, token=ADMIN)
        blobs = {f"f{n:03d}.txt": f"file {n}\n".encode() for n in range(250)}
        _, files = publish(external, drs_world.external_staging, blobs)
        with drs_world.mount(tmp_path / "m") as mount:
            pending = Path(mount.path) / "bundles" / "many"
            pending.mkdir()
            for name in blobs:
                (pending / f"{name}.drs").write_text(drs_world.drs_uri(files[name]))
            wait_until(lambda: len([p for p in os.listdir(pending)
                                    if not p.endswith(".drs")]) == 250, timeout=180,
                       what="250 imports")
            for name, blob in blobs.items():
                assert (pending / name).read_bytes() == blob
            fqid = commit(mount, "many")
        assert len(bundle_files(drs_world, fqid)) == 250
        log = drs_world.import_log()
        calls = [c for c in log["calls"] if c["accepted"] and not c["replay"]]
        assert calls and max(c["items"] for c in calls) <= 100
        assert sum(c["items"] for c in calls) >= 250  # more only if an item was retried
        admitted = sorted(a["time"] for a in log["admissions"])
        assert sorted(a["name"] for a in log["admissions"]) == sorted(blobs)  # each once
        assert max_in_period(admitted, 4) <= 100
    finally:
        drs_world.close()


@pytest.mark.parametrize("conflict", ["SKIP", "RENAME", "OVERWRITE"])
def test_conflict_resolution(drs_world, tmp_path, conflict):
    external = DSSClient(drs_world.external.url, token=ADMIN)
    _, files = publish(external, drs_world.external_staging,
                       {"one": b"first version\n", "two": b"second version\n"})
    with drs_world.mount(tmp_path / "m") as mount:
        pending = Path(mount.path) / "bundles" / f"conflict-{conflict.lower()}"
        pending.mkdir()
        (pending / "a.drs").write_text(json.dumps({"drs_uri": drs_world.drs_uri(files["one"]),
                                                   "name": "same.txt"}))
        wait_until(lambda: (pending / "same.txt").exists(), what="first import")
        (pending / "b.drs").write_text(json.dumps({
            "drs_uri": drs_world.drs_uri(files["two"]), "name": "same.txt",
            "conflict_resolution": conflict}))
        wait_until(lambda: not (pending / "b.drs").exists() or _has_error(pending / "b.drs"),
                   what="second import")
        names = sorted(p for p in os.listdir(pending) if not p.endswith(".drs"))
        bundle = pending.name
        said = [line for line in mount.log().splitlines() if "same.txt into" in line]
        assert "imported same.txt into " + bundle + " (1 file)" in said[0]
        if conflict == "SKIP":
            assert names == ["same.txt"]
            assert (pending / "same.txt").read_bytes() == b"first version\n"
            assert len(said) == 2 and "kept the file of the same name (same.txt)" \
                in said[1] and "imported" not in said[1]
        elif conflict == "OVERWRITE":
            assert names == ["same.txt"]
            assert (pending / "same.txt").read_bytes() == b"second version\n"
            assert len(said) == 2 and "(1 file)" in said[1]
        else:
            assert len(names) == 2 and "same.txt" in names
            renamed = next(n for n in names if n != "same.txt")
            assert (pending / renamed).read_bytes() == b"second version\n"
            assert (pending / "same.txt").read_bytes() == b"first version\n"
            assert len(said) == 2 and f"(1 file: {renamed})" in said[1]


def test_skip_is_judged_by_the_bundle_not_by_names_the_server_kept(drs_world, tmp_path):
    """Under SKIP, two .drs files of one name in two folders both land, and a file removed
    and imported again lands again: the server's project keeps every name it was given,
    but only the pending bundle's names count (it used to get the leaf only, and answered
    the second of each "already exists", so nothing landed and the .drs file was gone)."""
    external = DSSClient(drs_world.external.url, token=ADMIN)
    _, files = publish(external, drs_world.external_staging,
                       {"one": b"first\n", "two": b"second\n"})
    with drs_world.mount(tmp_path / "m") as mount:
        pending = Path(mount.path) / "bundles" / "skips"
        for folder in ("d1", "d2"):
            (pending / folder).mkdir(parents=True)
        (pending / "d1" / "x.drs").write_text(drs_world.drs_uri(files["one"]))
        wait_until(lambda: (pending / "d1" / "x").exists(), what="the first import")
        (pending / "d2" / "x.drs").write_text(drs_world.drs_uri(files["two"]))
        wait_until(lambda: (pending / "d2" / "x").exists() or
                   _has_error(pending / "d2" / "x.drs"), what="the second import")
        assert (pending / "d2" / "x").read_bytes() == b"second\n"
        (pending / "d1" / "x").unlink()
        (pending / "d1" / "x.drs").write_text(drs_world.drs_uri(files["two"]))
        wait_until(lambda: (pending / "d1" / "x").exists() or
                   _has_error(pending / "d1" / "x.drs"), what="the import again")
        assert (pending / "d1" / "x").read_bytes() == b"second\n"
        assert sorted(p.name for p in pending.rglob("*")) == ["d1", "d2", "x", "x"]
        fqid = commit(mount, "skips")
        names = {f["name"]: f for f in bundle_files(drs_world, fqid).values()}
        assert sorted(names) == ["d1/x", "d2/x"]


def test_crash_between_submit_and_finished(drs_world, tmp_path):
    external = DSSClient(drs_world.external.url, token=ADMIN)
    blobs = {f"c{n}.bin": random.Random(n).randbytes(200_000) for n in range(5)}
    _, files = publish(external, drs_world.external_staging, blobs)
    hold = threading.Event()
    polled = drs_world.proxy.when(Fault(hold=hold), method="GET", path="/v2/bulk/drs/imports/",
                              times=1000)
    mount = drs_world.mount(tmp_path / "m")
    mount.start()
    try:
        pending = Path(mount.path) / "bundles" / "crashy"
        pending.mkdir()
        for name in blobs:
            (pending / f"{name}.drs").write_text(drs_world.drs_uri(files[name]))
        assert polled.reached.wait(60), "the job was never polled"
        # The first call opens the rate-limit period at once, with the files written by
        # then; the rest may still be queued when the daemon dies (the flusher is held in
        # that poll): submitted and queued items must each land once after the restart.
        db = sqlite3.connect(os.path.join(mount.cache_dir, "hcafs.db"))
        assert db.execute("select count(*) from drs_imports where job_id is not null"
                          ).fetchone()[0] >= 1
        db.close()
        record = next((Path(mount.env["XDG_RUNTIME_DIR"]) / "hcafs").glob("*.json"))
        pid = json.loads(record.read_text())["pid"]
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not Path(f"/proc/{pid}").exists(), what="the daemon to die")
        import subprocess

        subprocess.run(["fusermount3", "-u", "-z", mount.path], check=False)
        polled.times = 0
        hold.set()
        mount.start()
        wait_until(lambda: len([p for p in os.listdir(pending)
                                if not p.endswith(".drs")]) == 5, what="imports after restart")
        for name, blob in blobs.items():
            assert (pending / name).read_bytes() == blob
        fqid = commit(mount, "crashy")
    finally:
        hold.set()
        mount.stop()
    assert sorted(bundle_files(drs_world, fqid)) == sorted(blobs)
    # Each file was fetched once (an item whose first attempt failed on the server side is
    # retried, which is not a second import); no call was a blind resubmission.
    log = drs_world.import_log()
    assert sorted(a["name"] for a in log["admissions"]) == sorted(blobs)
    jobs_after_restart = [c for c in log["calls"] if c["replay"]]
    assert all(c["accepted"] for c in jobs_after_restart)
