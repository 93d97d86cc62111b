"""Bringing a PUT /files source into the store, verified, synchronously or in the background.

A source is an ``s3://`` object (its checksums read from its tags, merged over its
``x-amz-meta-*`` metadata, tags winning) or, when the server was given a staging root, a
``file://`` path inside that root (its checksums computed by the server).  Every byte copied
is checksummed on the way; a blob is published under its content key only when all four
checksums and the size match, so a bad copy never becomes visible.

Copies up to ``async_threshold`` bytes run inside the request; larger ones answer 202 and run
on a pool.  Either way the version is first *claimed*: its copy record
(``copies/{uuid}.{version}``, with the file document it will publish) is created once, so of
two requests racing on one version with different files exactly one goes ahead and the other
is answered 409 at once.  The file document is then published create-once too, so a version
never changes after it first appeared.  Any server process sees the records, and a restarted
server resumes the copies it finds running.

Threading: the pool's workers each own one copy; they write only the copy's blob, its file
document and its ``copies/`` record.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import os
import re
import threading
import time
import uuid as _uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..checksums import TAG_KEYS, Checksummer, checksum_file
from ..errors import HcafsError, NotFound, Problem, RemoteError, bad_request
from ..remote.s3 import S3
from .store import Store

log = logging.getLogger(__name__)

_SOURCE_RE = re.compile(r"^(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<bucket>[^/]*)/(?P<key>.+)$", re.I)
_FORMATS = {
    "sha256": re.compile(r"^[a-z0-9]{64}$"),
    "sha1": re.compile(r"^[a-z0-9]{40}$"),
    "crc32c": re.compile(r"^[a-z0-9]{8}$"),
    "s3_etag": re.compile(r"^[a-z0-9]{32}(-([2-9]|[1-9][0-9]{1,3}|10000))?$"),
}
READ_CHUNK = 4 * 1024 * 1024
CLAIM_WAIT_SECONDS = 20.0
CLAIM_POLL_SECONDS = 0.1


@dataclass(frozen=True)
class Source:
    url: str
    size: int
    content_type: str
    checksums: dict[str, str]
    bucket: str = ""
    key: str = ""
    path: str = ""

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
                 async_threshold: int, workers: int = 4):
        self.store = store
        self._s3 = s3
        self.staging_root = os.path.realpath(staging_root) if staging_root else None
        self.async_threshold = async_threshold
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="copy")
        self._lock = threading.Lock()
        self._active: set[str] = set()

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
            head = self._s3.head(bucket, key)
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
        return Source(url=url, size=head["ContentLength"],
                      content_type=head.get("ContentType") or "application/octet-stream",
                      checksums=checksums, bucket=bucket, key=key)

    def _inspect_file(self, url: str) -> Source:
        path = os.path.realpath("/" + url[len("file://"):].lstrip("/"))
        if os.path.commonpath([path, self.staging_root]) != self.staging_root:
            raise bad_request(f"file:// source {url!r} is outside the server's staging root")
        try:
            with open(path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                sums = checksum_file(handle, size)
        except (FileNotFoundError, IsADirectoryError) as exc:
            raise Problem(404, "not_found", f"source file {url} does not exist") from exc
        content_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
        return Source(url=url, size=size, content_type=content_type, path=path,
                      checksums={k: getattr(sums, k) for k in TAG_KEYS})

    # ------------------------------------------------------------ copying

    def _chunks(self, source: Source) -> Iterator[bytes]:
        if source.path:
            with open(source.path, "rb") as handle:
                while chunk := handle.read(READ_CHUNK):
                    yield chunk
        else:
            yield from self._s3.stream(source.bucket, source.key)

    def _verified(self, source: Source) -> Iterator[bytes]:
        """The source's bytes; raises at the end, before the last chunk, if they mismatch."""
        summer = Checksummer(source.size)
        pending = None
        for chunk in self._chunks(source):
            summer.update(chunk)
            if pending is not None:
                yield pending
            pending = chunk
        got = summer.result()
        if got.size != source.size:
            raise Problem(422, "invalid_checksum",
                          f"{source.url} holds {got.size} bytes, not {source.size}")
        for name, claimed in source.checksums.items():
            if getattr(got, name) != claimed:
                raise Problem(422, "invalid_checksum",
                              f"{name} of {source.url} is {getattr(got, name)}, "
                              f"not {claimed} as claimed")
        if pending is not None:
            yield pending

    def copy(self, source: Source) -> None:
        """Publish the source's bytes as a blob (unless that blob is already there)."""
        key = source.blob_key()
        if self.store.blob_size(key) == source.size:
            return
        try:
            self.store.write_blob(key, self._verified(source))
        except NotFound as exc:
            raise Problem(404, "not_found", f"source {source.url} vanished") from exc
        except RemoteError as exc:
            raise Problem(502, "source_unavailable", f"copy of {source.url} failed: {exc}") \
                from exc

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
                  "source": source.__dict__, "sync": not background}
        joined = self._claim(name, record)
        if joined is not None:
            return joined
        if background:
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
                if self.store.create(key, _dumps(record)):
                    break
                continue
            earlier, tag = json.loads(found[0]), found[1]
            if earlier.get("task_id") == record["task_id"]:  # a retried create had worked
                break
            if earlier.get("state") != "running":  # an earlier copy failed: try again
                if self.store.replace(key, _dumps(record), tag):
                    break
                continue
            if earlier.get("document") != document:
                raise _conflict(name, "is being copied with other content")
            if not earlier.get("sync") or time.monotonic() > deadline:
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
        try:
            self.copy(Source(**record["source"]))
            self._publish(name, record["document"])
            self.store.delete(f"copies/{name}")
            log.info("async copy of %s done", name)
        except Problem as exc:
            log.warning("async copy of %s failed: %s", name, exc.title)
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

    def running(self, uuid: str, version: str) -> bool:
        """True while a background copy of ``uuid.version`` runs (a copy made inside a
        request is not announced: the file does not exist until that request answers)."""
        raw = self.store.read(f"copies/{uuid}.{version}")
        if raw is None:
            return False
        record = json.loads(raw)
        return record.get("state") == "running" and not record.get("sync")

    def raise_if_failed(self, uuid: str, version: str) -> None:
        raw = self.store.read(f"copies/{uuid}.{version}")
        if raw is None:
            return
        record = json.loads(raw)
        if record.get("state") == "failed":
            raise Problem(422, record.get("code", "missing_checksum"),
                          record.get("title", "the copy of this file failed"))

    def resume(self) -> int:
        """Restart every copy a previous server left running; returns how many."""
        count = 0
        for key in self.store.list("copies/"):
            raw = self.store.read(key)
            if raw is None:
                continue
            record = json.loads(raw)
            if record.get("state") == "running":
                uuid, _, version = key.split("/", 1)[1].partition(".")
                self._submit(uuid, version, record)
                count += 1
        return count

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)


def _dumps(document: dict) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _conflict(name: str, what: str) -> Problem:
    return Problem(409, "file_already_exists", f"file {name} {what}")


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
