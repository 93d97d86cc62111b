"""Staging: putting a pending file's bytes where the DSS can copy them from.

Two targets, one interface:

* :class:`S3Stager` (``--staging s3://bucket/prefix``): the object is uploaded with boto3
  (plain PUT up to 64 MiB, multipart above, with the DSS part size so that the S3 ETag
  equals the ``hca-dss-s3_etag`` tag), tagged with the four checksums and given a
  Content-Type.  A small file (up to 4 MiB) is read once, checksummed and sent from memory;
  a larger one is checksummed in one pass before a plain PUT, or, in parts, while its parts
  upload (the tags are set when both are done).  Uploads stream the file in parts, so memory
  stays bounded whatever the file's size.  Their bodies are not signed (``UNSIGNED-PAYLOAD``:
  no SHA-256 pass of botocore's own); the DSS verifies all four checksums when it copies.
  The file is registered only once a HEAD shows the object with its size and ETag (a store
  may acknowledge a PUT before every reader sees the object).
* :class:`LocalStager` (the embedded server): the bytes are copied into the server's
  staging root, written around the page cache (:mod:`hcafs.directio`: the copy is read
  once, by the server, and a new page-cache page costs far more than the copy on the
  machines measured), and registered as ``file://``.  The server computes all four
  checksums in the one pass that verifies and moves the file into its store, so the client
  computes only crc32c (while the file is written, or during the copy) and checks the
  server's answer against it and the size.  The copy is not fsynced: the server fsyncs the
  blob before it publishes the file, and a file whose registration a crash cut off is
  staged again (no crc32c-only row is registered from an earlier staged copy).

Staged names are derived from the file's uuid and version, so staging again after a crash
overwrites the same object instead of leaving a second one.
"""

from __future__ import annotations

import logging
import mimetypes
import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from .. import directio
from ..checksums import MIN_PART_SIZE, Checksummer, Checksums, part_size
from ..errors import NotFound, RemoteError
from ..remote.s3 import S3, S3Url

log = logging.getLogger(__name__)

CHUNK = 4 * 1024 * 1024
PART_WORKERS = 4  # parts of one file uploaded at once (each streams from disk)
SMALL_FILE = 4 * 1024 * 1024  # read into memory once, for checksums and upload alike
DELETE_BATCH = 1000  # staged objects deleted by one request (the S3 maximum)
CONFIRM_SECONDS = 30.0  # how long a staged object may take to become visible
Progress = Callable[[int], None]
Known = Callable[[int], Checksums | None]  # fd -> checksums computed as it was written


def content_type(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


class Stager(ABC):
    # True: the checksums staging returns are all four (the server needs them with the
    # source); False: crc32c and size only, the server computes the four itself.
    complete_checksums = True

    @abstractmethod
    def stage(self, path: str, file_uuid: str, version: str, name: str,
              progress: Progress, known: Known | None = None) -> tuple[str, Checksums]:
        """Stage the file at ``path``; returns its source URL and checksums (partial when
        :attr:`complete_checksums` is False).

        ``known(fd)``, given the file open, returns its checksums if they were computed
        while it was written and still hold (then no pass of its own is made), or None."""

    @abstractmethod
    def source_url(self, file_uuid: str, version: str, name: str) -> str:
        """Where :meth:`stage` put (or puts) this file version."""

    @abstractmethod
    def discard(self, file_uuid: str, version: str, name: str) -> None:
        """Remove a staged copy the server no longer needs (best effort; it may wait
        for :meth:`flush`)."""

    def flush(self) -> None:  # noqa: B027  (most stagers remove at once: nothing waits)
        """Finish the removals :meth:`discard` left waiting (best effort)."""


class LocalStager(Stager):
    complete_checksums = False

    def __init__(self, root: str):
        self.root = root

    def _path(self, file_uuid: str, version: str, name: str) -> str:
        # The file keeps its name, so the server can tell its content type from it (a
        # name that does not fit in a URL's path as it is goes as "data").
        leaf = os.path.basename(name)
        if not leaf.isprintable():
            leaf = "data"
        return os.path.join(self.root, f"{file_uuid}.{version}", leaf or "data")

    def source_url(self, file_uuid: str, version: str, name: str) -> str:
        return "file://" + self._path(file_uuid, version, name)

    def stage(self, path: str, file_uuid: str, version: str, name: str,
              progress: Progress, known: Known | None = None) -> tuple[str, Checksums]:
        target = self._path(file_uuid, version, name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        part = os.path.join(os.path.dirname(target), ".part")  # a name of 255 bytes has no room
        with open(path, "rb") as source, os.fdopen(os.open(
                part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
            size = os.fstat(source.fileno()).st_size
            sums = _usable(known, source.fileno(), size)
            summer = None if sums is not None else Checksummer(size, complete=False)
            directio.copy(source.fileno(), out.fileno(), size, progress,
                          summer.update if summer is not None else None)
            if summer is not None:
                sums = summer.result()
        os.replace(part, target)
        if sums.size != size:
            raise OSError(f"{path} changed size while it was staged")
        return self.source_url(file_uuid, version, name), sums

    def discard(self, file_uuid: str, version: str, name: str) -> None:
        target = self._path(file_uuid, version, name)
        try:
            os.unlink(target)
            os.rmdir(os.path.dirname(target))
        except OSError:
            pass


class _Slice:
    """A read-only, seekable window onto a file, so boto3 streams a part from disk."""

    def __init__(self, fd: int, start: int, length: int, progress: Callable[[int], None]):
        self.fd, self.start, self.length = fd, start, length
        self.position = 0
        self.progress = progress

    def read(self, size: int = -1) -> bytes:
        remaining = self.length - self.position
        if size is None or size < 0 or size > remaining:
            size = remaining
        data = os.pread(self.fd, size, self.start + self.position)
        self.position += len(data)
        self.progress(len(data))
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.position, 2: self.length}[whence]
        self.position = max(0, min(self.length, base + offset))
        return self.position

    def tell(self) -> int:
        return self.position

    def __len__(self) -> int:
        return self.length


class S3Stager(Stager):
    def __init__(self, url: str, s3: S3):
        target = S3Url.parse(url)
        self.bucket = target.bucket
        self.prefix = target.key.strip("/") + "/" if target.key.strip("/") else ""
        self.s3 = s3
        self.unconfirmed = 0  # HEADs that did not (yet) show a staged object as uploaded
        self._lock = threading.Lock()
        self._discarded: list[str] = []  # keys to delete, DELETE_BATCH to a request

    def _key(self, file_uuid: str, version: str, name: str) -> str:
        return f"{self.prefix}{file_uuid}.{version}/{os.path.basename(name) or 'data'}"

    def source_url(self, file_uuid: str, version: str, name: str) -> str:
        return f"s3://{self.bucket}/{self._key(file_uuid, version, name)}"

    def stage(self, path: str, file_uuid: str, version: str, name: str,
              progress: Progress, known: Known | None = None) -> tuple[str, Checksums]:
        key = self._key(file_uuid, version, name)
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            sums = _usable(known, fd, size)
            extra = {"ContentType": content_type(name)}
            if size <= SMALL_FILE:
                sums = self._put_small(fd, size, key, extra, sums)
                progress(size)
            elif size <= MIN_PART_SIZE:
                sums = sums or _checksum_fd(fd, size)
                sent = [0]

                def advance(count: int) -> None:
                    sent[0] += count
                    progress(min(sent[0], size))

                self.s3.call("put_object", Bucket=self.bucket, Key=key,
                             Body=_Slice(fd, 0, size, advance), ContentLength=size,
                             Tagging=_tagging(sums), **extra)
            else:
                sums = self._multipart(fd, size, key, extra, progress, sums)
        finally:
            os.close(fd)
        self._confirm(key, size, sums.s3_etag)
        return self.source_url(file_uuid, version, name), sums

    def _put_small(self, fd: int, size: int, key: str, extra: dict,
                   sums: Checksums | None) -> Checksums:
        """A small file is read once: checksummed in memory (unless ``sums`` are known),
        then sent from there."""
        data = _read_fd(fd, size)
        if sums is None:
            summer = Checksummer(size)
            summer.update(data)
            sums = summer.result()
        self.s3.call("put_object", Bucket=self.bucket, Key=key, Body=data,
                     ContentLength=size, Tagging=_tagging(sums), **extra)
        return sums

    def _confirm(self, key: str, size: int, etag: str) -> None:
        """Return once the staged object answers a HEAD with its size and ETag.

        A store may acknowledge a PUT before every reader sees the object; the server,
        asked to register it then, would answer that it does not exist.  So the file is
        registered only once the object is visible; a wait that runs out raises, and the
        file is staged again at the next attempt.
        """
        deadline = time.monotonic() + CONFIRM_SECONDS
        pause = 0.05
        while True:
            try:
                head = self.s3.head(self.bucket, key)
                seen = (head.get("ContentLength"), head.get("ETag", "").strip('"'))
                if seen == (size, etag):
                    return
                problem = f"holds {seen[0]} bytes with ETag {seen[1]}, not {size} / {etag}"
            except NotFound:
                problem = "is not visible yet"
            if time.monotonic() > deadline:
                raise RemoteError(f"staged object s3://{self.bucket}/{key} {problem} after "
                                  f"{CONFIRM_SECONDS:.0f}s")
            self.unconfirmed += 1
            log.debug("staged object s3://%s/%s %s; waiting", self.bucket, key, problem)
            time.sleep(pause)
            pause = min(pause * 2, 1.0)

    def _multipart(self, fd: int, size: int, key: str, extra: dict,
                   progress: Progress, known: Checksums | None) -> Checksums:
        """The file in parts of the DSS part size, a few at a time, each streamed from
        disk, through the one multipart path (:meth:`S3.multipart`), while one more thread
        checksums the file in order; the checksums become the object's tags once both are
        done (the file is registered only after that, so no reader sees it untagged)."""
        step = part_size(size)
        lock = threading.Lock()
        sent = [0]

        def counted(count: int) -> None:
            with lock:
                sent[0] += count
                progress(min(sent[0], size))

        parts = [_Slice(fd, start, min(step, size - start), counted)
                 for start in range(0, size, step)]
        if known is not None:
            self.s3.multipart(self.bucket, key, parts, dict(extra, Tagging=_tagging(known)),
                              workers=PART_WORKERS)
            return known
        with ThreadPoolExecutor(1, thread_name_prefix="checksum") as pool:
            summing = pool.submit(_checksum_fd, fd, size)
            try:
                self.s3.multipart(self.bucket, key, parts, extra, workers=PART_WORKERS)
            finally:
                sums = summing.result()  # the fd stays open until the pass is done
        tags = [{"Key": k, "Value": v} for k, v in sums.tags().items()]
        self.s3.call("put_object_tagging", Bucket=self.bucket, Key=key,
                     Tagging={"TagSet": tags})
        return sums

    def discard(self, file_uuid: str, version: str, name: str) -> None:
        """Queued: staged copies are deleted many to a request by :meth:`flush`."""
        with self._lock:
            self._discarded.append(self._key(file_uuid, version, name))
            full = len(self._discarded) >= DELETE_BATCH
        if full:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            keys, self._discarded = self._discarded, []
        for start in range(0, len(keys), DELETE_BATCH):
            batch = [{"Key": key} for key in keys[start:start + DELETE_BATCH]]
            try:
                self.s3.call("delete_objects", Bucket=self.bucket,
                             Delete={"Objects": batch, "Quiet": True})
            except Exception as exc:  # best effort: a leftover staged object costs space
                log.debug("could not delete %d staged objects: %s", len(batch), exc)


def _usable(known: Known | None, fd: int, size: int) -> Checksums | None:
    sums = known(fd) if known is not None else None
    return sums if sums is not None and sums.size == size else None


def _tagging(sums: Checksums) -> str:
    return "&".join(f"{k}={v}" for k, v in sums.tags().items())


def _read_fd(fd: int, size: int) -> bytes:
    data = os.pread(fd, size, 0)
    if len(data) == size:
        return data
    data = bytearray(data)
    while len(data) < size:
        chunk = os.pread(fd, size - len(data), len(data))
        if not chunk:
            raise OSError("file shrank while it was staged")
        data += chunk
    return bytes(data)


def _checksum_fd(fd: int, size: int) -> Checksums:
    summer = Checksummer(size)
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(CHUNK, size - offset), offset)
        if not chunk:
            raise OSError("file shrank while it was checksummed")
        summer.update(chunk)
        offset += len(chunk)
    return summer.result()
