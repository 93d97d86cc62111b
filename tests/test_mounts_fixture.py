"""The leftover-mount sweep picks only FUSE mounts under the given roots."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fixtures.mounts import fuse_mounts_under, in_running_session


def test_only_fuse_mounts_under_the_roots_deepest_first(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "proc /proc proc rw 0 0\n"
        "hcafs /tmp/pytest-of-root/pytest-3/m0/mnt fuse.hcafs rw 0 0\n"
        "hcafs /tmp/pytest-of-root/pytest-3/m0/mnt/inner fuse rw 0 0\n"
        "tmpfs /tmp/pytest-of-root/pytest-3/tmpfs tmpfs rw 0 0\n"
        "hcafs /tmp/pytest-of-root/pytest-3/with\\040space fuse.hcafs rw 0 0\n"
        "hcafs /tmp/pytest-of-rootless/x fuse.hcafs rw 0 0\n"
        "hcafs /srv/other fuse.hcafs rw 0 0\n"
    )
    found = fuse_mounts_under([Path("/tmp/pytest-of-root")], mounts_file=str(mounts))
    assert found[0] == Path("/tmp/pytest-of-root/pytest-3/m0/mnt/inner")
    assert set(found) == {
        Path("/tmp/pytest-of-root/pytest-3/m0/mnt/inner"),
        Path("/tmp/pytest-of-root/pytest-3/m0/mnt"),
        Path("/tmp/pytest-of-root/pytest-3/with space"),
    }


def test_no_mounts_file_means_nothing_to_do(tmp_path):
    assert fuse_mounts_under([tmp_path], mounts_file=str(tmp_path / "absent")) == []


def test_a_dead_mount_of_another_running_session_is_left_alone(tmp_path):
    """A run that starts sweeps dead mounts, but not those of a run still going: that run
    may have killed a daemon on purpose (seen when two runs shared a machine)."""
    point = tmp_path / "pytest-7" / "popen-gw1" / "test0" / "mnt"
    point.mkdir(parents=True)
    lock = tmp_path / "pytest-7" / ".lock"
    assert not in_running_session(point, tmp_path)  # no lock: an old run
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(str(other.pid))
        assert in_running_session(point, tmp_path)
    finally:
        other.kill()
        other.wait()
    assert not in_running_session(point, tmp_path)  # its run has ended
    lock.write_text(str(os.getpid()))
    assert not in_running_session(point, tmp_path)  # this run's own
    assert not in_running_session(tmp_path / "elsewhere", tmp_path / "pytest-7")
