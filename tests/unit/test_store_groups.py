"""Model tier: the local store's group writes (hcafs/server/store.py ``write_many`` and
``create_many``).

A group is staged first, each document's writeback started as it is written, then every
document is fsynced, and only then is any renamed or linked into place: no name ever points
at bytes that are not on disk, and the fsyncs after the first find their data written.  The
order is seen by wrapping the store's writeback hint, ``os.fsync``, ``os.replace`` and
``os.link`` (all still run)."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from hcafs.server import store as store_module
from hcafs.server.store import LocalStore


@pytest.fixture
def events(monkeypatch) -> list[str]:
    seen: list[str] = []
    start, fsync, replace, link = (store_module.start_writeback, os.fsync, os.replace,
                                   os.link)

    def started(fd: int) -> None:
        seen.append("start")
        start(fd)

    def synced(fd: int) -> None:
        seen.append("fsync")
        fsync(fd)

    def renamed(src, dst, **kw) -> None:
        seen.append("rename")
        replace(src, dst, **kw)

    def linked(src, dst, **kw) -> None:
        seen.append("link")
        link(src, dst, **kw)

    monkeypatch.setattr(store_module, "start_writeback", started)
    monkeypatch.setattr(store_module.os, "fsync", synced)
    monkeypatch.setattr(store_module.os, "replace", renamed)
    monkeypatch.setattr(store_module.os, "link", linked)
    return seen


def _leftovers(store: LocalStore) -> list[str]:
    """The temporary files in the store (a process's folder of staged documents may stay,
    empty)."""
    return [name for _, _, names in os.walk(os.path.join(store.root, ".tmp"))
            for name in names]


def test_a_group_is_on_disk_before_any_name_points_at_it(tmp_path, events):
    store = LocalStore(str(tmp_path / "store"))
    defer: set[str] = set()
    store.write_many([(f"docs/w{n}", f"w{n}".encode()) for n in range(5)], defer)
    assert events[:5] == ["start"] * 5 and events[5:10] == ["fsync"] * 5
    assert events[10:] == ["rename"] * 5
    events.clear()
    assert store.create_many([(f"docs/c{n}", b"c") for n in range(4)], defer) == [True] * 4
    assert events == ["start"] * 4 + ["fsync"] * 4 + ["link"] * 4
    assert defer == {os.path.join(store.root, "docs")}  # the folder: synced by settle
    assert [store.read(f"docs/w{n}") for n in range(5)] == [f"w{n}".encode()
                                                            for n in range(5)]
    assert _leftovers(store) == []


def test_a_group_create_keeps_what_was_there_and_a_group_write_replaces_it(tmp_path):
    store = LocalStore(str(tmp_path / "store"))
    store.create("docs/a", b"first")
    assert store.create_many([("docs/a", b"second"), ("docs/b", b"new")]) == [False, True]
    assert store.read("docs/a") == b"first" and store.read("docs/b") == b"new"
    store.write_many([("docs/a", b"third"), ("docs/c", b"made")])
    assert store.read("docs/a") == b"third" and store.read("docs/c") == b"made"
    assert _leftovers(store) == []


def test_a_group_that_fails_half_way_leaves_no_staged_files(tmp_path):
    store = LocalStore(str(tmp_path / "store"))
    os.makedirs(os.path.join(store.root, "docs", "dir", "inside"))  # a key that is a folder
    with pytest.raises(OSError):
        store.write_many([("docs/x", b"1"), ("docs/dir", b"2"), ("docs/y", b"3")])
    assert store.read("docs/x") == b"1" and store.read("docs/y") is None
    assert _leftovers(store) == []
    with pytest.raises(ValueError):  # a bad key is refused before anything is staged
        store.create_many([("docs/z", b"1"), ("../out", b"2")])
    assert store.read("docs/z") is None and _leftovers(store) == []
    with open(os.path.join(store.root, "docs", "file"), "w"):
        pass  # a key whose folder would be a file: refused while placing
    with pytest.raises(OSError):
        store.create_many([("docs/p", b"1"), ("docs/file/q", b"2"), ("docs/r", b"3")])
    assert store.read("docs/p") == b"1" and store.read("docs/r") is None
    assert _leftovers(store) == []


def test_a_group_that_fails_while_staging_leaves_nothing(tmp_path, monkeypatch):
    store = LocalStore(str(tmp_path / "store"))
    real, calls = store_module._write_all, []

    def fails_third(fd: int, data: bytes) -> None:
        calls.append(data)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real(fd, data)

    monkeypatch.setattr(store_module, "_write_all", fails_third)
    with pytest.raises(OSError):
        store.write_many([(f"docs/s{n}", b"s") for n in range(5)])
    assert [store.read(f"docs/s{n}") for n in range(5)] == [None] * 5
    assert _leftovers(store) == []


def test_a_moved_blob_whose_folder_cannot_be_made_is_kept(tmp_path):
    store = LocalStore(str(tmp_path / "store"))
    source = tmp_path / "upload.bin"
    source.write_bytes(b"the only copy")
    with open(os.path.join(store.root, "blobs"), "w"):
        pass  # the blobs folder is a file: no blob can be published
    with pytest.raises(OSError):
        store.move_blob(str(source), "blobs/ab/cd", lambda fd: None)
    kept = [p for p in (source, store.moving_path(str(source))) if os.path.exists(p)]
    assert [open(p, "rb").read() for p in kept] == [b"the only copy"]


def test_large_documents_are_written_whole(tmp_path):
    store = LocalStore(str(tmp_path / "store"))
    big = os.urandom(3 * 1024 * 1024 + 7)
    store.write_many([("docs/big", big), ("docs/small", b"s")])
    assert store.read("docs/big") == big


def test_documents_staged_ahead_are_placed_with_no_write_at_placing(tmp_path, events):
    """Staged documents are on disk when staged; placing them is the names only (no
    writeback, no fsync of their bytes then), mixed with bytes given at once, which are
    staged as a group as before."""
    store = LocalStore(str(tmp_path / "store"))
    staged = store.stage([b"first", b"second", b"third"])
    assert events == ["start"] * 3 + ["fsync"] * 3
    assert len(_leftovers(store)) == 3
    events.clear()
    defer: set[str] = set()
    assert store.create_many([("docs/a", staged[0]), ("docs/b", b"given now"),
                              ("docs/c", staged[1])], defer) == [True, True, True]
    assert events == ["start", "fsync", "link", "link", "link"]  # only "given now" written
    events.clear()
    store.write_many([("docs/d", staged[2])], defer)
    assert events == ["rename"]
    assert [store.read(f"docs/{k}") for k in "abcd"] == [b"first", b"given now", b"second",
                                                       b"third"]
    assert _leftovers(store) == []
    assert all(s.path is None for s in staged)


def test_a_staged_document_is_placed_once_then_from_its_bytes_and_discard_removes_it(tmp_path):
    store = LocalStore(str(tmp_path / "store"))
    once, dropped = store.stage([b"kept", b"dropped"])
    store.write_many([("docs/x", once)])
    store.write_many([("docs/y", once)])  # its file was placed: written again from the bytes
    assert store.read("docs/x") == store.read("docs/y") == b"kept"
    dropped.discard()
    dropped.discard()  # twice is harmless
    assert _leftovers(store) == [] and store.read("docs/z") is None
    # a refused create (the name exists) removes the staged file as well
    taken = store.stage([b"late"])[0]
    assert store.create_many([("docs/x", taken)]) == [False]
    assert store.read("docs/x") == b"kept" and _leftovers(store) == []


def test_what_dead_processes_left_is_swept_at_start_and_the_living_keep_theirs(tmp_path):
    """Documents staged ahead live in their process's own folder, which a start removes
    only once that process is gone (a document may wait days for a daily budget); the
    temporary files of single writes go once a day old; ``move-`` files stay."""
    store = LocalStore(str(tmp_path / "store"))
    tmp = os.path.join(store.root, ".tmp")
    old = time.time() - store_module.STALE_TEMP - 60
    mine = store.stage([b"waiting for its admission"])[0]
    os.utime(mine.path, (old, old))  # old, but its process lives
    dead = subprocess.Popen(["sleep", "0"])
    dead.wait()
    gone = os.path.join(tmp, f"{store_module.STAGED_PREFIX}{dead.pid}")
    os.makedirs(gone)
    with open(os.path.join(gone, "tmpabc"), "wb") as handle:
        handle.write(b"staged by a process that died")
    crashed = os.path.join(tmp, "tmp-crashed")
    fresh = os.path.join(tmp, "tmp-in-use")
    moving = store.moving_path("/somewhere/a-users-file")
    for path in (crashed, fresh, moving):
        with open(path, "wb") as handle:
            handle.write(b"x")
    os.utime(crashed, (old, old))
    os.utime(moving, (old, old))
    LocalStore(store.root)  # a process starting on the same store
    assert sorted(os.listdir(tmp)) == sorted([os.path.basename(fresh),
                                              os.path.basename(moving),
                                              f"{store_module.STAGED_PREFIX}{os.getpid()}"])
    assert os.path.exists(mine.path)
    store.write_many([("docs/waited", mine)])
    assert store.read("docs/waited") == b"waiting for its admission"


def test_a_staged_file_gone_before_its_placing_is_written_from_its_bytes(tmp_path):
    store = LocalStore(str(tmp_path / "store"))
    lost, kept = store.stage([b"lost file", b"kept file"])
    os.unlink(lost.path)  # a fault: removed behind the store's back
    with pytest.raises(FileNotFoundError):
        store.write_many([("docs/a", lost)])
    assert store.read("docs/a") is None
    store.write_many([("docs/a", lost), ("docs/b", kept)])  # taken: now from its bytes
    assert (store.read("docs/a"), store.read("docs/b")) == (b"lost file", b"kept file")
