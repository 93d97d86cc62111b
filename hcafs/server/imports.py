"""The bulk DRS import API (Seven Bridges ``/v2/bulk/drs/imports``) and the engine behind it.

A create call is validated whole (at most :data:`MAX_ITEMS` items, each with a ``drs_uri``
and exactly one of ``project``/``parent``) and becomes a *job*, kept in the store.  Engine
threads then take the job through ``SUBMITTED`` → ``RESOLVING`` (each item's DRS URI is
resolved and its object read; a DRS bundle expands into its members) → ``RUNNING`` (each
file is admitted against its caller's file budget, fetched, verified against the DRS
checksum, stored as a DSS file and named in its destination folder) → ``FINISHED``.  Every
transition is written to the job before the job moves on, so a poller sees the states in
this order (and ``started_on``/``finished_on``).  An item that fails gets an ``error``
result; nothing else of the job is lost.  The job's ``result`` holds one entry per item,
in item order, and one per member for a bundle item.

Destinations (:mod:`.folders`): ``project`` ``"owner/slug"`` names the root folder of that
project (created by its first import, owned by that import's caller), ``parent`` the id of a
folder this server created (a project root, or a folder made implicitly by a ``name``
holding ``/``).  Conflict resolution acts on names within the destination folder; an
import goes only where :meth:`.folders.Folders.may_write` says so (the project's owner and
members).  An imported file's record is shown to the identity that imported it (and admins)
only.

Bounds: a bundle item reads at most :data:`MAX_MEMBERS` DRS objects below itself, a job at
most :data:`MAX_JOB_READS`, and a bundle that contains itself fails the item.  A fetch is
refused before it starts when it would take the job past ``ImportLimits.job_bytes`` or the
spool past the free disk.  Fetching and the egress policy are :mod:`.drs` and
:mod:`.egress`.

The file budget (``limit`` files per ``window`` seconds per identity, in fixed periods by
default, or a sliding window) and the request budget are :class:`.budgets.SharedBudget`
objects, kept in the store, so every server process and worker on it counts them together,
and a restart keeps them.

A job is worked under a lease (:mod:`.leases`, ``leases/import-{id}``): the process that
holds it is the only one that writes the job; every DSS file it stores is published through
the lease's fence, so a holder that stalled past its TTL stores nothing more.  The lease
scanner of every process queues the unfinished jobs whose lease is free (their process
died); the process that claims one first finds the files its previous holder stored but
had not yet written into the job (:meth:`Importer._recovered`), so none is stored twice.
Job ids are unique across processes (the ``import-running/`` marker is created once).
Store layout::

    imports/{id}                               a job: request, state, plan and results
    import-running/{id}                        marker of a job not yet FINISHED
    import-keys/{hash}                         an Idempotency-Key → the job it created
    import-calls/{epoch_us}-{rand}             every create call, accepted or refused
    import-admissions/{epoch_us}-{owner}-{id}-{unit}   the files of a batch admitted
                                               together against the window (from unit)
    imported-files/{uuid}.{version}            an imported file, as GET /v2/files shows it

Threading: HTTP threads create jobs (writing the new job and its call record) and read;
:data:`WORKERS` engine threads take due jobs from :class:`_Due`, which hands a job to at
most one worker at a time, and only that worker (holding the job's lease) writes the job
afterwards.  ``_Due`` serves
owners round-robin and gives one owner at most :data:`PER_OWNER` workers at once, so a slow
DRS server holds only its own users' jobs.  Budgets and the spool reservation lock.
The threads start in :meth:`Importer.start` and stop through an Event in :meth:`close`.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import math
import mimetypes
import os
import random
import re
import secrets
import shutil
import tempfile
import threading
import time
import uuid as _uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlencode, urlsplit

from .. import __version__
from ..checksums import TAG_KEYS, Checksummer, Checksums
from ..errors import HcafsError, Problem, RemoteError
from ..remote.s3 import S3, S3Url
from ..versions import now_version, parse_fqid
from . import metrics
from .auth import Identity, require_group
from .budgets import SharedBudget
from .copier import Source, file_document
from .credentials import Credentials
from .drs import NO_AUTH, Access, Auth, ChecksumCheck, DrsError, DrsReader
from .dss import dumps as _dumps
from .egress import EgressError
from .folders import (
    FOLDER_RE,
    MORE_INFO,
    OPEN_OWNERS,
    PROJECT_RE,
    FolderError,
    Folders,
    files_href,
    name_error,
    owner_part,
)
from .leases import Lease, LeaseLost, Leases
from .listing import FileIndex
from .store import Staged, Store

log = logging.getLogger(__name__)

MAX_ITEMS = 100
MAX_DEPTH = 8
MAX_MEMBERS = 1000  # DRS objects read below one item (files and nested bundles)
MAX_JOB_READS = 10_000  # DRS objects read for one job
JOB_BYTES = 1 << 40  # bytes one job may fetch
SPOOL_RESERVE = 256 * 1024 * 1024  # free disk the spool leaves alone
RESOLUTIONS = ("SKIP", "RENAME", "OVERWRITE")
SUBMITTED, RESOLVING, RUNNING, FINISHED = "SUBMITTED", "RESOLVING", "RUNNING", "FINISHED"
WORKERS = 16  # engine threads (they mostly wait: FETCHERS bounds the fetches)
PER_OWNER = 8  # engine threads one owner's jobs may hold at once
STORE_RETRY = 10.0
MAX_CRASH_RETRY = 3600.0  # the longest wait before a job that crashed is tried again
FETCHERS = 16  # fetches in flight, all jobs together (the reader bounds each host)
RESOLVERS = 8  # GET /objects/{id} in flight for one job, where bulk is not offered
BATCH = 100  # units admitted, given access URLs and fetched together
NEAR = 1.0  # seconds before its budget is back that a waiting job is prepared again
BATCH_BYTES = 1 << 30  # ... unless their bytes pass this (access URLs stay fresh)
BULK_TRIES = 3  # rounds of POST /objects for ids left unresolved with a transient code
RESUMES = 8  # times one range of a transfer is taken up again after a cut
REFRESHES = 2  # times one fetch gets a new access URL after a 401/403
AHEAD_FILES = 1000  # files fetched but not admitted yet, all jobs together
REQUEST_CONTENTION_SECONDS = 10.0  # an import API request retries a contended budget this long
AHEAD_BYTES = 4 << 30  # ... and their bytes
PARALLEL_MIN = 64 * 1024 * 1024  # objects this large are fetched in parallel ranges
PARTS = 4
_NAMESPACE = _uuid.UUID("5c1f0a52-3d59-4d38-9b57-2a4e1f0c6b7d")
_JOB_RE = re.compile(r"^\d{1,30}\Z")

# DrsError kind → (HTTP status, code) of the item's error result.
_KINDS = {"malformed": (400, 5101), "unresolvable": (404, 5102), "not_found": (404, 5002),
          "denied": (403, 5001), "unavailable": (502, 5103), "mismatch": (422, 5104),
          "unsupported": (422, 5105), "refused": (403, 5107), "too_large": (422, 5108)}


# ==================================================================== errors


# The shape of a job's view, part of its entity tag: a server whose rendering of an unchanged
# job differs (an upgrade) must not answer a poll 304 for the old rendering.
VIEW_VERSION = f"{__version__}/1"
WAIT_MAX = 4  # seconds a poll may be held until its job changes (Prefer: wait); below the
# server's stop timeout, so a held poll never makes a stopping worker be killed
WAITERS = 8  # polls held at once in one process (fewer with few threads); past that, and
WAITERS_PER_IDENTITY = 6  # past this many for one identity, a poll is answered at once
API_INFO = "docs/drs.md#the-bulk-import-api-v2"


class SbgProblem(Problem):
    """An error answer of the import API: SBG ``{status, code, message, more_info}``."""

    def __init__(self, status: int, code: int, message: str, more_info: str = API_INFO,
                 headers: dict | None = None):
        super().__init__(status, str(code), message, headers)
        self.more_info = more_info


def sbg_body(exc: Problem) -> dict:
    """Any Problem in the SBG shape; codes that are not numbers become the HTTP status."""
    code = int(exc.code) if str(exc.code).isdigit() else exc.status
    return {"status": exc.status, "code": code, "message": exc.title,
            "more_info": getattr(exc, "more_info", API_INFO)}


class ItemError(HcafsError):
    """One item (or bundle member) failed; it becomes an ``error`` result."""

    def __init__(self, status: int, code: int, message: str, more_info: str = MORE_INFO):
        self.body = {"status": status, "code": code, "message": message,
                     "more_info": more_info}
        super().__init__(message)


def _item_error(exc: DrsError | ItemError | FolderError) -> dict:
    if isinstance(exc, ItemError | FolderError):
        return exc.body
    status, code = _KINDS.get(exc.kind, (502, 5103))
    return {"status": status, "code": code, "message": str(exc), "more_info": MORE_INFO}


class _Interrupted(Exception):
    """The server is stopping; the unit is done again at the next start."""


def _job_id(when: float) -> str:
    """A job id: digits that grow with time (milliseconds, then six random digits)."""
    return f"{int(when * 1000)}{secrets.randbelow(10**6):06d}"


def _epoch_us(when: float) -> str:
    return f"{int(when * 1_000_000):017d}"


def _iso(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def owner_key(email: str) -> str:
    return hashlib.sha256(email.encode()).hexdigest()[:16]


# ==================================================================== the job queue


class _Due:
    """Job ids, by owner, and when each may next run; a job is queued at most once, and
    not while a thread works on it (a rescan in between would give it a second thread).

    :meth:`take` serves owners round-robin and passes over an owner whose jobs already
    hold ``per_owner`` engine threads, so one owner's slow sources cannot hold them all.
    """

    def __init__(self, per_owner: int = PER_OWNER) -> None:
        self.per_owner = per_owner
        self._heaps: dict[str, list[tuple[float, str]]] = {}
        self._owners: deque[str] = deque()
        self._running: dict[str, int] = {}
        self._queued: set[str] = set()
        self._working: set[str] = set()  # taken, not done
        self._cond = threading.Condition()

    def put(self, job_id: str, owner: str, when: float = 0.0) -> None:
        with self._cond:
            if job_id in self._queued or job_id in self._working:
                return
            self._queued.add(job_id)
            if owner not in self._heaps:
                self._heaps[owner] = []
                self._owners.append(owner)
            heapq.heappush(self._heaps[owner], (when, job_id))
            self._cond.notify()

    def take(self, stop: threading.Event) -> tuple[str, str] | None:
        """The next due job and its owner; call :meth:`done` when the work is over."""
        with self._cond:
            while not stop.is_set():
                now, wait = time.time(), 1.0
                for _ in range(len(self._owners)):
                    owner = self._owners[0]
                    self._owners.rotate(-1)
                    heap = self._heaps[owner]
                    if not heap or self._running.get(owner, 0) >= self.per_owner:
                        continue
                    if heap[0][0] > now:
                        wait = min(wait, heap[0][0] - now)
                        continue
                    _, job_id = heapq.heappop(heap)
                    self._queued.discard(job_id)
                    self._working.add(job_id)
                    self._running[owner] = self._running.get(owner, 0) + 1
                    return job_id, owner
                self._cond.wait(max(wait, 0.01))
            return None

    def done(self, job_id: str, owner: str) -> None:
        with self._cond:
            self._working.discard(job_id)
            self._running[owner] -= 1
            if not self._running[owner]:
                del self._running[owner]
                if not self._heaps[owner]:
                    del self._heaps[owner]
                    self._owners.remove(owner)
            self._cond.notify_all()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()


class _Reads:
    """The DRS objects one item may read below itself, and what its job has left."""

    def __init__(self, job_left: int):
        self.count, self.job_left = 0, job_left

    def take(self) -> None:
        self.count += 1
        if self.count > self.job_left:
            raise ItemError(422, 5109, f"the job reads more than {MAX_JOB_READS} DRS objects")
        if self.count > MAX_MEMBERS + 1:  # the item itself, then its members
            raise ItemError(422, 5109, f"the bundle has more than {MAX_MEMBERS} members")


# ==================================================================== the importer


@dataclass
class _Landing:
    """A fetched unit's documents, made while it waits for its admission: its DSS file
    (``key``, ``document``), its record and its name's entry, each staged
    (:meth:`.store.Store.stage`), so that landing it places names and writes no bytes.
    ``where``: the folder id and leaf they were made for."""

    sums: Checksums
    where: tuple[str, str]
    key: str
    document: dict
    record: dict
    staged: list[Staged]  # the DSS file, the record, the name's entry

    def discard(self) -> None:
        """Remove what was staged and not placed."""
        for staged in self.staged:
            staged.discard()


@dataclass(frozen=True)
class ImportLimits:
    files: int = 500
    files_window: float = 300.0
    requests: int = 1000
    requests_window: float = 300.0
    job_bytes: int = JOB_BYTES
    window_kind: str = "fixed"  # of both budgets (hcafs.server.budgets)


class Importer:
    """The import API (create, get, files) and the engine that runs the jobs."""

    def __init__(self, store: Store, reader: DrsReader, limits: ImportLimits,
                 spool_dir: str, workers: int = WORKERS,
                 credentials: Credentials | None = None, leases: Leases | None = None,
                 held_polls: int = WAITERS,
                 user_names: Callable[[], frozenset[str]] = frozenset):
        self.store = store
        # The user parts of the identities this server knows (lower case): a project named
        # after one of them is made by that identity only (Folders.owner_part).
        self.user_names = user_names
        self.file_index = FileIndex(store)
        self.leases = leases
        self._held: dict[str, Lease] = {}  # job id → this process's lease on it
        self._current: set[str] = set()  # jobs whose every stored file is in the job
        self._crashes: dict[str, int] = {}  # job id -> crashes in a row (under _crash_lock)
        self._crash_lock = threading.Lock()
        self.reader = reader
        self.limits = limits
        self.spool_dir = spool_dir
        self.credentials = credentials or Credentials()
        self._fetchers = ThreadPoolExecutor(FETCHERS, thread_name_prefix="drs-fetch")
        self._ahead: dict[tuple[str, int], _Landing] = {}  # fetched, not admitted yet
        self._ahead_bytes = 0
        self._ahead_lock = threading.Lock()
        self._s3: dict[int, S3] = {}  # credentials entry → its S3 client
        self.folders = Folders(store)
        self.file_budget = SharedBudget(store, "files", limits.files, limits.files_window,
                                        kind=limits.window_kind)
        self.request_budget = SharedBudget(store, "requests", limits.requests,
                                           limits.requests_window, kind=limits.window_kind)
        self._due = _Due()
        self._spooling = 0  # bytes reserved by fetches in flight
        self._spool_lock = threading.Lock()
        self._stop = threading.Event()
        self._held_limit = held_polls
        self._held_polls: dict[str, int] = {}  # identity → its polls held now
        self._held_lock = threading.Lock()
        self._wait_step = store.watch_interval  # how often a held poll looks at its job
        self._threads = [threading.Thread(target=self._work, name=f"drs-import-{n}",
                                          daemon=True) for n in range(workers)]

    # ------------------------------------------------------------ budgets and headers

    def count_request(self, who: Identity) -> None:
        """Count one import API request; 429 (SBG code 1000) past the request budget.

        A request refused only because it kept losing the budget's compare-and-swap to
        others (room was left) tries again for up to :data:`REQUEST_CONTENTION_SECONDS`:
        many clients of one identity at once must not read as a spent budget."""
        key = owner_key(who.email)
        deadline = time.monotonic() + REQUEST_CONTENTION_SECONDS
        pause = 0.01
        while True:
            when, wait = self.request_budget.take(key)
            if when is not None:
                return
            remaining, next_free, _ = self.request_budget.state(key)
            if remaining <= 0 or time.monotonic() >= deadline:
                break
            time.sleep(random.uniform(0, pause))  # spread the contenders out
            pause = min(pause * 2, 0.5)
        raise SbgProblem(429, 1000, "Rate limit exceeded! Check response headers.",
                         headers={"X-RateLimit-Limit": str(self.limits.requests),
                                  "X-RateLimit-Remaining": "0",
                                  "X-RateLimit-Reset": str(math.ceil(next_free)),
                                  "Retry-After": str(math.ceil(wait))})

    def headers(self, who: Identity | None) -> dict[str, str]:
        """The caller's file budget: limit, remaining, and when it is whole again."""
        if who is None:
            remaining, full = self.limits.files, time.time()
        else:
            remaining, _, full = self.file_budget.state(owner_key(who.email))
        return {"X-RateLimit-Limit": str(self.limits.files),
                "X-RateLimit-Remaining": str(remaining),
                "X-RateLimit-Reset": str(math.ceil(full))}

    # ------------------------------------------------------------ create and get

    def create(self, body: object, who: Identity, base: str, key: str | None = None) -> dict:
        """A new job (SUBMITTED).  With an ``Idempotency-Key`` already used by this caller
        for the same body, the job that key created instead."""
        now = time.time()
        job_id = _job_id(now)
        try:
            require_group(who)
            items, resolution, tags = self._validate(body)
            earlier = self._claim_key(who, key, body, job_id) if key else None
        except Problem as exc:
            self.log_call(who.email, body, False, exc.title)
            raise
        if earlier is not None:
            self.log_call(who.email, body, True, "repeated Idempotency-Key", earlier["id"],
                          replay=True)
            return self._view(earlier, base)
        job = {"id": job_id, "owner": who.email, "state": SUBMITTED,
               "history": [{"state": SUBMITTED, "at": _iso(now), "time": now}],
               "created_on": _iso(now),
               "started_on": None, "finished_on": None, "conflict_resolution": resolution,
               "tags": tags, "items": items, "plan": None, "results": []}
        while not self.store.create(f"imports/{job_id}", _dumps(job)):
            # another process made this id in the same millisecond (one in a million)
            if key:  # the idempotency key names the id already: the client tries again
                raise SbgProblem(503, 503, "job id collision; please try again")
            job_id = job["id"] = _job_id(now)
        self.store.write(f"import-running/{job_id}", b"{}")
        self._current.add(job_id)
        self.log_call(who.email, body, True, None, job_id)
        self._due.put(job_id, who.email)
        log.info("DRS import %s: %d items from %s", job_id, len(items), who.email)
        return self._view(job, base)

    def _claim_key(self, who: Identity, key: str, body: object, job_id: str) -> dict | None:
        """Bind an idempotency key to ``job_id``; the job it was bound to before, if any."""
        digest = hashlib.sha256(_dumps(body)).hexdigest()
        name = hashlib.sha256(f"{who.email}\n{key}".encode()).hexdigest()[:40]
        record = {"job": job_id, "body": digest}
        record_key = f"import-keys/{name}"
        while not self.store.create(record_key, _dumps(record)):
            found = self.store.read_versioned(record_key)
            if found is None:
                continue
            earlier = json.loads(found[0])
            if earlier.get("body") != digest:
                raise SbgProblem(422, 422, "this Idempotency-Key was used with another request")
            deadline = time.monotonic() + 5
            while (job := self._load(earlier["job"])) is None and time.monotonic() < deadline:
                time.sleep(0.05)  # a concurrent request with the same key is still writing it
            if job is not None:
                return job
            # the first request died before writing its job: this one counts, unless another
            # request took the key over first (then its job is the answer)
            if self.store.replace(record_key, _dumps(record), found[1]):
                break
        return None

    def log_call(self, email: str | None, body: object, accepted: bool, reason: str | None,
                 job_id: str | None = None, replay: bool = False) -> None:
        """The audit record of one create call (``replay``: it made no new job)."""
        items = body.get("items") if isinstance(body, dict) else None
        now = time.time()
        record = {"at": _iso(now), "time": now, "identity": email,
                  "items": len(items) if isinstance(items, list) else None,
                  "accepted": accepted, "reason": reason, "job": job_id, "replay": replay}
        self.store.write(f"import-calls/{_epoch_us(now)}-{secrets.token_hex(4)}",
                         _dumps(record))

    def _validate(self, body: object) -> tuple[list[dict], str, list[str]]:
        if not isinstance(body, dict):
            raise SbgProblem(400, 400, "the request body must be a JSON object")
        items = body.get("items")
        if not isinstance(items, list) or not items:
            raise SbgProblem(400, 400, "items must be a non-empty list of import items")
        if len(items) > MAX_ITEMS:
            raise SbgProblem(400, 400, f"at most {MAX_ITEMS} items per call, not {len(items)}")
        resolution = body.get("conflict_resolution") or "SKIP"
        if resolution not in RESOLUTIONS:
            raise SbgProblem(400, 400, f"conflict_resolution must be one of "
                             f"{', '.join(RESOLUTIONS)}, not {resolution!r}")
        tags = body.get("tags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise SbgProblem(400, 400, "tags must be a list of strings")
        return [self._item(n, item) for n, item in enumerate(items)], resolution, tags

    @staticmethod
    def _item(n: int, item: object) -> dict:
        if not isinstance(item, dict):
            raise SbgProblem(400, 400, f"items[{n}] must be an object")
        uri, project, parent = item.get("drs_uri"), item.get("project"), item.get("parent")
        if not isinstance(uri, str) or not uri.strip():
            raise SbgProblem(400, 400, f"items[{n}]: drs_uri is required")
        if project and parent:
            raise SbgProblem(400, 5031, f"items[{n}]: providing both `parent` and `project` "
                             "is not allowed")
        if not project and not parent:
            raise SbgProblem(400, 5029, f"items[{n}]: missing `parent` or `project`")
        clean: dict = {"drs_uri": uri.strip()}
        if project:
            if not isinstance(project, str) or not PROJECT_RE.match(project.rstrip("/")):
                raise SbgProblem(400, 3012, f"items[{n}]: malformed project id {project!r}. "
                                 "Expecting `owner/project`")
            clean["project"] = project.rstrip("/")
        else:
            if not isinstance(parent, str) or not FOLDER_RE.match(parent):
                raise SbgProblem(400, 400, f"items[{n}]: malformed parent folder id {parent!r}")
            clean["parent"] = parent
        name = item.get("name")
        if name is not None and (problem := name_error(name)):
            raise SbgProblem(400, 400, f"items[{n}]: {problem}")
        metadata = item.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise SbgProblem(400, 400, f"items[{n}]: metadata must be an object")
        clean.update(name=name, metadata=metadata or {})
        return clean

    def job_when_changed(self, job_id: str, who: Identity, base: str,
                         known: Callable[[str], bool], wait: float
                         ) -> tuple[dict | None, str, bool]:
        """:meth:`job`, held while the caller's tag is current: up to ``wait`` seconds
        (at most :data:`WAIT_MAX`) for the job to change, checked every
        :attr:`_wait_step` from its stored version alone.  A process holds at most
        :attr:`_held_limit` polls at once, :data:`WAITERS_PER_IDENTITY` of one identity;
        the others are answered at once.  Also whether this poll was held (not when the
        server is stopping)."""
        view, etag = self.job(job_id, who, base, known)
        if view is not None or wait <= 0 or not self._hold_poll(who.email):
            return view, etag, False
        try:
            deadline = time.monotonic() + min(wait, WAIT_MAX)
            while (left := deadline - time.monotonic()) > 0 and \
                    not self._stop.wait(min(self._wait_step, left)):
                found = self.store.read_versioned(f"imports/{job_id}")
                if found is None or self._etag(found[1], base) != etag:
                    view, etag = self.job(job_id, who, base, known)  # owner checked again
                    if view is not None:
                        break
        finally:
            with self._held_lock:
                self._held_polls[who.email] -= 1
                if not self._held_polls[who.email]:
                    del self._held_polls[who.email]
        return view, etag, not self._stop.is_set()

    def _hold_poll(self, email: str) -> bool:
        """Count a poll about to be held, if there is room for it."""
        with self._held_lock:
            if sum(self._held_polls.values()) >= self._held_limit or \
                    self._held_polls.get(email, 0) >= WAITERS_PER_IDENTITY:
                return False
            self._held_polls[email] = self._held_polls.get(email, 0) + 1
            return True

    @staticmethod
    def _etag(tag: str, base: str) -> str:
        return hashlib.sha256(f"{VIEW_VERSION}\n{tag}\n{base}".encode()).hexdigest()[:32]

    def job(self, job_id: str, who: Identity, base: str,
            known: Callable[[str], bool] = lambda etag: False) -> tuple[dict | None, str]:
        """A job's view and its entity tag (which names the stored version of the job,
        the base URL its links use and :data:`VIEW_VERSION`); None for the view when
        ``known(etag)`` says the caller holds that version already (``If-None-Match``:
        an unchanged job costs a read, not a rendering)."""
        found = self._load_versioned(job_id) if _JOB_RE.match(job_id) else None
        if found is None or (found[0]["owner"] != who.email and not who.admin):
            raise SbgProblem(404, 404, f"Import job {job_id} not found")
        job, tag = found
        etag = self._etag(tag, base)
        return (None if known(etag) else self._view(job, base)), etag

    @staticmethod
    def _view(job: dict, base: str) -> dict:
        view = {"href": f"{base}/v2/bulk/drs/imports/{job['id']}", "id": job["id"],
                "result": [_render(entry, base) for entry in job["results"]],
                "state": job["state"]}
        for name in ("started_on", "finished_on"):
            if job.get(name):
                view[name] = job[name]
        return view

    # ------------------------------------------------------------ files and folders

    def file(self, file_id: str, who: Identity, base: str) -> dict:
        """An imported file's record (its importer's and the admins' only: to anyone else
        it does not exist), or a folder."""
        if parse_fqid(file_id):
            raw = self.store.read(f"imported-files/{file_id}")
            if raw is not None and self._readable(record := json.loads(raw), who):
                return _with_href(record, base)
        elif (folder := self.folders.get(file_id)) is not None:
            return _folder_view(folder, base)
        raise SbgProblem(404, 5002, f"Requested file does not exist: {file_id}")

    def _readable(self, record: dict, who: Identity) -> bool:
        owner = record.get("owner")
        job_id = str(record.get("import", ""))
        if owner is None and _JOB_RE.match(job_id):  # an older record: its job names it
            owner = (self._load(job_id) or {}).get("owner")
        return who.admin or owner == who.email

    def files(self, file_ids: object, who: Identity, base: str) -> list[dict]:
        if not isinstance(file_ids, list) or not all(isinstance(f, str) for f in file_ids):
            raise SbgProblem(400, 400, "file_ids must be a list of file ids")
        if len(file_ids) > MAX_ITEMS:
            raise SbgProblem(400, 400, f"at most {MAX_ITEMS} file ids per call")
        items = []
        for file_id in file_ids:
            try:
                items.append({"resource": self.file(file_id, who, base)})
            except SbgProblem as exc:
                items.append({"error": sbg_body(exc)})
        return items

    def listing(self, project: str | None, parent: str | None, name: str | None,
                offset: int, limit: int, who: Identity, base: str) -> tuple[dict, int]:
        """``GET /v2/files?project=|parent=[&name=]``: one page of a folder's names: its
        folders, and the files the caller may read."""
        if project and parent:
            raise SbgProblem(400, 5031, "Providing both `parent` and `project` is not allowed")
        if project:
            if not PROJECT_RE.match(project.rstrip("/")):
                raise SbgProblem(400, 3012, "Malformed project id. Expecting `owner/project`")
            folder = self.folders.root(project.rstrip("/"), create=False)
        elif parent:
            folder = self.folders.get(parent)
            if folder is None:
                raise SbgProblem(404, 5026, "Destination folder is not found")
        else:
            raise SbgProblem(400, 5029, "Missing `parent` or `project`")
        entries = self.folders.entries(folder["id"]) if folder else []
        if name is not None:
            entries = [e for e in entries if e["name"] == name]
        shown = []
        for entry in entries:
            try:
                shown.append(self.file(entry["id"], who, base))
            except SbgProblem:
                if entry["type"] == "folder":
                    shown.append({"id": entry["id"], "name": entry["name"], "type": "folder"})
        entries, page = shown, shown[offset:offset + limit]
        where = {"project": project} if project else {"parent": parent}
        if name is not None:
            where["name"] = name
        links = []
        if offset + limit < len(entries):
            links.append({"href": f"{base}/v2/files?" + urlencode(
                {**where, "offset": offset + limit, "limit": limit}), "rel": "next",
                "method": "GET"})
        href = f"{base}/v2/files?" + urlencode({**where, "offset": offset, "limit": limit})
        return {"href": href, "items": page, "links": links}, len(entries)

    # ------------------------------------------------------------ audit

    def audit(self) -> dict:
        """``GET /internal/imports/log``: every create call, admission and job."""
        def documents(prefix: str) -> Iterator[dict]:
            for key in self.store.list(prefix):
                raw = self.store.read(key)
                if raw is not None:
                    yield json.loads(raw)

        jobs = [{"id": job["id"], "identity": job["owner"], "state": job["state"],
                 "history": job["history"], "items": len(job["items"]),
                 "results": len(job["results"]), "created_on": job["created_on"],
                 "started_on": job["started_on"], "finished_on": job["finished_on"]}
                for job in documents("imports/")]
        return {"limits": {"files": self.limits.files,
                           "files_window_seconds": self.limits.files_window,
                           "requests": self.limits.requests,
                           "requests_window_seconds": self.limits.requests_window,
                           "window_kind": self.limits.window_kind,
                           "items_per_call": MAX_ITEMS},
                "calls": list(documents("import-calls/")),
                "admissions": [admission for doc in documents("import-admissions/")
                               for admission in doc.get("admissions", [doc])],
                "jobs": jobs}

    # ------------------------------------------------------------ engine: threads

    def start(self) -> int:
        """Start the workers and queue the unfinished jobs no live process holds (how
        many)."""
        shutil.rmtree(self.spool_dir, ignore_errors=True)
        os.makedirs(self.spool_dir, exist_ok=True)
        resumed = self.rescan()
        for thread in self._threads:
            thread.start()
        return resumed

    def rescan(self) -> int:
        """Queue every unfinished job whose lease is free (its process died, or it was
        never claimed); returns how many."""
        queued = 0
        for key in self.store.list("import-running/"):
            job_id = key.split("/", 1)[1]
            if job_id in self._held or (self.leases is not None and
                                        self.leases.live(f"import-{job_id}")):
                continue
            self._due.put(job_id, (self._load(job_id) or {}).get("owner", ""))
            queued += 1
        return queued

    def close(self) -> None:
        self._stop.set()
        self._due.wake()
        for thread in self._threads:
            if thread.is_alive():
                thread.join()
        self._fetchers.shutdown(wait=True)
        with self._ahead_lock:
            ahead, self._ahead, self._ahead_bytes = list(self._ahead.values()), {}, 0
        for landing in ahead:
            landing.discard()

    def _work(self) -> None:
        while (taken := self._due.take(self._stop)) is not None:
            job_id, owner = taken
            try:
                held = self._hold(job_id)
            except HcafsError as exc:
                log.error("DRS import %s: %s; retrying in %.0fs", job_id, exc, STORE_RETRY)
                self._due.done(job_id, owner)
                self._due.put(job_id, owner, time.time() + STORE_RETRY)
                continue
            if not held:  # another process works it
                self._due.done(job_id, owner)
                continue
            metrics.imports_in_flight(1)
            try:
                again = self._advance(job_id)
            except LeaseLost as exc:
                # the lease goes back below (_let_go): a lease this process still holds
                # (its job document changed under it) must not be renewed for nothing
                log.warning("DRS import %s: %s", job_id, exc)
                self._current.discard(job_id)
                again = None
            except _Interrupted:
                self._current.discard(job_id)
                return
            except HcafsError as exc:  # the store failed: try the job again later
                log.error("DRS import %s: %s; retrying in %.0fs", job_id, exc, STORE_RETRY)
                self._current.discard(job_id)
                again = time.time() + STORE_RETRY
            except Exception:
                # A bug, not the store: each try is logged with its traceback, and the
                # tries back off (to at most an hour) instead of repeating every 10 s.
                with self._crash_lock:
                    crashes = self._crashes[job_id] = self._crashes.get(job_id, 0) + 1
                delay = min(MAX_CRASH_RETRY, STORE_RETRY * 2 ** (crashes - 1))
                log.exception("DRS import %s crashed (%d times in a row); retrying in %.0fs",
                              job_id, crashes, delay)
                self._current.discard(job_id)
                again = time.time() + delay
            else:
                with self._crash_lock:
                    self._crashes.pop(job_id, None)
            finally:
                self._due.done(job_id, owner)
                metrics.imports_in_flight(-1)
            if again is not None:
                self._due.put(job_id, owner, again)
            else:
                self._let_go(job_id)

    def _hold(self, job_id: str) -> bool:
        """Claim the job's lease unless this process holds it; False if another does."""
        if self.leases is None or job_id in self._held:
            return True
        lease = self.leases.claim(f"import-{job_id}")
        if lease is None or lease.lost:
            return False
        if lease.token > 1:
            metrics.takeover("import")
        self._held[job_id] = lease
        return True

    def _let_go(self, job_id: str) -> None:
        """The job is finished (or lost): what it fetched ahead is dropped, and its lease
        goes back."""
        self._current.discard(job_id)
        with self._ahead_lock:
            mine = [index for held, index in self._ahead if held == job_id]
        for index in mine:
            self._drop_ahead(job_id, index)
        lease = self._held.pop(job_id, None)
        if lease is not None:
            try:
                self.leases.release(lease)
            except HcafsError as exc:  # it expires by itself
                log.warning("DRS import %s: cannot release its lease: %s", job_id, exc)

    def _fence(self, job_id: str) -> None:
        """Raise :class:`LeaseLost` if another process took the job over."""
        lease = self._held.get(job_id)
        if lease is not None:
            self.leases.check(lease)

    def _load(self, job_id: str) -> dict | None:
        found = self._load_versioned(job_id)
        return found[0] if found is not None else None

    def _load_versioned(self, job_id: str) -> tuple[dict, str] | None:
        """The job document and the tag of its version (for :meth:`_save`), or None."""
        found = self.store.read_versioned(f"imports/{job_id}")
        return (json.loads(found[0]), found[1]) if found is not None else None

    def _save(self, job: dict, tag: str) -> str:
        """Write the job over the version ``tag`` names; the new version's tag.  The
        fence stops a holder that lost its lease; the compare-and-swap also one that
        passed the fence and then stalled while another process took the job over and
        wrote it (:class:`LeaseLost`: nothing written)."""
        self._fence(job["id"])
        key, data = f"imports/{job['id']}", _dumps(job)
        written = self.store.replace(key, data, tag)
        if written is None:
            # A swap refused because an earlier try of this very write landed (S3 answers
            # a resent conditional PUT 412) left our own bytes there: that is success.
            found = self.store.read_versioned(key)
            if found is not None and found[0] == data:
                return found[1]
            raise LeaseLost(f"the job document of {job['id']} was changed by another "
                            "process; this one stops working on it")
        return written

    @staticmethod
    def _enter(job: dict, state: str) -> None:
        now = time.time()
        job["state"] = state
        job["history"].append({"state": state, "at": _iso(now), "time": now})
        if state == RESOLVING:
            job["started_on"] = _iso(now)
        if state == FINISHED:
            job["finished_on"] = _iso(now)

    # ------------------------------------------------------------ engine: one job

    def _advance(self, job_id: str) -> float | None:
        """Move a job on; returns when to come back to it (its budget is spent), or None.
        RUNNING goes a batch at a time (:meth:`_batch`), and the job is written once per
        batch; the write of the last batch's results also makes it FINISHED."""
        self._fence(job_id)  # a holder that stalled past its lease stops here
        found = self._load_versioned(job_id)
        if found is None or found[0]["state"] == FINISHED:
            self.store.delete(f"import-running/{job_id}")
            return None
        job, tag = found
        if job["state"] == SUBMITTED:
            self._enter(job, RESOLVING)
            tag = self._save(job, tag)
        if job["state"] == RESOLVING:
            job["plan"] = self._plan(job)
            self._enter(job, RUNNING)
            tag = self._save(job, tag)
            self._current.add(job_id)
        while len(job["results"]) < len(job["plan"]):
            recover = job_id not in self._current
            entries, until = self._batch(job, len(job["results"]), recover)
            job["results"] += entries
            if len(job["results"]) == len(job["plan"]):
                self._enter(job, FINISHED)  # the last batch's write finishes the job
            if entries:
                tag = self._save(job, tag)
            self._current.add(job_id)  # every file this process stored is in the job now
            if until is not None:
                return until - NEAR
        if job["state"] != FINISHED:  # a plan of no units
            self._enter(job, FINISHED)
            self._save(job, tag)
        self.store.delete(f"import-running/{job_id}")
        log.info("DRS import %s finished: %d results", job_id, len(job["results"]))
        return None

    # ------------------------------------------------------------ engine: credentials

    def _auth(self, url: str, uri: str, owner: str) -> tuple[int | None, Auth]:
        """The credentials entry (its number) and :class:`Auth` for an object URL, for
        the identity that owns the job; never another identity's entry."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        entry = self.credentials.find(host, port, uri, owner)
        if entry is None:
            if self.credentials.for_others(host, port, uri, owner):
                return None, Auth(note="this server's credentials for the host are not "
                                       "for this identity")
            return None, NO_AUTH
        return entry.number, self.reader.auth_for(url, entry)

    # ------------------------------------------------------------ engine: RESOLVING

    def _plan(self, job: dict) -> list[dict]:
        """RESOLVING: every item's destination and DRS object; bundles become members.
        The items' objects are read together (:meth:`_resolve`)."""
        located: dict[int, tuple[str, str, int | None, Auth]] = {}
        failed: dict[int, dict] = {}
        for index, item in enumerate(job["items"]):
            try:
                folder = self._destination(item, job["owner"])
                url = self.reader.locate(item["drs_uri"])
            except (DrsError, ItemError, FolderError) as exc:
                failed[index] = {"item": index, "error": _item_error(exc)}
                continue
            located[index] = (folder, url, *self._auth(url, item["drs_uri"], job["owner"]))
        found = self._resolve({i: (url, entry, auth) for i, (_, url, entry, auth)
                               in located.items()})
        units: list[dict] = []
        job_reads = 0
        for index, item in enumerate(job["items"]):
            if self._stop.is_set():
                raise _Interrupted
            if index in failed:
                units.append(failed[index])
                continue
            folder, url, entry, auth = located[index]
            reads = _Reads(MAX_JOB_READS - job_reads)
            try:
                reads.take()
                if isinstance(found[index], DrsError):
                    raise found[index]
                members = self._members(found[index], url, item["name"], None, reads,
                                        _bundle_keys(found[index], url), item, job["owner"])
            except (DrsError, ItemError, FolderError) as exc:
                units.append({"item": index, "error": _item_error(exc)})
                continue
            finally:
                job_reads += reads.count
            units += [dict(member, item=index, folder=folder) for member in members]
        return units

    def _resolve(self, wanted: dict[int, tuple[str, int | None, Auth]]
                 ) -> dict[int, dict | DrsError]:
        """The DRS objects at some URLs (by key), or why each could not be read.

        URLs are grouped by DRS server and credentials entry.  A server that announces
        ``maxBulkRequestLength`` gets ``POST /objects`` in chunks of at most that many
        ids; ids it leaves unresolved with a transient code (5xx, 429, 202) are asked
        again, up to :data:`BULK_TRIES` rounds; the others fail with their code.  A
        server without bulk calls (or whose bulk call is missing) gets bounded parallel
        ``GET /objects/{id}``."""
        results: dict[int, dict | DrsError] = {}
        groups: dict[tuple[str, int | None], list[int]] = {}
        for key, (url, entry, _) in wanted.items():
            groups.setdefault((self.reader.split(url)[0], entry), []).append(key)
        for (base, _), keys in groups.items():
            auth = wanted[keys[0]][2]
            single = keys
            length = self.reader.max_bulk(base)
            if length:
                single = self._resolve_bulk(base, length, keys, wanted, auth, results)
            if single:
                with ThreadPoolExecutor(min(RESOLVERS, len(single))) as pool:
                    answers = pool.map(lambda k, a=auth: _attempt(
                        self.reader.get_object, wanted[k][0], a), single)
                    results.update(zip(single, answers, strict=True))
        return results

    def _resolve_bulk(self, base: str, length: int, keys: list[int], wanted: dict,
                      auth: Auth, results: dict) -> list[int]:
        """Bulk-resolve ``keys`` into ``results``; returns the keys left to single GETs."""
        by_id: dict[str, list[int]] = {}
        for key in keys:
            by_id.setdefault(self.reader.split(wanted[key][0])[1], []).append(key)
        pending = list(by_id)
        for attempt in range(BULK_TRIES):
            again: list[str] = []
            for start in range(0, len(pending), length):
                chunk = pending[start:start + length]
                try:
                    found, unresolved = self.reader.bulk_objects(base, chunk, auth)
                except DrsError as exc:
                    if exc.status in (404, 405, 501) or exc.kind == "malformed":
                        self.reader.no_bulk(base)  # no bulk after all: one at a time
                        left = [k for i in pending[start:] + again for k in by_id[i]]
                        return left
                    if exc.kind == "denied" or attempt == BULK_TRIES - 1:
                        for object_id in chunk:
                            for key in by_id[object_id]:
                                results[key] = exc
                    else:
                        again += chunk
                    continue
                for object_id, obj in found.items():
                    for key in by_id[object_id]:
                        results[key] = obj
                for object_id, code in unresolved.items():
                    if code in (429, 202) or code >= 500:
                        if attempt < BULK_TRIES - 1:
                            again.append(object_id)
                            continue
                    what = f"DRS object {base}/objects/{object_id}"
                    error = self.reader._status_error(code, what, auth) if code != 200 \
                        else DrsError("unavailable", f"{what} was not resolved")
                    for key in by_id[object_id]:
                        results[key] = error
            if not again:
                return []
            pending = again
            time.sleep(0.5 * (attempt + 1))
        return []

    def _destination(self, item: dict, owner: str) -> str:
        """The item's folder, once the caller may import there: checked here, before its
        object is located or read, so another's project costs no request anywhere."""
        if "project" in item:
            folder = self.folders.root(item["project"], create=False)
            if folder is None:
                self._may_create(owner, item["project"])
                folder = self.folders.root(item["project"], owner=owner)
        else:
            folder = self.folders.get(item["parent"])
            if folder is None:
                raise ItemError(404, 5026, f"Destination folder {item['parent']} is not found")
        self._may_write(owner, folder["project"])
        return folder["id"]

    def _may_create(self, owner: str, project: str) -> None:
        """A project is made by its first import, unless it is named after another identity
        this server knows: ``alice/x`` is alice's to make (any email whose user part is
        alice), so no one else can take it first and shut her out of it."""
        named = owner_part(project)
        if named not in OPEN_OWNERS and named != owner.rpartition("@")[0].lower() and \
                named in self.user_names():
            raise ItemError(403, 5001, f"project {project!r} is named after another identity "
                            f"({named}); only that identity may make it (name yours "
                            f"{owner.rpartition('@')[0]}/...)")

    def _may_write(self, owner: str, project: str) -> None:
        if not self.folders.may_write(owner, project):
            raise ItemError(403, 5001, f"imports go only into your own projects and the ones "
                            f"shared with you; {project!r} was made by another identity (its "
                            "owner can add you to its members)")

    def _members(self, found: dict, url: str, name: str | None, member: str | None,
                 reads: _Reads, above: frozenset, item: dict, owner: str) -> list[dict]:
        """A blob object as one unit; a bundle as one unit per member (recursively).

        A member's unit names the file ``NAME/MEMBER`` (just ``MEMBER`` when the item has no
        name), where ``MEMBER`` is its path inside the bundle, kept as ``member``.  A bundle
        that contains itself (by URL, or by id on the same server: ``above`` holds the
        bundles on the way down) and a bundle past the read budget fail the whole item.
        A blob's unit keeps what the fetch needs of its object (``found``, no headers).
        """
        contents = found.get("contents")
        if not isinstance(contents, list) or not contents:
            name = name or _default_name(found)
            problem = name_error(name)
            if problem:
                return [{"error": ItemError(400, 5106, problem).body}]
            return [{"name": name, "object": url, "member": member, "found": _kept(found)}]
        if member is not None and member.count("/") + 1 >= MAX_DEPTH:
            return [{"error": ItemError(422, 5105, f"bundles nested deeper than {MAX_DEPTH}"
                                        " levels").body}]
        units: list[dict] = []
        for entry in contents:
            label = entry.get("name") if isinstance(entry, dict) else None
            if not isinstance(label, str):
                units.append({"error": ItemError(422, 5101, f"a member of {url} has no "
                                                 "name").body})
                continue
            path = f"{name}/{label}" if name else label
            inside = f"{member}/{label}" if member else label
            try:
                member_url = self.reader.member_url(url, entry)
                if member_url in above:
                    raise ItemError(422, 5110, f"the bundle contains itself (at {inside!r})")
                reads.take()
                child = self.reader.get_object(
                    member_url, self._auth(member_url, item["drs_uri"], owner)[1])
                keys = _bundle_keys(child, member_url)
                if keys & above:
                    raise ItemError(422, 5110, f"the bundle contains itself (at {inside!r})")
                units += self._members(child, member_url, path, inside, reads, above | keys,
                                       item, owner)
            except DrsError as exc:
                units.append({"name": path, "member": inside, "error": _item_error(exc)})
        return units

    # ------------------------------------------------------------ engine: RUNNING

    def _batch(self, job: dict, first: int, recover: bool = False
               ) -> tuple[list[dict], float | None]:
        """Units from ``first`` on, at most :data:`BATCH` (and :data:`BATCH_BYTES`).

        Each is checked (destination, conflicts, checksum, the job's byte quota); the
        ones not fetched yet get their access URLs together and are fetched in parallel,
        as far as the room :data:`AHEAD_FILES`/:data:`AHEAD_BYTES` allows (fetched bytes
        wait there, as verified blobs, for their admission); then, in unit order, each
        fetched unit is admitted against the file budget and stored and named, until the
        budget is spent (``until`` says when it is back: the epoch second, taken when the
        budget was asked, not after the landing that followed).  Returns the results, in
        unit order, and ``until`` or None.
        ``recover``: the job's previous holder may have stored files it did not write
        into the job (:meth:`_recovered`)."""
        # The folders of what this batch reports: fsynced once, before the job that lists
        # it is written (each document's bytes are synced as written), also when the batch
        # fails half-way (the next attempt may find and report what this one wrote).
        defer: set[str] = set()
        try:
            return self._batch_in(job, first, recover, defer)
        finally:
            self.store.settle(defer)

    def _batch_in(self, job: dict, first: int, recover: bool, defer: set[str]
                  ) -> tuple[list[dict], float | None]:
        entries: dict[int, dict] = {}
        ready: dict[int, dict] = {}
        planned = 0
        fetched = sum(e["resource"]["size"] for e in job["results"] if "resource" in e)
        index = first
        while index < len(job["plan"]) and index - first < BATCH and planned < BATCH_BYTES:
            if self._stop.is_set():
                raise _Interrupted
            unit = job["plan"][index]
            entry = _entry(unit)
            try:
                if "error" in unit:
                    entries[index] = dict(entry, error=unit["error"])
                    continue
                work = self._prepare(job, index, unit, recover)
                if "record" in work:  # stored by an earlier attempt: durable before reported
                    record = work["record"]
                    self.store.note([f"files/{record['id']}", f"imported-files/{record['id']}",
                                     self.folders.name_key(record["parent"], record["name"])],
                                    defer)
                    entries[index] = dict(entry, resource=record)
                    continue
                size = work["found"]["size"]
                if fetched + planned + size > self.limits.job_bytes:
                    raise ItemError(507, 5111, f"the job would fetch more than its quota "
                                    f"of {self.limits.job_bytes} bytes")
                planned += size
                ready[index] = work
            except (DrsError, ItemError, FolderError) as exc:
                entries[index] = dict(entry, error=_item_error(exc))
            finally:
                if index in entries:
                    self._drop_ahead(job["id"], index)
                index += 1
        # Admission comes first, in unit order and in one budget write: a file admitted
        # against the window is fetched and stored now, whatever the room ahead; the ones
        # past the budget are fetched ahead, as far as that room allows, and wait there.
        self._fence(job["id"])  # no admission for a job taken over while it prepared
        order = [i for i in range(first, index) if i not in entries]
        budget_key = owner_key(job["owner"])
        times, seconds, period = self.file_budget.take_batch(budget_key, len(order))
        # A job that waits for the budget comes back NEAR seconds before it does: what it
        # prepared waits here, so the batch is admitted the moment the budget is back.
        while order and not times and 0 < seconds <= NEAR:
            if self._stop.wait(seconds):
                raise _Interrupted
            self._fence(job["id"])
            times, seconds, period = self.file_budget.take_batch(budget_key, len(order))
        admitted = dict(zip(order, times, strict=False))  # the first len(times) units
        cut, until = (order[len(times)], time.time() + seconds) if len(times) < len(order) \
            else (index, None)
        self._fetch_ahead(job, {i: ready[i] for i in order}, entries, must=set(admitted))
        self._fence(job["id"])  # nothing stored for a job taken over while it fetched
        landing: list[tuple[int, float, _Landing]] = []
        for i, when in admitted.items():
            with self._ahead_lock:
                ahead = self._ahead.get((job["id"], i))
            if ahead is not None and i not in entries:
                if ahead.where != (ready[i]["folder"]["id"], ready[i]["leaf"]):
                    ahead.discard()  # made for another destination: made again
                    ahead = self._landings(job, [(ready[i], ahead.sums)], stage=False)[0]
                landing.append((i, when, ahead))
        self._publish_files(job, [(ahead.key, ahead.staged[0]) for *_, ahead in landing],
                            defer)
        self._admissions(job, [(i, when) for i, when, _ in landing], period, defer)
        landed = self._land([(i, ahead) for i, _, ahead in landing], defer)
        places = [(record["parent"], record["name"]) for _, record in landed]
        if job["conflict_resolution"] != "RENAME" and len(set(places)) == len(places):
            # No two units want one name, and none is renamed: the order of binding
            # cannot change what each gets, so the names are bound as one group.
            entries_ahead = {i: ahead.staged[2] for i, _, ahead in landing}
            bound = self.folders.bind_many([(record["parent"], record["name"], record["id"])
                                            for _, record in landed],
                                           job["conflict_resolution"], defer, self._run_all,
                                           staged=[entries_ahead[i] for i, _ in landed])
            for (i, record), outcome in zip(landed, bound, strict=True):
                entries[i] = dict(_entry(job["plan"][i]), **(
                    {"error": _item_error(outcome)} if isinstance(outcome, FolderError)
                    else {"resource": record}))
        else:
            for unit, record in landed:  # in unit order (RENAME, SKIP)
                call = (unit, self._name, job, record, defer)
                for i, named in self._in_parallel(job, [call], entries):
                    entries[i] = dict(_entry(job["plan"][i]), resource=named)
        for i in admitted:
            self._drop_ahead(job["id"], i)
        return [entries[i] for i in range(first, cut)], until

    def _in_parallel(self, job: dict, calls: list[tuple], entries: dict
                     ) -> list[tuple[int, object]]:
        """``(unit, function, *args)`` calls on the fetch threads: the results of those
        that worked, in unit order; the item errors of the others go to ``entries``.  A
        store failure or a stop is raised once all have ended (the job is redone)."""
        done, failure = [], None
        for (i, *_), (result, exc) in zip(calls, self._outcomes([c[1:] for c in calls]),
                                          strict=True):
            if exc is None:
                done.append((i, result))
            elif isinstance(exc, (DrsError, ItemError, FolderError)):
                entries[i] = dict(_entry(job["plan"][i]), error=_item_error(exc))
            elif isinstance(exc, (_Interrupted, HcafsError)):
                failure = failure or exc
            else:
                log.error("DRS import %s, unit %d failed", job["id"], i, exc_info=exc)
                entries[i] = dict(_entry(job["plan"][i]), error={
                    "status": 500, "code": 500, "message": "internal error (logged by the "
                    "server)", "more_info": MORE_INFO})
        if failure is not None:
            raise failure
        return done

    def _outcomes(self, calls: list[tuple]) -> list[tuple[object, Exception | None]]:
        """``(function, *args)`` calls on the fetch threads, all waited for: each one's
        ``(result, None)`` or ``(None, exception)``, in order.  The one pool helper
        behind :meth:`_in_parallel` (per-unit errors) and :meth:`_run_all` (all or
        nothing)."""
        futures = [self._fetchers.submit(call, *args) for call, *args in calls]
        outcomes: list[tuple[object, Exception | None]] = []
        for future in futures:
            try:
                outcomes.append((future.result(), None))
            except Exception as exc:  # noqa: BLE001 - sorted out by the caller
                outcomes.append((None, exc))
        return outcomes

    def _fetch_ahead(self, job: dict, ready: dict[int, dict], entries: dict,
                     must: set[int] = frozenset()) -> None:
        """Fetch the ready units that are not fetched yet, in parallel: those in ``must``
        (admitted already) always, the others as far as the room ahead of admission
        allows; each fetched unit's checksums wait in :attr:`_ahead`, its failure in
        ``entries``."""
        with self._ahead_lock:
            files, size = len(self._ahead), self._ahead_bytes
        todo, full = [], False
        for i, work in ready.items():
            if (job["id"], i) in self._ahead:
                continue
            if i not in must:
                size += work["found"]["size"]
                full = full or files + len(todo) >= AHEAD_FILES or size > AHEAD_BYTES
                if full:
                    continue
            todo.append((i, work))
        self._give_access([work for _, work in todo])
        fetched = self._in_parallel(job, [(i, self._stage, job, work) for i, work in todo],
                                    entries)
        works = dict(todo)
        landings = self._landings(job, [(works[i], sums) for i, sums in fetched])
        for (i, _), landing in zip(fetched, landings, strict=True):
            with self._ahead_lock:
                self._ahead[(job["id"], i)] = landing
                self._ahead_bytes += landing.sums.size

    def _drop_ahead(self, job_id: str, index: int) -> None:
        with self._ahead_lock:
            landing = self._ahead.pop((job_id, index), None)
            if landing is not None:
                self._ahead_bytes -= landing.sums.size
        if landing is not None:
            landing.discard()

    def _prepare(self, job: dict, index: int, unit: dict, recover: bool = False) -> dict:
        """Before admission: the destination, conflicts, the object and its checksum.
        ``{"record": …}`` when the unit was done before a restart (or, with ``recover``,
        stored by the job's previous holder)."""
        resolution = job["conflict_resolution"]
        file_uuid = str(_uuid.uuid5(_NAMESPACE, f"{job['id']}/{index}"))
        *parts, leaf = unit["name"].split("/")
        top = self.folders.get(unit["folder"])
        if top is None:
            raise ItemError(404, 5026, f"Destination folder {unit['folder']} is not found")
        self._may_write(job["owner"], top["project"])  # again: members may have changed
        folder = self.folders.descend(top, parts)
        taken = self.folders.lookup(folder["id"], leaf)
        if taken and taken["id"].startswith(file_uuid + "."):  # done before a restart
            raw = self.store.read(f"imported-files/{taken['id']}")
            if raw is not None:
                return {"record": json.loads(raw)}
        if taken and (resolution == "SKIP" or
                      (resolution == "OVERWRITE" and taken["type"] == "folder")):
            raise ItemError(409, 5003, f"Requested file already exists: {unit['name']!r}",
                            files_href(taken))
        uri = job["items"][unit["item"]]["drs_uri"]
        entry, auth = self._auth(unit["object"], uri, job["owner"])
        found = unit.get("found") or _kept(self.reader.get_object(unit["object"], auth))
        if recover:
            label = ChecksumCheck(found.get("checksums")).label
            record = self._recovered(job, unit, file_uuid, folder, leaf, label)
            if record is not None:
                return {"record": record}
        return {"unit": unit, "file_uuid": file_uuid, "folder": folder, "leaf": leaf,
                "found": found, "check": ChecksumCheck(found.get("checksums")),
                "entry": entry, "auth": auth, "access": None}

    def _give_access(self, works: list[dict]) -> None:
        """Access URLs for the admitted units of a batch: the object's own
        ``access_url`` where it gave one without headers, else ``POST /objects/access``
        (in chunks of the server's bulk length) where the server offers it; the rest are
        asked one by one when fetched."""
        grouped: dict[tuple[str, int | None], list[dict]] = {}
        for work in works:
            try:
                method = self.reader.method(work["found"], work["auth"])
            except DrsError:
                continue  # the fetch says why
            url = (method.get("access_url") or {}).get("url") \
                if isinstance(method.get("access_url"), dict) else None
            kind = "s3" if str(method.get("type")).lower() == "s3" else "https"
            if isinstance(url, str) and not method.get("headers_dropped"):
                work["access"] = Access(kind, url)
            elif kind == "https" and isinstance(method.get("access_id"), str):
                base = self.reader.split(work["unit"]["object"])[0]
                work["access_id"] = method["access_id"]
                grouped.setdefault((base, work["entry"]), []).append(work)
        for (base, _), group in grouped.items():
            length = self.reader.max_bulk(base)
            if not length:
                continue
            for start in range(0, len(group), length):
                chunk = group[start:start + length]
                pairs = [(w["found"]["id"], w["access_id"]) for w in chunk]
                try:
                    found = self.reader.bulk_access(base, pairs, chunk[0]["auth"])
                except DrsError as exc:
                    log.info("DRS bulk access to %s failed (%s); asking one by one", base,
                             exc.kind)
                    continue
                for work, pair in zip(chunk, pairs, strict=True):
                    work["access"] = found.get(pair)

    def _refresh(self, work: dict) -> Access:
        """A new access URL for a unit (its last one was refused or expired): the object
        is read again and its access URL asked for."""
        found = self.reader.get_object(work["unit"]["object"], work["auth"])
        return self.reader.access(found, work["unit"]["object"], work["auth"])

    def _stage(self, job: dict, work: dict) -> Checksums:
        """One file's bytes, fetched, verified and kept as a blob (in parallel with the
        batch's other units)."""
        unit, found = work["unit"], work["found"]
        if work["access"] is None:
            method = self.reader.method(found, work["auth"])
            work["access"] = self._refresh(work) if method.get("headers_dropped") else \
                self.reader.access(found, unit["object"], work["auth"])
        return self._fetch(job, work)

    def _landings(self, job: dict, fetched: list[tuple[dict, Checksums]],
                  stage: bool = True) -> list[_Landing]:
        """The documents of fetched units (each ``(work, checksums)``), staged now as one
        group (:meth:`.store.Store.stage`), or only when placed."""
        made = []
        for work, sums in fetched:
            unit, found, leaf = work["unit"], work["found"], work["leaf"]
            version = now_version()
            content_type = mimetypes.guess_type(leaf)[0] or \
                _mime_type(found.get("mime_type"))
            source = Source(url=unit["object"], size=sums.size, content_type=content_type,
                            checksums={name: getattr(sums, name) for name in TAG_KEYS})
            fqid = f"{work['file_uuid']}.{version}"
            document = file_document(source, 0, version)
            record = self._record(job, unit, work["folder"], leaf, fqid, document,
                                  work["check"].label)
            made.append((sums, (work["folder"]["id"], leaf), fqid, document, record))
        datas = [data for *_, fqid, document, record in made
                 for data in (_dumps(document), _dumps(record),
                              self.folders.entry(record["name"], fqid))]
        try:
            staged = self.store.stage(datas) if stage else [Staged(data) for data in datas]
        except OSError as exc:  # the job is tried again later (its blobs are kept)
            raise HcafsError(f"DRS import {job['id']}: cannot stage the documents of "
                             f"{len(made)} fetched files: {exc}") from exc
        return [_Landing(sums, where, f"files/{fqid}", document, record,
                         staged[3 * n:3 * n + 3])
                for n, (sums, where, fqid, document, record) in enumerate(made)]

    def _publish_files(self, job: dict, files: list[tuple[str, bytes | Staged]],
                       defer: set[str]) -> None:
        """Create the DSS files of a batch's admitted units: under the job's lease, one
        fence for the batch (refused, :class:`LeaseLost`, once another process took the
        job over), the creates one group, durable once ``defer`` is settled."""
        if not files:
            return
        for key, _ in files:  # first: a document always has its index entry
            if key.startswith("files/"):
                self.file_index.add(key[len("files/"):])
        lease = self._held.get(job["id"])
        if lease is not None:
            self.leases.publish_many(lease, files, run=self._run_all, defer=defer)
        else:
            self.store.create_many(files, defer, run=self._run_all)

    def _run_all(self, calls: list[tuple]) -> list:
        """``(function, *args)`` calls on the fetch threads; their results, in order (the
        first exception is raised once all have ended)."""
        outcomes = self._outcomes(calls)
        failure = next((exc for _, exc in outcomes if exc is not None), None)
        if failure is not None:
            raise failure
        return [result for result, _ in outcomes]

    def _land(self, landing: list[tuple[int, _Landing]],
              defer: set[str]) -> list[tuple[int, dict]]:
        """After admission and the DSS files' creation (each ``(unit, landing)``): each
        file's record (named next, by :meth:`_name` or
        :meth:`.folders.Folders.bind_many`), written as one group, durable once ``defer``
        is settled."""
        self.store.write_many([(f"imported-files/{ahead.record['id']}", ahead.staged[1])
                               for _, ahead in landing], defer, run=self._run_all)
        return [(i, ahead.record) for i, ahead in landing]

    @staticmethod
    def _record(job: dict, unit: dict, folder: dict, leaf: str, fqid: str, document: dict,
                verified: str) -> dict:
        """An imported file's record (``GET /v2/files/{id}``), named ``leaf`` for now.
        Its ``dss`` carries the DSS file's fqid, content type and checksums (what a
        ``HEAD /v1/files`` would say), so a client need not ask for them."""
        file_uuid, _, version = fqid.partition(".")
        now = _iso(time.time())
        dss = {"uuid": file_uuid, "version": version,
               "content_type": document["content-type"], "sha256": document["sha256"],
               "sha1": document["sha1"], "crc32c": document["crc32c"],
               "s3_etag": document["s3-etag"]}
        return {"id": fqid, "type": "file", "name": leaf, "size": document["size"],
                "project": folder["project"], "parent": folder["id"],
                "metadata": job["items"][unit["item"]]["metadata"], "tags": job["tags"],
                "created_on": now, "modified_on": now,
                "dss": dss,
                "drs_uri": job["items"][unit["item"]]["drs_uri"], "import": job["id"],
                "verified": verified, "owner": job["owner"],
                **({"member": unit["member"]} if unit.get("member") else {})}

    def _recovered(self, job: dict, unit: dict, file_uuid: str, folder: dict, leaf: str,
                   verified: str) -> dict | None:
        """The record of a unit whose file the job's previous holder stored but did not
        write into the job (it died, or lost its lease, in between), named now; None if
        the file was never stored.  A takeover may fetch a unit again, never store it
        twice: a unit's file uuid is fixed by the job and the unit."""
        for version in self.file_index.versions(file_uuid):
            key = f"files/{file_uuid}.{version}"
            fqid = key.split("/", 1)[1]
            raw = self.store.read(f"imported-files/{fqid}")
            if raw is not None:
                record = json.loads(raw)
            else:
                document = json.loads(self.store.read(key) or b"null")
                if document is None:
                    continue
                record = self._record(job, unit, folder, leaf, fqid, document,
                                      verified)
                self.store.write(f"imported-files/{fqid}", _dumps(record))
            log.info("DRS import %s: %s was stored by the job's previous holder", job["id"],
                     fqid)
            return self._name(job, record)
        return None

    def _name(self, job: dict, record: dict, defer: set[str] | None = None) -> dict:
        """Bind an imported file's name in its folder (its record is written already)."""
        fqid, leaf = record["id"], record["name"]
        named = self.folders.bind(record["parent"], leaf, fqid, job["conflict_resolution"],
                                  defer)
        if named != leaf:
            record["name"] = named
            self.store.write(f"imported-files/{fqid}", _dumps(record), defer)
        return record

    def _admissions(self, job: dict, admitted: list[tuple[int, float]],
                    period: float | None, defer: set[str]) -> None:
        """The audit record of a batch's admissions (unit, time, and the fixed-window
        period that admitted them): one document."""
        if not admitted:
            return
        records = [{"at": _iso(when), "time": when, "period": period,
                    "identity": job["owner"],
                    "job": job["id"], "unit": index, "item": job["plan"][index]["item"],
                    "name": job["plan"][index]["name"]} for index, when in admitted]
        index, when = admitted[0]
        self.store.write(f"import-admissions/{_epoch_us(when)}-{owner_key(job['owner'])}-"
                         f"{job['id']}-{index:06d}", _dumps({"admissions": records}), defer)

    # ------------------------------------------------------------ engine: fetching

    def _fetch(self, job: dict, work: dict) -> Checksums:
        """Fetch the bytes to a spool file, verify them, and publish them as a blob."""
        size, check = work["found"]["size"], work["check"]
        with self._spool_space(job, size):
            fd, path = tempfile.mkstemp(dir=self.spool_dir)
            try:
                if work["access"].kind == "s3":
                    self._fetch_s3(fd, work, size)
                else:
                    self._fetch_https(fd, work, size)
                summer = Checksummer(size)
                with open(path, "rb") as spool:
                    while chunk := spool.read(4 * 1024 * 1024):
                        summer.update(chunk)
                        check.update(chunk)
                sums = summer.result()
                if sums.size != size:
                    raise DrsError("mismatch", f"fewer bytes than the {size} the DRS object "
                                   "says")
                check.verify(sums)
                key = f"blobs/{sums.blob_key()}"
                if self.store.blob_size(key) != size:
                    self.store.write_blob(key, _file_chunks(path))
                return sums
            finally:
                os.close(fd)
                os.unlink(path)

    def _fetch_https(self, fd: int, work: dict, size: int) -> None:
        """The whole object, or :data:`PARTS` ranges of it in parallel when it is at
        least :data:`PARALLEL_MIN` bytes."""
        lock = threading.Lock()
        if size < PARALLEL_MIN:
            self._fetch_range(fd, work, lock, 0, size, whole=True)
            return
        step = -(-size // PARTS)
        spans = [(start, min(start + step, size)) for start in range(0, size, step)]
        threads, failures = [], []

        def part(start: int, end: int) -> None:
            try:
                self._fetch_range(fd, work, lock, start, end, whole=False)
            except BaseException as exc:  # the first one is raised below
                failures.append(exc)

        for start, end in spans:
            thread = threading.Thread(target=part, args=(start, end), daemon=True,
                                      name="drs-range")
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join()
        if failures:
            raise failures[0]

    def _fetch_range(self, fd: int, work: dict, lock: threading.Lock, start: int, end: int,
                     whole: bool) -> None:
        """Bytes ``[start, end)`` written at their place in the spool.  A cut transfer is
        taken up again with a Range from the last byte written (fsynced first); a
        401/403 (an access URL that expired) gets a new access URL, then goes on from
        where it stopped."""
        position, resumes, refreshes = start, 0, 0
        while True:
            access = work["access"]
            ranged = position > 0 or not whole
            try:
                chunks = self.reader.stream(access.url, access.headers, end - position,
                                            position if ranged else 0,
                                            end if ranged and not whole else None)
                for chunk in chunks:
                    if self._stop.is_set():
                        raise _Interrupted
                    os.pwrite(fd, chunk, position)
                    position += len(chunk)
                if position < end:  # a whole answer, but short: the object is not so big
                    raise DrsError("mismatch", f"fewer bytes than the {end - start} the "
                                   "DRS object says")
                return
            except DrsError as exc:
                if exc.kind == "denied" and refreshes < REFRESHES:
                    refreshes += 1
                    with lock:
                        if work["access"] is access:
                            work["access"] = self._refresh(work)
                    continue
                if exc.kind == "no_range" and whole:
                    position = start  # the server cannot resume: from the start again
                    os.ftruncate(fd, 0)
                elif not exc.transient or resumes >= RESUMES:
                    raise
                resumes += 1
                os.fsync(fd)
                time.sleep(min(0.1 * 2 ** resumes, 5.0))

    def _fetch_s3(self, fd: int, work: dict, size: int) -> None:
        """An ``s3://`` access URL, read with the credentials entry's s3 keys from its
        endpoint (which the egress policy checks first), resumed from the last byte
        written when the read breaks off."""
        keys = work["auth"].s3
        if not keys:
            raise DrsError("unsupported", "an s3 access method needs s3 credentials")
        try:
            self.reader.egress.policy.check(keys["endpoint_url"])
        except EgressError as exc:
            raise DrsError("refused" if exc.kind == "refused" else "unsupported",
                           f"the s3 endpoint of credentials entry {work['entry']}: "
                           f"{exc}") from exc
        client = self._s3.get(work["entry"])
        if client is None:
            client = self._s3[work["entry"]] = S3.with_keys(
                keys["endpoint_url"], keys["access_key_id"], keys["secret_access_key"],
                keys.get("region"))
        target = S3Url.parse(work["access"].url)
        what = f"s3://{target.bucket}/{target.key}"
        position, resumes = 0, 0
        while True:
            try:
                for chunk in client.stream(target.bucket, target.key, position):
                    if self._stop.is_set():
                        raise _Interrupted
                    if position + len(chunk) > size:
                        raise DrsError("mismatch", f"more bytes than the {size} the DRS "
                                       "object says")
                    os.pwrite(fd, chunk, position)
                    position += len(chunk)
                return
            except RemoteError as exc:
                status = "denied" if "AccessDenied" in str(exc) or "403" in str(exc) \
                    else "not_found" if "NoSuchKey" in str(exc) or "404" in str(exc) \
                    else "unavailable"
                if status != "unavailable" or resumes >= RESUMES:
                    raise DrsError(status, f"{what}: the s3 read failed "
                                   f"({type(exc).__name__})") from exc
                resumes += 1
                os.fsync(fd)
                time.sleep(min(0.1 * 2 ** resumes, 5.0))

    @contextmanager
    def _spool_space(self, job: dict, size: int) -> Iterator[None]:
        """Reserve ``size`` bytes of spool for one fetch, or refuse it before it starts:
        past the free disk (less what fetches in flight have reserved and
        :data:`SPOOL_RESERVE`).  The job's byte quota is checked at admission."""
        with self._spool_lock:
            free = shutil.disk_usage(self.spool_dir).free - self._spooling - SPOOL_RESERVE
            if size > free:
                raise ItemError(507, 5111, f"not enough free disk to spool {size} bytes")
            self._spooling += size
        try:
            yield
        finally:
            with self._spool_lock:
                self._spooling -= size


def _entry(unit: dict) -> dict:
    """The start of a unit's result: its item, and its member in a bundle."""
    return {"item": unit["item"], **({"member": unit["member"]} if "error" in unit and
                                     unit.get("member") else {})}


def _attempt(call: Callable, *args) -> object:
    """``call(*args)``, or the :class:`DrsError` it raised."""
    try:
        return call(*args)
    except DrsError as exc:
        return exc


_KEPT = ("id", "size", "checksums", "mime_type", "name")


def _kept(found: dict) -> dict:
    """What a plan keeps of a blob object: no access URL headers (a DRS server may put
    credentials there); a method that had some is marked, and its URL asked for again
    when fetched."""
    kept = {k: found[k] for k in _KEPT if k in found}
    methods = []
    for method in found.get("access_methods") or []:
        if not isinstance(method, dict):
            continue
        method = {k: v for k, v in method.items() if k in ("type", "access_id",
                                                           "access_url")}
        url = method.get("access_url")
        if isinstance(url, dict):
            if url.get("headers"):
                method["headers_dropped"] = True
            method["access_url"] = {"url": url.get("url")}
        methods.append(method)
    kept["access_methods"] = methods
    return kept


def _bundle_keys(found: dict, url: str) -> frozenset:
    """What names a bundle on the way down: its URL and its id on its server (a blob
    object names nothing: the same file twice in a bundle is no cycle)."""
    if not isinstance(found.get("contents"), list) or not found["contents"]:
        return frozenset()
    return frozenset((url, (url.rsplit("/objects/", 1)[0], found["id"])))


def _file_chunks(path: str) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while chunk := handle.read(4 * 1024 * 1024):
            yield chunk


_MIME_RE = re.compile(r"^[A-Za-z0-9][\w.+-]*/[\w.+-]+(\s*;\s*[\w.+-]+=[\w.+-]+)*\Z")


def _mime_type(claimed: object) -> str:
    """The DRS object's ``mime_type`` if it is a plain one (it becomes an HTTP header)."""
    if isinstance(claimed, str) and len(claimed) < 200 and _MIME_RE.match(claimed):
        return claimed
    return "application/octet-stream"


def _default_name(found: dict) -> str:
    name = found.get("name")
    if isinstance(name, str) and name_error(name) is None and "/" not in name:
        return name
    return str(found["id"]).rstrip("/").rsplit("/", 1)[-1] or "unnamed"


def _with_href(resource: dict, base: str) -> dict:
    shown = {k: v for k, v in resource.items() if k != "owner"}
    return dict(shown, href=f"{base}/v2/files/{resource['id']}")


def _folder_view(folder: dict, base: str) -> dict:
    return _with_href({"id": folder["id"], "type": "folder", "name": folder["name"],
                       "project": folder["project"], "parent": folder["parent"]}, base)


def _render(entry: dict, base: str) -> dict:
    if "resource" in entry:
        return dict(entry, resource=_with_href(entry["resource"], base))
    error = entry["error"]
    if error.get("more_info", "").startswith("/v2/"):
        error = dict(error, more_info=base + error["more_info"])
    return dict(entry, error=error)
