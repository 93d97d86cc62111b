"""``hcafs mount`` and ``hcafs umount``: checks, the embedded server, the daemon.

``hcafs mount`` checks everything it can before mounting (``/dev/fuse``, libfuse3,
``fusermount3``, the mountpoint, the server and the token) and fails with a one-line reason.
By default it then starts the daemon as a child process (``--foreground`` in a new session,
its output going to the log file) and returns once the daemon reports that the filesystem
is mounted, or prints the daemon's reason for failing.

A running mount leaves ``RUNTIME_DIR/<hash of mountpoint>.json`` (pid, cache dir, log file,
server URL) so that ``umount``, ``refresh`` and ``status`` can find it.
"""

from __future__ import annotations

import ctypes.util
import errno
import hashlib
import json
import logging
import os
import select
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass

from ..config import MountConfig, runtime_dir
from ..errors import (
    Busy,
    ConfigError,
    HcafsError,
    NotFound,
    RemoteError,
    Unreachable,
    UsageError,
)

log = logging.getLogger("hcafs.mount")

READY_TIMEOUT = 60.0


# ---------------------------------------------------------------- preflight


def check_fuse() -> None:
    """FUSE is usable here: the device, the library and the setuid helper."""
    try:
        mode = os.stat("/dev/fuse").st_mode
    except FileNotFoundError:
        mode = 0
    if not stat.S_ISCHR(mode):
        raise ConfigError("/dev/fuse is missing: this machine (or container) has no FUSE "
                          "device; load the fuse module or pass --device /dev/fuse")
    library = os.environ.get("FUSE_LIBRARY_PATH")
    if library and not os.path.exists(library):
        raise ConfigError(f"libfuse3 not found at FUSE_LIBRARY_PATH={library}; "
                          "install it with: apt-get install fuse3")
    if not library and ctypes.util.find_library("fuse3") is None:
        raise ConfigError("libfuse3 is not installed; install it with: apt-get install fuse3")
    if not any(os.access(os.path.join(d, "fusermount3"), os.X_OK)
               for d in os.environ.get("PATH", "/usr/bin:/bin").split(":")):
        raise ConfigError("fusermount3 is missing; install it with: apt-get install fuse3")


def check_mountpoint(path: str) -> str:
    path = os.path.abspath(path)
    if not os.path.exists(path):
        raise NotFound(f"mountpoint {path} does not exist (mkdir -p {path})")
    if not os.path.isdir(path):
        raise ConfigError(f"mountpoint {path} is not a directory")
    if os.path.ismount(path):
        raise Busy(f"mountpoint {path} is busy: something is already mounted there")
    return path


# ---------------------------------------------------------------- runtime records


@dataclass(frozen=True)
class MountRecord:
    mountpoint: str
    pid: int
    cache_dir: str
    log_file: str
    dss_url: str

    @staticmethod
    def path_for(mountpoint: str) -> str:
        digest = hashlib.sha256(os.path.abspath(mountpoint).encode()).hexdigest()[:16]
        return os.path.join(runtime_dir(), f"{digest}.json")

    def save(self) -> None:
        path = self.path_for(self.mountpoint)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        with open(path + ".tmp", "w") as handle:
            json.dump(self.__dict__, handle)
        os.replace(path + ".tmp", path)

    @classmethod
    def load(cls, mountpoint: str) -> MountRecord:
        try:
            with open(cls.path_for(mountpoint)) as handle:
                return cls(**json.load(handle))
        except FileNotFoundError as exc:
            raise NotFound(f"no hcafs mount at {os.path.abspath(mountpoint)}") from exc

    def remove(self) -> None:
        try:
            os.unlink(self.path_for(self.mountpoint))
        except FileNotFoundError:
            pass


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------- mount


def mount(config: MountConfig, argv: list[str]) -> int:
    """``hcafs mount``: run in the foreground, or start the daemon and wait for it."""
    config.validate()
    check_fuse()
    check_mountpoint(config.mountpoint)
    if config.foreground:
        return run_daemon(config, ready_fd=None)
    return _spawn(config, argv)


def _spawn(config: MountConfig, argv: list[str]) -> int:
    read_end, write_end = os.pipe()
    log_file = config.log_file or os.path.join(config.cache_dir, "hcafs.log")
    os.makedirs(os.path.dirname(log_file), exist_ok=True)
    env = dict(os.environ)
    child_argv = _without_token(argv)
    if config.token:
        env["HCAFS_TOKEN"] = config.token  # never on a command line
    command = [sys.executable, "-m", "hcafs", *child_argv[:1], "--foreground",
               "--ready-fd", str(write_end), *child_argv[1:]]
    with open(log_file, "ab") as log_handle:
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log_handle,
                                 stderr=log_handle, pass_fds=(write_end,), env=env,
                                 start_new_session=True)
    os.close(write_end)
    message = _read_ready(read_end, child)
    if message.startswith("OK "):
        print(message[3:], file=sys.stderr)
        return 0
    if message.startswith("ERR "):
        code, _, text = message[4:].partition(" ")
        print(f"hcafs mount: {text}", file=sys.stderr)
        return int(code) if code.isdigit() else 1
    print(f"hcafs mount: the daemon exited before mounting; see {log_file}:", file=sys.stderr)
    print(_tail(log_file), file=sys.stderr)
    return 1


def _without_token(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--token":
            skip = True
            continue
        if arg.startswith("--token="):
            continue
        out.append(arg)
    return out


def _read_ready(fd: int, child: subprocess.Popen) -> str:
    """The daemon's first line on the pipe ("" if it exited without one)."""
    deadline = time.monotonic() + READY_TIMEOUT
    data = b""
    with os.fdopen(fd, "rb", buffering=0) as pipe:
        while time.monotonic() < deadline:
            readable, _, _ = select.select([pipe], [], [], 0.5)
            if not readable:
                continue
            chunk = pipe.read(4096)
            if not chunk:  # every write end closed: the daemon is gone
                return data.decode(errors="replace")
            data += chunk
            if b"\n" in data:
                return data.split(b"\n", 1)[0].decode(errors="replace")
    child.send_signal(signal.SIGTERM)
    return "ERR 1 the daemon did not report ready in time"


def _tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as handle:
            return "".join(handle.readlines()[-lines:]).rstrip()
    except OSError:
        return ""


class _Ready:
    """The daemon's one-line report to the waiting ``hcafs mount`` (if any)."""

    def __init__(self, fd: int | None):
        self.fd = fd

    def send(self, line: str) -> None:
        if self.fd is None:
            print(line.split(" ", 1)[1] if line.startswith("OK ") else line, file=sys.stderr)
            return
        try:
            os.write(self.fd, (line + "\n").encode())
            os.close(self.fd)
        except OSError:
            pass
        self.fd = None


def run_daemon(config: MountConfig, ready_fd: int | None) -> int:
    """Mount and serve until unmounted.  Reports OK/ERR through ``ready_fd``."""
    from .daemon import Daemon

    ready = _Ready(ready_fd)
    os.chdir("/")  # every path in config is absolute; do not pin the caller's directory
    try:
        daemon = Daemon(config)
        daemon.prepare()
    except HcafsError as exc:
        ready.send(f"ERR {exc.exit_code} {exc}")
        log.error("%s", exc)
        return exc.exit_code
    return daemon.serve(ready)


# ---------------------------------------------------------------- umount, refresh


def _journal(cache_dir: str):
    from ..cache.cachedb import CacheDB
    from ..cache.journal import Journal

    return Journal(CacheDB(os.path.join(cache_dir, "hcafs.db")))


def drain(record: MountRecord, timeout: float | None, out=sys.stderr) -> bool:
    """Wait until nothing is left to sync or commit; True if drained."""
    journal = _journal(record.cache_dir)
    deadline = None if not timeout else time.monotonic() + timeout
    shown = ""
    while True:
        summary = journal.summary()
        imports = sum(n for state, n in summary["imports"].items()
                      if state in ("queued", "submitting", "submitted"))
        if not summary["pending_files"] and not summary["commits_pending"] and not imports:
            if shown:
                print(file=out)
            return True
        if not pid_alive(record.pid):
            return False
        line = (f"waiting for {summary['pending_files']} files "
                f"({_size(summary['pending_bytes'])}) and {summary['commits_pending']} "
                f"commits to reach the server"
                + (f", {imports} DRS imports to finish" if imports else ""))
        if summary["errors"]:
            line += f"; last error: {summary['errors'][-1]['error']}"
        if line != shown:
            print("\r" + line[:150].ljust(len(shown)), end="", file=out, flush=True)
            shown = line[:150]
        if deadline is not None and time.monotonic() > deadline:
            print(file=out)
            return False
        time.sleep(0.5)


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return str(count)


def umount(mountpoint: str, lazy: bool = False, timeout: float = 60.0, wait: bool = True,
           wait_timeout: float | None = None) -> int:
    path = os.path.abspath(mountpoint)
    record = None
    try:
        record = MountRecord.load(path)
    except NotFound:
        if not os.path.ismount(path):
            raise
    if record is not None and wait and not drain(record, wait_timeout):
        raise Busy(f"{path}: files are still waiting to sync (see `hcafs status {path}`); "
                   "unmount anyway with --no-wait, they resume at the next mount")
    if record is not None and not wait:
        summary = _journal(record.cache_dir).summary()
        if summary["pending_files"] or summary["commits_pending"]:
            print(f"leaving {summary['pending_files']} files "
                  f"({_size(summary['pending_bytes'])}) and {summary['commits_pending']} "
                  f"commits queued in {record.cache_dir}; they resume at the next mount",
                  file=sys.stderr)
    if os.path.ismount(path):
        command = ["fusermount3", "-u", *(["-z"] if lazy else []), path]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            reason = result.stderr.strip() or f"fusermount3 exited {result.returncode}"
            if "busy" in reason.lower():
                raise Busy(f"{path} is busy (a process is using it); close it or use --lazy")
            raise UsageError(reason)
    if record is not None:
        deadline = time.monotonic() + timeout
        while pid_alive(record.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(record.pid):
            raise Busy(f"the hcafs daemon (pid {record.pid}) is still running")
        record.remove()
    print(f"unmounted {path}", file=sys.stderr)
    return 0


def refresh(mountpoint: str) -> int:
    path = os.path.abspath(mountpoint)
    if not os.path.ismount(path):
        raise NotFound(f"{path} is not mounted")
    try:
        os.setxattr(path, "user.hcafs.refresh", b"1")
    except OSError as exc:
        raise Unreachable(f"refresh failed: {os.strerror(exc.errno)}") from exc
    print(f"refreshed {path}", file=sys.stderr)
    return 0


def commit(path: str, timeout: float | None) -> int:
    """``hcafs commit MOUNT/bundles/NAME``: request the commit, then follow it to the end."""
    path = os.path.abspath(path)
    try:
        if not os.path.islink(path):  # a link: committed already
            os.setxattr(path, "user.hcafs.commit", b"1", follow_symlinks=False)
    except OSError as exc:
        if os.path.islink(path):  # committed in the meantime
            print(os.readlink(path))
            return 0
        reasons = {errno.ENOENT: f"{path} does not exist",
                   errno.EINVAL: f"nothing to commit in {path} (no files)",
                   errno.EROFS: f"{path} is not a pending bundle",
                   errno.ENOTSUP: f"{path} is not on an hcafs mount"}
        raise UsageError(reasons.get(exc.errno, f"{path}: {os.strerror(exc.errno)}")) from exc
    deadline = None if not timeout else time.monotonic() + timeout
    shown = ""
    glitches = 0
    while True:
        try:
            if os.path.islink(path):  # committed: NAME now links to <uuid>.<version>
                fqid = os.readlink(path)
                if shown:
                    print(file=sys.stderr)
                print(fqid)
                return 0
            state = os.getxattr(path, "user.hcafs.state", follow_symlinks=False).decode()
            summary = json.loads(os.getxattr(path, "user.hcafs.status",
                                             follow_symlinks=False))
        except OSError as exc:
            # When the pending directory turns into a symlink the kernel may fail one call
            # on the old inode (EIO/ESTALE) before it looks the name up again.
            glitches += 1
            if glitches > 20 or exc.errno not in (errno.EIO, errno.ESTALE, errno.ENODATA):
                raise Unreachable(f"lost track of {path}: {os.strerror(exc.errno)}") from exc
            time.sleep(0.1)
            continue
        if state == "open" and summary.get("error"):
            if shown:
                print(file=sys.stderr)
            raise RemoteError(f"commit refused: {summary['error']} (the pending bundle is "
                              "kept; fix the cause and commit again)")
        line = (f"committing: {summary['waiting_files']} files "
                f"({_size(summary['waiting_bytes'])}) still to sync")
        problems = summary.get("file_errors") or ([summary["error"]] if summary.get("error")
                                                  else [])
        if problems:
            line += f"; retrying after: {problems[-1]}"
        if line != shown:
            print("\r" + line[:150].ljust(len(shown)), end="", file=sys.stderr, flush=True)
            shown = line[:150]
        if deadline is not None and time.monotonic() > deadline:
            print(file=sys.stderr)
            raise RemoteError(f"commit of {path} not done after {timeout:.0f}s; it stays "
                              "queued and completes in the background")
        time.sleep(0.3)


def status(mountpoint: str | None, as_json: bool, watch: bool) -> int:
    """``hcafs status``: what is still on its way, read from the journal (no daemon needed)."""
    if mountpoint:
        records = [MountRecord.load(mountpoint)]
    else:
        folder = runtime_dir()
        records = []
        for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            if name.endswith(".json"):
                with open(os.path.join(folder, name)) as handle:
                    records.append(MountRecord(**json.load(handle)))
        if not records:
            raise NotFound("no hcafs mounts are running")
    while True:
        reports = []
        for record in records:
            summary = _journal(record.cache_dir).summary()
            summary.update(mountpoint=record.mountpoint, server=record.dss_url,
                           pid=record.pid, running=pid_alive(record.pid))
            reports.append(summary)
        if as_json:
            print(json.dumps(reports if not mountpoint else reports[0], indent=2))
        else:
            if watch:
                print("\033[2J\033[H", end="")
            for report in reports:
                print(_render(report))
        if not watch:
            return 0
        time.sleep(1)


def _bar(done: int, total: int, width: int = 24) -> str:
    filled = width if not total else int(width * min(done, total) / total)
    return "[" + "#" * filled + "." * (width - filled) + "]"


def _render(report: dict) -> str:
    lines = [f"{report['mountpoint']}  ({report['server']}, "
             f"{'running' if report['running'] else 'NOT RUNNING'})",
             f"  pending: {report['pending_files']} files, {_size(report['pending_bytes'])}"]
    for item in report["in_flight"]:
        lines.append(f"  {item['state']:<11} {_bar(item['sent'], item['size'])} "
                     f"{_size(item['sent'])}/{_size(item['size'])}  "
                     f"{item['bundle']}/{item['path']}")
    for bundle in report["bundles"]:
        detail = bundle["fqid"] or bundle["error"] or ""
        lines.append(f"  bundle {bundle['name']}: {bundle['state']} {detail}".rstrip())
    if report.get("imports"):
        lines.append("  DRS imports: " + ", ".join(f"{n} {state}" for state, n in
                                                 sorted(report["imports"].items())))
    for error in report.get("import_errors", []):
        lines.append(f"  import error {error['bundle']}/{error['path']}: {error['error']}")
    for error in report["errors"]:
        lines.append(f"  error {error['bundle']}/{error['path']} (attempt "
                     f"{error['attempts']}): {error['error']}")
    return "\n".join(lines)
