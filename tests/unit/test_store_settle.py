"""Model tier: the local store's deferred folder syncs (hcafs/server/store.py).

A write or create with ``defer`` fsyncs the document's bytes at once and notes its folder;
:meth:`LocalStore.settle` fsyncs each noted folder once.  The fsyncs are counted by
wrapping ``os.fsync`` (it still runs)."""

from __future__ import annotations

import os
import stat

import pytest

from hcafs.server import store as store_module
from hcafs.server.store import LocalStore


@pytest.fixture
def synced(monkeypatch) -> list[str]:
    """What each fsync was of: "dir" or "file"."""
    seen: list[str] = []
    real = os.fsync

    def counting(fd: int) -> None:
        seen.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)

    monkeypatch.setattr(store_module.os, "fsync", counting)
    return seen


def test_deferred_writes_sync_each_document_and_each_folder_once(tmp_path, synced):
    store = LocalStore(str(tmp_path / "store"))
    defer: set[str] = set()
    for n in range(10):
        store.write(f"records/r{n}", b"record %d" % n, defer)
        assert store.create(f"names/folder/n{n}", b"name %d" % n, defer)
    assert not store.create("names/folder/n0", b"again", defer)  # still create-once
    # readable at once; every document's bytes synced, no folder yet
    assert store.read("records/r3") == b"record 3" and store.read("names/folder/n9")
    assert synced.count("dir") == 0 and synced.count("file") == 21
    assert defer == {str(tmp_path / "store" / "records"),
                     str(tmp_path / "store" / "names" / "folder")}
    store.settle(defer)
    assert synced.count("dir") == 2 and defer == set()


def test_writes_without_defer_sync_their_folder_each_time(tmp_path, synced):
    store = LocalStore(str(tmp_path / "store"))
    store.write("records/a", b"a")
    assert store.create("records/b", b"b")
    assert synced == ["file", "dir", "file", "dir"]


def test_a_store_that_is_not_durable_notes_nothing(tmp_path, synced):
    store = LocalStore(str(tmp_path / "store"), durable=False)
    defer: set[str] = set()
    store.write("records/a", b"a", defer)
    store.settle(defer)
    assert synced == [] and defer == set() and store.read("records/a") == b"a"


def test_names_found_from_an_earlier_attempt_are_settled_with_the_batch(tmp_path, synced):
    store = LocalStore(str(tmp_path / "store"))
    store.write("records/a", b"a", set())  # written by an attempt that failed before settle
    store.create("names/folder/n", b"n", set())
    defer: set[str] = set()
    store.note(["records/a", "names/folder/n"], defer)
    assert defer == {str(tmp_path / "store" / "records"),
                     str(tmp_path / "store" / "names" / "folder")}
    synced.clear()
    store.settle(defer)
    assert synced == ["dir", "dir"]
