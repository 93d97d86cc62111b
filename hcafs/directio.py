"""Copies and reads that go around the page cache (``O_DIRECT``), for bytes read only once.

A staged copy is written by the client, read once by the server (its checksum pass) and then
renamed into the server's store: nothing reads it from memory again soon.  Through the page
cache, each of those bytes takes a page that is new to it, and on machines that hand freed
memory back to their hypervisor (virtio-balloon free page reporting, as on the machines this
project is measured on) a new page costs about ten times its copy.  Written and read with
``O_DIRECT`` from one reused buffer, the same bytes cost a tenth of the CPU; the disk does
the rest (``docs/writing.md``, *Bytes read once*).

All three transfers (:func:`copy`, :func:`read_chunks`, :func:`write_chunks`) fall back to
the page cache wherever ``O_DIRECT`` is refused (tmpfs before Linux 6.6, some network or
FUSE filesystems) or a read or write stops being aligned (a short read or write in the
middle of a file): the bytes are the same either way, only their cost differs.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

ALIGN = 4096  # offsets, lengths and buffer addresses of O_DIRECT transfers
CHUNK = 4 * 1024 * 1024  # bytes per transfer (a multiple of ALIGN)

_O_DIRECT = getattr(os, "O_DIRECT", 0)


def set_direct(fd: int, on: bool) -> bool:
    """Turn ``O_DIRECT`` on or off for ``fd``; True if it is now as asked."""
    if not _O_DIRECT:
        return not on
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    wanted = flags | _O_DIRECT if on else flags & ~_O_DIRECT
    if wanted == flags:
        return True
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, wanted)
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # EINVAL: this filesystem has no direct I/O
            raise
        return False
    return True


KEEP = 2  # buffers kept between transfers; more are made while more transfers run at once
_spare: list[memoryview] = []
_spare_lock = threading.Lock()


@contextmanager
def _buffer() -> Iterator[memoryview]:
    """A page-aligned buffer of :data:`CHUNK` bytes for one transfer.  Up to :data:`KEEP`
    are kept for the next transfers (so that their pages are not new ones each time, and
    the memory kept stays bounded whatever the number of threads); the others are unmapped
    with their last view."""
    with _spare_lock:
        view = _spare.pop() if _spare else None
    if view is None:
        view = memoryview(mmap.mmap(-1, CHUNK))
    try:
        yield view
    finally:
        with _spare_lock:
            if len(_spare) < KEEP:
                _spare.append(view)


def read_chunks(fd: int, size: int) -> Iterator[memoryview]:
    """The first ``size`` bytes of ``fd``, read around the page cache where it can be.

    Each chunk is a view of one reused buffer: it is valid until the next one is asked for.
    A file shorter than ``size`` ends the chunks early.  ``fd`` is left as it was given."""
    direct = set_direct(fd, True)
    try:
        with _buffer() as view:
            offset = 0
            while offset < size:
                want = min(CHUNK, size - offset)
                if direct and want % ALIGN:
                    want += ALIGN - want % ALIGN  # the file's end: the read returns short
                try:
                    got = os.preadv(fd, [view[:want]], offset)
                except OSError as exc:
                    direct = _refused(fd, direct, exc)  # taken at fcntl, not at the read
                    continue
                if got <= 0:
                    return  # the file is shorter than ``size``: the caller sees it in the sum
                got = min(got, size - offset)
                offset += got
                if direct and offset < size and offset % ALIGN:
                    direct = not set_direct(fd, False)  # a short read: the rest buffered
                yield view[:got]
    finally:
        if direct:
            set_direct(fd, False)


def _refused(fd: int, direct: bool, exc: OSError) -> bool:
    """After a transfer failed with ``exc``: turn ``O_DIRECT`` off and return False if it
    was on and refused (EINVAL), so the transfer is tried again through the page cache;
    re-raise anything else."""
    if not direct or exc.errno != errno.EINVAL or not set_direct(fd, False):
        raise exc
    return False


def _write(fd: int, data: memoryview, offset: int, direct: bool) -> bool:
    """Write all of ``data`` at ``offset``; returns whether ``fd`` is still ``O_DIRECT``
    (it is turned off for an unaligned write, a short one, or one the filesystem refuses
    although it took the flag)."""
    if direct and (len(data) % ALIGN or offset % ALIGN):
        direct = not set_direct(fd, False)  # the tail (or after a short read)
    written = 0
    while written < len(data):
        try:
            written += os.pwrite(fd, data[written:], offset + written)
        except OSError as exc:
            direct = _refused(fd, direct, exc)  # taken at fcntl, not at the write
            continue
        if direct and written < len(data):
            direct = not set_direct(fd, False)  # a short write: unaligned from here
    return direct


def copy(source: int, target: int, size: int, progress: Callable[[int], None],
         each: Callable[[memoryview], None] | None = None) -> None:
    """Copy ``size`` bytes from ``source`` (through the page cache, where a file just
    written still is) to ``target`` (around it where it can be); ``each`` sees every chunk,
    in order, before it is written (a checksum pass); ``progress`` the bytes so far."""
    direct = set_direct(target, True)
    try:
        with _buffer() as view:
            offset = 0
            while offset < size:
                got = os.preadv(source, [view[:min(CHUNK, size - offset)]], offset)
                if got <= 0:
                    raise OSError(errno.EIO, "file shrank while it was copied")
                if each is not None:
                    each(view[:got])
                direct = _write(target, view[:got], offset, direct)
                offset += got
                progress(offset)
    finally:
        if direct:
            set_direct(target, False)


def write_chunks(fd: int, chunks: Iterable[bytes | memoryview]) -> int:
    """Write ``chunks``, one after another, from the start of the empty file ``fd``,
    around the page cache where it can: they are gathered into whole aligned buffers,
    and only the last, partial one goes through the cache.  Returns the bytes written."""
    direct = set_direct(fd, True)
    filled = offset = 0
    try:
        with _buffer() as view:
            for chunk in chunks:
                data = memoryview(chunk).cast("B")
                while data:
                    take = min(len(data), CHUNK - filled)
                    view[filled:filled + take] = data[:take]
                    filled += take
                    data = data[take:]
                    if filled == CHUNK:
                        direct = _write(fd, view, offset, direct)
                        offset += filled
                        filled = 0
            if filled:
                direct = _write(fd, view[:filled], offset, direct)
                offset += filled
    finally:
        if direct:
            set_direct(fd, False)
    return offset
