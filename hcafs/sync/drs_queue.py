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

Threading: one flusher thread owns the network side.  Every row it changes (the queue's, and
when a result lands the pending-file rows involved) it changes through one journal method,
one transaction each; the calls go through :mod:`hcafs.remote.bulk_import`.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import dataclass

from ..cache.journal import Journal
from ..errors import ApiError, UsageError
from ..remote.bulk_import import BulkImportClient
from ..remote.client import DSSClient
from ..retry import RetryPolicy

__all__ = ["BulkImportClient", "DrsQueue", "ImportRequest", "normalize_uri",
           "parse_drs_file"]

log = logging.getLogger(__name__)

MAX_ITEMS = 100
MAX_CONTENT = 64 * 1024
CONFLICTS = ("SKIP", "RENAME", "OVERWRITE")
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


class DrsQueue:
    """The import queue's front (parsing closed ``.drs`` files) and its flusher thread.

    Every row it changes, it changes through the :class:`~hcafs.cache.journal.Journal`.
    """

    def __init__(self, journal: Journal, api: BulkImportClient, dss: DSSClient, *,
                 limit: int, window: float, default_conflict: str,
                 resolver: dict[str, str], on_change=lambda bundle: None):
        self.journal = journal
        self.api = api
        self.dss = dss
        self.limit = limit
        self.window = window
        self.default_conflict = default_conflict
        self.resolver = resolver
        self.on_change = on_change
        # How long the flusher holds off after a refusal or no answer: 5 s, 10 s, 20 s ...
        # never longer than the rate-limit window; the server's Retry-After comes first.
        self.hold = RetryPolicy(attempts=0, base_delay=5.0, max_delay=window,
                                jitter=False)
        self._holds = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._hold_until = 0.0
        self._polled: dict[str, float] = {}

    # ------------------------------------------------------------ enqueueing (FUSE threads)

    def enqueue_file(self, file_id: int, bundle: str, path: str, content: bytes,
                     size: int) -> None:
        """A ``.drs`` file was closed: record the close and queue its import (or why it
        cannot be), in one journal transaction."""
        directory, _, leaf = path.rpartition("/")
        target = leaf[: -len(".drs")]
        try:
            if len(content) > MAX_CONTENT:
                raise UsageError("a .drs file is at most 64 KiB")
            request = parse_drs_file(content.decode("utf-8", errors="strict"), target,
                                     self.default_conflict, self.resolver)
        except (UsageError, UnicodeDecodeError) as exc:
            reason = f"invalid .drs file: {exc}"
            self.journal.drs_rejected(file_id, size, reason)
            log.warning("%s/%s: %s", bundle, path, reason)
            return
        name = f"{directory}/{request.name}" if directory else request.name
        if self.journal.drs_queued(file_id, size, bundle, name, request.drs_uri,
                                   json.dumps(request.metadata),
                                   json.dumps(sorted(request.tags)), request.conflict):
            log.info("queued import of %s into %s/%s", request.drs_uri, bundle, name)
            self._wake.set()

    def waiting(self, bundle: str) -> int:
        return self.journal.imports_waiting(bundle)

    def failures(self, bundle: str) -> list[str]:
        return self.journal.import_failures(bundle)

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
        room = self.limit - self.journal.imports_sent_since(now - self.window)
        if self.api.limit is not None:
            _, remaining, reset = self.api.limit
            if reset > now:
                room = min(room, remaining)
        return max(0, room)

    def _flush(self) -> None:
        now = time.time()
        # Batches whose answer was lost are sent again under the same key.
        for key in self.journal.unanswered_batches():
            self._send(key)
        if now < self._hold_until:
            return
        while True:
            room = min(MAX_ITEMS, self.budget(time.time()))
            if room <= 0:
                return
            key = self.journal.claim_batch(now, room)
            if key is None or not self._send(key):
                return

    def _send(self, key: str) -> bool:
        rows = self.journal.batch(key)
        if not rows:
            return True
        items = [{"drs_uri": uri, "project": f"hcafs/{bundle_uuid}",
                  "name": name.rpartition("/")[2], "metadata": json.loads(metadata)}
                 for _, uri, name, metadata, _, _, bundle_uuid in rows]
        try:
            job = self.api.create(items, rows[0][4], json.loads(rows[0][5]), key)
        except ApiError as exc:
            if exc.transient:
                self._hold_off(exc, exc.retry_after)
                return False
            self.journal.imports_failed([r[0] for r in rows], f"{exc.code}: {exc.title}")
            return True
        except Exception as exc:  # unreachable: keep the key, try again later
            log.warning("bulk import submit failed (will resend): %s", exc)
            self._hold_off(exc, None)
            return False
        self._holds = 0
        self.journal.batch_submitted(key, str(job["id"]))
        log.info("submitted %d DRS imports as job %s", len(rows), job["id"])
        return True

    def _hold_off(self, exc: Exception, retry_after: str | None) -> None:
        """Send nothing new for a while: as long as the server said, else until its rate
        window resets, else the hold policy's next step."""
        now = time.time()
        if not retry_after and isinstance(exc, ApiError) and self.api.limit is not None \
                and self.api.limit[2] > now:
            retry_after = str(self.api.limit[2] - now)
        delay = self.hold.delay(self._holds, retry_after)
        self._holds += 1
        self._hold_until = now + delay
        log.warning("bulk import API: %s; waiting %.0fs", exc, delay)

    def _poll(self) -> None:
        now = time.monotonic()
        for job_id in self.journal.submitted_jobs():
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
        rows = self.journal.job_items(job_id)
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
                self.journal.import_skipped(import_id, drs_file_id)
                log.info("import into %s/%s skipped: the name exists", bundle, name)
                return
            if status >= 500 or status == 429:
                self.journal.import_retry(import_id, reason)
                return
            self.journal.imports_failed([import_id], reason)
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
        self.journal.import_done(import_id, bundle, drs_file_id, conflict, entries)
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
