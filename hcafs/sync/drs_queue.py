"""DRS link files: ``NAME.drs`` in a pending bundle becomes an import of NAME.

A ``.drs`` file holds a ``drs://`` URI on one line, or a JSON object
``{"drs_uri", "name"?, "metadata"?, "tags"?, "conflict_resolution"?}``.  When it is closed, it
is parsed and queued in the journal (``drs_imports``); invalid content leaves the file as it
is, with the reason in ``user.hcafs.error``, ``hcafs status`` and the log.

The flusher sends the queue to a bulk DRS import API (the Seven Bridges contract) in batches:

* at most 100 items a call, grouped so that each call's request-level fields
  (``conflict_resolution``, ``tags``) are shared by its items;
* never more items than the rate limit allows: a client-side budget of N items per window
  (counted from the journal, so it survives restarts) that also follows the server's
  ``X-RateLimit-*`` headers, 429 and ``Retry-After``;
* each batch gets an ``Idempotency-Key`` recorded in the journal *before* it is sent, so a
  batch whose answer was lost (a crash, a reset) is sent again under the same key and the
  server returns the job it already made; a job whose id was recorded is polled, never
  submitted again;
* jobs are polled until FINISHED, and each item's result is applied: on success NAME appears
  in the pending bundle as a file already on the server and the ``.drs`` file goes away; on
  error the server's message is kept on the ``.drs`` file; transient errors are retried.

Threading: one flusher thread owns the network side; it changes only ``drs_imports`` rows
and, when applying a result, the two pending-file rows involved, in one transaction.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid as _uuid
from dataclasses import dataclass

import requests

from ..cache.cachedb import CacheDB
from ..cache.journal import ERROR, REMOTE, SYNCED, Journal
from ..errors import ApiError, UsageError
from ..remote.client import DSSClient

log = logging.getLogger(__name__)

MAX_ITEMS = 100
MAX_CONTENT = 64 * 1024
CONFLICTS = ("SKIP", "RENAME", "OVERWRITE")
QUEUED, SUBMITTING, SUBMITTED, DONE, FAILED = "queued", "submitting", "submitted", "done", \
    "failed"
_HOST_FORM = re.compile(r"^drs://(?P<host>[A-Za-z0-9.\-]+(:\d+)?)/(?P<id>[^\s/][^\s]*)$")
_COMPACT_FORM = re.compile(r"^drs://(?P<prefix>[A-Za-z0-9._\-]+):(?P<accession>[^\s/:]+)$")


@dataclass(frozen=True)
class ImportRequest:
    drs_uri: str
    name: str
    metadata: dict
    tags: tuple[str, ...]
    conflict: str


def parse_drs_file(text: str, default_name: str, default_conflict: str,
                   resolver: dict[str, str]) -> ImportRequest:
    """What a ``.drs`` file asks for; :class:`UsageError` with the reason if it is invalid."""
    text = text.strip()
    if not text:
        raise UsageError("the file is empty; write a drs:// URI or a JSON object")
    if text.startswith("{"):
        try:
            body = json.loads(text)
        except ValueError as exc:
            raise UsageError(f"not valid JSON: {exc}") from exc
        unknown = set(body) - {"drs_uri", "name", "metadata", "tags", "conflict_resolution"}
        if unknown:
            raise UsageError(f"unknown keys: {', '.join(sorted(unknown))}")
    else:
        if "\n" in text:
            raise UsageError("a .drs file holds one drs:// URI (or a JSON object)")
        body = {"drs_uri": text}
    uri = body.get("drs_uri")
    if not isinstance(uri, str):
        raise UsageError("drs_uri is missing")
    name = body.get("name", default_name)
    metadata = body.get("metadata", {})
    tags = body.get("tags", [])
    conflict = body.get("conflict_resolution", default_conflict)
    if not isinstance(name, str) or not name or "/" in name or name in (".", "..") or \
            "\0" in name or name.endswith(".drs"):
        raise UsageError(f"name {name!r} is not a usable file name")
    if not isinstance(metadata, dict):
        raise UsageError("metadata must be a JSON object")
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise UsageError("tags must be a list of strings")
    if conflict not in CONFLICTS:
        raise UsageError(f"conflict_resolution must be one of {', '.join(CONFLICTS)}")
    return ImportRequest(normalize_uri(uri, resolver), name, metadata, tuple(tags), conflict)


def normalize_uri(uri: str, resolver: dict[str, str]) -> str:
    """A valid ``drs://host/id`` URI; compact ``drs://prefix:accession`` URIs whose prefix
    is in the resolver table are rewritten to the hostname form."""
    compact = _COMPACT_FORM.match(uri)
    if compact and compact["prefix"] in resolver:
        host = re.sub(r"^https?://", "", resolver[compact["prefix"]]).rstrip("/")
        return f"drs://{host}/{compact['accession']}"
    if _HOST_FORM.match(uri) or compact:
        return uri
    raise UsageError(f"{uri!r} is not a drs:// URI (drs://host/id or drs://prefix:accession)")


class BulkImportClient:
    """The bulk DRS import API: create a job (with an idempotency key) and read it."""

    def __init__(self, base_url: str, token: str | None, verify: bool | str = True):
        base_url = base_url.rstrip("/")
        self.base = base_url if base_url.endswith("/v2") else f"{base_url}/v2"
        self._token = token
        self.session = requests.Session()
        self.session.verify = verify
        self.limit: tuple[int, int, float] | None = None  # limit, remaining, reset (epoch)

    def _call(self, method: str, path: str, **kwargs) -> requests.Response:
        headers = {**kwargs.pop("headers", {}), "Content-Type": "application/json"}
        if self._token:
            headers["X-SBG-Auth-Token"] = self._token
        try:
            response = self.session.request(method, self.base + path, headers=headers,
                                            timeout=(10, 60), **kwargs)
        except requests.exceptions.RequestException as exc:
            from ..errors import Unreachable

            raise Unreachable(f"{method} {self.base}{path}: {type(exc).__name__}") from exc
        try:
            self.limit = (int(response.headers["X-RateLimit-Limit"]),
                          int(response.headers["X-RateLimit-Remaining"]),
                          float(response.headers["X-RateLimit-Reset"]))
        except (KeyError, ValueError):
            pass
        if response.status_code >= 400:
            try:
                body = response.json()
                message = body.get("message") or body.get("title") or response.reason
                code = str(body.get("code", response.status_code))
            except ValueError:
                message, code = response.reason, str(response.status_code)
            error = ApiError(response.status_code, code, message, method, self.base + path)
            error.retry_after = response.headers.get("Retry-After")
            raise error
        return response

    def create(self, items: list[dict], conflict: str, tags: list[str], key: str) -> dict:
        body = {"items": items, "conflict_resolution": conflict, "tags": tags or None}
        return self._call("POST", "/bulk/drs/imports/create", json=body,
                          headers={"Idempotency-Key": key}).json()

    def get(self, job_id: str) -> dict:
        return self._call("GET", f"/bulk/drs/imports/{job_id}").json()


class DrsQueue:
    """The import queue and its flusher thread."""

    def __init__(self, db: CacheDB, journal: Journal, api: BulkImportClient,
                 dss: DSSClient, *, limit: int, window: float, default_conflict: str,
                 resolver: dict[str, str], on_change=lambda bundle: None):
        self.cachedb = db
        self.journal = journal
        self.api = api
        self.dss = dss
        self.limit = limit
        self.window = window
        self.default_conflict = default_conflict
        self.resolver = resolver
        self.on_change = on_change
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._hold_until = 0.0
        self._polled: dict[str, float] = {}

    @property
    def db(self):
        return self.cachedb.db()

    # ------------------------------------------------------------ enqueueing (FUSE threads)

    def enqueue_file(self, file_id: int, bundle: str, path: str, content: bytes) -> None:
        """A ``.drs`` file was closed: queue its import, or record why it cannot be."""
        directory, _, leaf = path.rpartition("/")
        target = leaf[: -len(".drs")]
        try:
            if len(content) > MAX_CONTENT:
                raise UsageError("a .drs file is at most 64 KiB")
            request = parse_drs_file(content.decode("utf-8", errors="strict"), target,
                                     self.default_conflict, self.resolver)
        except (UsageError, UnicodeDecodeError) as exc:
            reason = f"invalid .drs file: {exc}"
            with self.cachedb.atomic() as db:
                db.execute("delete from drs_imports where drs_file_id = ? and state = ?",
                           [file_id, QUEUED])
                db.execute("update pending_files set state = ?, error = ? where id = ?",
                           [ERROR, reason, file_id])
            log.warning("%s/%s: %s", bundle, path, reason)
            return
        name = f"{directory}/{request.name}" if directory else request.name
        with self.cachedb.atomic() as db:
            busy = db.execute("select count(*) from drs_imports where drs_file_id = ? and "
                              "state in (?, ?)", [file_id, SUBMITTING, SUBMITTED]).fetchone()[0]
            if busy:
                db.execute("update pending_files set error = ? where id = ?",
                           ["changed while its import was running; the new content is "
                            "ignored", file_id])
                return
            db.execute("delete from drs_imports where drs_file_id = ?", [file_id])
            db["drs_imports"].insert({
                "drs_file_id": file_id, "bundle": bundle, "name": name,
                "drs_uri": request.drs_uri, "metadata": json.dumps(request.metadata),
                "tags": json.dumps(sorted(request.tags)), "conflict": request.conflict,
                "state": QUEUED, "attempts": 0, "created": time.time()})
            db.execute("update pending_files set state = ?, error = null where id = ?",
                       ["queued", file_id])
        log.info("queued import of %s into %s/%s", request.drs_uri, bundle, name)
        self._wake.set()

    def waiting(self, bundle: str) -> int:
        return self.db.execute("select count(*) from drs_imports where bundle = ? and state "
                               "not in (?, ?)", [bundle, DONE, FAILED]).fetchone()[0]

    def failures(self, bundle: str) -> list[str]:
        rows = self.db.execute("select name, error from drs_imports where bundle = ? and "
                               "state = ?", [bundle, FAILED]).fetchall()
        return [f"{name}: {error}" for name, error in rows]

    # ------------------------------------------------------------ the flusher

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="drs-flusher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._flush()
                self._poll()
            except Exception:
                log.exception("DRS import flusher error")
            self._wake.wait(0.5)
            self._wake.clear()

    def budget(self, now: float) -> int:
        """Items that may be sent now without passing the rate limit."""
        sent = self.db.execute("select count(*) from drs_imports where submitted_at > ?",
                               [now - self.window]).fetchone()[0]
        room = self.limit - sent
        if self.api.limit is not None:
            _, remaining, reset = self.api.limit
            if reset > now:
                room = min(room, remaining)
        return max(0, room)

    def _flush(self) -> None:
        now = time.time()
        # Batches whose answer was lost are sent again under the same key.
        for key, in self.db.execute("select distinct batch from drs_imports where state = ?",
                                    [SUBMITTING]).fetchall():
            self._send(key)
        if now < self._hold_until:
            return
        while True:
            room = min(MAX_ITEMS, self.budget(time.time()))
            if room <= 0:
                return
            group = self.db.execute(
                "select conflict, tags from drs_imports where state = ? and "
                "coalesce(next_try, 0) <= ? order by id limit 1", [QUEUED, now]).fetchone()
            if group is None:
                return
            key = str(_uuid.uuid4())
            with self.cachedb.atomic() as db:
                ids = [r[0] for r in db.execute(
                    "select id from drs_imports where state = ? and conflict = ? and tags = ? "
                    "and coalesce(next_try, 0) <= ? order by id limit ?",
                    [QUEUED, group[0], group[1], now, room]).fetchall()]
                db.execute(f"update drs_imports set state = ?, batch = ? where id in "
                           f"({','.join('?' * len(ids))})", [SUBMITTING, key, *ids])
            if not self._send(key):
                return

    def _send(self, key: str) -> bool:
        rows = self.db.execute(
            "select i.id, i.drs_uri, i.name, i.metadata, i.conflict, i.tags, b.uuid from "
            "drs_imports i join pending_bundles b on b.name = i.bundle where i.batch = ? "
            "order by i.id", [key]).fetchall()
        if not rows:
            return True
        items = [{"drs_uri": uri, "project": f"hcafs/{bundle_uuid}",
                  "name": name.rpartition("/")[2], "metadata": json.loads(metadata)}
                 for _, uri, name, metadata, _, _, bundle_uuid in rows]
        try:
            job = self.api.create(items, rows[0][4], json.loads(rows[0][5]), key)
        except ApiError as exc:
            if exc.status == 429 or exc.transient:
                self._hold(exc)
                return False
            self._fail([r[0] for r in rows], f"{exc.code}: {exc.title}")
            return True
        except Exception as exc:  # unreachable: keep the key, try again later
            log.warning("bulk import submit failed (will resend): %s", exc)
            self._hold_until = time.time() + 5
            return False
        now = time.time()
        with self.cachedb.atomic() as db:
            db.execute("update drs_imports set state = ?, job_id = ?, submitted_at = ? "
                       "where batch = ?", [SUBMITTED, str(job["id"]), now, key])
        log.info("submitted %d DRS imports as job %s", len(rows), job["id"])
        return True

    def _hold(self, exc: ApiError) -> None:
        delay = 5.0
        retry_after = getattr(exc, "retry_after", None)
        if retry_after:
            try:
                delay = float(retry_after)
            except ValueError:
                pass
        elif self.api.limit is not None and self.api.limit[2] > time.time():
            delay = self.api.limit[2] - time.time()
        self._hold_until = time.time() + min(delay, self.window)
        log.warning("bulk import API said %s; waiting %.0fs", exc, delay)

    def _fail(self, ids: list[int], reason: str) -> None:
        with self.cachedb.atomic() as db:
            for import_id in ids:
                db.execute("update drs_imports set state = ?, error = ? where id = ?",
                           [FAILED, reason, import_id])
                db.execute("update pending_files set state = ?, error = ? where id = "
                           "(select drs_file_id from drs_imports where id = ?)",
                           [ERROR, f"import failed: {reason}", import_id])

    def _poll(self) -> None:
        now = time.monotonic()
        jobs = [r[0] for r in self.db.execute(
            "select distinct job_id from drs_imports where state = ?", [SUBMITTED])]
        for job_id in jobs:
            if self._polled.get(job_id, 0) > now:
                continue
            self._polled[job_id] = now + 1.0
            try:
                job = self.api.get(job_id)
            except Exception as exc:
                log.debug("polling import job %s failed: %s", job_id, exc)
                continue
            if job.get("state") == "FINISHED":
                self._apply(job_id, job.get("result") or [])

    def _apply(self, job_id: str, results: list[dict]) -> None:
        rows = self.db.execute("select id, bundle, name, drs_file_id, conflict from "
                               "drs_imports where job_id = ? and state = ? order by id",
                               [job_id, SUBMITTED]).fetchall()
        by_item = _results_by_item(results, len(rows))
        for row, result in zip(rows, by_item, strict=True):
            bundle, name = row[1], row[2]
            try:
                self._apply_one(*row, result)
            except Exception as exc:
                # The server has done the import: never submit it again, apply it again.
                log.warning("applying the result of import job %s for %s/%s failed "
                            "(will retry): %s", job_id, bundle, name, exc)
                self._polled[job_id] = time.monotonic() + 10
            self.on_change(bundle)

    def _apply_one(self, import_id: int, bundle: str, name: str, drs_file_id: int,
                   conflict: str, result: list[dict]) -> None:
        errors = [r["error"] for r in result if r.get("error")]
        resources = [r["resource"] for r in result if r.get("resource")]
        if errors and not resources:
            error = errors[0]
            status = int(error.get("status") or 0)
            reason = f"{error.get('code')}: {error.get('message')}"
            if conflict == "SKIP" and str(error.get("code")) == "5003":
                # SKIP and the name exists: nothing to import, and nothing went wrong.
                with self.cachedb.atomic() as db:
                    db.execute("delete from pending_files where id = ?", [drs_file_id])
                    db.execute("update drs_imports set state = ?, finished_at = ?, error = ? "
                               "where id = ?", [DONE, time.time(), "skipped: name exists",
                                                import_id])
                log.info("import into %s/%s skipped: the name exists", bundle, name)
                return
            if status >= 500 or status == 429:
                attempts = self.db.execute("select attempts from drs_imports where id = ?",
                                           [import_id]).fetchone()[0] + 1
                self.db.execute("update drs_imports set state = ?, job_id = null, batch = "
                                "null, submitted_at = null, attempts = ?, next_try = ?, "
                                "error = ? where id = ?",
                                [QUEUED, attempts, time.time() + min(300, 2 ** attempts),
                                 reason, import_id])
                return
            self._fail([import_id], reason)
            log.warning("import into %s/%s failed: %s", bundle, name, reason)
            return
        entries = []
        directory = name.rpartition("/")[0]
        for resource in resources:
            file_uuid, version = _resource_fqid(resource)
            info = self.dss.head_file(file_uuid, version)
            member = resource.get("member")  # a DRS bundle's member: its path inside
            path = f"{name}/{member}" if member else (
                f"{directory}/{resource['name']}" if directory and resource.get("name") and
                len(resources) == 1 and conflict == "RENAME" else
                (resource.get("name") if len(resources) == 1 and conflict == "RENAME"
                 and resource.get("name") else name))
            entries.append((path, info))
        with self.cachedb.atomic() as db:
            for path, info in entries:
                existing = db.execute("select id from pending_files where bundle = ? and "
                                      "path = ?", [bundle, path]).fetchone()
                if existing and conflict == "SKIP":
                    continue
                if existing:
                    db.execute("delete from pending_files where id = ?", [existing[0]])
                db["pending_files"].insert({
                    "bundle": bundle, "path": path, "kind": REMOTE, "size": info.size,
                    "mtime": time.time(), "state": SYNCED, "generation": 0,
                    "synced_generation": 0, "file_uuid": info.uuid,
                    "file_version": info.version, "sha256": info.sha256, "sha1": info.sha1,
                    "crc32c": info.crc32c, "s3_etag": info.s3_etag,
                    "content_type": info.content_type, "attempts": 0, "sent_bytes": 0,
                    "changed": time.time()})
            db.execute("delete from pending_files where id = ?", [drs_file_id])
            db.execute("update drs_imports set state = ?, finished_at = ?, error = null "
                       "where id = ?", [DONE, time.time(), import_id])
        log.info("imported %s into %s (%d file%s)", name, bundle, len(entries),
                 "" if len(entries) == 1 else "s")


def _resource_fqid(resource: dict) -> tuple[str, str]:
    dss = resource.get("dss") or {}
    if dss.get("uuid") and dss.get("version"):
        return dss["uuid"], dss["version"]
    file_uuid, _, version = str(resource["id"]).partition(".")
    return file_uuid, version


def _results_by_item(results: list[dict], count: int) -> list[list[dict]]:
    """Each item's result entries: one each, or grouped by an ``item`` index if given."""
    if any("item" in r for r in results):
        grouped: list[list[dict]] = [[] for _ in range(count)]
        for result in results:
            index = result.get("item")
            if isinstance(index, int) and 0 <= index < count:
                grouped[index].append(result)
        return grouped
    padded = results + [{"error": {"status": 500, "code": "missing",
                                   "message": "no result for this item"}}] * count
    return [[r] for r in padded[:count]]
