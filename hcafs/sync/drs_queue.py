"""DRS link files: ``NAME.drs`` in a pending bundle becomes an import of NAME.

A ``.drs`` file holds a ``drs://`` URI on one line, or a JSON object
``{"drs_uri", "name"?, "metadata"?, "tags"?, "conflict_resolution"?}``.  When it is closed, it
is parsed and queued in the journal (``drs_imports``); invalid content leaves the file as it
is, with the reason in ``user.hcafs.error``, ``hcafs status`` and the log.

The flusher sends the queue to a bulk DRS import API (the Seven Bridges contract):

* calls are full: 100 items each (the contract's most), grouped so that each call's
  request-level fields (``conflict_resolution``, ``tags``) are shared by its items.  A call
  with fewer goes only once the writers pause (no new item for :data:`LINGER`), its oldest
  item has waited :data:`MAX_LINGER`, or the budget has room for fewer; and the call that
  opens a period goes at once with what is queued, since the next period opens one window
  after it;
* never more than one window's worth of items waiting for the rate limit: ``limit`` items
  per ``window``, in fixed periods as the Seven Bridges contract has them (a period opens
  with the first item let in after the one before ended).  Replayed over the submission
  times in the journal (so it survives restarts), this says when the server is expected to
  let each item sent in (:func:`let_in_times`); a call goes while at most ``limit`` items
  sent would still be waiting then, so the next period's items are at the server, resolved
  and fetched, when its budget comes back, and the limit is the only bound on the time an
  import takes.  The server's ``X-RateLimit-Remaining``/``X-RateLimit-Reset`` rule instead
  when it counts more use than these submissions explain (a DRS bundle's members, other
  clients of the same account, a lower limit), and a 429 or 5xx holds submission until its
  ``Retry-After`` (else the reset, else the hold policy's next step).  The flusher sleeps
  until the moment the window reopens, not a tick longer;
* each batch gets an ``Idempotency-Key`` recorded in the journal *before* it is sent, so a
  batch whose answer was lost (a crash, a reset) is sent again under the same key and the
  server returns the job it already made; a job whose id was recorded is polled, never
  submitted again;
* jobs are polled on a schedule that adapts (:attr:`DrsQueue.poll`): soon after
  submission, then backing off while a job shows no progress, back to soon when it does,
  and at the latest just after the rate window reopens (when a waiting job moves on).
  Each poll's state and results are recorded for ``hcafs status``;
* each item's result is applied: on success NAME appears in the pending bundle as a file
  already on the server and the ``.drs`` file goes away; on error the server's message is
  kept on the ``.drs`` file; transient errors are retried.

Threading: one flusher thread owns the network side and every change of state.  It sleeps
on an Event until its next deadline (a poll, the window's reopening, the end of a linger)
or until an enqueue wakes it.  A small pool reads the landed files' records from the DSS
(``HEAD``) in parallel and returns them; the flusher applies them.  Every row it changes
(the queue's, the jobs', and when a result lands the pending-file rows involved) it changes
through one journal method, one transaction each; the calls go through
:mod:`hcafs.remote.bulk_import`.  The pool starts and stops with the thread.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid as _uuid
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..cache.journal import Journal, Landed
from ..errors import ApiError, UsageError
from ..remote.bulk_import import BulkImportClient
from ..remote.client import DSSClient, FileInfo
from ..retry import RetryPolicy

__all__ = ["BulkImportClient", "DrsQueue", "ImportRequest", "normalize_uri",
           "parse_drs_file"]

log = logging.getLogger(__name__)

MAX_ITEMS = 100
LINGER = 0.5  # a call with fewer than MAX_ITEMS waits this long after the last enqueue ...
MAX_LINGER = 5.0  # ... but its oldest item no longer than this
IDLE = 30.0  # the flusher looks at the queue at least this often
HEADS = 8  # HEAD calls in flight while a job's results are applied
HISTORY = 3  # windows of submissions replayed to know what the server's budget holds
SETTLE = 2.5  # a job is polled every base delay this long after its items are let in
WAIT = 2  # seconds a settling job's poll asks the server to hold it until the job changes
# (a period's worth of items lands in a second or two: polls that backed off meanwhile
# saw it a second late); where the server answers an unchanged job 304, such a poll costs
# it a read of the job, not a rendering of its results
MAX_CONTENT = 64 * 1024
CONFLICTS = ("SKIP", "RENAME", "OVERWRITE")
_HOST_FORM = re.compile(r"^drs://(?P<host>[A-Za-z0-9.\-]+(:\d+)?)/(?P<id>[^\s/][^\s]*)\Z")
_COMPACT_FORM = re.compile(r"^drs://(?P<prefix>[A-Za-z0-9._\-]+):(?P<accession>[^\s/:]+)\Z")


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


@dataclass
class Poll:
    """When a job is polled next, after how many polls without progress, and its results
    at the last poll."""

    at: float
    misses: int = 0
    results: int = -1
    last: float = 0.0  # when it was polled last
    state: str = ""
    due: float = 0.0  # when the server's window is expected to let its last item in
    etag: str | None = None  # of the last answer: the next poll asks If-None-Match


class DrsQueue:
    """The import queue's front (parsing closed ``.drs`` files) and its flusher thread.

    Every row it changes, it changes through the :class:`~hcafs.cache.journal.Journal`.
    """

    def __init__(self, journal: Journal, api: BulkImportClient, dss: DSSClient, *,
                 limit: int, window: float, default_conflict: str,
                 resolver: dict[str, str], on_change=lambda bundle, paths: None):
        self.journal = journal
        self.api = api
        self.dss = dss
        self.limit = limit
        self.window = window
        self.default_conflict = default_conflict
        self.resolver = resolver
        self.on_change = on_change
        # Per cache dir and identity: another token's imports get projects of their own.
        self._project_key = _uuid.uuid5(_uuid.UUID(journal.import_project_key()),
                                        api.identity_digest() if api is not None else "")
        # The DSS records an import result carries are taken only from the DSS itself:
        # an import API elsewhere is asked for names, and the DSS for what it stored.
        self._same_server = api is not None and dss is not None and \
            _origin(api.base) == _origin(dss.base)
        # How long the flusher holds off after a refusal or no answer: 5 s, 10 s, 20 s ...
        # never longer than the rate-limit window; the server's Retry-After comes first.
        self.hold = RetryPolicy(attempts=0, base_delay=5.0, max_delay=window,
                                jitter=False)
        # The pause between two polls of a job: 0.25 s after its submission or its latest
        # progress, doubling while it shows none, at most a tenth of the window (2-30 s).
        self.poll = RetryPolicy(attempts=0, base_delay=0.25,
                                max_delay=min(30.0, max(2.0, window / 10)), jitter=False)
        self._holds = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._heads: ThreadPoolExecutor | None = None
        self._waiting: dict[str, Future] = {}  # job id → its held poll, in flight
        self._hold_until = 0.0
        self._submit_at = 0.0  # when _submit has something to do next
        self._last_enqueue = 0.0
        self._enqueued = 0  # items queued since the mount started
        self._idle = True  # the flusher waits for no queued item
        self._reopens: float | None = None  # when the spent budget grows again
        self._opens = False  # no period is open: the next item sent opens one
        self._polls: dict[str, Poll] = {}
        # When jobs were seen FINISHED: their files leave the server's window about one
        # window later, and a job waiting for room moves on then.
        self._finishes: deque[float] = deque()

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
            log.debug("queued import of %s into %s/%s", request.drs_uri, bundle, name)
            self._last_enqueue = time.time()
            self._enqueued += 1
            # The flusher needs waking for the first item, or when a call is full; between
            # these it is lingering and looks again when the writers pause.
            if self._idle or self._enqueued % MAX_ITEMS == 0:
                self._idle = False
                self._wake.set()

    def waiting(self, bundle: str) -> int:
        return self.journal.imports_waiting(bundle)

    def failures(self, bundle: str) -> list[str]:
        return self.journal.import_failures(bundle)

    # ------------------------------------------------------------ the flusher

    def start(self) -> None:
        self._heads = ThreadPoolExecutor(HEADS, thread_name_prefix="drs-head")
        self._thread = threading.Thread(target=self._run, name="drs-flusher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._heads is not None:
            self._heads.shutdown(wait=True, cancel_futures=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                deadline = self.step()
            except Exception:
                log.exception("DRS import flusher error")
                deadline = time.time() + 1.0
            self._wake.wait(min(max(deadline - time.time(), 0.01), IDLE))

    def step(self) -> float:
        """Submit what may go now and poll the jobs that are due; returns the epoch time
        when there is something to do next (unless an enqueue comes first)."""
        self._submit_at = self._submit()
        polls = self._poll()
        return min(self._submit_at, polls)

    def _submit_if_due(self) -> None:
        """Submission does not wait for a long poll round or the results of a big job."""
        if self._wake.is_set() or time.time() >= self._submit_at:
            self._submit_at = self._submit()

    def budget(self, now: float) -> tuple[int, float | None]:
        """(items that may be sent now, and when the budget grows again if that is 0).

        Our own submissions bound it: what the current period still lets in, and one
        period's worth more to wait at the server (:func:`let_in_times`), and never more
        than two periods' worth in flight (sent, not yet applied): the replay covers the
        last :data:`HISTORY` windows only, so over a longer backlog it may take items
        that waited for being let in when sent, and the count in flight keeps it from
        piling more on the server.  The server's latest rate-limit headers bound it too
        when they show a lower limit, or more use than our submissions of the last two
        windows explain (the server counts files: a DRS bundle's members, or another
        client of the same account, use it too)."""
        seen = self.api.limit
        fresh = seen is not None and seen.reset > now
        limit = self._limit(now)
        lets, start, count = self._replay(now, limit)
        waiting = [when for when in lets if when > now]
        self._opens = False
        if waiting:  # the current period is full: the next one's items may wait
            own, first = limit - len(waiting), waiting[0]
        else:
            spent = count if start is not None and now < start + self.window else 0
            own, first = 2 * limit - spent, now
            self._opens = spent == 0
        flying = 2 * limit - self.journal.imports_in_flight()
        if flying < own:  # results applied (polls) make room: look again in a second
            own, first = flying, max(first, now + 1.0)
        server = None
        if fresh:
            explained = self.journal.imports_sent_since(seen.seen - 2 * self.window, seen.seen)
            if seen.limit - seen.remaining > explained:
                server = seen.remaining - self.journal.imports_sent_since(seen.seen)
        room = own if server is None else min(own, server)
        if room > 0:
            return room, None
        reopens = []
        if own <= 0:
            reopens.append(first)
        if server is not None and server <= 0:
            reopens.append(seen.reset)
        return 0, max(max(reopens), now + 0.01)

    def _submit(self) -> float:
        # Batches whose answer was lost are sent again under the same key.
        for key in self.journal.unanswered_batches():
            if not self._send(key):
                return self._hold_until
        while True:
            now = time.time()
            if now < self._hold_until:
                return self._hold_until
            due, oldest, later = self.journal.imports_due(now)
            if not due:
                self._reopens = None
                self._idle = True
                if self.journal.imports_due(now)[0]:  # an enqueue came in between
                    continue
                return later or float("inf")
            room, self._reopens = self.budget(now)
            if room <= 0:
                return self._reopens
            size = min(MAX_ITEMS, room)
            if due < size and not self._opens:
                # Fill the call: wait while the writers go on, a little.  (The call that
                # opens a period goes at once, with what there is: the next period opens
                # one window after it, so its clock should start as soon as it can.)
                ready = min(self._last_enqueue + LINGER, oldest + MAX_LINGER)
                if now < ready:
                    return ready
            key = self.journal.claim_batch(now, size)
            if key is None or not self._send(key):
                return self._hold_until if key else now + 0.1

    def project(self, bundle_uuid: str) -> str:
        """The server-side project of a pending bundle's imports: ``hcafs/UUID``, the UUID
        derived from this cache's own random key, the import token and the bundle's uuid.
        A working copy's uuid is public: a project named after it could be made first by
        another identity, which would own it."""
        return f"hcafs/{_uuid.uuid5(self._project_key, bundle_uuid)}"

    def _send(self, key: str) -> bool:
        rows = self.journal.batch(key)
        if not rows:
            return True
        # The name is the whole path in the bundle (the server makes its folders), and the
        # server is told to OVERWRITE: its project only stages the bundle's imports.  The
        # file's own conflict_resolution is applied here, against the names the pending
        # bundle holds when the import lands (Journal.imports_done).  Names the server
        # kept from earlier imports (of a file since removed, or of the same leaf in another
        # folder) would otherwise turn a SKIP import away with nothing landed.
        items = [{"drs_uri": uri, "project": self.project(bundle_uuid), "name": name,
                  "metadata": json.loads(metadata)}
                 for _, uri, name, metadata, _, _, bundle_uuid in rows]
        try:
            job = self.api.create(items, "OVERWRITE", json.loads(rows[0][5]), key)
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
        job_id = str(job["id"])
        self.journal.batch_submitted(key, job_id, [row[0] for row in rows])
        now = time.time()
        self._polls[job_id] = Poll(now + self.poll.base_delay, due=self._let_in(now))
        log.info("submitted %d DRS imports as job %s", len(rows), job_id)
        return True

    def _limit(self, now: float) -> int:
        """Ours, or the server's if its fresh headers name a lower one."""
        seen = self.api.limit
        return min(self.limit, seen.limit) if seen is not None and seen.reset > now \
            else self.limit

    def _replay(self, now: float, limit: int) -> tuple[list[float], float | None, int]:
        """:func:`let_in_times` of the last :data:`HISTORY` windows of our sends."""
        return let_in_times(self.journal.sent_times_since(now - HISTORY * self.window),
                            limit, self.window)

    def _let_in(self, now: float) -> float:
        """When the server's window is expected to let in the last item sent (by our own
        sends: the server lets an item in no sooner than we sent it)."""
        lets = self._replay(now, self._limit(now))[0]
        return max(lets[-1], now) if lets else now

    def _hold_off(self, exc: Exception, retry_after: str | None) -> None:
        """Send nothing new for a while: as long as the server said, else until its rate
        window resets, else the hold policy's next step."""
        now = time.time()
        if not retry_after and isinstance(exc, ApiError) and self.api.limit is not None \
                and self.api.limit.reset > now:
            retry_after = str(self.api.limit.reset - now)
        delay = self.hold.delay(self._holds, retry_after)
        self._holds += 1
        self._hold_until = now + delay
        log.warning("bulk import API: %s; waiting %.0fs", exc, delay)

    def _poll(self) -> float:
        """Poll the jobs that are due; returns when the next one is.

        A job whose items are being let in, and whose version we hold, is polled on the
        pool with ``Prefer: wait`` (:data:`WAIT`): a server that holds the poll answers
        when the job changes, so its FINISHED is seen when it happens.  The answer wakes
        the flusher, which handles it here like any other."""
        jobs = self.journal.submitted_jobs()
        for job_id in set(self._polls) - set(jobs):
            del self._polls[job_id]
            self._waiting.pop(job_id, None)
        for job_id in jobs:
            poll = self._polls.setdefault(job_id, Poll(0.0))  # after a restart: now
            waiting = self._waiting.get(job_id)
            if waiting is not None:
                if waiting.done():
                    del self._waiting[job_id]
                    self._poll_one(job_id, poll, waiting.result())
                    self._submit_if_due()
                continue
            now = time.time()
            if poll.at > now:
                continue
            if self._heads is not None and poll.etag and \
                    poll.due - WAIT <= now < poll.due + SETTLE:
                waiting = self._heads.submit(self._ask, job_id, poll.etag, WAIT)
                waiting.add_done_callback(lambda _: self._wake.set())
                self._waiting[job_id] = waiting
                continue
            self._poll_one(job_id, poll, self._ask(job_id, poll.etag))
            self._submit_if_due()
        # Over every job polled now, those submitted during this round included (their
        # first poll is due soon, and nothing else may wake the flusher for them); a held
        # poll wakes the flusher when it is answered.
        return min((poll.at for job_id, poll in self._polls.items()
                    if job_id not in self._waiting), default=float("inf"))

    def _ask(self, job_id: str, etag: str | None, wait: int = 0):
        """One poll's answer, ``(job or None, etag, held)``, or the error it met (also
        run on the pool, for a held poll)."""
        try:
            return self.api.poll(job_id, etag, wait)
        except Exception as exc:
            return exc

    def _poll_one(self, job_id: str, poll: Poll, answer) -> None:
        if isinstance(answer, Exception):
            log.debug("polling import job %s failed: %s", job_id, answer)
            poll.misses += 1
            poll.at = time.time() + self.poll.backoff(poll.misses)
            return
        job, etag, held = answer
        if job is None:  # unchanged since the last answer that was handled (304)
            self.schedule(poll, poll.results, time.time())
            if held:  # the server held it all that time: ask again at once
                poll.at = time.time()
            return
        results = job.get("result") or []
        state = str(job.get("state"))
        first_finish = state == "FINISHED" and poll.state != "FINISHED"
        if len(results) != poll.results or state != poll.state:
            failed = sum(1 for r in results if r.get("error"))
            self.journal.job_seen(job_id, state, len(results) - failed, failed)
            poll.state = state
        if state == "FINISHED":
            if first_finish:
                self._finishes.append(time.time())
                self._look_at_siblings(poll, time.time())
            if self._apply(job_id, results):
                del self._polls[job_id]
            else:  # the server has done the import: never submit it again, apply it again
                # from a full answer (a finished job never changes: its tag would get 304)
                poll.etag = None
                poll.at = time.time() + 10
            return
        poll.etag = etag  # only once the answer was handled: a tag names what we hold
        self.schedule(poll, len(results), time.time())

    def _look_at_siblings(self, finished: Poll, now: float) -> None:
        """A job seen FINISHED while its items were being let in: the jobs let in with it
        (their items due by now, still settling) have likely landed too, so they are
        polled now rather than at their own next turn (one flusher polls all the jobs,
        one after another)."""
        if not finished.due <= now < finished.due + SETTLE:
            return
        for poll in self._polls.values():
            if poll is not finished and poll.due <= now < poll.due + SETTLE:
                poll.at = min(poll.at, now)

    def schedule(self, poll: Poll, results: int, now: float) -> None:
        """When to poll a job next that had ``results`` at its poll at ``now``: soon if
        it made progress or the window reopened since the last poll, later each time
        neither happened, and at the latest just after the window's next reopening (when
        a job that waits for the budget moves on)."""
        while self._finishes and self._finishes[0] + self.window < now - 2 * IDLE:
            self._finishes.popleft()
        reopened = any(poll.last < done + self.window <= now for done in self._finishes)
        poll.misses = 0 if results > poll.results or reopened else poll.misses + 1
        poll.results, poll.last = results, now
        poll.at = now + self.poll.backoff(poll.misses)
        if now < poll.due + SETTLE:  # its items are being let in: look often, for a while
            poll.at = min(poll.at, max(now, poll.due) + self.poll.base_delay)
        reopens = self._window_reopens(now)
        if reopens is not None:
            poll.at = min(poll.at, reopens + self.poll.base_delay)

    def _window_reopens(self, now: float) -> float | None:
        """The next moment the server's window is expected to let more in: our spent
        budget's return, the server's reset when its headers say it is spent, or one
        window after a job was seen finished (its files leave the window then)."""
        moments = [done + self.window for done in self._finishes if done + self.window > now]
        if self._reopens is not None and self._reopens > now:
            moments.append(self._reopens)
        seen = self.api.limit
        if seen is not None and seen.remaining <= 0 and seen.reset > now:
            moments.append(seen.reset)
        return min(moments, default=None)

    def _apply(self, job_id: str, results: list[dict]) -> bool:
        """Apply a finished job's results; False if some could not be (kept for later)."""
        rows = self.journal.job_items(job_id)
        drs_paths = self.journal.paths_of([row[3] for row in rows])  # the .drs files
        # Results name items by their place in the job as sent; the rows still waiting
        # may be fewer (some applied, failed or queued again on an earlier try).
        places = self.journal.job_places(job_id)
        if len(places) < len(rows):  # sent before places were kept: their order, as then
            places = {row[0]: n for n, row in enumerate(rows)}
        grouped = _results_by_item(results, max(places.values(), default=-1) + 1)
        by_item = [grouped[places[row[0]]] for row in rows]
        resources = {_resource_fqid(r["resource"]): r["resource"] for result in by_item
                     for r in result if r.get("resource")}
        # A resource that carries its DSS record (hcafs serve's ``dss`` fields) needs no
        # HEAD.  Others' HEADs run ahead in the pool while the flusher applies the items in
        # order: each waits only for its own files' records.
        infos = {}
        for fqid in sorted(resources):
            known = _carried(fqid, resources[fqid]) if self._same_server else None
            infos[fqid] = _Done(known) if known is not None else (
                self._heads.submit(self._head, fqid) if self._heads else
                _Done(self._head(fqid)))
        applied = True
        changed: dict[str, list[str]] = {}  # bundle → the .drs files whose result it got
        landed: list[tuple] = []  # the items whose files land: one transaction for all
        for number, (row, result) in enumerate(zip(rows, by_item, strict=True)):
            if number % 10 == 9:
                self._submit_if_due()
            bundle, name = row[1], row[2]
            try:
                done = self._apply_one(*row, result, infos)
            except Exception as exc:
                log.warning("applying the result of import job %s for %s/%s failed "
                            "(will retry): %s", job_id, bundle, name, exc)
                applied = False
                continue
            if done is not None:
                landed.append(done)
            paths = changed.setdefault(bundle, [])
            if row[3] in drs_paths:
                paths.append(drs_paths[row[3]])
        try:
            outcomes = self.journal.imports_done([done[:5] for done in landed])
        except Exception as exc:
            log.warning("recording the results of import job %s failed (will retry): %s",
                        job_id, exc)
            applied = False
        else:
            for (_, bundle, _, _, _, name), outcome in zip(landed, outcomes, strict=True):
                _log_landed(bundle, name, outcome)
        for bundle, paths in changed.items():
            self.on_change(bundle, paths)
        return applied

    def _head(self, fqid: tuple[str, str]):
        """The DSS record of a landed file, or the error reading it (a pool worker)."""
        try:
            return self.dss.head_file(*fqid)
        except Exception as exc:
            return exc

    def _apply_one(self, import_id: int, bundle: str, name: str, drs_file_id: int,
                   conflict: str, result: list[dict], infos: dict) -> tuple | None:
        """An item's result: a failed or skipped one is recorded now; for one whose files
        land, what :meth:`Journal.imports_done` records (and its name), or None."""
        errors = [r["error"] for r in result if r.get("error")]
        resources = [r["resource"] for r in result if r.get("resource")]
        if errors and not resources:
            error = errors[0]
            status = int(error.get("status") or 0)
            reason = f"{error.get('code')}: {error.get('message')}"
            if status >= 500 or status == 429:
                self.journal.import_retry(import_id, reason)
                return None
            self.journal.imports_failed([import_id], reason)
            log.warning("import into %s/%s failed: %s", bundle, name, reason)
            return None
        entries = []
        directory = name.rpartition("/")[0]
        for resource in resources:
            info = infos[_resource_fqid(resource)].result()
            if isinstance(info, Exception):
                raise info
            member = resource.get("member")  # a DRS bundle's member: its path inside
            path = f"{name}/{member}" if member else (
                f"{directory}/{resource['name']}" if directory and resource.get("name") and
                len(resources) == 1 and conflict == "RENAME" else
                (resource.get("name") if len(resources) == 1 and conflict == "RENAME"
                 and resource.get("name") else name))
            entries.append((path, info))
        return import_id, bundle, drs_file_id, conflict, entries, name


def _log_landed(bundle: str, name: str, outcome: Landed) -> None:
    """Say what became of one finished import: where its files went, which local files
    kept their names, or that it landed nothing."""
    if outcome.removed:
        log.info("import of %s into %s landed nothing: its .drs file was removed", name,
                 bundle)
        return
    if outcome.placed:
        count = len(outcome.placed)
        where = "" if outcome.placed == [name] else \
            f": {', '.join(outcome.placed[:3])}{', …' if count > 3 else ''}"
        log.info("imported %s into %s (%d file%s%s)", name, bundle, count,
                 "" if count == 1 else "s", where)
    if outcome.kept:
        log.info("import of %s into %s kept the file%s of the same name (%s), as its "
                 "conflict_resolution SKIP asks", name, bundle,
                 "" if len(outcome.kept) == 1 else "s", ", ".join(outcome.kept[:3]))


def let_in_times(sent: list[float], limit: int, window: float
                 ) -> tuple[list[float], float | None, int]:
    """When a server with a fixed-window budget of ``limit`` per ``window`` lets in each
    item submitted at the times ``sent`` (oldest first), in order and no sooner than it was
    sent: a period opens with the first item let in after the one before ended, and holds
    ``limit``.  Returns those times, and the last period's start and count."""
    lets: list[float] = []
    start: float | None = None
    count = 0
    for when in sent:
        when = max(when, lets[-1]) if lets else when
        if start is None or when >= start + window:
            start, count = when, 0
        elif count >= limit:  # full: the item waits for the next period
            start, count = start + window, 0
            when = start
        count += 1
        lets.append(when)
    return lets, start, count


@dataclass(frozen=True)
class _Done:
    """A value already at hand, read like a finished future."""

    value: object

    def result(self) -> object:
        return self.value


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def _carried(fqid: tuple[str, str], resource: dict) -> FileInfo | None:
    """The DSS record a resource carries in its ``dss`` fields, if all are there."""
    dss = resource.get("dss") or {}
    try:
        values = {name: dss[name] for name in ("content_type", "sha256", "sha1", "crc32c",
                                               "s3_etag")}
        size = resource["size"]
    except (KeyError, TypeError):
        return None
    if not (isinstance(size, int) and size >= 0 and
            all(isinstance(value, str) and value for value in values.values())):
        return None
    return FileInfo(uuid=fqid[0], version=fqid[1], size=size, creator_uid=0, **values)


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
