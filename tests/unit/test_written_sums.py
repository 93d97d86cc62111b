"""Model tier: checksums computed while a pending file is written, and when they are refused.

A file written from empty, in order, in one open gets its four checksums from its write calls;
anything that makes them doubtful (a write out of order, a rewrite, a truncate, a change of
the data file behind the model) must leave staging to compute them afresh (None here).
"""

from __future__ import annotations

import os

from pending_model import Model

from hcafs.checksums import checksum_bytes
from hcafs.model.written import WrittenSums
from hcafs.sync.staging import LocalStager

MiB = 1024 * 1024


def _written(model: Model, path: str):
    file_id = model.row(path).id
    fd = os.open(model.pending.data_path(file_id), os.O_RDONLY)
    try:
        return model.pending.written_checksums(file_id, fd)
    finally:
        os.close(fd)


def _write_pieces(model: Model, path: str, pieces: list[tuple[int, bytes]]) -> None:
    handle = model.tree.create(path)
    for offset, data in pieces:
        assert model.tree.write(handle, data, offset) == len(data)
    model.tree.release(handle)


def test_a_file_written_in_order_has_its_checksums_from_the_writes(model):
    data = os.urandom(3 * MiB + 5)
    pieces = [(start, data[start:start + MiB]) for start in range(0, len(data), MiB)]
    _write_pieces(model, "/bundles/b/a.bin", pieces)
    assert _written(model, "/bundles/b/a.bin") == checksum_bytes(data)
    assert _written(model, "/bundles/b/a.bin") is None  # handed out once


def test_an_empty_file_has_the_empty_checksums(model):
    _write_pieces(model, "/bundles/b/empty", [])
    assert _written(model, "/bundles/b/empty") == checksum_bytes(b"")


def test_a_file_written_out_of_order_gets_a_fresh_pass(model):
    data = os.urandom(2 * MiB)
    _write_pieces(model, "/bundles/b/a.bin", [(MiB, data[MiB:]), (0, data[:MiB])])
    assert model.read("/bundles/b/a.bin")[:10] == data[:10]
    assert _written(model, "/bundles/b/a.bin") is None


def test_a_rewrite_in_place_gets_a_fresh_pass(model):
    _write_pieces(model, "/bundles/b/a.bin", [(0, b"a" * 100), (50, b"b" * 10)])
    assert _written(model, "/bundles/b/a.bin") is None


def test_a_file_reopened_and_written_gets_a_fresh_pass(model):
    _write_pieces(model, "/bundles/b/a.bin", [(0, b"a" * 100)])
    handle = model.tree.open("/bundles/b/a.bin", write=True)
    model.tree.write(handle, b"more", 100)
    model.tree.release(handle)
    assert _written(model, "/bundles/b/a.bin") is None


def test_a_file_truncated_after_its_close_gets_a_fresh_pass(model):
    _write_pieces(model, "/bundles/b/a.bin", [(0, b"a" * 100)])
    model.tree.truncate("/bundles/b/a.bin", 10)
    assert _written(model, "/bundles/b/a.bin") is None


def test_a_file_truncated_and_written_anew_has_the_new_checksums(model):
    _write_pieces(model, "/bundles/b/a.bin", [(0, b"a" * 100)])
    handle = model.tree.open("/bundles/b/a.bin", write=True, truncate=True)
    model.tree.write(handle, b"new", 0)
    model.tree.release(handle)
    assert _written(model, "/bundles/b/a.bin") == checksum_bytes(b"new")


def test_a_data_file_changed_behind_the_model_gets_a_fresh_pass(model):
    _write_pieces(model, "/bundles/b/a.bin", [(0, b"a" * 100)])
    path = model.pending.data_path(model.row("/bundles/b/a.bin").id)
    with open(path, "ab") as handle:
        handle.write(b"!")
    assert _written(model, "/bundles/b/a.bin") is None


def test_bytes_beyond_the_budget_drop_the_checksums_without_waiting(model):
    model.pending.written = WrittenSums(budget=MiB)
    _write_pieces(model, "/bundles/b/a.bin", [(0, os.urandom(2 * MiB))])
    assert _written(model, "/bundles/b/a.bin") is None


def test_staging_uses_known_checksums_and_copies_the_bytes(model, tmp_path):
    data = os.urandom(MiB + 3)
    _write_pieces(model, "/bundles/b/a.bin", [(0, data[:MiB]), (MiB, data[MiB:])])
    row = model.row("/bundles/b/a.bin")
    asked = []

    def known(fd):
        asked.append(fd)
        return model.pending.written_checksums(row.id, fd)

    stager = LocalStager(str(tmp_path / "staging"))
    url, sums = stager.stage(model.pending.data_path(row.id), "u", "v", "a.bin",
                             lambda sent: None, known=known)
    assert asked and sums == checksum_bytes(data)
    with open(url[len("file://"):], "rb") as handle:
        assert handle.read() == data
    # Without them (or when they no longer hold), the stager computes its own: crc32c
    # and the size only, since the server computes all four as it takes the file in.
    url, again = stager.stage(model.pending.data_path(row.id), "u", "w", "a.bin",
                              lambda sent: None, known=known)
    assert again == checksum_bytes(data).partial()
    with open(url[len("file://"):], "rb") as handle:
        assert handle.read() == data


def test_the_local_stager_takes_a_name_of_255_bytes_and_one_that_is_no_url(tmp_path):
    """The staged copy is written under a short temporary name (a 255-byte name has no
    room for a suffix), and a name that cannot stand in a URL is staged as "data"."""
    source = tmp_path / "source"
    source.write_bytes(b"bytes\n")
    stager = LocalStager(str(tmp_path / "staging"))
    for name, leaf in (("d/" + "n" * 251 + ".bin", "n" * 251 + ".bin"),
                       ("odd\u0085name.txt", "data")):
        url, sums = stager.stage(str(source), "u", name[:3], name, lambda sent: None)
        assert url.endswith("/" + leaf) and sums == checksum_bytes(b"bytes\n").partial()
        with open(url[len("file://"):], "rb") as handle:
            assert handle.read() == b"bytes\n"


def test_crc32c_only_written_sums_are_partial_and_match_a_full_pass(model):
    """A mount whose stager needs no more than crc32c (the embedded server computes all
    four itself) computes only crc32c and the size as a file is written."""
    model.pending.written = WrittenSums(complete=False)
    data = os.urandom(3 * MiB + 5)
    _write_pieces(model, "/bundles/b/a.bin", [(0, data[:MiB]), (MiB, data[MiB:])])
    sums = _written(model, "/bundles/b/a.bin")
    full = checksum_bytes(data)
    assert sums == full.partial() and not sums.complete and full.complete
    assert sums.mismatches(full) == []


def test_a_partial_set_finds_a_wrong_crc32c_or_size_and_a_full_set_any_checksum():
    data = os.urandom(MiB)
    full = checksum_bytes(data)
    other = checksum_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    shorter = checksum_bytes(data[:-1])
    assert full.partial().mismatches(other) == ["crc32c"]
    assert full.partial().mismatches(shorter) == ["crc32c", "size"]
    assert full.mismatches(other) == ["sha256", "sha1", "crc32c", "s3_etag"]
    assert full.mismatches(full) == [] and full.partial().mismatches(full) == []
