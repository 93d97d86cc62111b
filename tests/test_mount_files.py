"""Private local files: the cache and runtime dirs are 0700 and checked at mount time; the
database, the log and the staged copies are 0600 whatever the umask; the runtime record is
never written through a planted symlink."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures.hcafs_mount import Mount, needs_fuse, run_hcafs, wait_until
from fixtures.publishing import publish

from hcafs.remote.client import DSSClient

pytestmark = needs_fuse
UNUSED_UID = 64999  # owns nothing on this machine; only chown needs it


def _mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _record_path(runtime: Path, mountpoint: str) -> Path:
    digest = hashlib.sha256(os.path.abspath(mountpoint).encode()).hexdigest()[:16]
    return runtime / "hcafs" / f"{digest}.json"


def test_local_files_are_private_under_umask_022(tmp_path, umask_022):
    env = {"XDG_DATA_HOME": str(tmp_path / "data"), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    with Mount(str(tmp_path), None, env=env) as mount:
        cache, runtime = Path(mount.cache_dir), Path(mount.env["XDG_RUNTIME_DIR"]) / "hcafs"
        assert _mode(cache) == 0o700 and _mode(runtime) == 0o700
        # a file written, and a working copy's inherited file rewritten (copied locally)
        record = next(runtime.glob("*.json"))
        assert _mode(record) == 0o600
        tokens = tmp_path / "data" / "hcafs" / "server" / "tokens.json"
        token = next(iter(json.loads(tokens.read_text())))
        url = json.loads(record.read_text())["dss_url"]
        staging = tmp_path / "data" / "hcafs" / "server" / "staging"
        fqid, _ = publish(DSSClient(url, token=token), staging, {"old.txt": b"old\n"})
        mount.refresh()
        pending = Path(mount.path) / "bundles"
        os.mkdir(pending / "fresh")
        (pending / "fresh" / "new.txt").write_bytes(b"new\n")
        os.mkdir(pending / fqid.split(".")[0])
        with open(pending / fqid.split(".")[0] / "old.txt", "r+b") as handle:
            handle.write(b"OLD")
        files = [cache / "hcafs.db", cache / "hcafs.log", *(cache / "pending").iterdir()]
        files += [p for p in (cache / "hcafs.db-wal", cache / "hcafs.db-shm") if p.exists()]
        assert len(list((cache / "pending").iterdir())) == 2
        for path in files:
            assert _mode(path) == 0o600, (path, oct(_mode(path)))


def _mount_refused(tmp_path: Path, env: dict, cache: Path | None = None) -> str:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir(exist_ok=True)
    result = subprocess.run(
        [sys.executable, "-m", "hcafs", "mount", str(mountpoint), "--dss-url",
         "http://127.0.0.1:9", "--cache-dir", str(cache or tmp_path / "cache")],
        capture_output=True, text=True, env={**os.environ, **env}, timeout=60)
    assert result.returncode == 2, result.stderr
    assert not os.path.ismount(mountpoint)
    return result.stderr.strip()


def test_a_runtime_dir_owned_by_another_user_is_refused(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("chown to another uid needs root")
    runtime = tmp_path / "run"
    (runtime / "hcafs").mkdir(parents=True, mode=0o700)
    os.chown(runtime / "hcafs", UNUSED_UID, UNUSED_UID)
    try:
        message = _mount_refused(tmp_path, {"XDG_RUNTIME_DIR": str(runtime)})
        assert f"the runtime dir {runtime / 'hcafs'} belongs to uid {UNUSED_UID}" in message
        assert "not to you" in message
    finally:
        os.chown(runtime / "hcafs", 0, 0)


def test_a_runtime_dir_open_to_others_or_a_symlink_is_refused(tmp_path):
    runtime = tmp_path / "run"
    (runtime / "hcafs").mkdir(parents=True)
    os.chmod(runtime / "hcafs", 0o755)
    message = _mount_refused(tmp_path, {"XDG_RUNTIME_DIR": str(runtime)})
    assert "open to other users (mode 0755)" in message
    assert f"chmod 700 {runtime / 'hcafs'}" in message
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    linked = tmp_path / "run2"
    linked.mkdir()
    (linked / "hcafs").symlink_to(elsewhere)
    assert "is a symbolic link" in _mount_refused(tmp_path, {"XDG_RUNTIME_DIR": str(linked)})


def test_a_cache_dir_open_to_others_is_refused(tmp_path):
    cache = tmp_path / "shared-cache"
    cache.mkdir()
    os.chmod(cache, 0o755)
    message = _mount_refused(tmp_path, {"XDG_RUNTIME_DIR": str(tmp_path / "run")}, cache)
    assert f"the cache dir {cache} is open to other users" in message


def test_a_symlink_planted_at_the_record_is_not_written_through(mount_world, tmp_path):
    runtime = tmp_path / "run"
    (runtime / "hcafs").mkdir(parents=True, mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    mount = Mount(str(tmp_path), mount_world["server"].url)
    planted = _record_path(runtime, mount.path)
    planted.symlink_to(victim)
    with mount:
        wait_until(lambda: not planted.is_symlink(), 30, "the record")
        assert victim.read_text() == "precious\n"
        assert stat.S_ISREG(os.lstat(planted).st_mode) and _mode(planted) == 0o600
        result = run_hcafs("status", mount.path, env=mount.env)
        assert result.returncode == 0, result.stderr
    assert victim.read_text() == "precious\n"
    assert not list((runtime / "hcafs").glob("*.tmp")), "no temporary record is left"
