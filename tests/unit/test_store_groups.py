"""Model tier: the local store's group writes (hcafs/server/store.py ``write_many`` and
``create_many``).

A group is staged first, each document's writeback started as it is written, then every
document is fsynced, and only then is any renamed or linked into place: no name ever points
at bytes that are not on disk, and the fsyncs after the first find their data written.  The
order is seen by wrapping the store's writeback hint, ``os.fsync``, ``os.replace`` and
``os.link`` (all still run)."""

from __future__ import annotations

import os

import pytest

from hcafs.server import store as store_module
from hcafs.server.store import LocalStore


@pytest.fixture
def events(monkeypatch) -> list[str]:
    seen: list[str] = []
    start, fsync, replace, link = (store_module._start_writeback, os.fsync, os.replace,
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

    monkeypatch.setattr(store_module, "_start_writeback", started)
    monkeypatch.setattr(store_module.os, "fsync", synced)
    monkeypatch.setattr(store_module.os, "replace", renamed)
    monkeypatch.setattr(store_module.os, "link", linked)
    return seen


def _leftovers(store: LocalStore) -> list[str]:
    return os.listdir(os.path.join(store.root, ".tmp"))


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
    assert _leftovers(store) == []


def test_large_documents_are_written_whole(tmp_path):
    store = LocalStore(str(tmp_path / "store"))
    big = os.urandom(3 * 1024 * 1024 + 7)
    store.write_many([("docs/big", big), ("docs/small", b"s")])
    assert store.read("docs/big") == big
