"""Pending bundles: writable directories under ``bundles/`` that become bundles on commit.

``mkdir bundles/NAME`` makes one.  NAME decides what it becomes: the bare UUID of an existing
bundle starts a working copy of that bundle's newest version (commit makes a new version of
it); a bare unused UUID becomes the new bundle's UUID; anything else gets a fresh UUID.

Inside, files live as local data files (``CACHE_DIR/pending/<id>``) until they are synced;
files inherited from a working copy stay remote (read through the content cache) until they
are written, when they are copied locally first.  Subdirectories are names with ``/``.

The journal (``journal.py``) records every change in one transaction *before* the change is
acknowledged: a file is recorded dirty before its first byte is written, so a crash at any
point leaves it dirty, never wrongly "synced".

Threading: FUSE threads call in concurrently; open handles are kept in memory under a lock.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
import time
from dataclasses import dataclass

from ..cache.blobcache import BLOCK, BlobCache
from ..cache.cachedb import DatabaseError
from ..cache.catalog import Catalog
from ..cache.journal import (
    COMMITTED,
    DIR,
    DRS,
    LOCAL,
    OPEN,
    REMOTE,
    BundleRow,
    FileRow,
    Journal,
)
from ..errors import (
    AlreadyExists,
    Busy,
    NoSpace,
    NotADirectory,
    NotEmpty,
    NotFound,
    PermissionDenied,
    UsageError,
)
from ..versions import is_uuid, new_uuid, parse_fqid
from .entries import FileEntry, version_mtime
from .written import WrittenSums

log = logging.getLogger(__name__)


MAX_NAME = 255  # bytes of one name, as on every local filesystem


@dataclass
class PendingHandle:
    file_id: int
    fd: int | None
    writable: bool
    dirty: bool = False
    mtime: float | None = None  # set (utimens) since its last write: the close keeps it
    blob: object = None  # for a remote file read through the content cache
    entry: object = None


class PendingBundles:
    def __init__(self, journal: Journal, root: str, catalog: Catalog, blobs: BlobCache,
                 fetcher, complete_sums: bool = True):
        self.journal = journal
        self.root = root
        self.catalog = catalog
        self.blobs = blobs
        self._fetcher = fetcher  # FileEntry -> fetch(start, end)
        os.makedirs(root, exist_ok=True)
        self.drs_queue = None  # a DrsQueue when an import API is configured
        self._lock = threading.Lock()
        self._handles: dict[int, PendingHandle] = {}
        self._writers: dict[int, int] = {}
        # Bundles whose commit is being sent: no change to them until it is done (each
        # change checks, and makes itself, under _changes; see seal()).
        self._sealed: set[str] = set()
        self._changes = threading.RLock()
        self._ids = itertools.count(1)
        # Checksums computed as files are written in order: all four, or crc32c only when
        # the stager needs no more (``complete_sums``, see Stager.complete_checksums).
        self.written = WrittenSums(complete=complete_sums)

    def data_path(self, file_id: int) -> str:
        return os.path.join(self.root, str(file_id))

    # ------------------------------------------------------------ bundles

    def bundles(self) -> dict[str, BundleRow]:
        return {row.name: row for row in self.journal.bundles()}

    def bundle(self, name: str) -> BundleRow | None:
        return self.journal.bundle(name)

    def create_bundle(self, name: str) -> None:
        if parse_fqid(name) or self.journal.bundle(name) is not None:
            raise AlreadyExists(f"bundles/{name} exists")
        base, remote = None, []
        uuid = name.lower() if is_uuid(name) else new_uuid()
        if is_uuid(name):
            latest = self.catalog.latest_version(uuid)
            if latest is not None:
                manifest = self.catalog.manifest(f"{uuid}.{latest}")
                base, remote = latest, manifest["files"]
        self.journal.add_bundle(name, uuid, base, remote)
        log.info("pending bundle %s: %s", name, f"working copy of {uuid}.{base}" if base
                 else f"new bundle {uuid}")

    def remove_bundle(self, name: str) -> None:
        with self._changing(name):
            return self._remove_bundle(name)

    def _remove_bundle(self, name: str) -> None:
        bundle = self._bundle(name)
        if bundle.state != COMMITTED and self.journal.files(name):
            raise NotEmpty(f"bundles/{name} is not empty")
        self.journal.drop_bundle(name)

    def _bundle(self, name: str) -> BundleRow:
        bundle = self.journal.bundle(name)
        if bundle is None:
            raise NotFound(f"no pending bundle {name}")
        return bundle

    def _open_bundle(self, name: str) -> BundleRow:
        bundle = self._bundle(name)
        if bundle.state == COMMITTED:
            raise NotFound(f"bundles/{name} was committed as {bundle.fqid}")
        return bundle

    # ------------------------------------------------------------ commits in flight

    def seal(self, name: str) -> bool:
        """Hold every change to bundle ``name`` off while its commit is sent, so that what
        the commit lists is what the bundle holds until :meth:`unseal`; False, with
        nothing sealed, while one of its files is open for writing."""
        with self._changes:
            ids = {row.id for row in self.journal.files(name)}
            with self._lock:
                if ids & self._writers.keys():
                    return False
            self._sealed.add(name)
            return True

    def unseal(self, name: str) -> None:
        with self._changes:
            self._sealed.discard(name)

    @contextlib.contextmanager
    def _changing(self, *names: str):
        """Make a change to these bundles, refused (EBUSY) while one is sealed."""
        with self._changes:
            self._refuse_sealed(*names)
            yield

    def _refuse_sealed(self, *names: str) -> None:
        with self._changes:
            for name in names:
                if name in self._sealed:
                    raise Busy(f"bundles/{name} is being committed (its files are being "
                               "sent as one bundle); change it once the commit is done")

    def request_commit(self, name: str) -> None:
        bundle = self._open_bundle(name)
        if not any(f.kind != DIR for f in self.journal.files(name)):
            raise UsageError(f"bundles/{name} holds no files to commit")
        self.journal.request_commit(bundle.name)

    # ------------------------------------------------------------ names

    def lookup(self, name: str, path: str) -> FileRow | str:
        """The file row at ``path``, or ``"dir"`` for a directory (explicit or implied)."""
        self._open_bundle(name)
        if not path:
            return "dir"
        if _unencodable(path):  # no such name can have been made (see _uploadable)
            raise NotFound(f"bundles/{name}/{path!r}")
        row = self.journal.file(name, path)
        if row is not None:
            return "dir" if row.kind == DIR else row
        if self.journal.files(name, path + "/", limit=1):
            return "dir"
        raise NotFound(f"bundles/{name}/{path}")

    def listdir(self, name: str, path: str) -> list[tuple[str, FileRow | str]]:
        self._open_bundle(name)
        prefix = path + "/" if path else ""
        children: dict[str, FileRow | str] = {}
        for row in self.journal.files(name, prefix):
            rest = row.path[len(prefix):]
            head, sep, _ = rest.partition("/")
            if sep or row.kind == DIR:
                children[head] = "dir"
            else:
                children[head] = row
        if path and not children and self.lookup(name, path) != "dir":
            raise NotADirectory(f"bundles/{name}/{path} is not a directory")
        return sorted(children.items())

    def _parent_exists(self, name: str, path: str) -> None:
        parent = path.rpartition("/")[0]
        if parent and self.lookup(name, parent) != "dir":
            raise NotADirectory(f"bundles/{name}/{parent} is not a directory")

    @staticmethod
    def _uploadable(name: str, path: str) -> None:
        """Refuse, when it is made, a name no bundle can hold: the DSS takes UTF-8 names of
        one line, without backslashes."""
        if _unencodable(path):
            raise UsageError(f"bundles/{name}/{path!r}: the name is not UTF-8, and the DSS "
                             "takes UTF-8 names only")
        if "\\" in path or any(ord(c) < 32 or ord(c) == 127 for c in path):
            raise UsageError(f"bundles/{name}/{path!r}: the DSS takes no name with a "
                             "backslash or a control character (newline, tab, ...)")
        # FUSE passes names up to 1024 bytes, but the bytes are staged under the file's
        # name on a filesystem (255 at most), and no reader could make such a file either.
        if any(len(part.encode()) > MAX_NAME for part in path.split("/")):
            raise UsageError(f"bundles/{name}/{path[:60]}…: a name is at most {MAX_NAME} "
                             "bytes")

    def _free(self, name: str, path: str) -> None:
        try:
            self.lookup(name, path)
        except NotFound:
            return
        raise AlreadyExists(f"bundles/{name}/{path} exists")

    def mkdir(self, name: str, path: str) -> None:
        with self._changing(name):
            return self._mkdir(name, path)

    def _mkdir(self, name: str, path: str) -> None:
        self._open_bundle(name)
        self._uploadable(name, path)
        self._parent_exists(name, path)
        self._free(name, path)
        self.journal.add_file(name, path, kind=DIR)

    def rmdir(self, name: str, path: str) -> None:
        with self._changing(name):
            return self._rmdir(name, path)

    def _rmdir(self, name: str, path: str) -> None:
        if self.lookup(name, path) != "dir":
            raise NotADirectory(f"bundles/{name}/{path} is not a directory")
        if self.listdir(name, path):
            raise NotEmpty(f"bundles/{name}/{path} is not empty")
        row = self.journal.file(name, path)
        if row is not None:
            self.journal.remove_file(row.id)

    def unlink(self, name: str, path: str) -> None:
        with self._changing(name):
            return self._unlink(name, path)

    def _unlink(self, name: str, path: str) -> None:
        row = self.lookup(name, path)
        if row == "dir":
            raise PermissionDenied(f"bundles/{name}/{path} is a directory")
        self.journal.remove_file(row.id)  # with its queued import: one transaction
        self.written.drop(row.id)
        try:
            os.unlink(self.data_path(row.id))
        except FileNotFoundError:
            pass

    def rename(self, name: str, old: str, new_name: str, new: str) -> None:
        with self._changing(name, new_name):
            return self._rename(name, old, new_name, new)

    def _rename(self, name: str, old: str, new_name: str, new: str) -> None:
        source = self.lookup(name, old)
        self._open_bundle(new_name)
        self._uploadable(new_name, new)
        self._parent_exists(new_name, new)
        target = None
        try:
            target = self.lookup(new_name, new)
        except NotFound:
            pass
        if target == "dir" and self.listdir(new_name, new):
            raise NotEmpty(f"bundles/{new_name}/{new} is not empty")
        # A written file is judged by its name again: editors and rsync write through a
        # temporary name, so NAME.drs may arrive by rename.
        kind = None
        if isinstance(source, FileRow) and source.kind in (LOCAL, DRS):
            kind = DRS if new.endswith(".drs") else LOCAL
        # The .drs files that move (the file, or those in the directory): their imports
        # name where the result lands, so they are queued again under the new path.  (The
        # journal refuses the rename, EBUSY, while one of them, or a .drs file it would
        # replace, has its import under way.)
        moved = [source] if isinstance(source, FileRow) else \
            [row for row in self.journal.files(name) if row.path.startswith(old + "/")]
        self.journal.rename(name, old, new, new_bundle=new_name, kind=kind)
        if isinstance(target, FileRow):  # replaced: its bytes go once the journal says so
            self.written.drop(target.id)
            try:
                os.unlink(self.data_path(target.id))
            except FileNotFoundError:
                pass
        for row in moved:
            if (kind or row.kind) == DRS and not self.is_open_for_write(row.id):
                self._judge_drs(row.id)  # (an open one is judged at its close)

    def _judge_drs(self, file_id: int) -> None:
        """Queue the import a closed ``.drs`` file asks for (or record why it cannot be)."""
        row = self.journal.file_by_id(file_id)
        size = self.size(row)
        if self.drs_queue is None:
            self.journal.drs_rejected(row.id, size, "no DRS import API is configured for "
                                      "this mount")
            return
        with open(self.data_path(row.id), "rb") as handle:
            content = handle.read(65 * 1024)
        self.drs_queue.enqueue_file(row.id, row.bundle, row.path, content, size)

    # ------------------------------------------------------------ content

    def create(self, name: str, path: str) -> int:
        with self._changing(name):
            return self._create(name, path)

    def _create(self, name: str, path: str) -> int:
        self._open_bundle(name)
        self._uploadable(name, path)
        self._parent_exists(name, path)
        existing = None
        try:
            existing = self.lookup(name, path)
        except NotFound:
            pass
        if existing == "dir":
            raise AlreadyExists(f"bundles/{name}/{path} is a directory")
        if isinstance(existing, FileRow):
            return self.open(existing, write=True, truncate=True)
        file_id = self.journal.add_file(name, path, kind=DRS if path.endswith(".drs")
                                        else LOCAL)
        fd = os.open(self.data_path(file_id), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self.written.start(file_id)
        return self._new_handle(PendingHandle(file_id, fd, writable=True, dirty=True))

    def _new_handle(self, handle: PendingHandle) -> int:
        with self._lock:
            number = next(self._ids)
            self._handles[number] = handle
            if handle.writable:
                self._writers[handle.file_id] = self._writers.get(handle.file_id, 0) + 1
        return number

    def open(self, row: FileRow, write: bool, truncate: bool = False) -> int:
        if not (write or truncate):
            return self._open(row, write, truncate)
        self._refuse_sealed(row.bundle)  # at once, before a remote file is fetched
        if row.kind == REMOTE:
            self._materialize(row, empty=truncate)
            row = self.journal.file_by_id(row.id)
        with self._changing(row.bundle):  # a writer counts once its handle is made
            return self._open(row, write, truncate)

    def _open(self, row: FileRow, write: bool, truncate: bool) -> int:
        if row.kind == REMOTE:
            entry = _remote_entry(row)
            blob = self.blobs.acquire(entry.sha256, entry.size)
            return self._new_handle(PendingHandle(row.id, None, False, blob=blob, entry=entry))
        flags = os.O_RDWR if write else os.O_RDONLY
        fd = os.open(self.data_path(row.id), flags)
        handle = PendingHandle(row.id, fd, writable=write)
        if truncate:
            self.journal.mark_dirty(row.id, size=0)
            os.ftruncate(fd, 0)
            handle.dirty = True
        if write and truncate:
            self.written.start(row.id)
        elif write or truncate:
            self.written.drop(row.id)
        return self._new_handle(handle)

    def _materialize(self, row: FileRow, empty: bool) -> None:
        """Copy a remote (working copy) file into a local data file before it changes."""
        path = self.data_path(row.id)
        fd = os.open(path + ".part", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            if not empty and row.size:
                entry = _remote_entry(row)
                blob = self.blobs.acquire(entry.sha256, entry.size)
                try:
                    fetch = self._fetcher(entry)
                    for offset in range(0, entry.size, 16 * BLOCK):
                        out.write(self.blobs.read(blob, offset, 16 * BLOCK, fetch,
                                                  readahead=64 * BLOCK))
                finally:
                    self.blobs.release(blob)
            out.flush()
            os.fsync(out.fileno())
        os.replace(path + ".part", path)
        self.journal.mark_dirty(row.id, size=0 if empty else row.size, to_local=True)

    def handle(self, number: int) -> PendingHandle:
        return self._handles[number]

    def read(self, number: int, size: int, offset: int) -> bytes:
        fd, start, length = self.read_span(number, size, offset)
        return os.pread(fd, length, start) if length else b""

    def read_span(self, number: int, size: int, offset: int) -> tuple[int, int, int]:
        """``(fd, offset, length)`` holding the bytes: the local file, or the cached
        blob of a file not yet rewritten."""
        handle = self._handles[number]
        if handle.blob is not None:
            return self.blobs.span(handle.blob, offset, size, self._fetcher(handle.entry))
        return handle.fd, offset, size

    def write(self, number: int, data: bytes, offset: int) -> int:
        handle = self._handles[number]
        if not handle.writable:
            raise PermissionDenied("file not open for writing")
        self._check_space(len(data))
        if not handle.dirty:  # journal first: a crash after this write leaves it dirty
            self.journal.mark_dirty(handle.file_id)
            handle.dirty = True
        if handle.mtime is not None:
            # A write after a utimens makes the file's time "now" again, at once: the
            # close that records it (release) is not waited for by close(2), so a stat
            # right after close(2) would otherwise still show the time set.
            handle.mtime = None
            self.journal.set_times(handle.file_id, time.time())
        try:
            count = os.pwrite(handle.fd, data, offset)
        except BaseException:
            self.written.drop(handle.file_id)
            raise
        if count == len(data):
            self.written.wrote(handle.file_id, data, offset)
        else:
            self.written.drop(handle.file_id)
        return count

    def _check_space(self, incoming: int) -> None:
        """Refuse a write that would leave the journal no room (SQLite needs some to record
        anything, including the deletes that would free space)."""
        vfs = os.statvfs(self.root)
        total = vfs.f_blocks * vfs.f_frsize
        reserve = min(64 * BLOCK, max(4 * BLOCK, total // 50))
        if vfs.f_bavail * vfs.f_frsize - incoming >= reserve:
            return
        # Cached content gives way to written bytes, where it is on the same disk.
        if os.stat(self.root).st_dev == os.stat(self.blobs.root).st_dev and \
                self.blobs.evict(free=incoming + reserve) and \
                self.blobs.free_bytes() - incoming >= reserve:
            return
        raise NoSpace(f"the cache disk is full ({self.root}); files already written "
                      "are kept and still sync")

    def fsync(self, number: int) -> None:
        handle = self._handles[number]
        if handle.fd is not None:
            os.fsync(handle.fd)
            if handle.dirty:
                self.journal.closed(handle.file_id, os.fstat(handle.fd).st_size, handle.mtime)
            self.journal.cachedb.make_durable()

    def truncate(self, name: str, path: str, length: int) -> None:
        with self._changing(name):
            return self._truncate(name, path, length)

    def _truncate(self, name: str, path: str, length: int) -> None:
        row = self.lookup(name, path)
        if row == "dir":
            raise PermissionDenied(f"bundles/{name}/{path} is a directory")
        if row.kind == REMOTE:
            self._materialize(row, empty=length == 0)
        self.written.drop(row.id)
        # A .drs file stays one (editors truncate it, then write it again): it is judged
        # again at its close, or now if no one has it open for writing.
        self.journal.mark_dirty(row.id, size=length, to_local=row.kind != DRS)
        os.truncate(self.data_path(row.id), length)
        if row.kind == DRS:
            with self._lock:
                writers = [h for h in self._handles.values()
                           if h.file_id == row.id and h.writable]
                for handle in writers:
                    handle.dirty = True
            if not writers:
                self._judge_drs(row.id)

    def release(self, number: int) -> None:
        with self._lock:
            handle = self._handles.pop(number, None)
            last = False
            if handle is not None and handle.writable:
                self._writers[handle.file_id] -= 1
                if not self._writers[handle.file_id]:
                    del self._writers[handle.file_id]
                    last = True
        if handle is None:
            return
        if handle.blob is not None:
            self.blobs.release(handle.blob)
        if handle.fd is not None:
            if last:
                self.written.closed(handle.file_id, handle.fd)
            try:
                if handle.dirty:
                    self._closed(handle, os.fstat(handle.fd).st_size)
            except DatabaseError as exc:
                # The row is already dirty; the size is read from the data file anyway.
                log.warning("could not record the close of file %d: %s", handle.file_id, exc)
            finally:
                os.close(handle.fd)

    def _closed(self, handle: PendingHandle, size: int) -> None:
        """Record the close of a written file; a ``.drs`` file's import request is queued
        in the same transaction (or the reason it cannot be recorded on it)."""
        row = self.journal.file_by_id(handle.file_id)
        if row is None or row.kind != DRS:
            self.journal.closed(handle.file_id, size, handle.mtime)
        else:
            self._judge_drs(row.id)

    def written_checksums(self, file_id: int, fd: int):
        """The file's checksums as computed while it was written, if they still hold for
        the data file open as ``fd`` (see ``written.py``); None: compute them afresh."""
        return self.written.checksums(file_id, fd)

    def open_for_writing(self, name: str) -> list[str]:
        """The paths of bundle ``name`` that are open for writing now."""
        with self._lock:
            writers = set(self._writers)
        return [row.path for row in self.journal.files(name) if row.id in writers]

    def is_open_for_write(self, file_id: int) -> bool:
        with self._lock:
            return file_id in self._writers

    def size(self, row: FileRow) -> int:
        """A local file's size is its data file's (the journal may lag an open writer)."""
        if row.kind not in (LOCAL, DRS):
            return row.size
        try:
            return os.stat(self.data_path(row.id)).st_size
        except FileNotFoundError:
            return row.size

    def set_times(self, file_id: int, mtime: float) -> None:
        """utimens: the file's modification time, kept by the close of a handle open for
        writing unless it writes again first (``cp -a`` sets the time, then closes)."""
        self.journal.set_times(file_id, mtime)
        with self._lock:
            for handle in self._handles.values():
                if handle.file_id == file_id and handle.writable:
                    handle.mtime = mtime

    def set_indexed(self, name: str, path: str, value: bytes) -> None:
        with self._changing(name):
            return self._set_indexed(name, path, value)

    def _set_indexed(self, name: str, path: str, value: bytes) -> None:
        row = self.lookup(name, path)
        text = value.decode(errors="replace").strip().lower()
        if row == "dir" or text not in ("true", "false"):
            raise UsageError("user.hca.indexed takes true or false, on files")
        self.journal.set_indexed(row.id, text == "true")

    def is_open(self, name: str) -> bool:
        return self._bundle(name).state == OPEN


def _unencodable(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes, carried as surrogates
        return True
    return False


def _remote_entry(row: FileRow) -> FileEntry:
    return FileEntry(name=row.path.rpartition("/")[2], uuid=row.file_uuid,
                     version=row.file_version, size=row.size, sha256=row.sha256,
                     sha1=row.sha1, crc32c=row.crc32c, s3_etag=row.s3_etag,
                     content_type=row.content_type or "", indexed=row.is_indexed,
                     mtime=version_mtime(row.file_version))
