"""Where ``hcafs serve`` keeps its state: one interface, two backends.

A store holds two kinds of object under string keys:

* small documents (JSON manifests, file metadata, tombstones, task records): :meth:`read`,
  :meth:`write`, :meth:`create`, :meth:`delete`, :meth:`list`, and for read-modify-write
  :meth:`read_versioned` with :meth:`replace`;
* blobs (file content, content-addressed by their checksums): :meth:`blob_size`,
  :meth:`read_blob`, :meth:`write_blob`.

Keys use ``/`` to separate a fixed set of prefixes (``files/``, ``bundles/``, ``blobs/`` …)
from a name; :meth:`list` lists one prefix level in key order, and :meth:`scan` every key
under a prefix, at any depth, in key order from a starting key.  A scan costs what it
returns, not what the prefix holds, when the keys are sharded into small folders (locally
each folder on its path is read once; on S3 it is ``ListObjectsV2`` with ``StartAfter``).
Under a scanned prefix no name may be both a folder and the start of another name at the
same level (``a/x`` beside ``a.b``): S3 servers that keep folders, such as SeaweedFS, list
the folder first rather than in byte order.

:class:`LocalStore` keeps everything in a directory: each write goes to a temporary file that
is fsynced and renamed into place, so a crash leaves the old object or the new, never a torn
one.  A group of documents (:meth:`Store.write_many`, :meth:`Store.create_many`) is staged
whole, its writeback started as each is written, and fsynced before any is renamed into
place: the group's data reaches the disk in about one journal commit instead of one per
document, with the same guarantee.  A document can also be written ahead of the moment it
is placed (:meth:`Store.stage`, a :class:`Staged`): its bytes are made durable while there
is time, and placing it later is only the rename or link.  :class:`S3Store` keeps *all*
state in one bucket (under an optional prefix), so any number of ``hcafs serve`` processes
can serve the same bucket.

Immutable keys (file, bundle and tombstone versions, claims, idempotency keys, names) are
written with :meth:`Store.create`, which is atomic on both backends: of two racing creates
of one key exactly one succeeds, across threads and processes.  Locally it is a hard link
of a finished temporary file, which fails if the name exists; on S3 it is a PUT with
``If-None-Match: *``, and :meth:`S3Store.check` refuses a store that does not honour it.
:meth:`Store.replace` is the compare-and-swap for records that change: on S3 a PUT with
``If-Match`` on the ETag, locally a rename made while holding an ``flock`` on the file being
replaced, after checking that it is still the version that was read.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import logging
import os
import shutil
import tempfile
import time
import uuid as _uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from .. import directio
from ..errors import ConfigError, NotFound, RemoteError
from ..processes import pid_alive
from ..remote.s3 import S3, S3Url, rechunk

log = logging.getLogger(__name__)

BLOB_PART = 16 * 1024 * 1024
READ_CHUNK = 1024 * 1024
PROBE_PREFIX = "probes/conditional-put-"  # S3Store.check writes and deletes one such key
STAGED_PREFIX = "staged-"  # LocalStore: the folder of one process's documents staged ahead
STALE_TEMP = 24 * 3600  # seconds after which a temporary file of the local store is a crash's
STALE_ETAG = '"00000000000000000000000000000000"'


class Staged:
    """A document written ahead of its placing (:meth:`Store.stage`): its bytes, and where
    the backend keeps them durable meanwhile (:class:`LocalStore`: a fsynced temporary
    file; elsewhere nothing).  :meth:`Store.write_many` and :meth:`Store.create_many` take
    one in place of bytes and place what was staged, once; whoever staged it calls
    :meth:`discard` if it is never placed.  Owned by one thread at a time."""

    __slots__ = ("data", "path")

    def __init__(self, data: bytes, path: str | None = None):
        self.data = data
        self.path = path

    def take(self) -> str | None:
        """The staged file, now the caller's to place or remove (None if there is none)."""
        path, self.path = self.path, None
        return path

    def discard(self) -> None:
        path = self.take()
        if path is not None:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def content(data: bytes | Staged) -> bytes:
    """The bytes of a document given as bytes or :class:`Staged`."""
    return data.data if isinstance(data, Staged) else data


class Store(ABC):
    """The server's storage; every method is safe to call from several threads."""

    # How often a reader that waits for a document to change looks at it again (s): a local
    # read is a file read; a remote one is a request.
    watch_interval: float = 1.0

    @abstractmethod
    def describe(self) -> str: ...

    @abstractmethod
    def read(self, key: str) -> bytes | None:
        """The document at ``key``, or None."""

    @abstractmethod
    def write(self, key: str, data: bytes, defer: set[str] | None = None) -> None:
        """Atomically create or replace the document at ``key``.  With ``defer``, the
        document's bytes are durable on return but its name may not be until
        :meth:`settle` ``(defer)``: after a crash before that, it may be missing (or the
        one it replaced may be there), never empty or torn."""

    @abstractmethod
    def create(self, key: str, data: bytes, defer: set[str] | None = None) -> bool:
        """Write ``key`` only if absent, atomically; False if it was already there.
        ``defer`` as for :meth:`write`."""

    def write_many(self, items: list[tuple[str, bytes | Staged]],
                   defer: set[str] | None = None,
                   run: Callable[[list[tuple]], list] | None = None) -> None:
        """:meth:`write` of each ``(key, data)``, as a group: each is atomic, the group is
        not.  ``data`` may be :class:`Staged` (see :meth:`stage`).  ``run`` makes the
        ``(function, *args)`` calls where a backend writes one document at a time (in
        parallel, say); one after the other by default."""
        (run or _one_by_one)([(self.write, key, content(data), defer) for key, data in items])

    def create_many(self, items: list[tuple[str, bytes | Staged]],
                    defer: set[str] | None = None,
                    run: Callable[[list[tuple]], list] | None = None) -> list[bool]:
        """:meth:`create` of each ``(key, data)``, as a group (``data`` and ``run`` as for
        :meth:`write_many`): for each, False if it was already there."""
        return (run or _one_by_one)([(self.create, key, content(data), defer)
                                     for key, data in items])

    def stage(self, datas: list[bytes]) -> list[Staged]:
        """Documents to be placed later by :meth:`write_many` or :meth:`create_many`,
        made durable now where a backend can (so placing them costs only the names);
        here, where every write is one request, nothing is done ahead."""
        return [Staged(data) for data in datas]

    def note(self, keys: list[str], defer: set[str]) -> None:  # noqa: B027 - see settle
        """Have :meth:`settle` ``(defer)`` make these names durable too (names another
        attempt wrote, which this one found and is about to report)."""

    def settle(self, defer: set[str]) -> None:  # noqa: B027 - a no-op unless overridden
        """Make the names written with ``defer`` durable (a no-op where every write is
        durable when it returns)."""

    def mark(self, key: str, sync: bool = True) -> bool:
        """Create the empty document ``key`` only if absent, atomically (False if it was
        there): a key whose name is all it says, such as an index entry.  ``sync=False``:
        a store that syncs its folders may leave this one to the next sync."""
        return self.create(key, b"")

    @abstractmethod
    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        """The document at ``key`` and a tag naming this version of it, or None."""

    @abstractmethod
    def replace(self, key: str, data: bytes, tag: str) -> str | None:
        """Replace ``key`` only if it still holds the version ``tag`` names: the tag of
        the version written, or None if not (another writer changed or deleted it since
        it was read)."""

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def list(self, prefix: str, start_after: str = "") -> Iterator[str]:
        """Keys starting with ``prefix`` (one level, no ``/`` after it), in order."""

    @abstractmethod
    def scan(self, prefix: str, start_after: str = "") -> Iterator[str]:
        """Keys starting with ``prefix`` at any depth, after ``start_after``, in key order;
        lazily, so a caller that stops early reads only what it consumed."""

    @abstractmethod
    def blob_size(self, key: str) -> int | None: ...

    @abstractmethod
    def read_blob(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Bytes ``[start, end)`` of a blob, in chunks."""

    @abstractmethod
    def write_blob(self, key: str, chunks: Iterable[bytes]) -> None:
        """Store a blob from a stream; it appears only once complete."""

    def exists(self, key: str) -> bool:
        return self.read(key) is not None

    def create_unsynced(self, key: str, data: bytes) -> bool:
        """:meth:`create`, for a record whose loss in a crash loses nothing acknowledged
        (a claim made inside a request not yet answered): a backend may skip the flush to
        disk, so after a crash the record may be missing or empty, never wrong."""
        return self.create(key, data)


class LocalStore(Store):
    """A directory.  ``durable=False`` skips the fsyncs: only for filling a throw-away
    benchmark store quickly (a crash may then leave empty or missing documents)."""

    watch_interval = 0.05

    def __init__(self, root: str, durable: bool = True):
        self.root = os.path.abspath(root)
        self.durable = durable
        self._tmp = os.path.join(self.root, ".tmp")
        os.makedirs(self._tmp, exist_ok=True)
        self._sweep()

    def _sweep(self) -> None:
        """Remove what crashed processes left: each dead process's folder of documents
        staged ahead (``staged-PID``), and the temporary files of single writes once they
        are a day old (no live writer keeps one that long; several processes may share
        the store).  The ``move-`` files stay: each is a caller's file on its way in,
        found again by the next attempt (:meth:`move_blob`)."""
        cutoff = time.time() - STALE_TEMP
        with os.scandir(self._tmp) as found:
            for entry in found:
                try:
                    if entry.name.startswith(STAGED_PREFIX) and \
                            entry.is_dir(follow_symlinks=False):
                        pid = entry.name[len(STAGED_PREFIX):]
                        if pid.isdigit() and not pid_alive(int(pid)):
                            shutil.rmtree(entry.path, ignore_errors=True)
                            log.info("removed the staged documents of process %s", pid)
                    elif entry.name.startswith("tmp") and \
                            entry.is_file(follow_symlinks=False) and \
                            entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(entry.path)
                        log.info("removed the stale temporary file %s", entry.path)
                except FileNotFoundError:  # another process removed or placed it
                    pass

    def describe(self) -> str:
        return self.root

    def _path(self, key: str) -> str:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"bad store key {key!r}")
        return os.path.join(self.root, key)

    def read(self, key: str) -> bytes | None:
        try:
            with open(self._path(key), "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            return None

    def _staged_many(self, datas: list[bytes], folder: str | None = None) -> list[str]:
        """Write each document to a temporary file, and make them all durable together:
        each one's writeback is started as it is written, so the first fsync commits
        nearly all of them in one journal transaction and the others find their data
        on disk already.  One file is open at a time (a group does not eat into the
        process's open files).  Returns the paths, in order."""
        staged: list[str] = []
        try:
            for data in datas:
                fd, tmp = tempfile.mkstemp(dir=folder or self._tmp)
                staged.append(tmp)
                try:
                    _write_all(fd, data)
                    if self.durable:
                        start_writeback(fd)
                finally:
                    os.close(fd)
            if self.durable:
                for tmp in staged:
                    fd = os.open(tmp, os.O_RDONLY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
        except BaseException:
            for tmp in staged:
                os.unlink(tmp)
            raise
        return staged

    def stage(self, datas: list[bytes]) -> list[Staged]:
        """Each document in a fsynced temporary file (:meth:`_staged_many`), in this
        process's own folder (``.tmp/staged-PID``, removed by the next start once the
        process is gone: a document may wait a long time for its placing)."""
        folder = os.path.join(self._tmp, f"{STAGED_PREFIX}{os.getpid()}")
        os.makedirs(folder, exist_ok=True)
        return [Staged(data, path) for data, path in zip(datas, self._staged_many(
            datas, folder), strict=True)]

    def _placing(self, items: list[tuple[str, bytes | Staged]]) -> list[str]:
        """A fsynced temporary file for each item, in order: the one it was staged in, or
        one written now, all of those as one group.  The files are the caller's."""
        for key, _ in items:  # a bad key is refused before anything is staged
            self._path(key)
        taken = [data.take() if isinstance(data, Staged) else None for _, data in items]
        try:
            fresh = iter(self._staged_many([content(data) for (_, data), path
                                            in zip(items, taken, strict=True)
                                            if path is None]))
        except BaseException:
            for path in taken:
                if path is not None:
                    os.unlink(path)
            raise
        return [path if path is not None else next(fresh) for path in taken]

    def write_many(self, items: list[tuple[str, bytes | Staged]],
                   defer: set[str] | None = None,
                   run: Callable[[list[tuple]], list] | None = None) -> None:
        """Staged and synced as one group (:meth:`_placing`), then each renamed into
        place as :meth:`write` does."""
        staged = self._placing(items)
        placed = 0
        try:
            for (key, _), tmp in zip(items, staged, strict=True):
                placed += 1  # the swap owns the staged file from here
                self._swapped(key, None, None, defer, staged=tmp)
        finally:
            for tmp in staged[placed:]:
                os.unlink(tmp)

    def create_many(self, items: list[tuple[str, bytes | Staged]],
                    defer: set[str] | None = None,
                    run: Callable[[list[tuple]], list] | None = None) -> list[bool]:
        """Staged and synced as one group (:meth:`_placing`), then each linked into place
        as :meth:`create` does."""
        staged = self._placing(items)
        done: list[bool] = []
        placed = 0
        try:
            for (key, _), tmp in zip(items, staged, strict=True):
                # a folder that cannot be made leaves the staged file to the cleanup below
                os.makedirs(os.path.dirname(self._path(key)), exist_ok=True)
                placed += 1  # the publish owns the staged file from here
                done.append(self._publish(tmp, key, replace=False, defer=defer))
        finally:
            for tmp in staged[placed:]:
                os.unlink(tmp)
        return done

    def _staged(self, chunks: Iterable[bytes], blob: bool = False) -> str:
        """Write chunks to a fsynced temporary file; returns its path.  A blob is written
        around the page cache (:mod:`hcafs.directio`): it goes to disk now anyway (the
        fsync), and nothing here reads it back soon."""
        fd, tmp = tempfile.mkstemp(dir=self._tmp)
        try:
            try:
                if blob:
                    directio.write_chunks(fd, chunks)
                else:
                    for chunk in chunks:
                        _write_all(fd, chunk)
                if self.durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException:
            os.unlink(tmp)
            raise
        return tmp

    def _publish(self, tmp: str, key: str, replace: bool = True,
                 defer: set[str] | None = None) -> bool:
        path = self._path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            if replace:
                os.replace(tmp, path)
            else:
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    return False
                finally:
                    os.unlink(tmp)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        self._sync_dir(path, defer)
        return True

    def _sync_dir(self, path: str, defer: set[str] | None = None) -> None:
        """Make the name ``path`` durable (the fsync of its folder), if the store is; with
        ``defer``, only note the folder for :meth:`settle`."""
        if not self.durable:
            return
        if defer is not None:
            defer.add(os.path.dirname(path))
            return
        dir_fd = os.open(os.path.dirname(path), os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    @contextmanager
    def _locked(self, path: str) -> Iterator[int | None]:
        """The file now at ``path``, open and ``flock``-ed (None when there is none).

        A rename replaces the file, not its lock, so after the lock is granted the path
        must still name the locked file; if a writer renamed over it meanwhile, lock the
        new one.  While the lock is held no other writer can replace or delete the file.
        """
        while True:
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                yield None
                return
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    current = os.stat(path)
                except FileNotFoundError:
                    current = None
                if current is not None and os.path.samestat(current, os.fstat(fd)):
                    yield fd
                    return
            finally:
                os.close(fd)

    def _swapped(self, key: str, data: bytes | None, tag: str | None,
                 defer: set[str] | None = None, staged: str | None = None) -> bool:
        """Rename ``data`` (or the file already ``staged``, which this call then owns)
        over ``key`` under the file's lock (if ``tag`` is given, only if the file there
        has that tag).  The lock covers the comparison and the rename alone (staging and
        fsyncs happen outside it), so a process paused anywhere else never holds up the
        others' swaps."""
        tmp = staged
        try:
            path = self._path(key)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if tmp is None:
                if data is None:
                    raise ValueError(f"nothing to write at {key!r}")
                tmp = self._staged([data])
            with self._locked(path) as fd:
                if tag is not None and (fd is None or _tag(_read_fd(fd)) != tag):
                    return False
                os.replace(tmp, path)
                tmp = None
        finally:
            if tmp is not None:
                os.unlink(tmp)
        self._sync_dir(path, defer)
        return True

    def write(self, key: str, data: bytes, defer: set[str] | None = None) -> None:
        self._swapped(key, data, None, defer)

    def create(self, key: str, data: bytes, defer: set[str] | None = None) -> bool:
        return self._publish(self._staged([data]), key, replace=False, defer=defer)

    def note(self, keys: list[str], defer: set[str]) -> None:
        if self.durable:
            defer.update(os.path.dirname(self._path(key)) for key in keys)

    def settle(self, defer: set[str]) -> None:
        """One fsync per folder for all the names written into it with ``defer`` (a folder
        that is gone has no name left to keep)."""
        for folder in sorted(defer):
            try:
                self._sync_dir(os.path.join(folder, "."))
            except FileNotFoundError:
                pass
        defer.clear()

    def mark(self, key: str, sync: bool = True) -> bool:
        """``O_EXCL``: an empty file needs no staging, and only its folder an fsync."""
        path = self._path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            return False
        if sync:
            self._sync_dir(path)
        return True

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        data = self.read(key)
        return None if data is None else (data, _tag(data))

    def replace(self, key: str, data: bytes, tag: str) -> str | None:
        return _tag(data) if self._swapped(key, data, tag) else None

    def delete(self, key: str) -> None:
        path = self._path(key)
        with self._locked(path) as fd:
            if fd is not None:
                os.unlink(path)

    def list(self, prefix: str, start_after: str = "") -> Iterator[str]:
        folder, _, start = prefix.rpartition("/")
        try:
            names = sorted(os.listdir(self._path(folder)))
        except FileNotFoundError:
            return
        base = f"{folder}/" if folder else ""
        for name in names:
            key = base + name
            if name.startswith(start) and key > start_after and not name.startswith(".tmp"):
                yield key

    def scan(self, prefix: str, start_after: str = "") -> Iterator[str]:
        folder, _, start = prefix.rpartition("/")
        return self._scan(folder, start, start_after)

    def _scan(self, folder: str, start: str, after: str) -> Iterator[str]:
        """Keys under ``folder`` whose next name starts with ``start``; a sub-folder whose
        keys all sort at or before ``after`` is not opened."""
        try:
            with os.scandir(self._path(folder) if folder else self.root) as found:
                names = sorted(entry.name + "/" if entry.is_dir() else entry.name
                               for entry in found
                               if entry.name.startswith(start) and entry.name[:1] != ".")
        except FileNotFoundError:
            return
        base = f"{folder}/" if folder else ""
        for name in names:
            key = base + name
            if not name.endswith("/"):
                if key > after:
                    yield key
            elif after < key or after.startswith(key):
                yield from self._scan(key[:-1], "", after)

    def blob_size(self, key: str) -> int | None:
        try:
            return os.stat(self._path(key)).st_size
        except FileNotFoundError:
            return None

    def blob_path(self, key: str) -> str:
        """Local blobs can be served straight from disk."""
        return self._path(key)

    def read_blob(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        try:
            handle = open(self._path(key), "rb")
        except FileNotFoundError as exc:
            raise NotFound(f"blob {key} is missing") from exc
        with handle:
            handle.seek(start)
            remaining = None if end is None else end - start
            while remaining is None or remaining > 0:
                chunk = handle.read(READ_CHUNK if remaining is None else min(READ_CHUNK,
                                                                             remaining))
                if not chunk:
                    return
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk

    def write_blob(self, key: str, chunks: Iterable[bytes]) -> None:
        self._publish(self._staged(chunks, blob=True), key)

    def create_unsynced(self, key: str, data: bytes) -> bool:
        fd, tmp = tempfile.mkstemp(dir=self._tmp)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        path = self._path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def moving_path(self, path: str) -> str:
        """Where :meth:`move_blob` keeps the file at ``path`` while it moves in."""
        return os.path.join(self._tmp, "move-" + hashlib.sha256(path.encode()).hexdigest())

    def move_blob(self, path: str, key: str, check: Callable[[int], None],
                  dir_fd: int | None = None) -> bool:
        """Publish the file at ``path`` as blob ``key`` by renaming it (no byte copied).

        The file is first renamed to :meth:`moving_path` (so a crash leaves it there, found
        again by the next attempt, which may also start from there), then ``check(fd)``
        runs on it and may raise to refuse it (it is then renamed back); it is fsynced,
        and renamed into place.  False, with nothing moved, if ``path`` is on another
        filesystem; NotFound if neither ``path`` nor its moving copy exists.  With
        ``dir_fd`` (the directory holding ``path``, opened by the caller), the file is
        renamed out of that directory, whatever its path now leads to.  The blob takes the
        store's mode (0600), whatever the file's was.
        """
        moving = self.moving_path(path)
        name = os.path.basename(path) if dir_fd is not None else path
        try:
            os.replace(name, moving, src_dir_fd=dir_fd)
        except FileNotFoundError:
            if not os.path.exists(moving):
                raise NotFound(f"{path} does not exist") from None
        except OSError as exc:
            if exc.errno == errno.EXDEV:
                return False
            raise
        try:
            fd = os.open(moving, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise NotFound(f"{path} was moved in by another request") from None
        except OSError:  # a link was renamed here: it goes back where it was
            os.replace(moving, name, dst_dir_fd=dir_fd)
            raise
        try:
            try:
                check(fd)
            except BaseException:
                os.replace(moving, name, dst_dir_fd=dir_fd)
                raise
            os.fchmod(fd, 0o600)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._publish(moving, key)
        return True


def _one_by_one(calls: list[tuple]) -> list:
    return [call(*args) for call, *args in calls]


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _writeback_starter() -> Callable[[int], None]:
    """``sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE)``: start writing a file's dirty
    pages out, without waiting (its blocks are allocated now, in the journal transaction
    that the next fsync commits).  Only a hint: where the call is missing, nothing."""
    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return lambda fd: None
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    call.restype = ctypes.c_int

    def start(fd: int) -> None:
        call(fd, 0, 0, SYNC_FILE_RANGE_WRITE)  # a failure leaves it to the fsync after

    return start


SYNC_FILE_RANGE_WRITE = 2
start_writeback = _writeback_starter()


def _tag(data: bytes) -> str:
    """A local document's version: a digest of its bytes."""
    return hashlib.sha256(data).hexdigest()


def _read_fd(fd: int) -> bytes:
    with os.fdopen(os.dup(fd), "rb") as handle:
        return handle.read()


class S3Store(Store):
    """All state in ``s3://bucket/prefix``: documents as small objects, blobs as objects."""

    def __init__(self, url: str, s3: S3):
        target = S3Url.parse(url)
        if not target.bucket:
            raise ConfigError(f"--store needs a bucket: {url!r}")
        self.bucket = target.bucket
        self.prefix = target.key.strip("/") + "/" if target.key.strip("/") else ""
        self.s3 = s3

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def check(self) -> None:
        """Fail early, with a clear message, if the bucket cannot be reached or does not
        honour conditional writes (create-once would silently become last-writer-wins)."""
        try:
            self.s3.call("head_bucket", Bucket=self.bucket)
        except NotFound as exc:
            raise ConfigError(f"S3 bucket {self.bucket!r} does not exist") from exc
        probe = f"{self.prefix}{PROBE_PREFIX}{_uuid.uuid4().hex}"
        try:
            first = self.s3.put_conditional(self.bucket, probe, b"1", absent=True)
            second = self.s3.put_conditional(self.bucket, probe, b"2", absent=True)
            stale = self.s3.put_conditional(self.bucket, probe, b"3", etag=STALE_ETAG)
        except RemoteError as exc:
            raise ConfigError(f"cannot check conditional writes on {self.describe()}: "
                              f"{exc}") from exc
        finally:
            self.s3.call("delete_object", Bucket=self.bucket, Key=probe)
        if first is None:
            raise ConfigError(f"the S3 store {self.describe()} refused to create a new key "
                              "with If-None-Match: *")
        if second is not None:
            raise ConfigError(
                f"the S3 store {self.describe()} does not honour If-None-Match: * (a second "
                "create of one key was accepted); hcafs serve needs conditional PUTs to keep "
                "versions immutable")
        if stale is not None:
            raise ConfigError(
                f"the S3 store {self.describe()} does not honour If-Match (a PUT with a "
                "wrong ETag was accepted); hcafs serve needs conditional PUTs to update "
                "records safely")

    def read(self, key: str) -> bytes | None:
        found = self.read_versioned(key)
        return None if found is None else found[0]

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        try:
            answer = self.s3.call("get_object", Bucket=self.bucket, Key=self.prefix + key)
        except NotFound:
            return None
        with answer["Body"] as body:
            return body.read(), answer["ETag"]

    def write(self, key: str, data: bytes, defer: set[str] | None = None) -> None:
        self.s3.call("put_object", Bucket=self.bucket, Key=self.prefix + key, Body=data)

    def create(self, key: str, data: bytes, defer: set[str] | None = None) -> bool:
        return self.s3.put_conditional(self.bucket, self.prefix + key, data,
                                       absent=True) is not None

    def replace(self, key: str, data: bytes, tag: str) -> str | None:
        return self.s3.put_conditional(self.bucket, self.prefix + key, data, etag=tag)

    def delete(self, key: str) -> None:
        self.s3.call("delete_object", Bucket=self.bucket, Key=self.prefix + key)

    def list(self, prefix: str, start_after: str = "") -> Iterator[str]:
        cut = len(self.prefix)
        after = self.prefix + start_after if start_after else ""
        for key in self.s3.keys(self.bucket, self.prefix + prefix, after):
            name = key[cut:]
            if "/" not in name[len(prefix.rpartition("/")[0]) + 1:]:
                yield name

    def scan(self, prefix: str, start_after: str = "") -> Iterator[str]:
        cut = len(self.prefix)
        after = self.prefix + start_after if start_after else ""
        for key in self.s3.keys(self.bucket, self.prefix + prefix, after):
            yield key[cut:]

    def blob_size(self, key: str) -> int | None:
        try:
            return self.s3.head(self.bucket, self.prefix + key)["ContentLength"]
        except NotFound:
            return None

    def read_blob(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        if end is not None and end <= start:
            return iter(())
        return self.s3.stream(self.bucket, self.prefix + key, start, end)

    def write_blob(self, key: str, chunks: Iterable[bytes]) -> None:
        self.s3.upload_parts(self.bucket, self.prefix + key, rechunk(chunks, BLOB_PART))
