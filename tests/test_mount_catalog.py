"""Real mounts: the listing kept in the cache DB, caught up through ``/v1/events``.

* ``hcafs refresh`` shows creates made through the API and deletes made through a second
  mount.
* A server without ``/events`` (a fault proxy answering 404) is listed whole instead.
* A first listing runs in the background; a ``kill -9`` of the daemon in the middle of it,
  then a remount, ends with a correct, complete listing.
* ``--kernel-entries N``: once a listing has handed the kernel N entries, the kernel is made
  to drop the ones nothing uses, so libfuse frees their nodes (an entry looked up again gets
  a new inode number), while an entry in use keeps its own.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from fixtures.dss_server import ADMIN
from fixtures.faults import Fault
from fixtures.hcafs_mount import Mount, needs_fuse, run_hcafs, wait_until
from fixtures.mounts import unmount_leftovers
from fixtures.worlds import relayed_server

from hcafs.versions import now_version

pytestmark = needs_fuse


@pytest.fixture
def world(tmp_path):
    with relayed_server(tmp_path, ADMIN) as served:
        first, client = served["fqid"], served["client"]
        files = [{"uuid": f["uuid"], "version": f["version"], "name": f["name"],
                  "indexed": f["indexed"]}
                 for f in client.get_bundle(*first.split(".", 1))["files"]]
        yield {**served, "first": first, "files": files}


def _more(world: dict, count: int) -> list[str]:
    made = []
    for _ in range(count):
        bundle, version = str(uuid.uuid4()), now_version()
        status, _ = world["client"].put_bundle(bundle, version, world["files"])
        assert status == 201
        made.append(f"{bundle}.{version}")
    return made


def _listed(mount: Mount) -> list[str]:
    return sorted(os.listdir(Path(mount.path) / "bundles"))


def _status(mount: Mount) -> dict:
    result = run_hcafs("status", "--json", mount.path, env=mount.env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_refresh_shows_api_creates_and_second_mount_deletes(tmp_path, world):
    made = sorted([world["first"], *_more(world, 3)])
    one = Mount(str(tmp_path / "one"), world["proxy"].url, token=ADMIN)
    two = Mount(str(tmp_path / "two"), world["proxy"].url, token=ADMIN)
    with one, two:
        assert _listed(one) == made and _listed(two) == made
        os.rmdir(Path(two.path) / "bundles" / made[0])  # DELETE through the second mount
        assert _listed(two) == made[1:]
        extra = _more(world, 2)  # PUTs through the API
        mark = len(world["proxy"].seen)
        one.refresh()
        assert _listed(one) == sorted([*made[1:], *extra])
        assert not [s for s in world["proxy"].seen[mark:] if "/bundles/all" in s.path]
        two.refresh()
        assert _listed(two) == sorted([*made[1:], *extra])


def test_a_server_without_events_is_listed_whole(tmp_path, world):
    world["proxy"].when(Fault.error(404), path="/v1/events", times=1000)
    made = sorted([world["first"], *_more(world, 2)])
    with Mount(str(tmp_path / "m"), world["proxy"].url, token=ADMIN) as mount:
        assert _listed(mount) == made
        world["client"].delete_bundle(*made[0].split(".", 1), reason="test")
        extra = _more(world, 1)
        mark = len(world["proxy"].seen)
        mount.refresh()
        assert _listed(mount) == sorted([*made[1:], *extra])
        assert [s for s in world["proxy"].seen[mark:] if "/bundles/all" in s.path]


def test_a_daemon_killed_during_the_first_listing_leaves_a_correct_listing(tmp_path, world):
    made = sorted([world["first"], *_more(world, 1099)])  # three pages of 500
    gate = threading.Event()
    world["proxy"].when(Fault(hold=gate), path="search_after", times=1)  # the second page
    mount = Mount(str(tmp_path / "m"), world["proxy"].url, token=ADMIN)
    try:
        mount.start()  # returns with the first page listed
        assert _listed(mount) == made[:500]
        status = _status(mount)
        assert status["listing"] == {"state": "in progress", "versions": 500}
        os.kill(status["pid"], signal.SIGKILL)
        wait_until(lambda: not _alive(status["pid"]), 30, "the daemon to die")
        gate.set()
        unmount_leftovers([Path(mount.path)])

        world["client"].delete_bundle(*made[0].split(".", 1), reason="test")  # listed
        extra = _more(world, 1)
        mount.start()
        wait_until(lambda: _status(mount)["listing"]["state"] == "complete", 120,
                   "the listing to complete")
        mount.refresh()
        assert _listed(mount) == sorted([*made[1:], *extra])
        assert _status(mount)["listing"] == {"state": "complete", "versions": 1100}
    finally:
        gate.set()
        mount.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for this purpose
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_kernel_entries_bounds_what_the_kernel_keeps_of_a_listing(tmp_path, world):
    made = sorted([world["first"], *_more(world, 1199)])
    mount = Mount(str(tmp_path / "m"), world["proxy"].url, token=ADMIN,
                  args=["--kernel-entries", "500"])
    with mount:
        wait_until(lambda: _status(mount)["listing"]["state"] == "complete", 120,
                   "the listing to complete")
        bundles = Path(mount.path) / "bundles"
        looked_up = os.stat(bundles / made[0]).st_ino  # libfuse's node id: no use_ino
        held = os.open(bundles / made[1], os.O_RDONLY | os.O_DIRECTORY)  # in use
        try:
            held_ino = os.fstat(held).st_ino
            # `ls -l` reads bundles/ in one reply (1,200 entries): the prune is made
            # before the reply that ends the listing
            listed = subprocess.run(["ls", "-l", str(bundles)], capture_output=True,
                                    text=True, timeout=60)
            assert listed.returncode == 0, listed.stderr
            lines = listed.stdout.splitlines()[1:]
            assert [line.split()[-1] for line in lines] == made
            assert all(line.startswith("dr-xr-xr-x") for line in lines)
            wait_until(lambda: _kernel_entries(mount)["pruned"] >= 1, 10, "a prune")
            # small reads (4 KiB getdents, about 18 entries a reply): prunes in the middle
            # of the listing, each before the next reply; every entry read once, and its
            # attributes right
            entries, reads = _read_and_stat(bundles)
            assert [name for name, _ in entries] == made
            wait_until(lambda: _kernel_entries(mount)["pruned"] >= 3, 10, "two more prunes")
            # the reply right after each prune carries one entry (its request went out
            # before the prune); any other read of one entry could only be the last
            assert reads[:-2].count(1) >= 2, reads
            # a process whose working directory is bundles/ keeps its path across a prune
            # (`ls -l` of `.` looks nothing up by path; Python's getcwd has no fallback)
            shell = subprocess.run(
                ["bash", "-c", f"ls -l >/dev/null && {sys.executable} -c "
                 "'import os; print(os.getcwd())'"],
                cwd=bundles, capture_output=True, text=True, timeout=60)
            assert shell.returncode == 0, shell.stderr
            assert shell.stdout.strip() == str(bundles)
            wait_until(lambda: _kernel_entries(mount)["pruned"] >= 4, 10, "its prune")
            assert _kernel_entries(mount)["limit"] == 500
            assert _kernel_entries(mount)["late"] == 0
            # the kernel forgot the entry nothing used: libfuse freed its node, and the
            # lookup made now gets a new one
            assert os.stat(bundles / made[0]).st_ino != looked_up
            # the one held open was kept, under its name too
            assert os.fstat(held).st_ino == held_ino
            assert os.stat(bundles / made[1]).st_ino == held_ino
            assert sorted(os.listdir(held)) == sorted(os.listdir(bundles / made[2]))
        finally:
            os.close(held)


def _kernel_entries(mount: Mount) -> dict:
    return json.loads(os.getxattr(mount.path, "user.hcafs.status"))["kernel_entries"]


_GETDENTS64 = {"x86_64": 217, "aarch64": 61}


def _read_and_stat(directory: Path, size: int = 4096
                   ) -> tuple[list[tuple[str, os.stat_result]], list[int]]:
    """Each entry of ``directory`` (but . and ..) stat-ed right as it is read, as ``ls -l``
    does, through getdents64 with a ``size``-byte buffer; and how many entries each
    getdents64 call returned (one per reply of the filesystem)."""
    number = _GETDENTS64.get(os.uname().machine)
    if number is None:
        pytest.skip("getdents64's syscall number is not known here")
    libc = ctypes.CDLL(None, use_errno=True)
    buffer = ctypes.create_string_buffer(size)
    found, reads = [], []
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        while True:
            count = libc.syscall(number, fd, buffer, size)
            assert count >= 0, os.strerror(ctypes.get_errno())
            if not count:
                return found, reads
            raw, at = buffer.raw[:count], 0
            reads.append(0)
            while at < count:  # struct linux_dirent64: ino, off, reclen, type, name
                length = int.from_bytes(raw[at + 16:at + 18], "little")
                name = raw[at + 19:at + length].split(b"\0", 1)[0].decode()
                reads[-1] += 1
                if name not in (".", ".."):
                    found.append((name, os.stat(directory / name)))
                    assert stat.S_ISDIR(found[-1][1].st_mode)
                at += length
    finally:
        os.close(fd)
