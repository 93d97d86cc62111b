"""Checksums of a pending file computed while it is written, so staging need not read it.

A file written from empty, in order (``cp``, a download, anything that writes once from the
start to the end), has its checksums (all four, or only crc32c when staging needs no more,
see ``checksums.py``) computed from the bytes of its write calls by a
thread beside the writer: the write callback only hands the bytes over.  They are good for
the file only as it was when its last writer closed it, so anything else drops them, and
staging then computes them afresh in a pass of its own:

* a write at any other offset than the end of what was written (a rewrite, a hole, writes
  out of order), a truncate, a write after the file was closed or through a handle that did
  not truncate it;
* a file whose data file no longer shows the inode, size and mtime it had at that close.

The bytes waiting to be hashed are bounded (:data:`BUDGET`, for all files together): a write
that does not fit drops the file's checksums instead of waiting, so a writer is never held
up.  Nothing here is persistent: after a restart every file gets the fresh pass.

Threading: a small pool of hashing threads (:data:`HASHERS`), shared by all files; each
file's bytes are hashed in order by one of them at a time (a file is drained by at most
one task), and a task touches only its own :class:`_Summing`.  The writers' bookkeeping is
under one lock.  (A thread per file cost a FUSE create a thread start, about a fifth of
creating a small file.)
"""

from __future__ import annotations

import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from ..checksums import MAX_PARTS, MIN_PART_SIZE, Checksummer, Checksums

BUDGET = 16 * 1024 * 1024  # bytes handed over and not yet hashed, all files together
HASHERS = 2  # threads hashing the bytes of files being written
_END = None


class _Summing:
    """One file's checksums, computed on the shared pool from the bytes handed to it."""

    def __init__(self, release, pool: ThreadPoolExecutor, complete: bool):
        self.complete = complete
        self.written = 0  # the next offset expected, as the writers see it
        self.closed = False
        self.stamp: tuple[int, int, int] | None = None
        self.result: Checksums | None = None
        self.done = threading.Event()
        self._release = release  # gives the budget back for bytes hashed (or dropped)
        self._pool = pool
        self._dropped = threading.Event()
        self._lock = threading.Lock()  # the chunks waiting, and whether a task drains them
        self._chunks: deque = deque()
        self._draining = False
        self._summer: Checksummer | None = None  # made by the first task

    def feed(self, data: bytes) -> None:
        self._put(data)

    def finish(self) -> None:
        self._put(_END)

    def drop(self) -> None:
        self._dropped.set()
        self._put(_END)

    def _put(self, item) -> None:
        with self._lock:
            self._chunks.append(item)
            if self._draining:
                return
            self._draining = True
        try:
            self._pool.submit(self._drain)
        except RuntimeError:  # the pool is shut down (interpreter exit): no sums, no wait
            with self._lock:
                chunks, self._chunks, self._draining = list(self._chunks), deque(), False
            self._dropped.set()
            self.done.set()
            for chunk in chunks:
                if chunk is not _END:
                    self._release(len(chunk))

    def _drain(self) -> None:
        """Hash what is waiting, in order, until nothing is (one task per file at a time)."""
        while True:
            with self._lock:
                if not self._chunks:
                    self._draining = False
                    return
                item = self._chunks.popleft()
            if self.done.is_set():  # ended already: only give the budget back
                if item is not _END:
                    self._release(len(item))
                continue
            try:
                if item is _END:
                    self._end()
                    continue
                if not self._dropped.is_set():
                    if self._summer is None:
                        # the DSS's 64 MiB parts, good to 640 GiB
                        self._summer = Checksummer(0, self.complete)
                    self._summer.update(item)
            except Exception:  # noqa: BLE001 - staging makes the fresh pass instead
                self._dropped.set()
                self.done.set()
            finally:
                if item is not _END:
                    self._release(len(item))

    def _end(self) -> None:
        try:
            if not self._dropped.is_set():
                sums = (self._summer or Checksummer(0, self.complete)).result()
                if sums.size <= MAX_PARTS * MIN_PART_SIZE:
                    self.result = sums
        finally:
            self.done.set()


class WrittenSums:
    """The checksums of files being (or just) written in order, by data file id: all four,
    or with ``complete=False`` crc32c and the size only."""

    def __init__(self, budget: int = BUDGET, complete: bool = True):
        self.complete = complete
        self._lock = threading.Lock()
        self._files: dict[int, _Summing] = {}
        self._room = budget
        self._pool = ThreadPoolExecutor(HASHERS, thread_name_prefix="write-sums")

    def _give_back(self, count: int) -> None:
        with self._lock:
            self._room += count

    def start(self, file_id: int) -> None:
        """The file was just created empty (or truncated to empty by an open for writing)."""
        with self._lock:
            old = self._files.pop(file_id, None)
            self._files[file_id] = _Summing(self._give_back, self._pool, self.complete)
        if old is not None:
            old.drop()

    def drop(self, file_id: int) -> None:
        """The file changed in a way its checksums cannot follow."""
        with self._lock:
            old = self._files.pop(file_id, None)
        if old is not None:
            old.drop()

    def wrote(self, file_id: int, data: bytes, offset: int) -> None:
        """``data`` is now at ``offset`` in the file (the whole of it was written)."""
        with self._lock:
            summing = self._files.get(file_id)
            if summing is None:
                return
            if summing.closed or offset != summing.written or len(data) > self._room:
                del self._files[file_id]
            else:
                summing.written += len(data)
                self._room -= len(data)
                summing.feed(data)
                return
        summing.drop()

    def closed(self, file_id: int, fd: int) -> None:
        """The file's last writer closes ``fd``: its checksums are for the file as it is."""
        stamp = _stamp(fd)
        with self._lock:
            summing = self._files.get(file_id)
            if summing is None or summing.closed:
                return
            if stamp[1] != summing.written:
                del self._files[file_id]
            else:
                summing.closed = True
                summing.stamp = stamp
                summing.finish()
                return
        summing.drop()

    def checksums(self, file_id: int, fd: int) -> Checksums | None:
        """The file's checksums if they were computed as it was written and ``fd`` (open on
        its data file) still shows it as it was when it was closed; None otherwise (after
        waiting for the bytes handed over to be hashed).  They are handed out once."""
        with self._lock:
            summing = self._files.get(file_id)
            if summing is None or not summing.closed:
                return None
            del self._files[file_id]  # used once: a repeated attempt makes the fresh pass
        summing.done.wait()
        if summing.result is None or _stamp(fd) != summing.stamp:
            return None
        return summing.result


def _stamp(fd: int) -> tuple[int, int, int]:
    stat = os.fstat(fd)
    return stat.st_ino, stat.st_size, stat.st_mtime_ns
