"""Model tier: the content cache on a real SQLite cache and real cache files, no FUSE.

The server is stood in for by a function that serves byte ranges of a known blob; where a
test needs a fault (a broken stream, wrong bytes) that function injects it.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time

import pytest

from hcafs.cache.blobcache import BLOCK, CRC, BlobCache
from hcafs.cache.cachedb import CacheDB
from hcafs.errors import IntegrityError, Unreachable


class Source:
    """Ranges of ``data`` as a server would stream them, counting what it sent."""

    def __init__(self, data: bytes, chunk: int = BLOCK, reuse: bool = False):
        self.data = data
        self.chunk = chunk
        self.reuse = reuse  # yield views of one buffer, overwritten by the next chunk
        self.sent = 0
        self.ranges: list[tuple[int, int]] = []
        self.streamed: list[tuple[int, int]] = []  # the ranges the read-ahead streams asked
        self.break_after: int | None = None  # bytes into the next fetch, then Unreachable
        self.lock = threading.Lock()

    def fetch(self, start: int, end: int):
        with self.lock:
            cut, self.break_after = self.break_after, None
            self.ranges.append((start, end))
            if threading.current_thread().name.startswith("readahead"):
                self.streamed.append((start, end))
        buffer = memoryview(bytearray(self.chunk))
        position = start
        while position < end:
            piece = self.data[position:min(end, position + self.chunk)]
            if cut is not None and position - start + len(piece) > cut:
                raise Unreachable("stream broke off")
            with self.lock:
                self.sent += len(piece)
            if self.reuse:
                buffer[:len(piece)] = piece
                yield buffer[:len(piece)]
                buffer[:len(piece)] = bytes(len(piece))  # a chunk kept past its turn is wrong
            else:
                yield piece
            position += len(piece)


@pytest.fixture
def cache(tmp_path):
    db = CacheDB(str(tmp_path / "hcafs.db"))
    blobs = BlobCache(str(tmp_path / "blobs"), db, 1024 * BLOCK, streams=3,
                      max_readahead=16 * BLOCK, chunk=2 * BLOCK)
    yield blobs
    blobs.close()


def _blob(size: int, seed: int = 1) -> tuple[bytes, str]:
    data = random.Random(seed).randbytes(size)
    return data, hashlib.sha256(data).hexdigest()


def test_random_reads_fetch_only_their_blocks_and_match(cache):
    data, sha = _blob(10 * BLOCK + 333)
    source = Source(data)
    blob = cache.acquire(sha, len(data))
    try:
        assert cache.read(blob, 3 * BLOCK + 5, 100, source.fetch) == \
            data[3 * BLOCK + 5:3 * BLOCK + 105]
        assert cache.read(blob, BLOCK - 10, 20, source.fetch) == data[BLOCK - 10:BLOCK + 10]
        assert source.sent == 3 * BLOCK  # blocks 0, 1 and 3, nothing else
        fd, offset, length = cache.span(blob, len(data) - 50, 4096, source.fetch)
        assert (offset, length) == (len(data) - 50, 50)
        assert os.pread(fd, length, offset) == data[-50:]
    finally:
        cache.release(blob)


def test_a_sequential_reader_gets_parallel_streams_and_a_verified_file(cache):
    data, sha = _blob(40 * BLOCK + 7)
    source = Source(data)
    blob = cache.acquire(sha, len(data))
    try:
        out = bytearray()
        offset = 0
        while offset < len(data):
            piece = cache.read(blob, offset, BLOCK, source.fetch, readahead=16 * BLOCK)
            out += piece
            offset += len(piece)
        assert bytes(out) == data
        assert cache.wait_verified(blob)
        assert source.sent == len(data)  # each block fetched once
    finally:
        cache.release(blob)


def test_wrong_bytes_from_the_server_fail_once_the_file_is_whole(cache):
    data, sha = _blob(4 * BLOCK)
    source = Source(bytes(len(data)))  # right size, wrong bytes
    blob = cache.acquire(sha, len(data))
    try:
        with pytest.raises(IntegrityError):
            for offset in range(0, len(data), BLOCK):
                cache.read(blob, offset, BLOCK, source.fetch)
        assert not any(blob.present)  # discarded
    finally:
        cache.release(blob)


def test_a_broken_fetch_resumes_at_the_first_missing_block(cache):
    data, sha = _blob(6 * BLOCK)
    source = Source(data)
    source.break_after = 2 * BLOCK + 10
    blob = cache.acquire(sha, len(data))
    try:
        assert cache.read(blob, 0, len(data), source.fetch) == data
        assert source.sent == len(data)  # the two blocks that landed were not fetched again
    finally:
        cache.release(blob)


def test_a_block_changed_on_disk_is_refused_then_fetched_again(cache, tmp_path):
    data, sha = _blob(5 * BLOCK)
    source = Source(data)
    blob = cache.acquire(sha, len(data))
    cache.read(blob, 0, len(data), source.fetch)
    assert cache.wait_verified(blob)
    cache.release(blob)
    row = cache.db.db().execute("select crcs, complete from blobs where sha256 = ?",
                                [sha]).fetchone()
    assert len(row[0]) == 5 * CRC and row[1] == 1
    with open(cache.path(sha), "r+b") as handle:  # bit rot in block 2
        handle.seek(2 * BLOCK + 77)
        handle.write(b"\x00" * 8)
    sent = source.sent
    blob = cache.acquire(sha, len(data))
    try:
        assert cache.read(blob, 0, 100, source.fetch) == data[:100]  # block 0 is intact
        with pytest.raises(IntegrityError):
            cache.read(blob, 2 * BLOCK, 100, source.fetch)
        assert source.sent == sent  # refused without fetching
        assert cache.read(blob, 2 * BLOCK, 100, source.fetch) == data[2 * BLOCK:2 * BLOCK + 100]
        assert source.sent == sent + BLOCK  # exactly the bad block again
        assert cache.read(blob, 0, len(data), source.fetch) == data
        assert cache.wait_verified(blob)
    finally:
        cache.release(blob)


def test_blocks_cached_without_sums_are_fetched_again(cache):
    data, sha = _blob(2 * BLOCK)
    source = Source(data)
    blob = cache.acquire(sha, len(data))
    cache.read(blob, 0, len(data), source.fetch)
    cache.release(blob)
    # A cache written before block sums existed: the bitmap without the sums.
    cache.db.db().execute("update blobs set crcs = null where sha256 = ?", [sha])
    blob = cache.acquire(sha, len(data))
    try:
        assert cache.read(blob, 0, len(data), source.fetch) == data
        assert source.sent == 2 * len(data)
    finally:
        cache.release(blob)


class SlowPersist(BlobCache):
    """Fault injection: recording a released blob's bitmap takes a while."""

    def _persist(self, blob) -> None:
        time.sleep(0.3)
        super()._persist(blob)


def test_a_reopen_during_a_release_never_loads_older_state(tmp_path):
    cache = SlowPersist(str(tmp_path / "blobs"), CacheDB(str(tmp_path / "hcafs.db")),
                        1024 * BLOCK)
    try:
        data, sha = _blob(3 * BLOCK)
        source = Source(data)
        first = cache.acquire(sha, len(data))
        cache.read(first, BLOCK, 10, source.fetch)
        closing = threading.Thread(target=cache.release, args=(first,))
        closing.start()
        time.sleep(0.1)  # the release is now recording the bitmap
        second = cache.acquire(sha, len(data))
        try:
            assert cache.read(second, BLOCK, 10, source.fetch) == data[BLOCK:BLOCK + 10]
        finally:
            closing.join()
            cache.release(second)
        assert source.sent == BLOCK  # the block was not lost to a stale reload
        again = cache.acquire(sha, len(data))
        try:
            assert cache.read(again, BLOCK, 10, source.fetch) == data[BLOCK:BLOCK + 10]
            assert source.sent == BLOCK  # and the recorded bitmap has it
        finally:
            cache.release(again)
    finally:
        cache.close()


def test_close_does_not_wait_for_a_reader_that_never_comes_back(tmp_path):
    cache = BlobCache(str(tmp_path / "blobs"), CacheDB(str(tmp_path / "hcafs.db")),
                      1024 * BLOCK, streams=2, max_readahead=4 * BLOCK, chunk=BLOCK)
    data, sha = _blob(40 * BLOCK)
    source = Source(data)
    blob = cache.acquire(sha, len(data))  # never released: the mount went away under it
    for offset in range(0, 3 * BLOCK, BLOCK):
        cache.read(blob, offset, BLOCK, source.fetch, readahead=4 * BLOCK)
    time.sleep(0.5)  # the streams have filled the window and wait for the reader
    closing = threading.Thread(target=cache.close)
    closing.start()
    closing.join(10)
    assert not closing.is_alive(), "close() hung on a read-ahead stream"


@pytest.mark.parametrize("chunk", [BLOCK, 256 * 1024, BLOCK + 4096])
def test_chunks_that_are_views_of_a_reused_buffer_are_stored_before_the_next(cache, chunk):
    data, sha = _blob(9 * BLOCK + 999)
    source = Source(data, chunk=chunk, reuse=True)
    blob = cache.acquire(sha, len(data))
    try:
        out = bytearray()
        while len(out) < len(data):
            out += cache.read(blob, len(out), BLOCK, source.fetch, readahead=16 * BLOCK)
        assert bytes(out) == data
        assert cache.wait_verified(blob)
    finally:
        cache.release(blob)
    with open(cache.path(sha), "rb") as handle:
        assert handle.read() == data


def test_a_reused_buffer_cut_mid_block_resumes_at_the_first_missing_block(cache):
    data, sha = _blob(6 * BLOCK)
    source = Source(data, reuse=True)
    source.break_after = 3 * BLOCK + 4096  # blocks 0-2 land, block 3 is cut in its middle
    blob = cache.acquire(sha, len(data))
    try:
        assert cache.read(blob, 0, len(data), source.fetch) == data
        assert source.ranges == [(0, 6 * BLOCK), (3 * BLOCK, 6 * BLOCK)]
        assert cache.wait_verified(blob)
    finally:
        cache.release(blob)


def test_blocks_landing_in_order_are_hashed_as_they_land(cache):
    """One fetch of the whole file: each block is the one the sha256 needs next, so the
    file is verified the moment its last block lands, with no pass of the worker."""
    data, sha = _blob(5 * BLOCK + 10)
    source = Source(data, reuse=True)
    blob = cache.acquire(sha, len(data))
    try:
        cache._hasher.shutdown(wait=True)  # a pass it was asked for would raise, and be seen
        assert cache.read(blob, 0, len(data), source.fetch) == data
        assert blob.verified and blob.hashed == blob.nblocks
    finally:
        cache.release(blob)


def test_wrong_bytes_landing_in_order_are_discarded(cache):
    data, sha = _blob(4 * BLOCK)
    bad = bytearray(data)
    bad[2 * BLOCK + 77] ^= 1
    source = Source(bytes(bad), reuse=True)
    blob = cache.acquire(sha, len(data))
    try:
        with pytest.raises(IntegrityError):
            cache.read(blob, 0, len(data), source.fetch)
        assert not any(blob.present)
    finally:
        cache.release(blob)


def test_read_ahead_asks_for_whole_chunks_not_a_block_per_read(tmp_path):
    db = CacheDB(str(tmp_path / "hcafs.db"))
    blobs = BlobCache(str(tmp_path / "blobs"), db, 1024 * BLOCK, streams=2,
                      max_readahead=8 * BLOCK, chunk=4 * BLOCK)
    data, sha = _blob(64 * BLOCK)
    source = Source(data, reuse=True)
    blob = blobs.acquire(sha, len(data))
    try:
        offset = 0
        while offset < len(data):
            offset += len(blobs.read(blob, offset, BLOCK, source.fetch, readahead=16 * BLOCK))
            time.sleep(0.002)  # a reader slower than its streams: the window stays full
        assert blobs.wait_verified(blob)
    finally:
        blobs.release(blob)
        blobs.close()
    short = [(start, end) for start, end in source.streamed
             if end - start < 4 * BLOCK and end != len(data)]
    assert source.streamed, "no read-ahead stream ran: the test proved nothing"
    assert not short, f"read-ahead sent runs shorter than a chunk: {short}"


def _cached(cache: BlobCache, seed: int, blocks: int = 2) -> str:
    data, sha = _blob(blocks * BLOCK, seed)
    blob = cache.acquire(sha, len(data))
    try:
        assert cache.read(blob, 0, len(data), Source(data).fetch) == data
    finally:
        cache.release(blob)
    return sha


def test_concurrent_evictions_drop_each_blob_once_and_count_it_once(cache):
    shas = [_cached(cache, seed) for seed in range(40)]
    assert cache.used == 40 * 2 * BLOCK
    cache.max_bytes = 0
    barrier = threading.Barrier(4)
    failures: list[BaseException] = []
    freed: list[int] = []

    def evict() -> None:
        barrier.wait()
        try:
            freed.append(cache.evict())
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=evict) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not failures, failures
    assert sum(freed) == 40 * 2 * BLOCK and cache.used == 0
    assert not any(os.path.exists(cache.path(sha)) for sha in shas)


def test_a_fetch_that_cannot_make_room_releases_its_blocks(cache, monkeypatch):
    """A failure before the stream starts (making room on the disk, opening the stream)
    leaves no block claimed, so the next reader fetches instead of waiting forever."""
    data, sha = _blob(4 * BLOCK, 7)
    blob = cache.acquire(sha, len(data))
    try:
        def no_room(nbytes: int) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(cache, "_reserve", no_room)
        with pytest.raises(OSError):
            cache.read(blob, 0, BLOCK, Source(data).fetch)
        monkeypatch.undo()
        assert not any(blob.inflight)
        assert cache.read(blob, 0, BLOCK, Source(data).fetch) == data[:BLOCK]
    finally:
        cache.release(blob)


def test_the_cache_leaves_its_floor_of_free_disk_space(cache, monkeypatch):
    """Past ``min_free`` of free space on the disk, fetching a blob drops the least
    recently used ones first, even under ``max_bytes``."""
    first = _cached(cache, 1, blocks=4)
    second = _cached(cache, 2, blocks=4)
    def free_bytes() -> int:  # a disk of 14 blocks holding only the cache's files
        return 14 * BLOCK - _disk_use(cache.root)

    monkeypatch.setattr(cache, "free_bytes", free_bytes)
    cache.min_free = 3 * BLOCK
    _cached(cache, 3, blocks=2)  # 2 blocks more would leave 4 free: above the floor
    assert os.path.exists(cache.path(first))
    _cached(cache, 4, blocks=2)  # would leave 2: the oldest goes first
    assert not os.path.exists(cache.path(first)) and os.path.exists(cache.path(second))



def _disk_use(root: str) -> int:
    """Bytes the files below ``root`` take on disk (holes of sparse files excluded)."""
    return sum(os.stat(os.path.join(folder, name)).st_blocks * 512
               for folder, _, names in os.walk(root) for name in names)
