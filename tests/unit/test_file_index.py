"""The file index of a local store (``listing.FileIndex``): the latest version of a file is
found from a folder of a few names, never from a listing of every file version, and a
store written before the index gets it on its first start."""

from __future__ import annotations

import json

import pytest

from hcafs.server.copier import Copier
from hcafs.server.dss import DSS
from hcafs.server.listing import FILE_LAYOUT_KEY
from hcafs.server.store import LocalStore

UUID = "0b8b2ab2-7a8b-4b3e-9a2e-3f3f3f3f3f3f"
OLD, NEW = "2020-01-01T000000.000000Z", "2021-01-01T000000.000000Z"


def _document(version: str) -> bytes:
    return json.dumps({"uuid": UUID, "version": version, "size": 1}).encode()


@pytest.fixture
def no_files_listing(monkeypatch):
    """A listing of files/ fails (it would read every file version of the store)."""
    real = LocalStore.list

    def listing(self, prefix, start_after=""):
        if prefix.startswith("files/") and prefix != "files/":
            raise AssertionError(f"listed {prefix}")
        return real(self, prefix, start_after)

    monkeypatch.setattr(LocalStore, "list", listing)


def _dss(store: LocalStore) -> DSS:
    return DSS(store, Copier(store, None, None, 1 << 30, workers=1))


def test_a_store_of_the_previous_release_is_indexed_once_on_start(tmp_path, no_files_listing):
    store = LocalStore(str(tmp_path / "store"), durable=False)
    for version in (OLD, NEW):
        assert store.create(f"files/{UUID}.{version}", _document(version))
    store.create("files/1c8b2ab2-7a8b-4b3e-9a2e-3f3f3f3f3f3f.2019-01-01T000000.000000Z",
                 _document(OLD))
    dss = _dss(store)
    try:
        assert json.loads(store.read(FILE_LAYOUT_KEY)) == {"file_index": 1}
        assert dss.file_metadata(UUID, None)["version"] == NEW
        assert dss.file_metadata(UUID, OLD)["version"] == OLD
    finally:
        dss.copier.close()


def test_a_mark_without_its_document_is_skipped_and_a_random_uuid_costs_no_listing(
        tmp_path, no_files_listing):
    store = LocalStore(str(tmp_path / "store"), durable=False)
    dss = _dss(store)
    try:
        dss.files.add(f"{UUID}.{OLD}")
        store.create(f"files/{UUID}.{OLD}", _document(OLD))
        dss.files.add(f"{UUID}.{NEW}")  # a create that failed after its mark
        assert dss.file_metadata(UUID, None)["version"] == OLD
        with pytest.raises(Exception, match="Cannot find file"):
            dss.file_metadata("9d8b2ab2-7a8b-4b3e-9a2e-3f3f3f3f3f3f", None)
    finally:
        dss.copier.close()
