"""``hcafs mount``: preflight checks, then the daemon, in the foreground or as a child.

``hcafs mount`` checks everything it can before mounting (``/dev/fuse``, libfuse3,
``fusermount3``, the mountpoint, the server and the token) and fails with a one-line reason.
By default it then starts the daemon as a child process (``--foreground`` in a new session,
its output going to the log file) and returns once the daemon reports that the filesystem
is mounted, or prints the daemon's reason for failing.
"""

from __future__ import annotations

import ctypes.util
import errno
import logging
import os
import re
import select
import signal
import stat
import subprocess
import sys
import time

from ..config import MountConfig, ensure_runtime_dir, private_dir
from ..errors import Busy, ConfigError, HcafsError, NotFound

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
    # First, from the mount table: a stat of a dead FUSE mount fails (ENOTCONN), or is
    # answered from what the kernel cached, so it tells neither "missing" nor "mounted".
    fstype = mounted_type(path)
    if fstype is not None:
        if fstype == "fuse.hcafs" and _dead(path):
            raise Busy(f"mountpoint {path} holds a dead hcafs mount (its daemon is gone); "
                       f"run `hcafs umount {path}` (or `fusermount3 -u {path}`), then mount "
                       "again: written files are kept in the cache dir and resume")
        raise Busy(f"mountpoint {path} is busy: something is already mounted there "
                   f"({fstype})")
    if not os.path.exists(path):
        raise NotFound(f"mountpoint {path} does not exist (mkdir -p {path})")
    if not os.path.isdir(path):
        raise ConfigError(f"mountpoint {path} is not a directory")
    if os.path.ismount(path):
        raise Busy(f"mountpoint {path} is busy: something is already mounted there")
    return path


def mounted_type(path: str) -> str | None:
    """The filesystem type mounted at ``path`` (``/proc/self/mountinfo``), or None."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as table:
            lines = table.read().splitlines()
    except OSError:
        return None
    found = None
    for line in lines:  # the last mount at a point is the one on top
        fields, _, rest = line.partition(" - ")
        parts = fields.split()
        if len(parts) >= 5 and _unescape(parts[4]) == path and rest.split():
            found = rest.split()[0]
    return found


def _unescape(field: str) -> str:
    """Mount table fields write space, tab, newline and backslash as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _dead(path: str) -> bool:
    """A FUSE mount whose daemon is gone answers every request with ENOTCONN."""
    try:
        os.listdir(path)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def check_private_dirs(config: MountConfig) -> None:
    """The cache dir and the runtime dir: this user's alone (0700), or a clear refusal."""
    private_dir(config.cache_dir, "the cache dir")
    ensure_runtime_dir()


def open_log(path: str) -> int:
    """The daemon log, appended to; 0600 whatever the umask (it names paths and servers)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    if os.fstat(fd).st_mode & 0o077:
        os.fchmod(fd, 0o600)
    return fd


# ---------------------------------------------------------------- mount


def mount(config: MountConfig, argv: list[str]) -> int:
    """``hcafs mount``: run in the foreground, or start the daemon and wait for it."""
    config.validate()
    check_fuse()
    check_mountpoint(config.mountpoint)
    check_private_dirs(config)
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
    log_fd = open_log(log_file)
    try:
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log_fd,
                                 stderr=log_fd, pass_fds=(write_end,), env=env,
                                 start_new_session=True)
    finally:
        os.close(log_fd)
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
    from .daemon import Daemon  # here, not at the top: ``hcafs mount`` only spawns it

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


