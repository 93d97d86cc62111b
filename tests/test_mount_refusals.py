"""Refusals on a real mount: each errno the mount returns on purpose, its one log line (with
the reason and the path), and its entry in ``hcafs status`` (text and --json)."""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path

import pytest
from fixtures.dss_server import USER
from fixtures.hcafs_mount import Mount, commit, needs_fuse, run_hcafs
from fixtures.small_disk import small_disk

MiB = 1024 * 1024
pytestmark = needs_fuse


@pytest.fixture
def mounted(mount_world, tmp_path):
    with Mount(str(tmp_path), mount_world["server"].url, token=USER) as mount:
        yield mount


def _refused(action) -> int:
    with pytest.raises(OSError) as caught:
        action()
    return caught.value.errno


def test_each_refusal_is_explained_once_and_shown_by_status(mount_world, mounted):
    root = Path(mounted.path)
    fqid = mount_world["fqid"]
    cells = root / "collections" / "my cells"
    first_file = next(p for p in (root / "bundles" / fqid).rglob("*") if p.is_file())
    cases = [
        # (what, expected errno, words the reason must carry, path as logged)
        (lambda: os.symlink("../../elsewhere/x", cells / "x"), errno.EINVAL,
         "links to ../../bundles/<fqid>", "/collections/my cells/x"),
        (lambda: os.mkdir(root / "bundles" / "new"), errno.EROFS,
         "--staging", "/bundles/new"),
        (lambda: os.rmdir(root / "bundles" / fqid), errno.EACCES,
         "403", f"/bundles/{fqid}"),
        (lambda: os.symlink(f"../../bundles/{fqid}", cells / "again"), errno.EEXIST,
         f"bundle {fqid} is in this collection already", "/collections/my cells/again"),
        (lambda: os.rmdir(cells), errno.ENOTEMPTY,
         "remove its links first", "/collections/my cells"),
        (lambda: os.link(first_file, cells / "hard"), errno.EPERM,
         "a hard link cannot be made in a collection", "/collections/my cells/hard"),
        (lambda: os.link(first_file, root / "collections" / "hard"), errno.EROFS,
         "a hard link cannot be made here: this part of the mount is read-only",
         "/collections/hard"),
        (lambda: os.mkfifo(root / "bundles" / fqid / "fifo"), errno.EROFS,
         "a FIFO cannot be made here", f"/bundles/{fqid}/fifo"),
    ]
    for action, code, _, path in cases:
        for _ in range(5):  # the same refusal again and again: explained once
            assert _refused(action) == code, (path, errno.errorcode[code])
    log = mounted.log()
    for _, code, words, path in cases:
        lines = [line for line in log.splitlines()
                 if "refused with" in line and f" {path} refused" in line]
        assert len(lines) == 1, (path, lines)
        assert errno.errorcode[code] in lines[0] and words in lines[0], lines[0]

    report = json.loads(run_hcafs("status", mounted.path, "--json", env=mounted.env).stdout)
    shown = [(r["path"], r["errno"]) for r in report["refusals"]]
    assert shown == [(path, errno.errorcode[code]) for _, code, _, path in cases][-5:]  # the latest
    assert all(r["reason"] and r["operation"] for r in report["refusals"])
    text = run_hcafs("status", mounted.path, env=mounted.env).stdout
    for _, code, _, path in cases[-5:]:
        assert any("refused" in line and path in line and errno.errorcode[code] in line
                   for line in text.splitlines()), (path, text)
    # ENOENT is an answer, not a refusal: not logged, not shown
    assert _refused(lambda: os.stat(root / "bundles" / "nope")) == errno.ENOENT
    assert "/bundles/nope" not in mounted.log()


def test_refusals_in_a_pending_bundle_are_explained_too(tmp_path):
    """An attribute removed (it was mfusepy's silent default), a size past what a file can
    be (EFBIG, it was EIO with a traceback), a name that is not UTF-8 (its refusal failed
    to be recorded): each errno is explained in the log and shown by status."""
    env = {"XDG_DATA_HOME": str(tmp_path / "data"), "XDG_CACHE_HOME": str(tmp_path / "x")}
    with Mount(str(tmp_path), None, env=env) as mount:
        bundle = Path(mount.path) / "bundles" / "b"
        bundle.mkdir()
        (bundle / "a.txt").write_bytes(b"a\n")
        assert _refused(lambda: os.removexattr(bundle / "a.txt", "user.hca.indexed")) == \
            errno.EOPNOTSUPP
        assert _refused(lambda: os.truncate(bundle / "a.txt", 1 << 60)) == errno.EFBIG
        assert _refused(lambda: open(os.fsencode(bundle) + b"/bad\xff.txt", "wb")) == \
            errno.EINVAL
        # What a bundle cannot hold, each said the same way: EPERM, and what to do instead.
        assert _refused(lambda: os.link(bundle / "a.txt", bundle / "hard")) == errno.EPERM
        assert _refused(lambda: os.symlink("a.txt", bundle / "soft")) == errno.EPERM
        assert _refused(lambda: os.mkfifo(bundle / "fifo")) == errno.EPERM
        log = mount.log()
        assert "Traceback" not in log and "Uncaught" not in log
        for words in ("removexattr /bundles/b/a.txt refused with ENOTSUP",
                      "truncate /bundles/b/a.txt refused with EFBIG",
                      "/bundles/b/bad\\xff.txt refused with EINVAL",
                      "link /bundles/b/hard refused with EPERM: /bundles/b/hard: a hard link "
                      "cannot be made in a bundle, which holds files and directories only; "
                      "copy the file instead",
                      "symlink /bundles/b/soft refused with EPERM: /bundles/b/soft: a bundle "
                      "holds files and directories only, not symbolic links",
                      "mknod /bundles/b/fifo refused with EPERM: /bundles/b/fifo: a FIFO "
                      "cannot be made in a bundle"):
            assert words in log, (words, log[-2000:])
        report = json.loads(run_hcafs("status", mount.path, "--json", env=mount.env).stdout)
        assert [r["errno"] for r in report["refusals"]][-5:] == ["EFBIG", "EINVAL", "EPERM",
                                                                 "EPERM", "EPERM"]
        assert (bundle / "a.txt").read_bytes() == b"a\n"


def test_cached_content_gives_way_to_written_files_and_keeps_its_floor(tmp_path):
    """On a small cache disk full of cached (committed) content, a write into a pending
    bundle still fits: the content cache drops least recently used blobs for it.  Reads
    refill the cache but leave --cache-min-free free on the disk."""
    with small_disk(tmp_path / "small", "48m") as small:
        env = {"XDG_DATA_HOME": str(tmp_path / "data"), "XDG_CACHE_HOME": str(tmp_path / "x")}
        mount = Mount(str(tmp_path), None, env=env)
        mount.args = ["--cache-dir", str(small / "cache"), "--log-file", mount.log_file,
                      "--cache-min-free", "6M", "--write-back-delay", "0.1"]
        floor = 6 * MiB
        with mount:
            bundles = Path(mount.path) / "bundles"
            kept = {}
            for name in ("a", "b"):
                (bundles / name).mkdir()
                kept[name] = os.urandom(12 * MiB)
                (bundles / name / f"{name}.bin").write_bytes(kept[name])
                commit(mount, name)  # its bytes move into the content cache
            assert _free(small) < 24 * MiB  # what is cached fills half the disk
            (bundles / "new").mkdir()
            written = os.urandom(22 * MiB)
            (bundles / "new" / "big.bin").write_bytes(written)  # ENOSPC before the mend
            assert (bundles / "new" / "big.bin").read_bytes() == written
            assert "dropped" in mount.log() and "of cached content" in mount.log()
            for name in ("a", "b"):  # fetched again, within the floor
                time.sleep(1)  # the kernel's release of the last file read comes after close
                assert (bundles / name / f"{name}.bin").read_bytes() == kept[name]
                assert _free(small) >= floor - MiB, name
            commit(mount, "new")


def _free(path: Path) -> int:
    vfs = os.statvfs(path)
    return vfs.f_bavail * vfs.f_frsize


def test_a_full_cache_disk_is_explained_once(tmp_path):
    with small_disk(tmp_path / "small", "24m") as small:
        env = {"XDG_DATA_HOME": str(tmp_path / "data"), "XDG_CACHE_HOME": str(tmp_path / "x")}
        mount = Mount(str(tmp_path), None, env=env)
        # the cache on the small disk; the log where the fixture reads it (not on the disk)
        mount.args = ["--cache-dir", str(small / "cache"), "--log-file", mount.log_file]
        with mount:
            pending = Path(mount.path) / "bundles" / "tight"
            pending.mkdir()
            with pytest.raises(OSError) as full:
                with open(pending / "huge.bin", "wb") as handle:
                    for _ in range(64):
                        handle.write(os.urandom(1024 * 1024))
                        handle.flush()
            assert full.value.errno == errno.ENOSPC
            lines = [line for line in mount.log().splitlines()
                     if "refused with ENOSPC" in line]
            assert len(lines) == 1 and "/bundles/tight/huge.bin" in lines[0], lines
            assert "the cache disk is full" in lines[0]
            report = json.loads(run_hcafs("status", mount.path, "--json",
                                          env=mount.env).stdout)
            assert [r["errno"] for r in report["refusals"]] == ["ENOSPC"]
            (pending / "huge.bin").unlink()
