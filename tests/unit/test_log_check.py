"""The real-mount tier's log check: what it counts as an unexpected daemon error."""

from __future__ import annotations

from fixtures.hcafs_mount import Mount, log_size, unexpected_log_errors

LOG = """\
2026-01-01 10:00:00,000 INFO hcafs.daemon: mounted at /m
2026-01-01 10:00:01,000 WARNING hcafs.cache.catalog: server unreachable; serving what is cached
2026-01-01 10:00:02,000 ERROR hcafs.sync.syncer: commit of b refused: 409 conflict
2026-01-01 10:00:03,000 ERROR hcafs.mount.fuse_ops: getattr /x crashed
Traceback (most recent call last):
  File "fuse_ops.py", line 1, in wrapper
KeyError: 'x'
"""


def _mount(tmp_path) -> Mount:
    mount = Mount(str(tmp_path), None)
    (tmp_path / "cache").mkdir()
    with open(mount.log_file, "w") as handle:
        handle.write("2026-01-01 09:00:00,000 ERROR hcafs.daemon: from an earlier run\n")
    return mount


def test_errors_and_tracebacks_are_found_warnings_are_not(tmp_path):
    mount = _mount(tmp_path)
    start = log_size(mount)
    with open(mount.log_file, "a") as handle:
        handle.write(LOG)
    found = unexpected_log_errors(mount, start, [])
    assert len(found) == 3 and "409 conflict" in found[0] and "crashed" in found[1]
    assert found[2].startswith("Traceback") and "KeyError" in found[2]
    assert not any("earlier run" in line for line in found)


def test_declared_errors_are_allowed_and_only_those(tmp_path):
    mount = _mount(tmp_path)
    start = log_size(mount)
    with open(mount.log_file, "a") as handle:
        handle.write(LOG)
    found = unexpected_log_errors(mount, start, [r"commit of \w+ refused", r"KeyError: 'x'"])
    assert found == ["2026-01-01 10:00:03,000 ERROR hcafs.mount.fuse_ops: getattr /x crashed"]
