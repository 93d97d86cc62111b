"""Tier 1: copies and reads around the page cache (hcafs.directio), and the checksum pass
that spreads its hashes over a pool, checked byte for byte against plain reads."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from hcafs import directio
from hcafs.checksums import Checksummer, checksum_bytes

SIZES = [0, 1, 4095, 4096, 4097, directio.CHUNK, directio.CHUNK + 123,
         2 * directio.CHUNK + 5]


def _direct(fd: int) -> bool:
    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)


def _file(path, data: bytes) -> str:
    with open(path, "wb") as handle:
        handle.write(data)
    return str(path)


@pytest.mark.parametrize("size", SIZES)
def test_a_copy_has_the_same_bytes_and_each_chunk_is_seen_in_order(tmp_path, size):
    data = os.urandom(size)
    source = os.open(_file(tmp_path / "source", data), os.O_RDONLY)
    target = os.open(tmp_path / "target", os.O_WRONLY | os.O_CREAT, 0o600)
    seen = hashlib.sha256()
    progress: list[int] = []
    try:
        directio.copy(source, target, size, progress.append, seen.update)
        assert not _direct(target)  # the descriptor is left as it was given
    finally:
        os.close(source)
        os.close(target)
    assert (tmp_path / "target").read_bytes() == data
    assert seen.digest() == hashlib.sha256(data).digest()
    assert progress[-1:] == ([size] if size else [])


def test_a_copy_of_a_file_that_shrank_raises(tmp_path):
    source = os.open(_file(tmp_path / "source", b"x" * 5000), os.O_RDONLY)
    target = os.open(tmp_path / "target", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with pytest.raises(OSError, match="shrank"):
            directio.copy(source, target, 10_000, lambda n: None)
    finally:
        os.close(source)
        os.close(target)


def test_a_write_refused_around_the_page_cache_goes_through_it(tmp_path, monkeypatch):
    """A filesystem that takes O_DIRECT at fcntl but refuses the write (EINVAL): the rest
    of the copy goes through the page cache, and no byte is lost or doubled."""
    data = os.urandom(3 * directio.CHUNK + 17)
    real = os.pwrite
    refused = []

    def pwrite(fd, chunk, offset):
        if _direct(fd):
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, chunk, offset)

    monkeypatch.setattr(directio.os, "pwrite", pwrite)
    source = os.open(_file(tmp_path / "source", data), os.O_RDONLY)
    target = os.open(tmp_path / "target", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        directio.copy(source, target, len(data), lambda n: None)
    finally:
        os.close(source)
        os.close(target)
    assert refused == [0]
    assert (tmp_path / "target").read_bytes() == data


@pytest.mark.parametrize("size", SIZES)
def test_chunks_read_around_the_page_cache_are_the_files_bytes(tmp_path, size):
    data = os.urandom(size)
    fd = os.open(_file(tmp_path / "blob", data), os.O_RDONLY)
    try:
        got = b"".join(bytes(chunk) for chunk in directio.read_chunks(fd, size))
        assert not _direct(fd)
    finally:
        os.close(fd)
    assert got == data


def test_chunks_of_a_file_shorter_than_asked_end_where_it_ends(tmp_path):
    data = os.urandom(directio.CHUNK + 100)
    fd = os.open(_file(tmp_path / "blob", data), os.O_RDONLY)
    try:
        got = b"".join(bytes(c) for c in directio.read_chunks(fd, 2 * directio.CHUNK))
    finally:
        os.close(fd)
    assert got == data


def test_hashes_spread_over_a_pool_are_the_same_as_in_one_thread():
    # Three parts of the smallest part size would need 192 MiB; a 65 MiB hint and chunks
    # of 4 MiB cross one part boundary, which is where the etag's parts are cut.
    size = 65 * 1024 * 1024
    data = os.urandom(size)
    spread = Checksummer(size)
    with ThreadPoolExecutor(2) as pool:
        view = memoryview(data)
        for start in range(0, size, directio.CHUNK):
            spread.update(view[start:start + directio.CHUNK], pool)
    assert spread.result() == checksum_bytes(data)
    assert spread.result().s3_etag.endswith("-2")


@pytest.mark.parametrize("sizes", [[], [10], [4096], [1000] * 9000,
                                   [3 * 1024 * 1024] * 3 + [7],
                                   [directio.CHUNK, 1, directio.CHUNK - 1, 12345]])
def test_chunks_written_around_the_page_cache_are_gathered_in_order(tmp_path, sizes):
    chunks = [os.urandom(n) for n in sizes]
    fd = os.open(tmp_path / "blob", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        written = directio.write_chunks(fd, (memoryview(c) if i % 2 else c
                                             for i, c in enumerate(chunks)))
        assert not _direct(fd)
    finally:
        os.close(fd)
    assert written == sum(sizes)
    assert (tmp_path / "blob").read_bytes() == b"".join(chunks)


def test_buffers_kept_between_transfers_are_bounded_whatever_the_threads(tmp_path):
    data = os.urandom(directio.CHUNK + 1)
    source = _file(tmp_path / "source", data)

    def one(n: int) -> bytes:
        fd = os.open(source, os.O_RDONLY)
        out = os.open(tmp_path / f"target{n}", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            directio.copy(fd, out, len(data), lambda count: None)
        finally:
            os.close(fd)
            os.close(out)
        return (tmp_path / f"target{n}").read_bytes()

    with ThreadPoolExecutor(8) as pool:
        assert all(got == data for got in pool.map(one, range(32)))
    assert 1 <= len(directio._spare) <= directio.KEEP
