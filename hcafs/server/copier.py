"""Bringing a PUT /files source into the store, verified, synchronously or in the background.

A source is an ``s3://`` object (its checksums read from its tags, merged over its
``x-amz-meta-*`` metadata, tags winning) or, when the server was given a staging root, a
``file://`` path inside that root (its checksums computed by the server).  Every byte copied
is checksummed on the way; a blob is published under its content key only when all four
checksums and the size match, so a bad copy never becomes visible.  An ``s3://`` source is
looked at with a GET rather than a HEAD: a small one (up to :data:`SMALL_SOURCE`, copied
inside the request) comes whole with it, is verified then and there, and those very bytes
are what :meth:`Copier.copy` writes; a larger one is read again, streaming, by the copy.

Copies up to ``async_threshold`` bytes run inside the request; larger ones answer 202 and run
on a pool.  Either way the version is first *claimed*: its copy record
(``copies/{uuid}.{version}``, with the file document it will publish) is created once, so of
two requests racing on one version with different files exactly one goes ahead and the other
is answered 409 at once.  The file document is then published create-once too, so a version
never changes after it first appeared.  Any server process sees the records.  A background
copy runs under a lease (:mod:`.leases`, ``leases/copy-{uuid}.{version}``) and publishes its
file document through the lease's fence; :meth:`Copier.resume`, called at start and by the
lease scanner of every process, hands every running copy whose lease is free to this
process, so a copy whose process died is finished by any live one.

Threading: the pool's workers each own one copy; they write only the copy's blob, its file
document and its ``copies/`` record.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import mimetypes
import os
import re
import stat
import threading
import time
import uuid as _uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

from .. import directio
from ..checksums import TAG_KEYS, Checksummer, Checksums
from ..errors import HcafsError, NotFound, Problem, RemoteError, bad_request
from ..remote.s3 import S3
from . import metrics
from .leases import Lease, LeaseLost, Leases, gone
from .listing import FileIndex
from .store import LocalStore, Store, start_writeback

log = logging.getLogger(__name__)

_SOURCE_RE = re.compile(r"^(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<bucket>[^/]*)/(?P<key>.+)\Z", re.I)
_FORMATS = {
    "sha256": re.compile(r"^[a-z0-9]{64}\Z"),
    "sha1": re.compile(r"^[a-z0-9]{40}\Z"),
    "crc32c": re.compile(r"^[a-z0-9]{8}\Z"),
    "s3_etag": re.compile(r"^[a-z0-9]{32}(-([2-9]|[1-9][0-9]{1,3}|10000))?\Z"),
}
READ_CHUNK = 4 * 1024 * 1024
SPREAD_SIZE = 32 * 1024 * 1024  # sources this big hash on two more threads (_hash_pool)
SMALL_SOURCE = 4 * 1024 * 1024  # an s3:// source up to this size is read once, at inspect
CLAIM_WAIT_SECONDS = 20.0
CLAIM_POLL_SECONDS = 0.1
# How often a file:// source is looked for while a racing PUT moves it in.
_INSPECT_ATTEMPTS = 4


@dataclass(frozen=True)
class Source:
    url: str
    size: int
    content_type: str
    checksums: dict[str, str]
    bucket: str = ""
    key: str = ""
    path: str = ""
    stamp: str = ""  # a file source's identity when it was checksummed (see _stamp)

    def blob_key(self) -> str:
        c = self.checksums
        return f"blobs/{c['sha256']}.{c['sha1']}.{c['s3_etag']}.{c['crc32c']}"


def file_document(source: Source, creator_uid: int, version: str) -> dict:
    c = source.checksums
    return {"format": "0.0.4", "creator_uid": creator_uid, "version": version,
            "content-type": source.content_type, "size": source.size, "crc32c": c["crc32c"],
            "s3-etag": c["s3_etag"], "sha1": c["sha1"], "sha256": c["sha256"]}


class Copier:
    def __init__(self, store: Store, s3: S3 | None, staging_root: str | None,
                 async_threshold: int, workers: int = 4, leases: Leases | None = None):
        self.store = store
        self.leases = leases
        self._s3 = s3
        self.staging_root = os.path.realpath(staging_root) if staging_root else None
        self.async_threshold = async_threshold
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="copy")
        # Two of a big source's four hashes run here, beside its reader (see _hash_pool).
        self._hashers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="hash")
        self._lock = threading.Lock()
        self._active: set[str] = set()
        self._fetched = threading.local()  # .data: (Source, bytes) inspect read and verified
        self.moved = 0  # file sources published by rename
        self.files = FileIndex(store)

    # ------------------------------------------------------------ inspecting sources

    def inspect(self, url: str) -> Source:
        match = _SOURCE_RE.match(url)
        scheme = match["scheme"].lower() if match else ""
        if scheme == "s3":
            return self._inspect_s3(url, match["bucket"], match["key"])
        if scheme == "file" and self.staging_root:
            return self._inspect_file(url)
        if scheme == "file":
            raise Problem(400, "unknown_source_schema",
                          "file:// sources need a server started with --staging-root")
        raise Problem(400, "unknown_source_schema", f"source URL scheme not supported: {url!r}"
                      " (use s3://bucket/key)")

    def _inspect_s3(self, url: str, bucket: str, key: str) -> Source:
        if self._s3 is None:
            raise Problem(400, "unknown_source_schema", "this server has no S3 access")
        try:
            # One GET instead of a HEAD: its answer has the same headers, and a small
            # object's bytes come with it, verified here and written by :meth:`copy`.
            head, data = self._s3.get_small(bucket, key,
                                            min(SMALL_SOURCE, self.async_threshold))
            tags = self._s3.tags(bucket, key)
        except NotFound as exc:
            raise Problem(404, "not_found", f"source object {url} does not exist") from exc
        except RemoteError as exc:
            raise Problem(502, "source_unavailable", f"cannot read {url}: {exc}") from exc
        claims = {k.lower(): v for k, v in head.get("Metadata", {}).items()}
        claims.update(tags)
        checksums = _claimed(claims)
        etag = head.get("ETag", "").strip('"').lower()
        if etag != checksums["s3_etag"]:
            raise Problem(422, "invalid_checksum",
                          f"the object's S3 ETag {etag} differs from its hca-dss-s3_etag tag "
                          f"{checksums['s3_etag']}")
        source = Source(url=url, size=head["ContentLength"],
                        content_type=head.get("ContentType") or "application/octet-stream",
                        checksums=checksums, bucket=bucket, key=key)
        self._fetched.data = None
        if data is not None:
            summer = Checksummer(source.size)
            summer.update(data)
            _check(source, summer.result())
            self._fetched.data = (source, data)
        return source

    def _inspect_file(self, url: str) -> Source:
        # Lexical: no link is followed here, nor when the file is opened (_open_source),
        # so a name swapped for a link between a check and a use cannot lead outside.
        path = os.path.normpath("/" + url[len("file://"):].lstrip("/"))
        if "\0" in path:
            raise bad_request(f"file:// source {url!r} holds a NUL character")
        if any(len(os.fsencode(name)) > 255 for name in path.split("/")):
            raise bad_request(f"file:// source {url!r} has a name longer than 255 bytes")
        if path == self.staging_root or \
                os.path.commonpath([path, self.staging_root]) != self.staging_root:
            raise bad_request(f"file:// source {url!r} is outside the server's staging root")
        # A racing PUT of the same file may move it into the store while this one looks:
        # it is then at its path, at its moving copy, or gone with its record and blob.
        # Each miss looks again, in that order; a file missing from all three is 404.
        for attempt in range(_INSPECT_ATTEMPTS):
            moved = self._moved(path)
            if moved is not None:
                return moved
            try:
                fd = self._open_source(path)
                try:
                    before = os.fstat(fd)
                    if not stat.S_ISREG(before.st_mode):
                        raise Problem(404, "not_found", f"source file {url} is not a file")
                    if isinstance(self.store, LocalStore):
                        # Moved into the store and fsynced after this pass: its writeback
                        # runs beside the checksums instead of after them.
                        start_writeback(fd)
                    # Read once, around the page cache: nothing reads it from memory again
                    # soon (hcafs.directio), and a staged copy written around it is not
                    # there to be read from it anyway.
                    summer = Checksummer(before.st_size)
                    pool = self._hash_pool(before.st_size)
                    for chunk in directio.read_chunks(fd, before.st_size):
                        summer.update(chunk, pool)
                    sums = summer.result()
                    stamp = _stamp(os.fstat(fd))
                finally:
                    os.close(fd)
                break
            except _Link as exc:
                raise bad_request(f"file:// source {url!r} goes through a symbolic link") \
                    from exc
            except IsADirectoryError as exc:
                raise Problem(404, "not_found", f"source file {url} is not a file") from exc
            except FileNotFoundError as exc:
                if attempt + 1 == _INSPECT_ATTEMPTS:
                    moved = self._moved(path)
                    if moved is not None:
                        return moved
                    raise Problem(404, "not_found", f"source file {url} does not exist") \
                        from exc
        if stamp != _stamp(before) or sums.size != before.st_size:
            raise Problem(409, "source_changed", f"source file {url} changed while it was read")
        content_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
        return Source(url=url, size=before.st_size, content_type=content_type, path=path,
                      checksums={k: getattr(sums, k) for k in TAG_KEYS}, stamp=stamp)

    def _moved(self, path: str) -> Source | None:
        """The source a file at ``path`` was, if it was moved into the store and is gone
        (so a repeated PUT of it is answered like the first)."""
        if not isinstance(self.store, LocalStore) or os.path.lexists(path):
            return None
        record = _load(self.store.read(_moved_key(path)))
        if record is None:
            return None
        source = Source(**record)
        if self.store.blob_size(source.blob_key()) != source.size:
            return None
        return source

    def _open_source(self, path: str) -> int:
        """An fd of the file source at ``path`` (below the staging root, no link followed),
        or of the copy a move into the store left there after a crash."""
        if isinstance(self.store, LocalStore) and not os.path.lexists(path):
            moving = self.store.moving_path(path)
            if os.path.exists(moving):
                return os.open(moving, os.O_RDONLY | os.O_NOFOLLOW)
        parent = self._open_parent(path)
        try:
            return os.open(os.path.basename(path),
                           os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=parent)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _Link(path) from exc
            raise
        finally:
            os.close(parent)

    def _open_parent(self, path: str) -> int:
        """An fd of the directory holding ``path``, reached from the staging root one name
        at a time without following a link (``openat`` with ``O_NOFOLLOW``)."""
        names = os.path.relpath(os.path.dirname(path), self.staging_root).split(os.sep)
        fd = os.open(self.staging_root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for name in names:
                if name in ("", "."):
                    continue
                try:
                    inner = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                                    dir_fd=fd)
                except OSError as exc:
                    if exc.errno == errno.ELOOP or exc.errno == errno.ENOTDIR and \
                            stat.S_ISLNK(os.lstat(name, dir_fd=fd).st_mode):
                        raise _Link(path) from exc
                    if exc.errno == errno.ENOTDIR:  # a file where a directory should be
                        raise FileNotFoundError(errno.ENOENT, path) from exc
                    raise
                os.close(fd)
                fd = inner
        except BaseException:
            os.close(fd)
            raise
        return fd

    # ------------------------------------------------------------ copying

    def _chunks(self, source: Source) -> Iterator[bytes]:
        if source.path:
            with os.fdopen(self._open_source(source.path), "rb") as handle:
                while chunk := handle.read(READ_CHUNK):
                    yield chunk
        else:
            yield from self._s3.stream(source.bucket, source.key)

    def _verified(self, source: Source, fence: Callable[[], None] | None = None
                  ) -> Iterator[bytes]:
        """The source's bytes; raises at the end, before the last chunk, if they mismatch
        (or if ``fence`` raises: the copy's lease was taken over, so the blob never
        completes)."""
        summer = Checksummer(source.size)
        pool = self._hash_pool(source.size)
        pending = None
        for chunk in self._chunks(source):
            summer.update(chunk, pool)
            if pending is not None:
                yield pending
            pending = chunk
        _check(source, summer.result())
        if fence is not None:
            fence()
        if pending is not None:
            yield pending

    def _hash_pool(self, size: int) -> ThreadPoolExecutor | None:
        """Where a source of ``size`` bytes spreads its hashes: a big one alone (the last
        file of a tree, say) would otherwise keep one core busy while the others wait."""
        return self._hashers if size >= SPREAD_SIZE else None

    def copy(self, source: Source, fence: Callable[[], None] | None = None) -> None:
        """Publish the source's bytes as a blob (unless that blob is already there);
        ``fence`` raises when the copy may no longer publish."""
        key = source.blob_key()
        fetched = self._take_fetched(source)
        if self.store.blob_size(key) == source.size:
            return
        if fetched is not None:
            self.store.write_blob(key, [fetched])
            return
        if fence is not None and source.path and source.stamp:
            fence()
        if source.path and source.stamp and self._move(source, key):
            return
        try:
            self.store.write_blob(key, self._verified(source, fence))
        except (NotFound, FileNotFoundError) as exc:
            raise Problem(404, "not_found", f"source {source.url} vanished") from exc
        except _Link as exc:
            raise Problem(409, "source_changed", f"source file {source.url} was replaced by "
                          "a symbolic link while it was read") from exc
        except RemoteError as exc:
            raise Problem(502, "source_unavailable", f"copy of {source.url} failed: {exc}") \
                from exc

    def _take_fetched(self, source: Source) -> bytes | None:
        """The bytes of ``source`` that :meth:`inspect` fetched and verified in this
        thread, if it did (each request's thread inspects, then copies)."""
        fetched, self._fetched.data = getattr(self._fetched, "data", None), None
        if fetched is not None and fetched[0] == source:
            return fetched[1]
        return None

    def _move(self, source: Source, key: str) -> bool:
        """Publish a file source by renaming it into the store: its bytes were checksummed
        when it was inspected, and the rename keeps them if the file is still the one that
        was read (same inode, size and mtime).  False when it cannot be moved (another
        filesystem, another store, or changed since): it is then copied and verified."""
        if not isinstance(self.store, LocalStore):
            return False

        def unchanged(fd: int) -> None:
            info = os.fstat(fd)
            # Moved only if nothing else can write it: this server's own file, with no
            # other name (another owner's process, or a hard link, could change the blob).
            if _stamp(info) != source.stamp or info.st_nlink != 1 or \
                    info.st_uid != os.geteuid():
                raise _Changed

        # Recorded before the move, so that a PUT of this source racing this one always
        # finds the file (at its path, in the store's .tmp/, or as this record with its
        # blob).  Unsynced: if a crash loses it, a repeated PUT is 404 and the file is
        # staged again; nothing acknowledged depends on it.
        marker = _moved_key(source.path)
        mine = self.store.create_unsynced(marker, _dumps(source.__dict__))
        try:
            parent = self._open_parent(source.path)
        except (_Link, FileNotFoundError):
            parent = None
        try:
            if parent is None:
                raise _Changed
            moved = self.store.move_blob(source.path, key, unchanged, dir_fd=parent)
        except _Changed:
            log.info("%s changed after it was inspected; copying it instead", source.url)
            moved = False
        except NotFound as exc:
            if self.store.blob_size(key) == source.size:
                return True  # a racing PUT of the same file moved it in first
            if mine:
                self.store.delete(marker)
            raise Problem(404, "not_found", f"source {source.url} vanished") from exc
        finally:
            if parent is not None:
                os.close(parent)
        if moved:
            self.moved += 1
        elif mine:
            self.store.delete(marker)
        return moved

    def start(self, uuid: str, version: str, source: Source, document: dict
              ) -> tuple[int, str | None]:
        """Bring ``document``'s file in as ``uuid.version``: the answer's status, and the
        task id when the copy runs in the background.

        201: copied and published now; 200: that version already holds this file; 202: the
        copy runs in the background (the task id).  A version that holds, or is being
        copied with, another file is 409 ``file_already_exists``, in this request's own
        answer: the version is claimed (``copies/{uuid}.{version}``, created once) before
        anything is copied or answered.  The same file as a running claim joins it: it
        waits for a copy made inside another request, or answers a background copy's id.
        """
        name = f"{uuid}.{version}"
        background = (source.size > self.async_threshold
                      and self.store.blob_size(source.blob_key()) != source.size)
        record = {"task_id": str(_uuid.uuid4()), "state": "running", "document": document,
                  "source": source.__dict__, "sync": not background, "since": time.time(),
                  "holder": self.leases.holder if self.leases is not None else ""}
        joined = self._claim(name, record)
        if joined is not None:
            self._fetched.data = None
            return joined
        if background:
            self._fetched.data = None
            self._submit(uuid, version, record)
            return 202, record["task_id"]
        try:
            self.copy(source)
            created = self._publish(name, document)
        finally:
            self.store.delete(f"copies/{name}")
        return (201 if created else 200), None

    def _claim(self, name: str, record: dict) -> tuple[int, str | None] | None:
        """Make ``record`` the claim on ``name``: None once it is, or the answer to give
        instead (200 published, 202 joined a background copy; 409 raised)."""
        key = f"copies/{name}"
        document = record["document"]
        deadline = time.monotonic() + CLAIM_WAIT_SECONDS
        while True:
            if self._published(name, document):
                return 200, None
            found = self.store.read_versioned(key)
            if found is None:
                # A claim for a copy inside this request need not survive a crash (the
                # request was not answered); one for a background copy must.
                create = self.store.create_unsynced if record["sync"] else self.store.create
                if create(key, _dumps(record)):
                    break
                continue
            earlier, tag = _load(found[0]), found[1]
            if earlier is not None and earlier.get("task_id") == record["task_id"]:
                break  # a retried create had worked
            if earlier is None or earlier.get("state") != "running":
                # an earlier copy failed (or its unsynced claim was torn): try again
                if self.store.replace(key, _dumps(record), tag):
                    break
                continue
            if earlier.get("document") != document:
                raise _conflict(name, "is being copied with other content")
            if not earlier.get("sync") or time.monotonic() > deadline:
                if earlier.get("sync"):  # answered 202 from now on: make the claim durable
                    earlier = dict(earlier, sync=False)
                    if not self.store.replace(key, _dumps(earlier), tag):
                        continue
                uuid, _, version = name.partition(".")
                self._submit(uuid, version, earlier)
                return 202, earlier["task_id"]
            time.sleep(CLAIM_POLL_SECONDS)  # another request is copying it right now
        try:  # a claim that published and went away just before this one was made
            published = self._published(name, document)
        except Problem:
            self.store.delete(key)
            raise
        if published:
            self.store.delete(key)
            return 200, None
        return None

    def _published(self, name: str, document: dict) -> bool:
        """True if ``files/{name}`` holds ``document``, False if absent; 409 otherwise."""
        raw = self.store.read(f"files/{name}")
        if raw is None:
            return False
        if json.loads(raw) != document:
            raise _conflict(name, "already exists with other content")
        return True

    def _publish(self, name: str, document: dict) -> bool:
        """Create ``files/{name}`` once; False if it already held ``document``."""
        self.files.add(name)  # first: a document always has its index entry
        if self.store.create(f"files/{name}", _dumps(document)):
            return True
        return not self._published(name, document)

    def _submit(self, uuid: str, version: str, record: dict) -> None:
        name = f"{uuid}.{version}"
        with self._lock:
            if name in self._active:
                return
            self._active.add(name)
        self._pool.submit(self._run, uuid, version, record)

    def _run(self, uuid: str, version: str, record: dict) -> None:
        name = f"{uuid}.{version}"
        lease = None
        try:
            if self.leases is not None:
                lease = self.leases.claim(f"copy-{name}")
                if lease is None:  # another process holds it
                    return
                if lease.lost:  # taken over between this claim's write and its read back
                    lease = None
                    log.warning("async copy of %s: its lease was taken over as it was "
                                "claimed; the new holder's copy counts (pid %d)", name,
                                os.getpid())
                    return
                metrics.copies_in_flight(1)
                if lease.token > 1:
                    metrics.takeover("copy")
                now = _load(self.store.read(f"copies/{name}"))
                if now is None or now.get("state") != "running":
                    log.info("async copy of %s: finished by another process meanwhile "
                             "(pid %d)", name, os.getpid())
                    return
            self.copy(Source(**record["source"]),
                      partial(self.leases.check, lease) if lease is not None else None)
            self._publish_fenced(name, record["document"], lease)
            self.store.delete(f"copies/{name}")
            log.info("async copy of %s done", name)
        except LeaseLost as exc:
            log.warning("async copy of %s: %s", name, exc)
        except Problem as exc:
            log.warning("async copy of %s failed: %s", name, exc.title)
            if lease is not None and not self.leases.renew(lease):
                log.warning("async copy of %s: its lease was taken over meanwhile; the new "
                            "holder's copy counts", name)
                return
            failed = dict(record, state="failed", status=exc.status, code=exc.code,
                          title=exc.title)
            self.store.write(f"copies/{name}", _dumps(failed))
        except HcafsError as exc:  # store trouble: leave the record running, resume later
            log.error("async copy of %s interrupted: %s", name, exc)
        except Exception:
            log.exception("async copy of %s crashed", name)
        finally:
            with self._lock:
                self._active.discard(name)
            if lease is not None:
                metrics.copies_in_flight(-1)
                try:
                    self.leases.release(lease)  # nothing happens to a lost lease
                except HcafsError as exc:  # it expires by itself
                    log.warning("async copy of %s: cannot release its lease: %s", name, exc)

    def _publish_fenced(self, name: str, document: dict, lease: Lease | None) -> bool:
        """:meth:`_publish` under the lease's fence (a holder that lost it publishes
        nothing: :class:`LeaseLost`)."""
        if lease is None:
            return self._publish(name, document)
        self.files.add(name)
        if self.leases.publish(lease, f"files/{name}", _dumps(document)):
            return True
        return not self._published(name, document)

    def running(self, uuid: str, version: str) -> bool:
        """True while a background copy of ``uuid.version`` runs (a copy made inside a
        request is not announced: the file does not exist until that request answers)."""
        record = _load(self.store.read(f"copies/{uuid}.{version}"))
        if record is None:
            return False
        return record.get("state") == "running" and not record.get("sync")

    def raise_if_failed(self, uuid: str, version: str) -> None:
        record = _load(self.store.read(f"copies/{uuid}.{version}"))
        if record is None:
            return
        if record.get("state") == "failed":
            raise Problem(422, record.get("code", "missing_checksum"),
                          record.get("title", "the copy of this file failed"))

    def resume(self) -> int:
        """Take up every background copy left running with no live lease (and every copy
        inside a request older than a lease TTL: its process died); returns how many."""
        count = 0
        for key in self.store.list("copies/"):
            raw = self.store.read(key)
            record = _load(raw)
            if record is None:
                if raw is not None:  # an unsynced claim a crash left torn: never answered
                    self.store.delete(key)
                continue
            if record.get("state") == "running" and self._orphaned(key, record):
                uuid, _, version = key.split("/", 1)[1].partition(".")
                self._submit(uuid, version, record)
                count += 1
        return count

    def _orphaned(self, key: str, record: dict) -> bool:
        name = key.split("/", 1)[1]
        with self._lock:
            if name in self._active:
                return False
        if self.leases is None:
            return True
        if record.get("sync") and time.time() - record.get("since", 0) < self.leases.ttl \
                and not gone(record.get("holder", "")):
            return False  # a request is copying it now
        return not self.leases.live(f"copy-{name}")

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)
        self._hashers.shutdown(wait=True, cancel_futures=False)


class _Changed(Exception):
    """A file source is no longer the file that was checksummed."""


class _Link(Exception):
    """A file source's path goes through a symbolic link below the staging root."""


def _moved_key(path: str) -> str:
    return "moved/" + hashlib.sha256(path.encode()).hexdigest()


def _load(raw: bytes | None) -> dict | None:
    """A record, or None if absent or torn (an unsynced record a crash left empty)."""
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _stamp(stat: os.stat_result) -> str:
    """What identifies a file's bytes without reading them: device, inode, size, mtime."""
    return f"{stat.st_dev}:{stat.st_ino}:{stat.st_size}:{stat.st_mtime_ns}"


def _dumps(document: dict) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _conflict(name: str, what: str) -> Problem:
    return Problem(409, "file_already_exists", f"file {name} {what}")


def _check(source: Source, got: Checksums) -> None:
    """422 unless ``got`` (computed from the bytes read) matches what the source claims."""
    if got.size != source.size:
        raise Problem(422, "invalid_checksum",
                      f"{source.url} holds {got.size} bytes, not {source.size}")
    for name, claimed in source.checksums.items():
        if getattr(got, name) != claimed:
            raise Problem(422, "invalid_checksum",
                          f"{name} of {source.url} is {getattr(got, name)}, "
                          f"not {claimed} as claimed")


def _claimed(claims: dict[str, str]) -> dict[str, str]:
    checksums = {}
    for name, tag in TAG_KEYS.items():
        if tag not in claims:
            raise Problem(422, "missing_checksum", f"the source object has no {tag} tag")
        value = str(claims[tag]).lower()
        if not _FORMATS[name].match(value):
            raise Problem(422, "invalid_checksum", f"{tag} {value!r} is not a valid {name}")
        checksums[name] = value
    return checksums
