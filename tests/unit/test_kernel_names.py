"""The kernel-entries bound when the kernel, or the thread that asks it, misbehaves.

The bound itself, against a real kernel, is tested on a real mount
(``tests/test_mount_catalog.py``); here each prune is a fault injected in place of the
kernel's answer: refused with an errno, crashing, or slower than a reply may wait.  And a
negative bound is refused before anything is mounted.
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
import threading
import time

from hcafs.mount import kernel_names
from hcafs.mount.kernel_names import KernelNames

LISTING = object()  # one open directory of /bundles


def _due(names: KernelNames) -> None:
    names.listed(LISTING, names.limit + 1)


def test_a_refused_prune_is_logged_once_and_the_reply_is_not_cut(caplog):
    asked = []

    def refuse(directory: str) -> bool:
        asked.append(directory)
        raise OSError(errno.EPERM, "not allowed")

    names = KernelNames(10, refuse)
    names.start()
    try:
        with caplog.at_level(logging.WARNING, logger="hcafs.mount.kernel_names"):
            for _ in range(2):
                names.listed(LISTING, 4)
                assert names.before_reply(LISTING, "/bundles") is False  # not due yet: no prune
                _due(names)
                assert names.before_reply(LISTING, "/bundles") is False  # refused: a full reply
        assert asked == ["/bundles", "/bundles"]
        refusals = [r for r in caplog.records if "refused" in r.getMessage()]
        assert len(refusals) == 1 and "not allowed" in refusals[0].getMessage()
        assert names.status() == {"limit": 10, "since_prune": 0, "pruned": 0, "late": 0,
                                  "working": True}
    finally:
        names.stop()


def test_a_crashed_prune_thread_turns_the_bound_off_without_holding_replies(caplog):
    def crash(directory: str) -> bool:
        raise RuntimeError("injected")

    names = KernelNames(10, crash)
    names.start()
    try:
        with caplog.at_level(logging.ERROR, logger="hcafs.mount.kernel_names"):
            _due(names)
            assert names.before_reply(LISTING, "/bundles") is False
            names._thread.join(5)  # it logs on its way out
        assert any("stopped working" in r.getMessage() for r in caplog.records)
        _due(names)
        started = time.monotonic()
        assert names.before_reply(LISTING, "/bundles") is False
        assert time.monotonic() - started < 0.5  # no wait on a thread that is gone
        assert names.status()["working"] is False
    finally:
        names.stop()


def test_a_slow_prune_is_counted_late_and_the_reply_after_it_is_cut(monkeypatch):
    monkeypatch.setattr(kernel_names, "PRUNE_WAIT", 0.2)
    release, began = threading.Event(), threading.Event()

    def slow(directory: str) -> bool:
        began.set()
        release.wait(10)
        return True

    names = KernelNames(10, slow)
    names.start()
    try:
        _due(names)
        # under way when the wait ends: the reply races the prune, so it carries one entry
        assert names.before_reply(LISTING, "/bundles") is True
        assert began.is_set()
        # due again meanwhile: queued behind the running prune, and given up after the
        # wait, so the next reply asks again
        _due(names)
        assert names.before_reply(LISTING, "/bundles") is False
        release.set()
        deadline = time.monotonic() + 5
        while names.status()["pruned"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert names.before_reply(LISTING, "/bundles") is True  # the prune asked again, done now
        status = names.status()
        assert status["late"] == 2 and status["pruned"] == 2
    finally:
        release.set()
        names.stop()



def test_a_negative_bound_is_refused_before_anything_is_mounted(tmp_path):
    mountpoint = tmp_path / "m"
    mountpoint.mkdir()
    result = subprocess.run([sys.executable, "-m", "hcafs", "mount", str(mountpoint),
                             "--kernel-entries", "-1", "--cache-dir", str(tmp_path / "c")],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "XDG_RUNTIME_DIR": str(tmp_path / "run")})
    assert result.returncode == 2
    assert "--kernel-entries cannot be negative" in result.stderr
    assert not os.path.ismount(mountpoint) and not (tmp_path / "c").exists()
