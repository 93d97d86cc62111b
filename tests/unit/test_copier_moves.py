"""A file:// source moved into the store by one PUT, as a racing PUT of it sees it.

The move is taken apart by hand, so each window of it is looked at deterministically:
the file at its moving copy (renamed, not yet published), and gone with its blob published.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from hcafs.errors import Problem
from hcafs.server.copier import Copier, _dumps, _moved_key
from hcafs.server.store import LocalStore


@pytest.fixture
def setup(tmp_path: Path):
    staging = tmp_path / "staging"
    staging.mkdir()
    store = LocalStore(str(tmp_path / "store"))
    copier = Copier(store, None, str(staging), async_threshold=1 << 30, workers=1)
    path = staging / "a.bin"
    path.write_bytes(b"racing bytes" * 1000)
    yield copier, store, path
    copier._pool.shutdown(wait=True)


def test_a_source_halfway_through_its_move_is_read_from_its_moving_copy(setup):
    copier, store, path = setup
    first = copier.inspect(f"file://{path}")
    store.create_unsynced(_moved_key(str(path)), _dumps(first.__dict__))
    os.replace(path, store.moving_path(str(path)))  # renamed, not yet published
    second = copier.inspect(f"file://{path}")
    assert second.checksums == first.checksums and second.size == first.size


def test_a_source_moved_in_by_another_put_is_answered_like_the_first(setup):
    copier, store, path = setup
    first = copier.inspect(f"file://{path}")
    copier.copy(first)
    assert not path.exists() and copier.moved == 1
    again = copier.inspect(f"file://{path}")
    assert again.checksums == first.checksums
    copier.copy(again)  # its blob is there: nothing to move, no error


def test_a_second_mover_that_finds_the_blob_published_succeeds(setup):
    copier, store, path = setup
    source = copier.inspect(f"file://{path}")
    copier.copy(source)
    blob = store.blob_size(source.blob_key())
    # The second racer got past the blob check before the first published it.
    assert copier._move(source, source.blob_key()) is True
    assert store.blob_size(source.blob_key()) == blob == source.size
    assert store.read(_moved_key(str(path))) is not None  # the first's record is kept


def test_a_missing_source_is_404(setup):
    copier, store, path = setup
    path.unlink()
    with pytest.raises(Problem) as caught:
        copier.inspect(f"file://{path}")
    assert caught.value.status == 404 and "does not exist" in str(caught.value)


def test_a_source_renamed_between_the_look_and_the_open_is_found_again(setup, monkeypatch):
    """The window the CI race hit: the path was there when looked at, gone when opened."""
    copier, store, path = setup
    first = copier.inspect(f"file://{path}")
    store.create_unsynced(_moved_key(str(path)), _dumps(first.__dict__))
    walked = Copier._open_parent
    calls = []

    def rename_after_the_look(self, p):
        answer = walked(self, p)  # the directory is open; the file is opened next
        if not calls:  # the racing PUT renames it right after this look
            os.replace(path, store.moving_path(str(path)))
        calls.append(p)
        return answer

    monkeypatch.setattr(Copier, "_open_parent", rename_after_the_look)
    second = copier.inspect(f"file://{path}")
    assert second.checksums == first.checksums
    assert calls == [str(path)]  # the second look opened the moving copy
