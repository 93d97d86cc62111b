"""The leftover-mount sweep picks only FUSE mounts under the given roots."""

from __future__ import annotations

from pathlib import Path

from fixtures.mounts import fuse_mounts_under


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
