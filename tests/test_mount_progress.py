"""Progress output off a terminal: ``hcafs umount`` and ``hcafs status --watch`` write whole
lines when their output is a pipe (no carriage returns, no screen clearing)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from fixtures.hcafs_mount import Mount, needs_fuse

pytestmark = needs_fuse


def test_umount_and_status_watch_write_whole_lines_to_a_pipe(tmp_path):
    env = {"XDG_DATA_HOME": str(tmp_path / "data"), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    mount = Mount(str(tmp_path), None, env=env, args=["--write-back-delay", "3"])
    mount.start()
    try:
        os.mkdir(Path(mount.path) / "bundles" / "piped")
        (Path(mount.path) / "bundles" / "piped" / "a.txt").write_text("a\n")
        watch = subprocess.Popen([sys.executable, "-m", "hcafs", "status", "--watch",
                                  mount.path], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 env={**os.environ, **mount.env})
        time.sleep(2.5)
        watch.terminate()
        watched, _ = watch.communicate(timeout=30)
        assert b"\x1b[" not in watched
        assert watched.count(b"pending: 1 files") >= 2, watched  # one whole report a second
        # `hcafs umount MOUNT 2>&1 | cat`
        result = subprocess.run(f"{sys.executable} -m hcafs umount {mount.path} 2>&1 | cat",
                                shell=True, capture_output=True, env={**os.environ, **mount.env},
                                timeout=120)
        assert result.returncode == 0
        text = result.stdout.decode()
        assert "\r" not in text
        lines = text.splitlines()
        assert lines[0].startswith("waiting for 1 files"), text
        assert all(line.startswith(("waiting for ", "unmounted ")) for line in lines), text
        assert lines[-1] == f"unmounted {mount.path}"
    finally:
        mount.stop()
