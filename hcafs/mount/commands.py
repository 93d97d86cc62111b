"""``hcafs umount``, ``refresh``, ``commit`` and ``status``: commands on a running mount.

They talk to the mount through the filesystem itself (xattrs) and read its journal directly
(``status`` and the drain before ``umount`` need no daemon); the runtime record says where.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time

from ..cache.cachedb import CacheDB
from ..cache.journal import IMPORTS_ACTIVE, Journal
from ..cache.listing import listing_progress
from ..config import runtime_dir
from ..errors import Busy, NotFound, RemoteError, Unreachable, UsageError
from ..processes import pid_alive
from .launch import mounted_type
from .records import MountRecord

REFUSALS_SHOWN = 5

# ---------------------------------------------------------------- umount, refresh


def _journal(cache_dir: str) -> Journal:
    return Journal(CacheDB(os.path.join(cache_dir, "hcafs.db")))


class Progress:
    """One status line that changes: redrawn in place on a terminal; on a pipe or a file,
    each new state is a whole line of its own, so ``hcafs umount ... | cat`` and logs read
    line by line."""

    WIDTH = 150

    def __init__(self, out=None):
        self.out = out or sys.stderr
        self.tty = bool(getattr(self.out, "isatty", lambda: False)())
        self.shown = ""

    def show(self, line: str) -> None:
        line = line[:self.WIDTH]
        if line == self.shown:
            return
        if self.tty:
            print("\r" + line.ljust(len(self.shown)), end="", file=self.out, flush=True)
        else:
            print(line, file=self.out, flush=True)
        self.shown = line

    def end(self) -> None:
        """Close the line (on a terminal) before anything else is printed."""
        if self.shown and self.tty:
            print(file=self.out, flush=True)
        self.shown = ""


def drain(record: MountRecord, timeout: float | None, out=None) -> bool:
    """Wait until nothing is left to sync or commit; True if drained."""
    journal = _journal(record.cache_dir)
    deadline = None if not timeout else time.monotonic() + timeout
    progress = Progress(out)
    while True:
        summary = journal.summary()
        imports = sum(n for state, n in summary["imports"].items()
                      if state in IMPORTS_ACTIVE)
        if not summary["pending_files"] and not summary["commits_pending"] and not imports:
            progress.end()
            return True
        if not pid_alive(record.pid):
            progress.end()
            return False
        line = (f"waiting for {summary['pending_files']} files "
                f"({_size(summary['pending_bytes'])}) and {summary['commits_pending']} "
                f"commits to reach the server"
                + (f", {imports} DRS imports to finish" if imports else ""))
        if summary["errors"]:
            line += f"; last error: {summary['errors'][-1]['error']}"
        progress.show(line)
        if deadline is not None and time.monotonic() > deadline:
            progress.end()
            return False
        time.sleep(0.2)


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
    # The mount table, not a stat: a dead mount answers a stat with ENOTCONN (or from what
    # the kernel cached), and it still has to be unmounted.
    mounted = mounted_type(path) is not None
    try:
        record = MountRecord.load(path)
    except NotFound:
        if not mounted:
            raise
    alive = record is not None and pid_alive(record.pid)
    if record is not None and not alive:
        print(f"the hcafs daemon of {path} (pid {record.pid}) is gone; unmounting what it "
              "left", file=sys.stderr)
    if alive and wait:
        _journal(record.cache_dir).sync_now()  # drain now, not after the write-back delay
    if alive and wait and not drain(record, wait_timeout):
        raise Busy(f"{path}: files are still waiting to sync (see `hcafs status {path}`); "
                   "unmount anyway with --no-wait, they resume at the next mount")
    if record is not None and (not wait or not alive):
        summary = _journal(record.cache_dir).summary()
        if summary["pending_files"] or summary["commits_pending"]:
            print(f"leaving {summary['pending_files']} files "
                  f"({_size(summary['pending_bytes'])}) and {summary['commits_pending']} "
                  f"commits queued in {record.cache_dir}; they resume at the next mount",
                  file=sys.stderr)
    if mounted:
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
        if exc.errno == errno.EBUSY:
            raise Busy("the listing is taking long; it goes on refreshing in the "
                       "background") from exc
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
    progress = Progress()
    glitches = 0
    while True:
        try:
            if os.path.islink(path):  # committed: NAME now links to <uuid>.<version>
                fqid = os.readlink(path)
                progress.end()
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
            progress.end()
            raise RemoteError(f"commit refused: {summary['error']} (the pending bundle is "
                              "kept; fix the cause and commit again)")
        line = (f"committing: {summary['waiting_files']} files "
                f"({_size(summary['waiting_bytes'])}) still to sync")
        held = summary.get("open_for_writing") or []
        if held:
            line += (f"; waiting for {held[0]}" + (f" and {len(held) - 1} more" if len(held) > 1
                                                   else "") + " to be closed")
        problems = summary.get("file_errors") or ([summary["error"]] if summary.get("error")
                                                  else [])
        if problems:
            line += f"; retrying after: {problems[-1]}"
        progress.show(line)
        if deadline is not None and time.monotonic() > deadline:
            progress.end()
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
    terminal = sys.stdout.isatty()
    while True:
        reports = []
        for record in records:
            journal = _journal(record.cache_dir)
            summary = journal.summary()
            summary.update(mountpoint=record.mountpoint, server=record.dss_url,
                           pid=record.pid, running=pid_alive(record.pid),
                           refusals=journal.cachedb.refusals(REFUSALS_SHOWN),
                           listing=listing_progress(journal.cachedb))
            reports.append(summary)
        if as_json:
            print(json.dumps(reports if not mountpoint else reports[0], indent=2), flush=True)
        else:
            if watch and terminal:  # a pipe gets each report whole, one after the other
                print("\033[2J\033[H", end="")
            for report in reports:
                print(_render(report), flush=True)
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
    if not report["running"]:
        lines.append(f"  the daemon is gone: `hcafs umount {report['mountpoint']}`, then mount "
                     "again; what is pending resumes")
    listing = report.get("listing")
    if listing:
        so_far = " listed so far" if listing["state"] != "complete" else ""
        lines.append(f"  listing: {listing['state']}, {listing['versions']:,} bundle "
                     f"versions{so_far}")
    for item in report["in_flight"]:
        lines.append(f"  {item['state']:<11} {_bar(item['sent'], item['size'])} "
                     f"{_size(item['sent'])}/{_size(item['size'])}  "
                     f"{item['bundle']}/{item['path']}")
    for bundle in report["bundles"]:
        detail = bundle["fqid"] or bundle["error"] or ""
        lines.append(f"  bundle {bundle['name']}: {bundle['state']} {detail}".rstrip())
    if report.get("imports"):
        items = report.get("import_items") or {}
        lines.append("  DRS imports: " + ", ".join(f"{items.get(state, 0)} {state}" for state
                                                 in ("queued", "submitted", "landed",
                                                     "failed")))
    for job in report.get("import_jobs", []):
        # landed/failed count the server's results: a DRS bundle's members each have one
        lines.append(f"  import job {job['id']}: {job['state']}, {job['items']} items: "
                     f"{job['landed']} landed, {job['failed']} failed"
                     + (f", {job['waiting']} to apply" if job["waiting"] else ""))
    for error in report.get("import_errors", []):
        lines.append(f"  import error {error['bundle']}/{error['path']}: {error['error']}")
    for error in report["errors"]:
        lines.append(f"  error {error['bundle']}/{error['path']} (attempt "
                     f"{error['attempts']}): {error['error']}")
    for refusal in report.get("refusals", []):
        when = time.strftime("%H:%M:%S", time.localtime(refusal["at"]))
        lines.append(f"  refused {when} {refusal['operation']} {refusal['path']}: "
                     f"{refusal['errno']} {refusal['reason']}")
    return "\n".join(lines)
