"""Processes the benchmark starts and always stops: the server, mounts, timed commands.

Everything started here is registered with a :class:`Cleanup` the moment it exists, and
``Cleanup.run`` (called from a ``finally``) unmounts every mount (``hcafs umount``, then
``fusermount3 -u -z``) and stops every process by its PID, so an aborted run leaves
nothing behind.  Children get a private ``XDG_RUNTIME_DIR``/``XDG_CONFIG_HOME`` under the
work dir and no ``HCAFS_*`` variables, so a user's config cannot leak into a figure.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from hcafs import readyfile
from hcafs.processes import pid_alive

PYTHON = sys.executable
MiB = 1024 * 1024


class BenchError(Exception):
    """A step of the benchmark could not be carried out."""


# ---------------------------------------------------------------- environment


def child_env(work: str) -> dict[str, str]:
    """The environment of every child: private XDG dirs, no HCAFS_* settings, C locale."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HCAFS_")}
    for kind in ("runtime", "config", "cache", "data"):
        path = os.path.join(work, "xdg", kind)
        os.makedirs(path, mode=0o700, exist_ok=True)
        env[f"XDG_{kind.upper()}_HOME" if kind != "runtime" else "XDG_RUNTIME_DIR"] = path
    env["LC_ALL"] = "C"
    return env


# ---------------------------------------------------------------- caches


def can_drop_caches() -> bool:
    return os.access("/proc/sys/vm/drop_caches", os.W_OK)


def drop_caches() -> bool:
    """``sync; echo 3 > /proc/sys/vm/drop_caches``; False when not allowed (not root)."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as handle:
            handle.write("3\n")
    except OSError:
        return False
    return True


# ---------------------------------------------------------------- figures


@dataclass
class Runs:
    """Repeated measurements of one thing, in one unit."""

    unit: str
    values: list[float] = field(default_factory=list)

    def add(self, value: float) -> float:
        self.values.append(value)
        return value

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    def spread(self, digits: int = 2) -> str:
        """``median (min–max, n runs)`` for a table cell."""
        if not self.values:
            return "n/a"
        fmt = f"{{:.{digits}f}}"
        if len(self.values) == 1:
            return f"{fmt.format(self.values[0])} {self.unit} (1 run)"
        return (f"{fmt.format(self.median)} {self.unit} ({fmt.format(min(self.values))}–"
                f"{fmt.format(max(self.values))}, {len(self.values)} runs)")

    def as_dict(self) -> dict:
        return {"unit": self.unit, "values": self.values, "median": self.median}


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """What changed between two snapshots of callback counts (zeros left out)."""
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def timed(command: Sequence[str], env: dict[str, str], timeout: float) -> float:
    """Seconds ``command`` took (stdout to /dev/null); BenchError if it failed."""
    started = time.perf_counter()
    try:
        result = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env=env, timeout=timeout, text=True)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{' '.join(command)} took longer than {timeout:.0f} s") from exc
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise BenchError(f"{' '.join(command)} exited {result.returncode}: "
                         f"{result.stderr.strip()[-500:]}")
    return elapsed


def dd_read(path: str, env: dict[str, str], timeout: float = 300) -> float:
    """Seconds for ``dd if=path of=/dev/null bs=1M``."""
    return timed(["dd", f"if={path}", "of=/dev/null", "bs=1M", "status=none"], env, timeout)


# ---------------------------------------------------------------- cleanup


class Cleanup:
    """What must be undone however the run ends: mounts first, then processes."""

    def __init__(self, env: dict[str, str]):
        self.env = env
        self.mounts: list[str] = []
        self.pids: list[int] = []  # mount daemons started by `hcafs mount`
        self.daemons: list[subprocess.Popen] = []  # mount daemons we started directly
        self.processes: list[subprocess.Popen] = []  # the servers
        self.stoppers: list[Callable[[], None]] = []  # other things to stop (SeaweedFS)

    def unmount_and_stop_daemons(self) -> list[str]:
        """Unmount every mount and stop every mount daemon (the server keeps running)."""
        problems = []
        for mountpoint in reversed(self.mounts):
            if not unmount(mountpoint, self.env):
                problems.append(f"{mountpoint} is still mounted")
        self.mounts.clear()
        for pid in self.pids:
            stop_pid(pid)
        self.pids.clear()
        for process in self.daemons:
            stop_process(process)
        self.daemons.clear()
        return problems

    def run(self) -> list[str]:
        """Undo everything; returns what could not be undone (for the log)."""
        problems = self.unmount_and_stop_daemons()
        for process in reversed(self.processes):
            stop_process(process)
        self.processes.clear()
        for stop in reversed(self.stoppers):
            try:
                stop()
            except Exception as exc:  # noqa: BLE001  (keep stopping the rest)
                problems.append(f"stopping {stop}: {exc}")
        self.stoppers.clear()
        return problems


def is_mounted(path: str) -> bool:
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as handle:
        return any(line.split()[4] == path for line in handle)


def unmount(mountpoint: str, env: dict[str, str]) -> bool:
    """``hcafs umount``, falling back to ``fusermount3 -u -z``; True once unmounted."""
    if not is_mounted(mountpoint):
        return True
    subprocess.run([PYTHON, "-m", "hcafs", "umount", mountpoint], env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=90)
    if is_mounted(mountpoint):
        subprocess.run(["fusermount3", "-u", "-z", mountpoint], env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
    return not is_mounted(mountpoint)


def stop_pid(pid: int, grace: float = 15) -> None:
    """SIGTERM a process we started (not our child), then SIGKILL after ``grace`` s."""
    deadline = time.monotonic() + grace
    if pid_alive(pid):
        os.kill(pid, 15)
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if pid_alive(pid):
        os.kill(pid, 9)


def stop_process(process: subprocess.Popen, grace: float = 15) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ---------------------------------------------------------------- the server


@dataclass
class Server:
    url: str
    pid: int
    log_file: str
    process: subprocess.Popen

    def log_lines(self) -> int:
        with open(self.log_file, "rb") as handle:
            return sum(1 for _ in handle)

    def requests_since(self, line: int, needle: str) -> int:
        """Access-log lines after ``line`` that contain ``needle``."""
        with open(self.log_file, errors="replace") as handle:
            return sum(1 for i, text in enumerate(handle) if i >= line and
                       "hcafs.server.access" in text and needle in text)


def start_server(work: str, token: str, cleanup: Cleanup, name: str = "server",
                 env_extra: dict[str, str] | None = None) -> Server:
    """``hcafs serve`` on 127.0.0.1 with an ephemeral port and a bench admin token.

    ``name`` keeps two servers apart (data in ``work/NAME``, staging root in
    ``work/staging`` for the first one, ``work/NAME-staging`` otherwise); ``env_extra`` is
    added to the environment (e.g. the SeaweedFS ``AWS_*`` variables for ``s3://`` sources).
    """
    data = os.path.join(work, name)
    staging = os.path.join(work, "staging" if name == "server" else f"{name}-staging")
    os.makedirs(data, exist_ok=True)
    os.makedirs(staging, exist_ok=True)
    tokens = os.path.join(work, f"tokens-{name}.json")
    with open(tokens, "w") as handle:
        json.dump({token: {"email": "bench@example.org", "groups": ["hca"], "admin": True}},
                  handle)
    ready = os.path.join(work, f"{name}-ready.json")
    log_file = os.path.join(work, "logs", f"{name}.log")
    os.makedirs(os.path.dirname(log_file), exist_ok=True)
    try:
        process, info = readyfile.start_server(
            ["--host", "127.0.0.1", "--port", "0", "--data-dir", data, "--staging-root",
             staging, "--tokens", tokens], ready, log_path=log_file,
            env={**cleanup.env, **(env_extra or {})}, python=PYTHON)
    except readyfile.NotReady as exc:
        raise BenchError(f"{exc}; see {log_file}") from exc
    cleanup.processes.append(process)
    return Server(info["url"], info["pid"], log_file, process)


def wait_for(check: Callable[[], bool], timeout: float, what: str,
             process: subprocess.Popen | None = None, log_file: str = "") -> None:
    try:
        readyfile.wait_for(check, timeout, what, process)
    except readyfile.NotReady as exc:
        raise BenchError(f"{exc}" + (f"; see {log_file}" if log_file else "")) from exc


# ---------------------------------------------------------------- mounts


@dataclass
class Mount:
    """A running mount: where it is, its daemon's PID and how long mounting took."""

    mountpoint: str
    cache_dir: str
    pid: int
    seconds: float

    def peak_rss_mib(self) -> float:
        return _status_kib(self.pid, "VmHWM") / 1024

    def rss_mib(self) -> float:
        return _status_kib(self.pid, "VmRSS") / 1024


def _status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise BenchError(f"no {key} in /proc/{pid}/status")


def record_pid(env: dict[str, str]) -> int:
    """The daemon PID from the single runtime record under $XDG_RUNTIME_DIR/hcafs."""
    folder = os.path.join(env["XDG_RUNTIME_DIR"], "hcafs")
    records = [f for f in os.listdir(folder) if f.endswith(".json")] \
        if os.path.isdir(folder) else []
    if len(records) != 1:
        raise BenchError(f"expected one mount record in {folder}, found {len(records)}")
    with open(os.path.join(folder, records[0])) as handle:
        return int(json.load(handle)["pid"])


def hcafs_mount(mountpoint: str, cache_dir: str, url: str, token_file: str,
                cleanup: Cleanup, timeout: float = 120, args: Sequence[str] = (),
                env_extra: dict[str, str] | None = None) -> Mount:
    """``hcafs mount`` (daemonizes, returns once mounted); the mount is registered first.

    ``args`` are extra mount options; ``env_extra`` is added to the daemon's environment."""
    os.makedirs(mountpoint, exist_ok=True)
    cleanup.mounts.append(mountpoint)
    started = time.perf_counter()
    result = subprocess.run(
        [PYTHON, "-m", "hcafs", "mount", mountpoint, "--dss-url", url, "--token-file",
         token_file, "--cache-dir", cache_dir, *args], env={**cleanup.env, **(env_extra or {})},
        capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - started
    if result.returncode != 0 or not is_mounted(mountpoint):
        raise BenchError(f"hcafs mount exited {result.returncode}: {result.stderr.strip()}")
    pid = record_pid(cleanup.env)
    cleanup.pids.append(pid)
    return Mount(mountpoint, cache_dir, pid, seconds)


def hcafs_umount(mount: Mount, cleanup: Cleanup) -> None:
    if not unmount(mount.mountpoint, cleanup.env):
        raise BenchError(f"could not unmount {mount.mountpoint}")
    cleanup.mounts.remove(mount.mountpoint)
    deadline = time.monotonic() + 30
    while pid_alive(mount.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pid_alive(mount.pid):
        stop_pid(mount.pid)
    cleanup.pids.remove(mount.pid)
