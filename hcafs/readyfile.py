"""Starting ``hcafs serve`` as a child and waiting until it listens.

``hcafs serve --ready-file FILE`` writes ``{url, pid, tokens_file}`` to FILE (atomically)
once it accepts connections.  :func:`start_server` is the one way hcafs starts a server and
waits for that file: the mount's embedded server, the tests' servers and the benchmarks'
all go through it.  :func:`wait_for` is the polling loop under it, also used to wait for a
mount to appear.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence


class NotReady(RuntimeError):
    """The process exited, or the time ran out, before it was ready."""


def wait_for(check: Callable[[], bool], timeout: float, what: str,
             process: subprocess.Popen | None = None, interval: float = 0.05) -> None:
    """Poll ``check`` until it is true; :class:`NotReady` if ``process`` exits first or
    ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while not check():
        if process is not None and process.poll() is not None:
            raise NotReady(f"waiting for {what}: the process exited {process.returncode}")
        if time.monotonic() > deadline:
            raise NotReady(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def start_server(args: Sequence[str], ready_file: str, *, log_path: str | None = None,
                 env: Mapping[str, str] | None = None, timeout: float = 30.0,
                 python: str = sys.executable, **popen) -> tuple[subprocess.Popen, dict]:
    """Run ``python -m hcafs serve --ready-file READY_FILE ARGS...`` and wait until it is
    listening; returns the process and what it wrote to the ready file.

    Output goes to ``log_path`` (appended) or nowhere.  If the server exits or does not get
    ready in time it is stopped and :class:`NotReady` is raised (its log says why).
    """
    if os.path.exists(ready_file):
        os.unlink(ready_file)
    command = [python, "-m", "hcafs", "serve", "--ready-file", ready_file, *args]
    with open(log_path or os.devnull, "ab") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT,
                                   env=None if env is None else dict(env), **popen)
    try:
        wait_for(lambda: os.path.exists(ready_file), timeout, "the server to listen", process)
    except NotReady:
        stop(process)
        raise
    with open(ready_file) as handle:
        return process, json.load(handle)


def stop(process: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM the process (by its PID), SIGKILL it if it does not exit in time."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
