"""The content cache: file bytes on local disk, fetched lazily by range, named by sha256.

* **Content-addressed.**  A blob is stored once under its sha256, whatever bundles name it.
* **Ranges, not whole files.**  A blob is a sparse file cut into 1 MiB blocks; a bitmap says
  which blocks are on disk.  A read fetches only the blocks it touches (plus read-ahead for
  sequential readers), so reading 1 MiB at offset 5 GiB costs about 1 MiB of transfer.
* **Verified.**  Blocks are hashed in order as the contiguous prefix grows; when the last
  block lands the sha256 must match, or the bytes are discarded and the read fails with
  :class:`~hcafs.errors.IntegrityError`.
* **Bounded.**  ``max_bytes`` caps the blocks on disk; the least recently used blobs that are
  neither open nor pinned are evicted to make room.  Pinned blobs (bytes not yet on the
  server) are never evicted.
* **Crash-safe.**  The bitmap in SQLite only ever names blocks that were fsynced before it
  was written; after a crash the worst case is fetching a block again.

Threading: any thread may call :meth:`BlobCache.read`; the per-blob condition variable
orders block claims, and each block is fetched by exactly one thread (foreground reader or
read-ahead worker) while others wait for it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

from ..errors import HcafsError, IntegrityError, NoSpace
from .cachedb import CacheDB

log = logging.getLogger(__name__)

BLOCK = 1024 * 1024
Fetch = Callable[[int, int], Iterator[bytes]]  # bytes [start, end) of the blob


class _Blob:
    """A blob in use: its open file, its bitmap and its hashing progress."""

    def __init__(self, sha256: str, size: int, path: str, blocks: bytearray, complete: bool):
        self.sha256 = sha256
        self.size = size
        self.path = path
        self.nblocks = -(-size // BLOCK)
        self.present = blocks
        self.inflight = bytearray(self.nblocks)
        self.cond = threading.Condition()
        self.hash_lock = threading.Lock()
        self.hasher = hashlib.sha256()
        self.hashed = 0
        self.verified = complete
        self.users = 0
        self.dirty = False
        self.failed: IntegrityError | None = None  # set when the bytes failed their sha256
        self.read_pos = -1  # the furthest block a sequential reader has reached
        self.streaming = False  # a read-ahead stream is running
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(self.fd).st_size != size:
            os.ftruncate(self.fd, size)

    def span(self, block: int) -> tuple[int, int]:
        start = block * BLOCK
        return start, min(start + BLOCK, self.size)

    def all_present(self) -> bool:
        return self.present.count(1) == self.nblocks


class BlobCache:
    def __init__(self, root: str, db: CacheDB, max_bytes: int, workers: int = 4,
                 max_readahead: int = 64 * BLOCK):
        self.root = root
        self.db = db
        self.max_bytes = max_bytes
        self.max_readahead = max_readahead
        os.makedirs(root, exist_ok=True)
        self._lock = threading.Lock()
        self._open: dict[str, _Blob] = {}
        row = db.db().execute("select coalesce(sum(present), 0) from blobs").fetchone()
        self.used = int(row[0])
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="readahead")
        self._warned_full = False

    def path(self, sha256: str) -> str:
        return os.path.join(self.root, sha256[:2], sha256)

    # ------------------------------------------------------------ open / close

    def acquire(self, sha256: str, size: int) -> _Blob:
        """Start using a blob (open its file, load its bitmap); pair with :meth:`release`."""
        with self._lock:
            blob = self._open.get(sha256)
            if blob is None:
                blob = self._load(sha256, size)
                self._open[sha256] = blob
            elif blob.failed is not None:
                blob.failed = None  # a new open tries again (the bad bytes are gone)
            blob.users += 1
        return blob

    def _load(self, sha256: str, size: int) -> _Blob:
        db = self.db.db()
        row = db.execute("select size, blocks, complete from blobs where sha256 = ?",
                         [sha256]).fetchone()
        nblocks = -(-size // BLOCK)
        path = self.path(sha256)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if row is not None and row[0] == size and os.path.exists(path):
            blocks = bytearray(row[1] or bytes(nblocks))
            complete = bool(row[2])
        else:
            blocks, complete = bytearray(nblocks), False
        db["blobs"].upsert({"sha256": sha256, "size": size, "blocks": bytes(blocks),
                            "present": _present_bytes(blocks, size), "complete": int(complete),
                            "last_access": time.time(), "pinned": 0}, pk="sha256")
        return _Blob(sha256, size, path, blocks, complete)

    def release(self, blob: _Blob) -> None:
        with self._lock:
            blob.users -= 1
            last = blob.users == 0
            if last:
                self._open.pop(blob.sha256, None)
        if last:
            self._persist(blob)
            os.close(blob.fd)

    def _persist(self, blob: _Blob) -> None:
        """Record which blocks are on disk, after making sure they are."""
        with blob.cond:
            if not blob.dirty:
                return
            os.fsync(blob.fd)
            blocks = bytes(blob.present)
            blob.dirty = False
        self.db.db()["blobs"].update(blob.sha256, {
            "blocks": blocks, "present": _present_bytes(bytearray(blocks), blob.size),
            "complete": int(blob.verified), "last_access": time.time()})

    # ------------------------------------------------------------ reading

    def read(self, blob: _Blob, offset: int, size: int, fetch: Fetch, readahead: int = 0
             ) -> bytes:
        """``size`` bytes at ``offset``, fetching missing blocks first.

        ``readahead`` > 0 (bytes) marks a sequential reader: the foreground fetch is
        widened to it and the following window is fetched in the background.
        """
        end = min(offset + size, blob.size)
        if end <= offset:
            return b""
        first, last = offset // BLOCK, (end - 1) // BLOCK
        if readahead:
            self._follow(blob, last, readahead, fetch)
        self._ensure(blob, first, last, fetch)
        if blob.failed is not None:
            raise blob.failed
        data = os.pread(blob.fd, end - offset, offset)
        if blob.failed is not None:
            raise blob.failed
        return data

    def _follow(self, blob: _Blob, last: int, readahead: int, fetch: Fetch) -> None:
        """Serve a sequential reader from one continuous background stream.

        The stream claims everything from the reader's position to the end of the file (up
        to the first block already present or claimed) and runs at most ``max_readahead``
        ahead of the reader, waiting for it, and stops when the file is closed: one long
        request instead of many short ones, and never much more than was read.
        """
        with blob.cond:
            if last > blob.read_pos:
                blob.read_pos = last
                if blob.streaming:
                    blob.cond.notify_all()
            if blob.streaming or readahead < 2 * BLOCK or last + 1 >= blob.nblocks:
                return
            first = last + 1
            if blob.present[first] or blob.inflight[first]:
                return
            stop = first
            while stop + 1 < blob.nblocks and not blob.present[stop + 1] and \
                    not blob.inflight[stop + 1]:
                stop += 1
            for b in range(first, stop + 1):
                blob.inflight[b] = 1
            blob.streaming = True
        with self._lock:
            blob.users += 1
        self._pool.submit(self._stream, blob, first, stop, fetch)

    def _stream(self, blob: _Blob, first: int, last: int, fetch: Fetch) -> None:
        try:
            self._fetch(blob, first, last, fetch, follow=True)
        except HcafsError as exc:
            log.debug("read-ahead of %s stopped: %s", blob.sha256[:12], exc)
        except Exception:
            log.exception("read-ahead of %s crashed", blob.sha256[:12])
        finally:
            with blob.cond:
                blob.streaming = False
            self.release(blob)

    def _may_continue(self, blob: _Blob, block: int) -> bool:
        """Flow control of a read-ahead stream: wait while it is far ahead of the reader;
        False once nobody but the stream has the file open."""
        limit = max(1, self.max_readahead // BLOCK)
        with blob.cond:
            while block > blob.read_pos + limit:
                if blob.users <= 1:
                    return False
                blob.cond.wait(0.25)
            return blob.users > 1

    def _ensure(self, blob: _Blob, first: int, last: int, fetch: Fetch) -> None:
        """Make blocks ``first..last`` present, fetching what nobody else is fetching."""
        while True:
            with blob.cond:
                if blob.failed is not None:
                    raise blob.failed
                missing = [b for b in range(first, last + 1) if not blob.present[b]]
                if not missing:
                    return
                claimable = [b for b in missing if not blob.inflight[b]]
                if not claimable:
                    blob.cond.wait(timeout=5)
                    continue
                start = stop = claimable[0]
                while stop + 1 <= last and not blob.present[stop + 1] and \
                        not blob.inflight[stop + 1]:
                    stop += 1
                for b in range(start, stop + 1):
                    blob.inflight[b] = 1
            self._fetch(blob, start, stop, fetch)

    def _fetch(self, blob: _Blob, first: int, last: int, fetch: Fetch, follow: bool = False
               ) -> None:
        """Fetch blocks ``first..last`` (already claimed) and write them to disk."""
        begin, end = blob.span(first)[0], blob.span(last)[1]
        self._reserve(end - begin)
        block, buffer = first, bytearray()
        stream = fetch(begin, end)
        try:
            for chunk in stream:
                if not buffer and block <= last and len(chunk) == _length(blob, block):
                    pieces = [chunk]  # the usual case: one chunk is one block, no copy
                else:
                    buffer += chunk
                    pieces = []
                    while block + len(pieces) <= last and \
                            len(buffer) >= _length(blob, block + len(pieces)):
                        want = _length(blob, block + len(pieces))
                        pieces.append(bytes(buffer[:want]))
                        del buffer[:want]
                for piece in pieces:
                    if follow and not self._may_continue(blob, block):
                        return
                    self._store_block(blob, block, piece)
                    block += 1
            if block <= last:
                raise IntegrityError(f"server sent too few bytes for {blob.sha256[:12]}")
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
            with blob.cond:
                for b in range(block, last + 1):
                    blob.inflight[b] = 0
                blob.cond.notify_all()

    def _store_block(self, blob: _Blob, block: int, data: bytes) -> None:
        try:
            os.pwrite(blob.fd, data, block * BLOCK)
        except OSError as exc:
            if exc.errno == 28:
                raise NoSpace(f"cache disk full while caching {blob.sha256[:12]}") from exc
            raise
        self._advance_hash(blob, block, data)  # before the block is visible to readers
        with blob.cond:
            blob.present[block] = 1
            blob.inflight[block] = 0
            blob.dirty = True
            blob.cond.notify_all()

    def _advance_hash(self, blob: _Blob, block: int, data: bytes) -> None:
        """Hash the contiguous prefix of present blocks (and ``block``, about to be);
        verify when it reaches the end."""
        with blob.hash_lock:
            if blob.verified:
                return
            while blob.hashed < blob.nblocks and (blob.present[blob.hashed]
                                                  or blob.hashed == block):
                if blob.hashed == block:
                    piece = data
                else:
                    start, stop = blob.span(blob.hashed)
                    piece = os.pread(blob.fd, stop - start, start)
                blob.hasher.update(piece)
                blob.hashed += 1
            if blob.hashed < blob.nblocks:
                return
            digest = blob.hasher.hexdigest()
            if digest == blob.sha256:
                blob.verified = True
                blob.dirty = True
                return
            log.error("content of %s failed its sha256 check (got %s); discarded",
                      blob.sha256, digest)
            error = IntegrityError(f"downloaded bytes do not match sha256 {blob.sha256}")
            with blob.cond:
                blob.present[:] = bytes(blob.nblocks)
                blob.dirty = True
                blob.failed = error
                blob.hasher, blob.hashed = hashlib.sha256(), 0
                blob.cond.notify_all()
            os.ftruncate(blob.fd, 0)
            os.ftruncate(blob.fd, blob.size)
        raise error

    def adopt(self, sha256: str, size: int, path: str) -> None:
        """Take a complete local file whose sha256 is known (and verified by the server)
        as this blob's bytes, by renaming it into the cache."""
        with self._lock:
            in_use = sha256 in self._open
        if in_use or os.path.exists(self.path(sha256)):
            os.unlink(path)
            return
        os.makedirs(os.path.dirname(self.path(sha256)), exist_ok=True)
        os.replace(path, self.path(sha256))
        nblocks = -(-size // BLOCK)
        self.db.db()["blobs"].upsert({"sha256": sha256, "size": size,
                                      "blocks": bytes([1]) * nblocks, "present": size,
                                      "complete": 1, "last_access": time.time(),
                                      "pinned": 0}, pk="sha256")
        with self._lock:
            self.used += size

    # ------------------------------------------------------------ space

    def _reserve(self, nbytes: int) -> None:
        with self._lock:
            self.used += nbytes
            if self.used <= self.max_bytes:
                return
            in_use = set(self._open)
        self.evict(in_use)

    def evict(self, keep: set[str] | None = None) -> int:
        """Drop least recently used blobs until under the limit; returns bytes freed."""
        keep = keep if keep is not None else set(self._open)
        db = self.db.db()
        freed = 0
        rows = db.execute("select sha256, present from blobs where pinned = 0 "
                          "order by last_access").fetchall()
        for sha256, present in rows:
            if self.used <= self.max_bytes:
                break
            if sha256 in keep:
                continue
            try:
                os.unlink(self.path(sha256))
            except FileNotFoundError:
                pass
            db["blobs"].delete(sha256)
            with self._lock:
                self.used -= present
            freed += present
        if self.used > self.max_bytes and not self._warned_full:
            self._warned_full = True
            log.warning("content cache is over its limit with files in use or pinned")
        return freed

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            blobs = list(self._open.values())
        for blob in blobs:
            self._persist(blob)


def _length(blob: _Blob, block: int) -> int:
    start, stop = blob.span(block)
    return stop - start


def _present_bytes(blocks: bytearray, size: int) -> int:
    count = blocks.count(1)
    if count and blocks and blocks[-1] and size % BLOCK:
        return (count - 1) * BLOCK + size % BLOCK
    return count * BLOCK
