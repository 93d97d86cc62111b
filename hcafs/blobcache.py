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

from .cachedb import CacheDB
from .errors import HcafsError, IntegrityError, NoSpace

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
        window = max(1, readahead // BLOCK)
        self._ensure(blob, first, last, fetch, last + window if readahead else last)
        if blob.failed is not None:
            raise blob.failed
        if readahead and last + 1 < blob.nblocks:
            ahead_last = min(blob.nblocks - 1, last + window)
            if not all(blob.present[last + 1:ahead_last + 1]) and \
                    not all(blob.inflight[last + 1:ahead_last + 1]):
                self._pool.submit(self._prefetch, blob, last + 1, ahead_last, fetch)
        data = os.pread(blob.fd, end - offset, offset)
        if blob.failed is not None:
            raise blob.failed
        return data

    def _prefetch(self, blob: _Blob, first: int, last: int, fetch: Fetch) -> None:
        with self._lock:
            if blob.users == 0:
                return
            blob.users += 1
        try:
            self._ensure(blob, first, last, fetch, last, wait=False)
        except HcafsError as exc:
            log.debug("read-ahead of %s failed: %s", blob.sha256[:12], exc)
        except Exception:
            log.exception("read-ahead of %s crashed", blob.sha256[:12])
        finally:
            self.release(blob)

    def _ensure(self, blob: _Blob, first: int, last: int, fetch: Fetch, widen_to: int,
                wait: bool = True) -> None:
        """Make blocks ``first..last`` present; claim up to ``widen_to`` when fetching."""
        widen_to = min(widen_to, blob.nblocks - 1)
        while True:
            with blob.cond:
                if blob.failed is not None:
                    raise blob.failed
                missing = [b for b in range(first, last + 1) if not blob.present[b]]
                if not missing:
                    return
                claimable = [b for b in missing if not blob.inflight[b]]
                if not claimable:
                    if not wait:
                        return
                    blob.cond.wait(timeout=5)
                    continue
                start = stop = claimable[0]
                while stop + 1 <= widen_to and not blob.present[stop + 1] and \
                        not blob.inflight[stop + 1]:
                    stop += 1
                for b in range(start, stop + 1):
                    blob.inflight[b] = 1
            self._fetch(blob, start, stop, fetch)

    def _fetch(self, blob: _Blob, first: int, last: int, fetch: Fetch) -> None:
        """Fetch blocks ``first..last`` (already claimed) and write them to disk."""
        begin, end = blob.span(first)[0], blob.span(last)[1]
        self._reserve(end - begin)
        block, buffer = first, bytearray()
        try:
            for chunk in fetch(begin, end):
                buffer += chunk
                while block <= last:
                    want = blob.span(block)[1] - blob.span(block)[0]
                    if len(buffer) < want:
                        break
                    self._store_block(blob, block, bytes(buffer[:want]))
                    del buffer[:want]
                    block += 1
            if block <= last:
                raise IntegrityError(f"server sent too few bytes for {blob.sha256[:12]}")
        finally:
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


def _present_bytes(blocks: bytearray, size: int) -> int:
    count = blocks.count(1)
    if count and blocks and blocks[-1] and size % BLOCK:
        return (count - 1) * BLOCK + size % BLOCK
    return count * BLOCK
