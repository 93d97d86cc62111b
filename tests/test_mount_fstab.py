"""Mounting as users run it: an fstab line of type ``fuse.hcafs`` (a temporary fstab, never
/etc/fstab) mounted with ``mount -T FSTAB MOUNTPOINT``, as root and as a named user
(``setuid=``), and the systemd unit checked by ``systemd-analyze verify``."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from fixtures.dss_server import USER
from fixtures.hcafs_mount import needs_fuse, run_hcafs, wait_until

REPO = Path(__file__).resolve().parent.parent
HELPER = Path(sys.executable).parent / "mount.fuse.hcafs"
SBIN_HELPER = Path("/sbin/mount.fuse.hcafs")
UNIT = REPO / "packaging" / "systemd" / "hcafs.service"
TEST_USER = "hcafs-fstab-test"

needs_root_mount = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("mount") or not HELPER.exists(),
    reason="needs root, mount(8) and the mount.fuse.hcafs script (pip install -e .)")


@pytest.fixture
def helper_installed():
    """mount(8) looks for helpers in /sbin only: link ours there for the test."""
    if SBIN_HELPER.exists() or SBIN_HELPER.is_symlink():
        if os.path.realpath(SBIN_HELPER) != os.path.realpath(HELPER):
            pytest.skip(f"{SBIN_HELPER} is another installation's")
        yield
        return
    SBIN_HELPER.symlink_to(HELPER)
    try:
        yield
    finally:
        SBIN_HELPER.unlink()


def _fstab(where: Path, line: str) -> Path:
    fstab = where / "fstab"
    fstab.write_text("# a temporary fstab for one test\n" + line + "\n")
    return fstab


@needs_fuse
@needs_root_mount
def test_an_fstab_line_mounts_with_mount(mount_world, tmp_path, helper_installed):
    mnt, cache, token = tmp_path / "mnt", tmp_path / "cache", tmp_path / "token"
    mnt.mkdir()
    token.write_text(USER)
    options = (f"noauto,_netdev,cache_dir={cache},token_file={token},"
               "staging=s3://hcafs-fstab/staged,write_back_delay=60")
    fstab = _fstab(tmp_path, f"{mount_world['server'].url} {mnt} fuse.hcafs {options} 0 0")
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path / "run")}
    result = subprocess.run(["mount", "-T", str(fstab), str(mnt)], capture_output=True,
                            text=True, env=env, timeout=120)
    try:
        assert result.returncode == 0, result.stderr
        assert os.path.ismount(mnt)
        assert mount_world["fqid"] in os.listdir(mnt / "bundles")
        assert os.listdir(mnt / "collections") == ["my cells"]  # the token file was read
        os.mkdir(mnt / "bundles" / "staged-here")  # writable: the staging option arrived
        assert os.path.isfile(cache / "hcafs.db")
    finally:
        if os.path.ismount(mnt):
            out = run_hcafs("umount", "--no-wait", str(mnt), env=env)
            assert out.returncode == 0, out.stderr
    assert not os.path.ismount(mnt)


@pytest.fixture
def named_user():
    if not shutil.which("useradd"):
        pytest.skip("needs useradd")
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    TEST_USER], capture_output=True)
    try:
        account = pwd.getpwnam(TEST_USER)
    except KeyError:
        pytest.skip("could not create a user")
    try:
        probe = subprocess.run(["runuser", "-u", TEST_USER, "--", sys.executable, "-c",
                                "import hcafs.mount.launch"], capture_output=True, text=True,
                               cwd="/", timeout=60)
        if probe.returncode != 0:
            pytest.skip(f"{TEST_USER} cannot run this Python ({sys.executable}): "
                        f"{probe.stderr.strip().splitlines()[-1:]}")
        yield account
    finally:
        subprocess.run(["userdel", TEST_USER], capture_output=True)


def _in_proc_mounts(path: Path) -> bool:
    with open("/proc/mounts") as handle:
        return any(line.split()[1] == str(path) for line in handle)


@needs_fuse
@needs_root_mount
def test_root_mounts_as_a_named_user_with_setuid(mount_world, helper_installed, named_user):
    # The user must reach every path it uses; pytest's temp dirs are root's own (0700).
    work = Path(tempfile.mkdtemp(prefix="hcafs-fstab-"))
    os.chmod(work, 0o755)
    mnt, token = work / "mnt", work / "token"
    mnt.mkdir()
    token.write_text(USER)
    os.chmod(token, 0o600)
    for path in (mnt, token):
        os.chown(path, named_user.pw_uid, named_user.pw_gid)
    cache = work / "cache"  # made by the daemon, as the user
    options = f"noauto,cache_dir={cache},token_file={token},setuid={TEST_USER}"
    fstab = _fstab(work, f"{mount_world['server'].url} {mnt} fuse.hcafs {options} 0 0")
    as_user = ["runuser", "-u", TEST_USER, "--"]
    try:
        result = subprocess.run(["mount", "-T", str(fstab), str(mnt)], capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert _in_proc_mounts(mnt)
        listing = subprocess.run([*as_user, "ls", str(mnt / "bundles")], capture_output=True,
                                 text=True, timeout=60)
        assert mount_world["fqid"] in listing.stdout.split(), listing.stderr
        info = os.stat(cache)
        assert (info.st_uid, info.st_mode & 0o777) == (named_user.pw_uid, 0o700)
        assert os.stat(cache / "hcafs.db").st_uid == named_user.pw_uid
        daemons = subprocess.run(["pgrep", "-u", str(named_user.pw_uid), "-f", "hcafs"],
                                 capture_output=True, text=True).stdout.split()
        assert daemons, "the daemon runs as the named user"
    finally:
        if _in_proc_mounts(mnt):
            subprocess.run([*as_user, sys.executable, "-m", "hcafs", "umount", "--no-wait",
                            str(mnt)], capture_output=True, timeout=120, cwd="/")
            if _in_proc_mounts(mnt):
                subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        wait_until(lambda: not _in_proc_mounts(mnt), 30, "the unmount")
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(f"/tmp/hcafs-{named_user.pw_uid}", ignore_errors=True)


def test_the_systemd_unit_verifies():
    analyzer = shutil.which("systemd-analyze")
    if analyzer is None:
        pytest.skip("systemd-analyze is not installed")
    result = subprocess.run([analyzer, "verify", "--man=no", str(UNIT)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "hcafs mount --foreground" in UNIT.read_text()
