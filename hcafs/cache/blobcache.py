"""The content cache: file bytes on local disk, fetched lazily by range, named by sha256.

* **Content-addressed.**  A blob is stored once under its sha256, whatever bundles name it.
* **Ranges, not whole files.**  A blob is a sparse file cut into 1 MiB blocks; a bitmap says
  which blocks are on disk.  A read fetches only the blocks it touches; a sequential reader
  also gets up to ``streams`` parallel ranged fetches of ``chunk`` bytes each, running at
  most ``max_readahead`` ahead of it.  Fetched bytes are written in place into the cache
  file, and readers waiting on a block are woken as soon as it lands.
* **Verified.**  Every block carries the crc32c of the bytes as they were fetched.  A block
  loaded from disk is checked against it before it is first served (once per load of the
  blob): bytes that changed on disk are never served, the read fails with
  :class:`~hcafs.errors.IntegrityError` and the block is fetched again by the next read.
  The whole file's sha256 is computed in order as the contiguous prefix grows: from memory
  for a block that lands where the hash stands, by reading it back on a worker thread off
  the readers' path for one that landed ahead of it; a mismatch discards every block.  So
  a reader of a file that has never been read to the end gets bytes exactly as the server
  sent them, checked against local corruption, but not yet against the file's sha256.
* **Bounded.**  ``max_bytes`` caps the blocks on disk; the least recently used blobs that are
  neither open nor pinned are evicted to make room.  Pinned blobs (bytes not yet on the
  server) are never evicted.
* **Crash-safe.**  The bitmap in SQLite only ever names blocks that were fsynced before it
  was written; after a crash the worst case is fetching a block again.

Threading: any thread may call :meth:`BlobCache.span` or :meth:`BlobCache.read`; the per-blob
condition variable orders block claims, and each block is fetched by exactly one thread
(foreground reader or read-ahead stream) while others wait for it.  The read-ahead streams
and the sha256 worker run on the cache's own pools and hold a reference to the blob while
they work.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import crc32c as _crc32c

from ..errors import HcafsError, IntegrityError, NoSpace, Unreachable
from .cachedb import CacheDB

log = logging.getLogger(__name__)

BLOCK = 1024 * 1024
CRC = 4  # bytes of crc32c per block
RESUMES = 3  # broken fetches in a row, with nothing gained, before a read fails
MiB = 1024 * 1024
DEFAULT_MIN_FREE = 1024 * MiB  # the most the default floor of free disk space is
ROOM_NOTE_INTERVAL = 60.0  # seconds between log lines about room made on the disk
# Bytes [start, end) of the blob, in chunks; a chunk may be a view of a buffer the fetcher
# reuses for the next one, so each is used up before the next is asked for.
Fetch = Callable[[int, int], Iterator["bytes | memoryview"]]


class _Blob:
    """A blob in use: its open file, its bitmap and its hashing progress."""

    def __init__(self, sha256: str, size: int, path: str, blocks: bytearray, complete: bool,
                 crcs: bytearray):
        self.sha256 = sha256
        self.size = size
        self.path = path
        self.nblocks = -(-size // BLOCK)
        self.present = blocks
        self.crcs = crcs  # CRC bytes per block, valid where present
        self.checked = bytearray(self.nblocks)  # present and checked since this load
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
        self.window = 0  # bytes the streams may fetch past read_pos (the reader's readahead)
        self.streams = 0  # read-ahead streams running
        self.hashing = False  # the sha256 worker has a pass queued or running
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(self.fd).st_size != size:
            os.ftruncate(self.fd, size)

    def span(self, block: int) -> tuple[int, int]:
        start = block * BLOCK
        return start, min(start + BLOCK, self.size)

    def all_present(self) -> bool:
        return self.present.count(1) == self.nblocks


class BlobCache:
    def __init__(self, root: str, db: CacheDB, max_bytes: int, streams: int = 4,
                 max_readahead: int = 64 * BLOCK, chunk: int = 8 * BLOCK,
                 min_free: int | None = None):
        self.root = root
        self.db = db
        self.max_bytes = max_bytes
        os.makedirs(root, exist_ok=True)
        if min_free is None:  # the default floor: a tenth of the disk, at most 1 GiB
            vfs = os.statvfs(root)
            min_free = min(DEFAULT_MIN_FREE, vfs.f_blocks * vfs.f_frsize // 10)
        self.min_free = min_free  # the cache disk's free bytes the cache never takes
        self.max_readahead = max_readahead
        self.streams = max(1, streams)
        self.chunk_blocks = max(1, chunk // BLOCK)
        self._lock = threading.Lock()
        self._open: dict[str, _Blob] = {}
        row = db.db().execute("select coalesce(sum(present), 0) from blobs").fetchone()
        self.used = int(row[0])
        self._pool = ThreadPoolExecutor(max_workers=self.streams, thread_name_prefix="readahead")
        self._hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256")
        self._closing = threading.Event()  # set by close(): streams stop at once
        self._buffers = threading.local()  # each thread's block buffer for reading back
        self._warned_full = False
        self._evicting = threading.Lock()
        self._said_room = -ROOM_NOTE_INTERVAL  # when evict() last said it made room

    def _buffer(self) -> memoryview:
        """This thread's buffer of one block, for reading blocks back from a cache file
        (kept for the thread's life: no fresh megabyte, page-faulted in, per block)."""
        buffer = getattr(self._buffers, "block", None)
        if buffer is None:
            buffer = self._buffers.block = memoryview(bytearray(BLOCK))
        return buffer

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
        row = db.execute("select size, blocks, complete, crcs from blobs where sha256 = ?",
                         [sha256]).fetchone()
        nblocks = -(-size // BLOCK)
        path = self.path(sha256)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if row is not None and row[0] == size and os.path.exists(path) and row[3] and \
                len(row[3]) == nblocks * CRC:
            blocks = bytearray(row[1] or bytes(nblocks))
            complete = bool(row[2])
            crcs = bytearray(row[3])
        else:  # unknown, or cached without block sums: fetch again
            blocks, complete, crcs = bytearray(nblocks), False, bytearray(nblocks * CRC)
        db["blobs"].upsert({"sha256": sha256, "size": size, "blocks": bytes(blocks),
                            "present": _present_bytes(blocks, size), "complete": int(complete),
                            "last_access": time.time(), "pinned": 0, "crcs": bytes(crcs)},
                           pk="sha256")
        return _Blob(sha256, size, path, blocks, complete, crcs)

    def release(self, blob: _Blob) -> None:
        with self._lock:
            blob.users -= 1
            if blob.users:
                return
        # Record the bitmap before the blob leaves _open: a new acquire in between either
        # finds this object still open, or loads what was just recorded, never older state.
        self._persist(blob)
        with self._lock:
            last = blob.users == 0 and self._open.get(blob.sha256) is blob
            if last:
                self._open.pop(blob.sha256)
        if last:
            os.close(blob.fd)

    def _persist(self, blob: _Blob) -> None:
        """Record which blocks are on disk, after making sure they are."""
        with blob.cond:
            if not blob.dirty:
                return
            os.fsync(blob.fd)
            blocks, crcs = bytes(blob.present), bytes(blob.crcs)
            blob.dirty = False
        self.db.db()["blobs"].update(blob.sha256, {
            "blocks": blocks, "present": _present_bytes(bytearray(blocks), blob.size),
            "complete": int(blob.verified), "last_access": time.time(), "crcs": crcs})

    # ------------------------------------------------------------ reading

    def span(self, blob: _Blob, offset: int, size: int, fetch: Fetch, readahead: int = 0
             ) -> tuple[int, int, int]:
        """``(fd, offset, length)`` of the cache file holding ``size`` bytes at ``offset``,
        once they are present and checked: what a zero-copy reply hands to the kernel.

        ``readahead`` > 0 (bytes) marks a sequential reader: parallel background streams
        fetch the window that follows.
        """
        end = min(offset + size, blob.size)
        if end <= offset:
            return blob.fd, offset, 0
        first, last = offset // BLOCK, (end - 1) // BLOCK
        if readahead:
            self._follow(blob, last, readahead, fetch)
        self._ensure(blob, first, last, fetch)
        self._check(blob, first, last)
        if not blob.verified and blob.all_present():
            # Once the file is whole, nothing more is served until it matches its sha256:
            # a reader that reads it all always learns of a bad copy.
            self.wait_verified(blob)
        if blob.failed is not None:
            raise blob.failed
        return blob.fd, offset, end - offset

    def read(self, blob: _Blob, offset: int, size: int, fetch: Fetch, readahead: int = 0
             ) -> bytes:
        """``size`` bytes at ``offset`` (see :meth:`span`), as bytes."""
        fd, start, length = self.span(blob, offset, size, fetch, readahead)
        return os.pread(fd, length, start) if length else b""

    def _check(self, blob: _Blob, first: int, last: int) -> None:
        """Check blocks loaded from disk against their crc32c before they are first served;
        a block that changed is dropped (fetched again by the next read) and the read fails."""
        if blob.checked[first:last + 1].count(1) == last - first + 1:
            return
        for block in range(first, last + 1):
            with blob.cond:
                while blob.inflight[block] and blob.present[block] and not blob.checked[block]:
                    blob.cond.wait(1)  # a read-ahead stream is checking it
            if blob.checked[block]:
                continue
            start, stop = blob.span(block)
            buffer = self._buffer()
            data = buffer[:os.preadv(blob.fd, [buffer[:stop - start]], start)]
            with blob.cond:
                if blob.checked[block] or not blob.present[block]:
                    continue
                if _crc32c.crc32c(data).to_bytes(CRC, "big") == \
                        bytes(blob.crcs[block * CRC:(block + 1) * CRC]):
                    blob.checked[block] = 1
                    continue
                blob.present[block] = 0
                blob.dirty = True
                if blob.verified:  # the file as a whole is no longer known to be intact
                    blob.verified = False
                    blob.hasher, blob.hashed = hashlib.sha256(), 0
            log.error("cached block %d of %s does not match its checksum (changed on disk); "
                      "dropped, the next read fetches it again", block, blob.sha256)
            raise IntegrityError(f"cached bytes of {blob.sha256[:12]} are corrupt "
                                 f"(block {block}); read again to refetch")

    def _follow(self, blob: _Blob, last: int, readahead: int, fetch: Fetch) -> None:
        """Keep up to ``streams`` background fetches running ahead of a sequential reader.

        Each stream claims the next ``chunk`` of missing blocks within ``max_readahead`` of
        the reader (once it has read a chunk in sequence), fetches it with one ranged
        request, and claims the next; it waits while the window is full and stops when the
        file is closed.
        """
        with blob.cond:
            if last > blob.read_pos:
                blob.read_pos = last
                blob.cond.notify_all()
            # Streams start once the reader has read a whole chunk in sequence (one random
            # read, with the kernel's own read-ahead, never sets a chunk of fetches going),
            # and then fetch up to max_readahead ahead; a reader that turns random shrinks
            # the window to what it asks, so running streams stop claiming.
            sequential = readahead >= max(2 * BLOCK, self.chunk_blocks * BLOCK)
            blob.window = self.max_readahead if sequential else readahead
            if not sequential or \
                    blob.streams >= self.streams or \
                    self._next_chunk(blob, claim=False) is None:
                return
            blob.streams += 1
        with self._lock:
            blob.users += 1
        self._pool.submit(self._stream, blob, fetch)

    def _next_chunk(self, blob: _Blob, claim: bool) -> tuple[int, int, bool] | None:
        """The next run of blocks inside the reader's window that needs work (cond held):
        ``(first, last, fetch)``, either missing blocks to fetch or present blocks not yet
        checked since they were loaded (checked ahead of the reader, off its path).  A run
        to fetch is a whole chunk unless something other than the window's edge ends it."""
        window = max(1, blob.window // BLOCK)
        first = blob.read_pos + 1
        stop = min(blob.nblocks, blob.read_pos + 1 + window)
        while first < stop and (blob.inflight[first] or blob.checked[first]):
            first += 1
        if first >= stop:
            return None
        fetch = not blob.present[first]
        last = first
        while last + 1 < min(stop, first + self.chunk_blocks) and \
                not blob.inflight[last + 1] and not blob.checked[last + 1] and \
                (not blob.present[last + 1]) == fetch:
            last += 1
        if fetch and last + 1 == stop < blob.nblocks and last - first + 1 < self.chunk_blocks \
                and window >= self.chunk_blocks:
            # Only the window's edge cuts this run short: wait until the reader has made
            # room for a whole chunk, rather than sending a request per block it reads.
            return None
        if claim:
            for b in range(first, last + 1):
                blob.inflight[b] = 1
        return first, last, fetch

    def _stream(self, blob: _Blob, fetch: Fetch) -> None:
        try:
            while True:
                with blob.cond:
                    run = self._next_chunk(blob, claim=True)
                    while run is None and blob.users > 1 and blob.read_pos + 1 < blob.nblocks \
                            and not self._closing.is_set():
                        blob.cond.wait(0.25)  # the window is full: wait for the reader
                        run = self._next_chunk(blob, claim=True)
                    if run is None or blob.users <= 1 or self._closing.is_set():
                        if run is not None:
                            for b in range(run[0], run[1] + 1):
                                blob.inflight[b] = 0
                        return
                if run[2]:
                    self._fetch(blob, run[0], run[1], fetch)
                else:
                    self._check_ahead(blob, run[0], run[1])
        except HcafsError as exc:
            log.debug("read-ahead of %s stopped: %s", blob.sha256[:12], exc)
        except Exception:
            log.exception("read-ahead of %s crashed", blob.sha256[:12])
        finally:
            with blob.cond:
                blob.streams -= 1
            self.release(blob)

    def _check_ahead(self, blob: _Blob, first: int, last: int) -> None:
        """Check claimed present blocks ahead of a reader; a bad one is dropped quietly
        for the reader to fetch again (it never sees the bad bytes)."""
        try:
            for block in range(first, last + 1):
                with blob.cond:
                    blob.inflight[block] = 0  # released block by block as checked
                    blob.cond.notify_all()
                try:
                    self._check(blob, block, block)
                except IntegrityError:
                    pass  # logged and dropped by _check
        finally:
            with blob.cond:
                for b in range(first, last + 1):
                    blob.inflight[b] = 0
                blob.cond.notify_all()

    def _ensure(self, blob: _Blob, first: int, last: int, fetch: Fetch) -> None:
        """Make blocks ``first..last`` present, fetching what nobody else is fetching.

        A fetch that breaks off keeps the blocks it wrote and resumes at the first missing
        one; after ``RESUMES`` breaks in a row with no block gained, the read fails.
        """
        fruitless = 0
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
            try:
                self._fetch(blob, start, stop, fetch)
            except Unreachable as exc:
                gained = bool(blob.present[start])
                fruitless = 0 if gained else fruitless + 1
                if fruitless >= RESUMES:
                    raise
                log.info("fetch of %s broke off (%s); resuming at the first missing block",
                         blob.sha256[:12], exc)

    def _fetch(self, blob: _Blob, first: int, last: int, fetch: Fetch) -> None:
        """Fetch blocks ``first..last`` (already claimed) and write them in place."""
        begin, end = blob.span(first)[0], blob.span(last)[1]
        block, buffer, stream = first, bytearray(), None
        try:  # whatever fails, the claimed blocks not written are released (finally)
            self._reserve(end - begin)
            stream = fetch(begin, end)
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

    def _store_block(self, blob: _Blob, block: int, data: bytes | memoryview) -> None:
        """Write one fetched block in place and mark it present.

        A block that lands where the in-order sha256 stands is hashed from ``data`` at
        once, instead of being read back by the sha256 worker; the hash lock is held from
        the write to the hash, so no discard of the file can come between them.
        """
        if blob.hashed == block and not blob.verified:  # a hint, checked again under the lock
            with blob.hash_lock:
                self._write_block(blob, block, data)
                if blob.hashed == block and not blob.verified:
                    blob.hasher.update(data)
                    blob.hashed += 1
                    if blob.hashed == blob.nblocks:
                        self._verify(blob)
        else:
            self._write_block(blob, block, data)
        with blob.cond:
            schedule = not blob.verified and not blob.hashing and \
                blob.hashed < blob.nblocks and bool(blob.present[blob.hashed])
            if schedule:
                blob.hashing = True
        if schedule:
            with self._lock:
                blob.users += 1
            self._hasher.submit(self._hash_pass, blob)

    def _write_block(self, blob: _Blob, block: int, data: bytes | memoryview) -> None:
        """``pwrite`` a block with its crc32c, then wake the readers waiting for it."""
        try:
            os.pwrite(blob.fd, data, block * BLOCK)
        except OSError as exc:
            if exc.errno == 28:
                raise NoSpace(f"cache disk full while caching {blob.sha256[:12]}") from exc
            raise
        crc = _crc32c.crc32c(data).to_bytes(CRC, "big")
        with blob.cond:
            blob.crcs[block * CRC:(block + 1) * CRC] = crc
            blob.present[block] = 1
            blob.checked[block] = 1
            blob.inflight[block] = 0
            blob.dirty = True
            blob.cond.notify_all()

    def _hash_pass(self, blob: _Blob) -> None:
        """Advance the in-order sha256 over the present prefix, reading it back from the
        cache file (blocks that landed out of order); verify at the end."""
        buffer = self._buffer()
        try:
            while True:
                with blob.hash_lock:
                    with blob.cond:
                        if blob.verified or blob.hashed >= blob.nblocks or \
                                not blob.present[blob.hashed]:
                            blob.hashing = False
                            return
                        block = blob.hashed
                    start, stop = blob.span(block)
                    got = os.preadv(blob.fd, [buffer[:stop - start]], start)
                    blob.hasher.update(buffer[:got])
                    blob.hashed += 1
                    if blob.hashed == blob.nblocks:
                        self._verify(blob)
        except Exception:
            log.exception("sha256 of %s crashed", blob.sha256[:12])
            with blob.cond:
                blob.hashing = False
        finally:
            self.release(blob)

    def _verify(self, blob: _Blob) -> None:
        """The whole file has been hashed (hash_lock held): accept it or discard it."""
        digest = blob.hasher.hexdigest()
        if digest == blob.sha256:
            with blob.cond:
                blob.verified = True
                blob.dirty = True
            return
        log.error("content of %s failed its sha256 check (got %s); discarded",
                  blob.sha256, digest)
        error = IntegrityError(f"downloaded bytes do not match sha256 {blob.sha256}")
        with blob.cond:
            blob.present[:] = bytes(blob.nblocks)
            blob.checked[:] = bytes(blob.nblocks)
            blob.dirty = True
            blob.failed = error
            blob.hasher, blob.hashed = hashlib.sha256(), 0
            blob.cond.notify_all()
        os.ftruncate(blob.fd, 0)
        os.ftruncate(blob.fd, blob.size)

    def wait_verified(self, blob: _Blob, timeout: float = 30.0) -> bool:
        """Wait for the sha256 worker to finish a blob whose blocks are all present."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with blob.cond:
                if blob.verified or blob.failed is not None:
                    return blob.verified
                if not blob.all_present():
                    return False
            time.sleep(0.01)
        return blob.verified

    def adopt(self, sha256: str, size: int, path: str) -> None:
        """Take a complete local file whose sha256 is known (and verified by the server)
        as this blob's bytes, by renaming it into the cache."""
        with self._lock:
            in_use = sha256 in self._open
        if in_use or os.path.exists(self.path(sha256)):
            os.unlink(path)
            return
        crcs = _block_crcs(path)
        os.makedirs(os.path.dirname(self.path(sha256)), exist_ok=True)
        os.replace(path, self.path(sha256))
        nblocks = -(-size // BLOCK)
        self.db.db()["blobs"].upsert({"sha256": sha256, "size": size,
                                      "blocks": bytes([1]) * nblocks, "present": size,
                                      "complete": 1, "last_access": time.time(),
                                      "pinned": 0, "crcs": crcs}, pk="sha256")
        with self._lock:
            self.used += size

    # ------------------------------------------------------------ space

    def free_bytes(self) -> int:
        """What the cache disk has free (for an unprivileged writer)."""
        vfs = os.statvfs(self.root)
        return vfs.f_bavail * vfs.f_frsize

    def _reserve(self, nbytes: int) -> None:
        """Make room for ``nbytes`` about to be fetched: under ``max_bytes``, and with
        ``min_free`` still free on the disk once they are written."""
        with self._lock:
            self.used += nbytes
            over = self.used > self.max_bytes
            in_use = set(self._open)
        floor = self.min_free + nbytes if self.min_free else 0
        if over or (floor and self.free_bytes() < floor):
            self.evict(in_use, free=floor)

    def evict(self, keep: set[str] | None = None, free: int = 0) -> int:
        """Drop least recently used blobs until under the limit and, with ``free``, until
        the cache disk has that many bytes free; returns bytes freed."""
        keep = keep or set()
        db = self.db.db()
        freed = 0
        with self._evicting:  # one evictor at a time: each blob is dropped (and counted) once
            rows = db.execute("select sha256 from blobs where pinned = 0 order by "
                              "last_access").fetchall()
            for (sha256,) in rows:
                if self.used <= self.max_bytes and (not free or self.free_bytes() >= free):
                    break
                if sha256 in keep:
                    continue
                # Under the lock acquire() loads a blob with: it finds the file and its row
                # both there or both gone, never a row whose file is missing.
                with self._lock:
                    if sha256 in self._open:
                        continue
                    row = db.execute("select present from blobs where sha256 = ? and "
                                     "pinned = 0", [sha256]).fetchone()
                    if row is None:
                        continue
                    try:
                        os.unlink(self.path(sha256))
                    except FileNotFoundError:
                        pass
                    db.execute("delete from blobs where sha256 = ?", [sha256])
                    self.used -= row[0]
                freed += row[0]
        if self.used > self.max_bytes and not self._warned_full:
            self._warned_full = True
            log.warning("content cache is over its limit with files in use or pinned")
        if free and freed and time.monotonic() - self._said_room > ROOM_NOTE_INTERVAL:
            self._said_room = time.monotonic()
            log.info("content cache: dropped %.1f MiB of cached content to keep %.1f MiB "
                     "free on the cache disk (said at most once a minute)", freed / MiB,
                     free / MiB)
        return freed

    def close(self) -> None:
        # A stream waiting for a reader that will never come back (files still open when
        # the mount goes away) must not hold the shutdown up.
        self._closing.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._hasher.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            blobs = list(self._open.values())
        for blob in blobs:
            self._persist(blob)


def _block_crcs(path: str) -> bytes:
    """The crc32c of each block of a local file, as the ``crcs`` column keeps them."""
    sums = bytearray()
    with open(path, "rb", buffering=0) as handle:
        while data := handle.read(BLOCK):
            sums += _crc32c.crc32c(data).to_bytes(CRC, "big")
    return bytes(sums)


def _length(blob: _Blob, block: int) -> int:
    start, stop = blob.span(block)
    return stop - start


def _present_bytes(blocks: bytearray, size: int) -> int:
    count = blocks.count(1)
    if count and blocks and blocks[-1] and size % BLOCK:
        return (count - 1) * BLOCK + size % BLOCK
    return count * BLOCK
