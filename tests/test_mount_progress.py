"""Progress output off a terminal: ``hcafs umount`` and ``hcafs status --watch`` write whole
lines when their output is a pipe (no carriage returns, no screen clearing)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from fixtures.hcafs_mount import Mount, needs_fuse

pytestmark = needs_fuse


def _piped(command: str, env: dict) -> subprocess.CompletedProcess:
    """``COMMAND 2>&1 | cat``: what a user sees through a pipe."""
    return subprocess.run(f"{command} 2>&1 | cat; exit ${{PIPESTATUS[0]}}", shell=True,
                          executable="/bin/bash", capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the embedded server is a supervisor with workers)."""
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True
                              ).stdout.split()
    return [pid, *(p for child in children for p in _tree(int(child)))]


def _signal(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def test_umount_and_status_watch_write_whole_lines_to_a_pipe(tmp_path):
    env = {"XDG_DATA_HOME": str(tmp_path / "data"), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    mount = Mount(str(tmp_path), None, env=env, args=["--write-back-delay", "0.2"])
    mount.start()
    server = None
    try:
        record = next((Path(mount.env["XDG_RUNTIME_DIR"]) / "hcafs").glob("*.json"))
        daemon = json.loads(record.read_text())["pid"]
        server = _tree(int(subprocess.run(["pgrep", "-P", str(daemon)], capture_output=True,
                                          text=True, check=True).stdout.split()[0]))
        _signal(server, signal.SIGSTOP)  # the embedded server: nothing can sync now
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

        waited = _piped(f"{sys.executable} -m hcafs umount --timeout 2 {mount.path}",
                        mount.env)
        assert waited.returncode != 0  # the queue could not drain
        assert "\r" not in waited.stdout
        lines = waited.stdout.splitlines()
        assert lines[0].startswith("waiting for 1 files"), waited.stdout
        assert lines[-1].startswith("hcafs umount: ") and "still waiting" in lines[-1]
        assert all(line.startswith("waiting for ") for line in lines[:-1]), waited.stdout

        _signal(server, signal.SIGCONT)
        server = None
        done = _piped(f"{sys.executable} -m hcafs umount {mount.path}", mount.env)
        assert done.returncode == 0, done.stdout
        assert "\r" not in done.stdout
        lines = done.stdout.splitlines()
        assert lines[-1] == f"unmounted {mount.path}"
        assert all(line.startswith("waiting for ") for line in lines[:-1]), done.stdout
    finally:
        if server is not None:
            _signal(server, signal.SIGCONT)
        mount.stop()
