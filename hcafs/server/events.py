"""The event journal: an append-only record of bundle creates and deletes, kept in the store.

Every event is filed under a **cursor** the server assigns when it records the event: the
server's clock in microseconds, as a DSS_VERSION, and eight random hex digits
(``2026-12-01T083552.123456Z.1a2b3c4d``).  Events are read in cursor order, never in the
order of the bundle versions they name: a client fixes its version before it commits and
keeps it across retries, so a slow commit, or one through another server, carries a version
older than events already served, and still gets a cursor later than them.

Store layout (the cursor's date, hour-minute and second shard it, so that reading "since a
cursor" opens a few small folders, at any size of the journal)::

    events/{YYYY-MM-DD}/{HHMM}/{SS}/{cursor}.create.{uuid}.{version}   a bundle version made
    events/{YYYY-MM-DD}/{HHMM}/{SS}/{cursor}.delete.{uuid}.{version}   a version deleted
    events/{YYYY-MM-DD}/{HHMM}/{SS}/{cursor}.delete.{uuid}             every version deleted
    events/{YYYY-MM-DD}/{HHMM}/{SS}/{cursor}.journal      many events (bulk loads, migration)

A single event is all in its key (an empty document, :meth:`~.store.Store.mark`), so a page
of them costs one listing and no reads; a
``.journal`` document holds ``{"events": [{"type", "uuid", "version"}, …]}``.  Keys are
written with :meth:`~.store.Store.create`, so any number of servers can record into one
store: two events never share a key, and none is overwritten.

A reader keeps the last cursor it saw and asks again "since" a cursor a little before it
(:data:`OVERLAP_SECONDS`), dropping events whose ``event_id`` it has already applied: an
event becomes visible at most that long after its cursor's time, because a recording that
took longer than :data:`LATE_SECONDS` is recorded again under a fresh cursor (a duplicate
is harmless; applying a create or a delete twice changes nothing).  Server clocks must
agree to well within the overlap.

Threading: stateless; every method may be called from many request threads at once.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass

from ..versions import VERSION_FORMAT, is_version, now_version
from .store import Store

PREFIX = "events/"
OVERLAP_SECONDS = 10.0
LATE_SECONDS = 3.0
JOURNAL_EVENTS = 1000  # events per served journal (and per stored .journal document)
MAX_READS = 100  # .journal documents read for one page
CURSOR_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{6}\.\d{6}Z(\.[0-9a-f]{8})?\Z")
_CURSOR_LEN = 34
MIGRATED = "1970-01-01T000000.000000Z"  # the time of events standing for older bundles


@dataclass(frozen=True)
class Event:
    cursor: str
    index: int  # the event's place in its stored record (0 for a single event)
    type: str  # "create" or "delete"
    uuid: str
    version: str | None  # None: every version of the bundle was deleted

    @property
    def event_id(self) -> str:
        return f"{self.cursor}.{self.index}"

    @property
    def fqid(self) -> str:
        return f"{self.uuid}.{self.version}" if self.version else self.uuid

    def document(self) -> dict:
        return {"event_id": self.event_id, "timestamp": self.cursor[:25],
                "cursor": self.cursor, "type": self.type, "uuid": self.uuid,
                "version": self.version, "fqid": self.fqid}


def new_cursor(when: str | None = None) -> str:
    return f"{when or now_version()}.{secrets.token_hex(4)}"


def cursor_key(cursor: str) -> str:
    """The folder a cursor (or a bare DSS_VERSION) files under, and its name's start."""
    return f"{PREFIX}{cursor[:10]}/{cursor[11:15]}/{cursor[15:17]}/{cursor}"


def shift(cursor: str, seconds: float) -> str:
    """A bare cursor ``seconds`` earlier (later when negative) than ``cursor``."""
    when = _dt.datetime.strptime(cursor[:25], VERSION_FORMAT)
    return (when - _dt.timedelta(seconds=seconds)).strftime(VERSION_FORMAT)


def is_cursor(text: str) -> bool:
    return isinstance(text, str) and bool(CURSOR_RE.match(text)) and is_version(text[:25])


class Journal:
    def __init__(self, store: Store):
        self.store = store

    # ------------------------------------------------------------ recording

    def record(self, kind: str, uuid: str, version: str | None = None) -> str:
        """File one event; returns its cursor.  A recording slower than
        :data:`LATE_SECONDS` is filed again, so no event shows up later than that."""
        suffix = f"{kind}.{uuid}" + (f".{version}" if version else "")
        while True:
            started = time.monotonic()
            cursor = new_cursor()
            if not self.store.mark(f"{cursor_key(cursor)}.{suffix}"):
                continue  # the same microsecond and random digits: draw again
            if time.monotonic() - started <= LATE_SECONDS:
                return cursor

    def record_many(self, events: list[tuple[str, str, str | None]],
                    cursor: str | None = None) -> str:
        """File ``(type, uuid, version)`` events as one journal document.  A given
        ``cursor`` makes the write idempotent (the same cursor twice is written once)."""
        body = json.dumps({"events": [{"type": t, "uuid": u, "version": v}
                                      for t, u, v in events]}).encode()
        if cursor is not None:
            self.store.create(f"{cursor_key(cursor)}.journal", body)
            return cursor
        while True:
            started = time.monotonic()
            cursor = new_cursor()
            if not self.store.create(f"{cursor_key(cursor)}.journal", body):
                continue
            if time.monotonic() - started <= LATE_SECONDS:
                return cursor

    # ------------------------------------------------------------ reading

    def since(self, cursor: str = "") -> Iterator[tuple[list[Event], bool]]:
        """Records after ``cursor`` (a bare DSS_VERSION includes its own microsecond; empty
        is the first), oldest first: the events each holds, and whether it was read."""
        after = cursor_key(cursor) + "~" if len(cursor) == _CURSOR_LEN else (
            cursor_key(cursor) if cursor else "")
        for key in self.store.scan(PREFIX, after):
            name = key.rsplit("/", 1)[1]
            record_cursor, rest = name[:_CURSOR_LEN], name[_CURSOR_LEN + 1:]
            if not is_cursor(record_cursor):
                continue
            if rest == "journal":
                yield self._journal(key, record_cursor), True
                continue
            kind, _, fqid = rest.partition(".")
            uuid, _, version = fqid.partition(".")
            if kind in ("create", "delete") and uuid:
                yield [Event(record_cursor, 0, kind, uuid, version or None)], False

    def _journal(self, key: str, cursor: str) -> list[Event]:
        raw = self.store.read(key)
        if raw is None:
            return []
        return [Event(cursor, i, e["type"], e["uuid"], e.get("version"))
                for i, e in enumerate(json.loads(raw)["events"])]

    def page(self, since: str, to_date: str | None, journals: int
             ) -> tuple[list[list[Event]], bool]:
        """Up to ``journals`` served journals of at most :data:`JOURNAL_EVENTS` events
        each (a stored record is never split), and whether more may follow."""
        served: list[list[Event]] = [[]]
        reads = 0
        for events, read in self.since(since):
            if not events:
                continue
            if to_date is not None and events[0].cursor[:25] > to_date:
                break
            if served[-1] and len(served[-1]) + len(events) > JOURNAL_EVENTS:
                if len(served) == journals:
                    return served, True
                served.append([])
            served[-1].extend(events)
            reads += read
            if reads >= MAX_READS:
                return served, True
        return [journal for journal in served if journal], False


def events_body(journals: list[list[Event]], since: str) -> dict:
    """``GET /events``: the DSS's ``EventStreams``, with the hcafs fields beside its own
    (``cursor`` on the answer, the journal and every event; ``type``, ``uuid``,
    ``version`` and ``fqid`` on every event).  A journal's content is its events as JSON
    lines; ``offset`` and ``size`` are byte positions in it."""
    streams = []
    for journal in journals:
        offset, items = 0, []
        for event in journal:
            document = event.document()
            size = len(json.dumps(document, sort_keys=True).encode()) + 1
            items.append({**document, "offset": offset, "size": size})
            offset += size
        streams.append({"journal_id": f"{journal[0].cursor}--{journal[-1].cursor}",
                        "from_date": journal[0].cursor[:25],
                        "to_date": journal[-1].cursor[:25], "size": offset,
                        "cursor": journal[-1].cursor, "events": items})
    cursor = journals[-1][-1].cursor if journals else since
    return {"event_streams": streams, "cursor": cursor}
