"""The write-back journal: pending bundles and their files, in SQLite.

Every state change is one transaction, and every change the sync engine makes is guarded by
the file's ``generation``: a result computed from generation N is applied only if the file
is still at generation N, so a write that lands while a file is being uploaded simply makes
the file dirty again instead of being lost or mislabelled.

A file's life::

    dirty ──(closed, idle)──▶ staging ──▶ registering ──▶ synced
      ▲                          │              │
      └──────── written ◀────────┴── error ◀────┘   (retried with capped backoff)

``file_uuid`` and ``file_version`` are chosen and written here *before* the first staging
attempt, so a retry or a restart after a crash registers the same uuid and version again
and the server answers 200 instead of making a second copy.

A ``.drs`` file (kind ``drs``) is ``dirty`` while written; closed, it becomes ``queued``
(its import waits in ``drs_imports``) or ``error`` (invalid, or its import failed); when the
import lands, the row is replaced by the imported files (kind ``remote``).

A bundle's life: ``open`` → ``commit`` (requested) → ``committed`` (with its FQID); a commit
that the server refuses goes back to ``open`` with the reason in ``error``.

The journal is the only writer of ``pending_bundles``, ``pending_files``, ``drs_imports``
and ``drs_jobs`` (each import job as last polled):
each change of the model is one of its methods, and one transaction.  An import item's life
in ``drs_imports``: ``queued`` → ``submitting`` (batch key recorded before the call) →
``submitted`` (job id recorded) → ``done`` or ``failed``; a transient failure goes back to
``queued`` with a later ``next_try``.
"""

from __future__ import annotations

import itertools
import time
import uuid as _uuid
from dataclasses import dataclass, field

from ..errors import Busy
from ..retry import BACKGROUND
from ..versions import new_uuid, now_version
from .cachedb import CacheDB

DIRTY, STAGING, REGISTERING, SYNCED, ERROR = "dirty", "staging", "registering", "synced", "error"
QUEUED = "queued"  # a closed .drs file whose import waits in drs_imports
LOCAL, REMOTE, DIR, DRS = "local", "remote", "dir", "drs"  # DRS: a .drs import request
OPEN, COMMIT, COMMITTED = "open", "commit", "committed"
# drs_imports states (QUEUED too)
SUBMITTING, SUBMITTED, DONE, FAILED = "submitting", "submitted", "done", "failed"
IMPORTS_ACTIVE = (QUEUED, SUBMITTING, SUBMITTED)
MAX_BACKOFF = BACKGROUND.max_delay
JOBS_SHOWN = 20  # import jobs listed by the summary, the latest first
SYNC_NOW_KEY = "sync_now_before"  # meta: files changed before this epoch are due at once


@dataclass
class FileRow:
    id: int
    bundle: str
    path: str
    kind: str
    size: int
    mtime: float
    state: str
    generation: int
    indexed: int | None = None
    synced_generation: int | None = None
    file_uuid: str | None = None
    file_version: str | None = None
    sha256: str | None = None
    sha1: str | None = None
    crc32c: str | None = None
    s3_etag: str | None = None
    content_type: str | None = None
    attempts: int = 0
    next_try: float | None = None
    error: str | None = None
    sent_bytes: int = 0
    changed: float | None = None
    mode: int | None = None

    @property
    def is_indexed(self) -> bool:
        return bool(self.indexed) if self.indexed is not None else self.path.endswith(".json")


@dataclass
class BundleRow:
    name: str
    uuid: str
    state: str
    base_version: str | None = None
    version: str | None = None
    patch_sent: int | None = None
    fqid: str | None = None
    error: str | None = None
    created: float | None = None
    changed: float | None = None


_FILE_COLUMNS = [f for f in FileRow.__dataclass_fields__]
_BUNDLE_COLUMNS = [f for f in BundleRow.__dataclass_fields__]


IMPORT_PROJECT_KEY = "import-project-key"  # in the cache's meta table


@dataclass
class Landed:
    """What became of one finished import: the names its files were placed at, the names
    a local file kept (SKIP), or nothing at all (its ``.drs`` file was removed)."""

    placed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    removed: bool = False


class Journal:
    def __init__(self, db: CacheDB):
        self.cachedb = db

    @property
    def db(self):
        return self.cachedb.db()

    # ------------------------------------------------------------ reading

    def bundles(self) -> list[BundleRow]:
        rows = self.db.execute(f"select {', '.join(_BUNDLE_COLUMNS)} from pending_bundles "
                               "order by name").fetchall()
        return [BundleRow(*row) for row in rows]

    def bundle(self, name: str) -> BundleRow | None:
        row = self.db.execute(f"select {', '.join(_BUNDLE_COLUMNS)} from pending_bundles "
                              "where name = ?", [name]).fetchone()
        return BundleRow(*row) if row else None

    def files(self, bundle: str, prefix: str = "", limit: int | None = None
              ) -> list[FileRow]:
        """The bundle's rows (under ``prefix``), by path; an index range, not a scan."""
        sql = f"select {', '.join(_FILE_COLUMNS)} from pending_files where bundle = ?"
        args: list = [bundle]
        if prefix:
            sql += " and path >= ? and path < ?"
            args += [prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)]
        sql += " order by path"
        if limit:
            sql += f" limit {int(limit)}"
        return [FileRow(*row) for row in self.db.execute(sql, args)]

    def file(self, bundle: str, path: str) -> FileRow | None:
        row = self.db.execute(f"select {', '.join(_FILE_COLUMNS)} from pending_files "
                              "where bundle = ? and path = ?", [bundle, path]).fetchone()
        return FileRow(*row) if row else None

    def file_by_id(self, file_id: int) -> FileRow | None:
        row = self.db.execute(f"select {', '.join(_FILE_COLUMNS)} from pending_files "
                              "where id = ?", [file_id]).fetchone()
        return FileRow(*row) if row else None

    def paths_of(self, file_ids: list[int]) -> dict[int, str]:
        """The in-bundle paths of those of the pending files ``file_ids`` that exist."""
        found: dict[int, str] = {}
        for start in range(0, len(file_ids), 500):  # SQLite's bound-parameter limit
            chunk = file_ids[start:start + 500]
            found.update(self.db.execute(
                f"select id, path from pending_files where id in "
                f"({', '.join('?' * len(chunk))})", chunk).fetchall())
        return found

    def due(self, now: float, delay: float) -> list[FileRow]:
        """Local files the sync engine should work on now (open files are filtered later).

        A dirty file is due once it has been idle for ``delay``, at once if its bundle is
        being committed ("commit" means now), or if it changed before the last
        :meth:`sync_now` (an unmount drains now); an errored one when its retry is due.
        """
        now_before = float(self.cachedb.get_meta(SYNC_NOW_KEY) or 0)
        rows = self.db.execute(
            f"select {', '.join(_FILE_COLUMNS)} from pending_files where kind = ? and ("
            " (state = ? and (changed <= ? or changed <= ? or bundle in"
            "   (select name from pending_bundles where state = ?))) or state in (?, ?) or"
            " (state = ? and coalesce(next_try, 0) <= ?)) order by id",
            [LOCAL, DIRTY, now - delay, now_before, COMMIT, STAGING, REGISTERING, ERROR,
             now]).fetchall()
        return [FileRow(*row) for row in rows]

    def sync_now(self) -> None:
        """Every file closed until now is due at once, whatever the write-back delay (the
        drain before an unmount); files written later wait for the delay as usual."""
        self.cachedb.set_meta(SYNC_NOW_KEY, repr(time.time()))

    # ------------------------------------------------------------ bundles

    def add_bundle(self, name: str, uuid: str, base_version: str | None,
                   remote_files: list[dict]) -> None:
        now = time.time()
        with self.cachedb.atomic() as db:
            db["pending_bundles"].insert({"name": name, "uuid": uuid, "state": OPEN,
                                          "base_version": base_version, "created": now,
                                          "changed": now})
            for item in remote_files:
                db["pending_files"].insert({
                    "bundle": name, "path": item["name"], "kind": REMOTE,
                    "size": item["size"], "mtime": item.get("mtime", now), "state": SYNCED,
                    "generation": 0, "synced_generation": 0, "indexed": int(item["indexed"]),
                    "file_uuid": item["uuid"], "file_version": item["version"],
                    "sha256": item["sha256"], "sha1": item["sha1"], "crc32c": item["crc32c"],
                    "s3_etag": item["s3_etag"], "content_type": item["content-type"],
                    "attempts": 0, "sent_bytes": 0, "changed": now})

    def drop_bundle(self, name: str) -> None:
        with self.cachedb.atomic() as db:
            db.execute("delete from pending_files where bundle = ?", [name])
            db.execute("delete from pending_bundles where name = ?", [name])

    def touch_bundle(self, name: str) -> None:
        self.db.execute("update pending_bundles set changed = ? where name = ?",
                        [time.time(), name])

    def request_commit(self, name: str) -> None:
        self.db.execute("update pending_bundles set state = ?, error = null where name = ? "
                        "and state != ?", [COMMIT, name, COMMITTED])

    def commit_version(self, name: str) -> str:
        """The bundle version this commit uses, chosen once and kept across retries."""
        with self.cachedb.atomic() as db:
            row = db.execute("select version from pending_bundles where name = ?",
                             [name]).fetchone()
            if row[0]:
                return row[0]
            version = now_version()
            db.execute("update pending_bundles set version = ? where name = ?", [version, name])
            return version

    def mark_patch_sent(self, name: str) -> None:
        self.db.execute("update pending_bundles set patch_sent = 1 where name = ?", [name])

    def committed(self, name: str, fqid: str) -> None:
        """The bundle is on the server: keep it as a name for the FQID, drop its files."""
        with self.cachedb.atomic() as db:
            db.execute("update pending_bundles set state = ?, fqid = ?, error = null, "
                       "changed = ? where name = ?", [COMMITTED, fqid, time.time(), name])
            db.execute("delete from pending_files where bundle = ?", [name])

    def commit_failed(self, name: str, reason: str, give_up: bool) -> None:
        state = OPEN if give_up else COMMIT
        self.db.execute("update pending_bundles set state = ?, error = ?, version = "
                        "case when ? then null else version end, patch_sent = case when ? "
                        "then null else patch_sent end where name = ?",
                        [state, reason, give_up, give_up, name])

    # ------------------------------------------------------------ files (the model)

    def add_file(self, bundle: str, path: str, kind: str = LOCAL) -> int:
        now = time.time()
        with self.cachedb.atomic() as db:
            # Plain SQL on this path (every create): an insert through the table helper
            # reads the table's columns first, at a cost a FUSE create should not pay.
            file_id = db.execute(
                "insert into pending_files (bundle, path, kind, size, mtime, state, "
                "generation, attempts, sent_bytes, changed) values (?, ?, ?, 0, ?, ?, 1, 0, "
                "0, ?)", [bundle, path, kind, now, DIRTY if kind in (LOCAL, DRS) else SYNCED,
                          now]).lastrowid
            self._touch(db, bundle, now)
            return file_id

    @staticmethod
    def _touch(db, bundle: str, now: float) -> None:
        db.execute("update pending_bundles set changed = ? where name = ?", [now, bundle])

    def mark_dirty(self, file_id: int, size: int | None = None, to_local: bool = False
                   ) -> None:
        """The file's bytes changed (or are about to): a new generation, to be synced."""
        now = time.time()
        with self.cachedb.atomic() as db:
            db.execute(
                "update pending_files set generation = generation + 1, state = ?, "
                "file_version = null, error = null, attempts = 0, next_try = null, "
                "sent_bytes = 0, changed = ?, mtime = ?, size = coalesce(?, size), "
                "kind = case when ? then ? else kind end where id = ?",
                [DIRTY, now, now, size, to_local, LOCAL, file_id])
            row = db.execute("select bundle from pending_files where id = ?",
                             [file_id]).fetchone()
            if row:
                self._touch(db, row[0], now)

    def closed(self, file_id: int, size: int, mtime: float | None = None) -> None:
        """A writer closed the file: record its size, and its modification time (now,
        unless ``mtime`` was set since its last write); the idle clock starts now."""
        with self.cachedb.atomic() as db:
            self._closed(db, file_id, size, time.time(), mtime)

    @staticmethod
    def _closed(db, file_id: int, size: int, now: float, mtime: float | None = None
                ) -> None:
        db.execute("update pending_files set size = ?, changed = ?, mtime = ? where id = ?",
                   [size, now, now if mtime is None else mtime, file_id])
        # The bundle's idle clock (--auto-commit) restarts at the last close too, not
        # only at the first write after an open.
        db.execute("update pending_bundles set changed = ? where name = "
                   "(select bundle from pending_files where id = ?)", [now, file_id])

    def set_times(self, file_id: int, mtime: float) -> None:
        self.db.execute("update pending_files set mtime = ? where id = ?", [mtime, file_id])

    def set_indexed(self, file_id: int, indexed: bool) -> None:
        self.db.execute("update pending_files set indexed = ? where id = ?",
                        [int(indexed), file_id])

    def remove_file(self, file_id: int) -> None:
        """The file is gone (with its queued import, if it was a ``.drs`` file)."""
        with self.cachedb.atomic() as db:
            row = db.execute("select bundle from pending_files where id = ?",
                             [file_id]).fetchone()
            db.execute("delete from pending_files where id = ?", [file_id])
            db.execute("delete from drs_imports where drs_file_id = ? and state = ?",
                       [file_id, QUEUED])
            if row:
                self._touch(db, row[0], time.time())

    def rename(self, bundle: str, old: str, new: str, new_bundle: str | None = None,
               kind: str | None = None) -> None:
        """Rename a path and everything under it, in one transaction (a file at the target
        is replaced, its queued import dropped).  ``kind`` (a file only): what the file is
        under its new name.  A change between LOCAL and DRS starts a new generation (so no
        sync step of the old one lands) and drops the file's imports; a file that becomes
        LOCAL is to be synced, one that becomes DRS waits for its import to be queued."""
        target = new_bundle or bundle
        with self.cachedb.atomic() as db:
            # An import sent names where its result lands: no rename moves or replaces its
            # .drs file (checked in this transaction, which the flusher's claim of a batch
            # cannot come into).
            sent = db.execute(
                "select count(*) from drs_imports where state in (?, ?) and drs_file_id in "
                "(select id from pending_files where (bundle = ? and (path = ? or "
                "substr(path, 1, ?) = ?)) or (bundle = ? and path = ?))",
                [SUBMITTING, SUBMITTED, bundle, old, len(old) + 1, old + "/", target, new]
            ).fetchone()[0]
            if sent:
                raise Busy(f"bundles/{bundle}/{old} → {new}: its import is under way (of a "
                           ".drs file this rename moves or replaces); rename it once the "
                           "import is done")
            if kind is not None:
                row = db.execute("select id, kind from pending_files where bundle = ? and "
                                 "path = ?", [bundle, old]).fetchone()
                if row and row[1] != kind:
                    now = time.time()
                    db.execute("delete from drs_imports where drs_file_id = ?", [row[0]])
                    db.execute(
                        "update pending_files set kind = ?, generation = generation + 1, "
                        "state = ?, file_version = null, error = null, "
                        "attempts = 0, next_try = null, sent_bytes = 0, changed = ? "
                        "where id = ?", [kind, DIRTY, now, row[0]])
            db.execute("delete from drs_imports where state = ? and drs_file_id = (select id "
                       "from pending_files where bundle = ? and path = ?)", [QUEUED, target, new])
            db.execute("delete from pending_files where bundle = ? and path = ?", [target, new])
            db.execute("update pending_files set path = ?, bundle = ? where bundle = ? and "
                       "path = ?", [new, target, bundle, old])
            db.execute("update pending_files set path = ? || substr(path, ?), bundle = ? "
                       "where bundle = ? and substr(path, 1, ?) = ?",
                       [new + "/", len(old) + 2, target, bundle, len(old) + 1, old + "/"])
            self._touch(db, bundle, time.time())

    # ------------------------------------------------------------ files (the sync engine)

    def begin_staging(self, file_id: int, generation: int) -> tuple[str, str] | None:
        """Fix the uuid and version this generation registers under; None if stale."""
        with self.cachedb.atomic() as db:
            row = db.execute("select generation, file_uuid, file_version from pending_files "
                             "where id = ?", [file_id]).fetchone()
            if row is None or row[0] != generation:
                return None
            file_uuid = row[1] or new_uuid()
            version = row[2] or now_version()
            db.execute("update pending_files set state = ?, file_uuid = ?, file_version = ? "
                       "where id = ?", [STAGING, file_uuid, version, file_id])
            return file_uuid, version

    def staged(self, file_id: int, generation: int, checksums, content_type: str) -> bool:
        """The generation is staged with these checksums (a partial set's unknown ones
        are stored as NULL)."""
        cursor = self.db.execute(
            "update pending_files set state = ?, sha256 = ?, sha1 = ?, crc32c = ?, s3_etag = ?,"
            " content_type = ?, size = ? where id = ? and generation = ?",
            [REGISTERING, checksums.sha256 or None, checksums.sha1 or None,
             checksums.crc32c or None, checksums.s3_etag or None, content_type,
             checksums.size, file_id, generation])
        return cursor.rowcount == 1

    def registered(self, file_id: int, generation: int, checksums=None) -> bool:
        """The generation is registered; ``checksums`` (the server's four, when given)
        replace what staging knew."""
        sums = [] if checksums is None else [checksums.sha256, checksums.sha1,
                                             checksums.crc32c, checksums.s3_etag]
        cursor = self.db.execute(
            "update pending_files set state = ?, synced_generation = ?, error = null, "
            "attempts = 0, next_try = null"
            + (", sha256 = ?, sha1 = ?, crc32c = ?, s3_etag = ?" if sums else "")
            + " where id = ? and generation = ?",
            [SYNCED, generation, *sums, file_id, generation])
        return cursor.rowcount == 1

    def progress(self, file_id: int, sent: int) -> None:
        self.db.execute("update pending_files set sent_bytes = ? where id = ?", [sent, file_id])

    def failed(self, file_id: int, generation: int, reason: str,
               new_version: bool = False) -> float:
        """Record a failed attempt; returns the delay before the next one (capped).
        ``new_version``: the version chosen for this generation can never hold it (the
        server holds other bytes under it), so the next attempt chooses another."""
        with self.cachedb.atomic() as db:
            row = db.execute("select attempts from pending_files where id = ?",
                             [file_id]).fetchone()
            attempts = (row[0] or 0) + 1 if row else 1
            delay = BACKGROUND.backoff(attempts)
            db.execute(
                "update pending_files set state = ?, error = ?, attempts = ?, next_try = ?"
                + (", file_version = null, sha256 = null, sha1 = null, crc32c = null, "
                   "s3_etag = null" if new_version else "")
                + " where id = ? and generation = ?",
                [ERROR, reason, attempts, time.time() + delay, file_id, generation])
        return delay

    # ------------------------------------------------------------ DRS imports

    def drs_queued(self, file_id: int, size: int, bundle: str, name: str, drs_uri: str,
                   metadata: str, tags: str, conflict: str) -> bool:
        """A ``.drs`` file was closed with a valid request: record the close and queue its
        import, in one transaction.  False (and a note on the file) if an import of it is
        already on its way, whose result stands."""
        now = time.time()
        with self.cachedb.atomic() as db:
            self._closed(db, file_id, size, now)
            busy = db.execute("select count(*) from drs_imports where drs_file_id = ? and "
                              "state in (?, ?)", [file_id, SUBMITTING, SUBMITTED]).fetchone()[0]
            if busy:
                db.execute("update pending_files set error = ? where id = ?",
                           ["changed while its import was running; the new content is "
                            "ignored", file_id])
                return False
            db.execute("delete from drs_imports where drs_file_id = ?", [file_id])
            db.execute("insert into drs_imports (drs_file_id, bundle, name, drs_uri, "
                       "metadata, tags, conflict, state, attempts, created) values (?, ?, ?, "
                       "?, ?, ?, ?, ?, 0, ?)", [file_id, bundle, name, drs_uri, metadata, tags,
                                                conflict, QUEUED, now])
            db.execute("update pending_files set state = ?, error = null where id = ?",
                       [QUEUED, file_id])
        return True

    def drs_rejected(self, file_id: int, size: int, reason: str) -> None:
        """A ``.drs`` file was closed but cannot be imported: record the close and why."""
        with self.cachedb.atomic() as db:
            self._closed(db, file_id, size, time.time())
            db.execute("delete from drs_imports where drs_file_id = ? and state = ?",
                       [file_id, QUEUED])
            db.execute("update pending_files set state = ?, error = ? where id = ?",
                       [ERROR, reason, file_id])

    def imports_waiting(self, bundle: str) -> int:
        return self.db.execute("select count(*) from drs_imports where bundle = ? and state "
                               "not in (?, ?)", [bundle, DONE, FAILED]).fetchone()[0]

    def import_failures(self, bundle: str) -> list[str]:
        rows = self.db.execute("select name, error from drs_imports where bundle = ? and "
                               "state = ?", [bundle, FAILED]).fetchall()
        return [f"{name}: {error}" for name, error in rows]

    def imports_sent_since(self, since: float, until: float | None = None) -> int:
        """Items submitted after ``since`` (and up to ``until``)."""
        return self.db.execute("select count(*) from drs_imports where submitted_at > ? and "
                               "submitted_at <= ?", [since, until or float("inf")]
                               ).fetchone()[0]

    def imports_in_flight(self) -> int:
        """Items sent (or being sent) whose result has not been applied yet."""
        return self.db.execute("select count(*) from drs_imports where state in (?, ?)",
                               [SUBMITTING, SUBMITTED]).fetchone()[0]

    def sent_times_since(self, since: float) -> list[float]:
        """When each item submitted after ``since`` was submitted, oldest first."""
        return [row[0] for row in self.db.execute(
            "select submitted_at from drs_imports where submitted_at > ? "
            "order by submitted_at", [since])]

    def imports_due(self, now: float) -> tuple[int, float | None, float | None]:
        """(queued items due now, when the oldest of them was queued, when the next queued
        one that is not due yet becomes due)."""
        due, oldest = self.db.execute(
            "select count(*), min(created) from drs_imports where state = ? and "
            "coalesce(next_try, 0) <= ?", [QUEUED, now]).fetchone()
        later = self.db.execute("select min(next_try) from drs_imports where state = ? and "
                                "next_try > ?", [QUEUED, now]).fetchone()[0]
        return due, oldest, later

    def unanswered_batches(self) -> list[str]:
        """Keys of batches sent (or about to be) whose answer was never recorded."""
        return [r[0] for r in self.db.execute(
            "select distinct batch from drs_imports where state = ?", [SUBMITTING])]

    def claim_batch(self, now: float, room: int) -> str | None:
        """Up to ``room`` due items sharing their request-level fields, marked as being
        submitted under a new batch key (recorded before anything is sent)."""
        with self.cachedb.atomic() as db:
            group = db.execute(
                "select conflict, tags from drs_imports where state = ? and "
                "coalesce(next_try, 0) <= ? order by id limit 1", [QUEUED, now]).fetchone()
            if group is None:
                return None
            key = str(_uuid.uuid4())
            ids = [r[0] for r in db.execute(
                "select id from drs_imports where state = ? and conflict = ? and tags = ? "
                "and coalesce(next_try, 0) <= ? order by id limit ?",
                [QUEUED, group[0], group[1], now, room]).fetchall()]
            db.execute(f"update drs_imports set state = ?, batch = ? where id in "
                       f"({','.join('?' * len(ids))})", [SUBMITTING, key, *ids])
        return key

    def batch(self, key: str) -> list[tuple]:
        """(id, drs_uri, name, metadata, conflict, tags, bundle uuid) of a batch's items."""
        return self.db.execute(
            "select i.id, i.drs_uri, i.name, i.metadata, i.conflict, i.tags, b.uuid from "
            "drs_imports i join pending_bundles b on b.name = i.bundle where i.batch = ? "
            "order by i.id", [key]).fetchall()

    def batch_submitted(self, key: str, job_id: str, sent: list[int] | None = None) -> None:
        """The batch's job exists: its items are submitted (``sent``: their ids in the
        order the call listed them, which is each one's place in the job), and the job is
        listed (as not polled yet) for ``hcafs status``; jobs finished a day ago are
        forgotten."""
        now = time.time()
        with self.cachedb.atomic() as db:
            cursor = db.execute("update drs_imports set state = ?, job_id = ?, "
                                "submitted_at = ? where batch = ?",
                                [SUBMITTED, job_id, now, key])
            for place, import_id in enumerate(sent or []):
                db.execute("update drs_imports set job_item = ? where id = ?",
                           [place, import_id])
            db.execute("delete from drs_jobs where state = 'FINISHED' and polled_at < ?",
                       [now - 86400])
            db.execute("insert or replace into drs_jobs (job_id, state, items, landed, "
                       "failed, submitted_at) values (?, 'SUBMITTED', ?, 0, 0, ?)",
                       [job_id, cursor.rowcount, now])

    def job_seen(self, job_id: str, state: str, landed: int, failed: int) -> None:
        """What the latest poll of a job said: its state and its results so far."""
        self.db.execute("update drs_jobs set state = ?, landed = ?, failed = ?, "
                        "polled_at = ? where job_id = ?",
                        [state, landed, failed, time.time(), job_id])

    def imports_failed(self, ids: list[int], reason: str) -> None:
        """The server refused these items for good: the reason goes on each ``.drs`` file."""
        with self.cachedb.atomic() as db:
            for import_id in ids:
                db.execute("update drs_imports set state = ?, error = ? where id = ?",
                           [FAILED, reason, import_id])
                db.execute("update pending_files set state = ?, error = ? where id = "
                           "(select drs_file_id from drs_imports where id = ?)",
                           [ERROR, f"import failed: {reason}", import_id])

    def submitted_jobs(self) -> list[str]:
        return [r[0] for r in self.db.execute(
            "select distinct job_id from drs_imports where state = ?", [SUBMITTED])]

    def job_items(self, job_id: str) -> list[tuple]:
        """(id, bundle, name, drs_file_id, conflict) of a job's items still waiting for
        its results, in item order."""
        return self.db.execute("select id, bundle, name, drs_file_id, conflict from "
                               "drs_imports where job_id = ? and state = ? order by id",
                               [job_id, SUBMITTED]).fetchall()

    def job_places(self, job_id: str) -> dict[int, int]:
        """Each of a job's waiting items' place in the job as it was sent (by id; items
        submitted before places were kept are missing)."""
        return dict(self.db.execute(
            "select id, job_item from drs_imports where job_id = ? and state = ? and "
            "job_item is not null", [job_id, SUBMITTED]).fetchall())

    def import_retry(self, import_id: int, reason: str) -> None:
        """A transient failure of one item: queue it again, later (capped backoff)."""
        with self.cachedb.atomic() as db:
            attempts = db.execute("select attempts from drs_imports where id = ?",
                                  [import_id]).fetchone()[0] + 1
            db.execute("update drs_imports set state = ?, job_id = null, batch = null, "
                       "submitted_at = null, attempts = ?, next_try = ?, error = ? "
                       "where id = ?", [QUEUED, attempts,
                                        time.time() + BACKGROUND.backoff(attempts), reason,
                                        import_id])

    def import_done(self, import_id: int, bundle: str, drs_file_id: int, conflict: str,
                    entries: list[tuple[str, object]]) -> Landed:
        """The import landed: its files (``(path, FileInfo)``) replace the ``.drs`` file in
        the pending bundle, in one transaction."""
        return self.imports_done([(import_id, bundle, drs_file_id, conflict, entries)])[0]

    def imports_done(self, landed: list[tuple[int, str, int, str, list[tuple[str, object]]]]
                     ) -> list[Landed]:
        """:meth:`import_done` of each ``(import_id, bundle, drs_file_id, conflict,
        entries)``, all in one transaction (a finished job's items: one commit); what
        became of each, in order."""
        if not landed:  # nothing to record: no write lock taken
            return []
        now = time.time()
        with self.cachedb.atomic() as db:
            return [self._landed(db, now, import_id, bundle, drs_file_id, conflict, entries)
                    for import_id, bundle, drs_file_id, conflict, entries in landed]

    @staticmethod
    def _landed(db, now: float, import_id: int, bundle: str, drs_file_id: int,
                conflict: str, entries: list[tuple[str, object]]) -> Landed:
        """One landed import's rows, inside the caller's transaction.  An import whose
        ``.drs`` file is gone (removed while the import was sent, or its bundle committed
        or removed) lands nothing.  A name the pending bundle already holds is kept under
        SKIP and RENAME (which names the import ``_N_NAME``, the first free one), and
        replaced under OVERWRITE only."""
        outcome = Landed()
        here = db.execute("select 1 from pending_files where id = ? and bundle = ?",
                          [drs_file_id, bundle]).fetchone()
        if here is None:
            db.execute("update drs_imports set state = ?, finished_at = ?, error = ? "
                       "where id = ?", [DONE, now, "its .drs file was removed; nothing "
                                        "landed", import_id])
            outcome.removed = True
            return outcome
        for path, info in entries:
            existing = db.execute("select id from pending_files where bundle = ? and "
                                  "path = ?", [bundle, path]).fetchone()
            if existing and conflict == "SKIP":
                outcome.kept.append(path)
                continue
            if existing and conflict == "RENAME":
                folder, _, leaf = path.rpartition("/")
                for n in itertools.count(1):
                    path = f"{folder}/_{n}_{leaf}" if folder else f"_{n}_{leaf}"
                    if db.execute("select 1 from pending_files where bundle = ? and "
                                  "path = ?", [bundle, path]).fetchone() is None:
                        break
                existing = None
            if existing:
                db.execute("delete from pending_files where id = ?", [existing[0]])
            # plain SQL, as in add_file: a landed import is a row like a create's
            db.execute(
                "insert into pending_files (bundle, path, kind, size, mtime, state, "
                "generation, synced_generation, file_uuid, file_version, sha256, sha1, "
                "crc32c, s3_etag, content_type, attempts, sent_bytes, changed) values "
                "(?, ?, ?, ?, ?, ?, 0, 0, ?, ?, ?, ?, ?, ?, ?, 0, 0, ?)",
                [bundle, path, REMOTE, info.size, now, SYNCED, info.uuid, info.version,
                 info.sha256, info.sha1, info.crc32c, info.s3_etag, info.content_type,
                 now])
            outcome.placed.append(path)
        db.execute("delete from pending_files where id = ?", [drs_file_id])
        db.execute("update drs_imports set state = ?, finished_at = ?, error = null "
                   "where id = ?", [DONE, now, import_id])
        return outcome

    # ------------------------------------------------------------ status

    def import_project_key(self) -> str:
        """A random key made once per cache dir, the same ever after.  The mount names the
        server-side project of each pending bundle's imports from it and the bundle's uuid,
        so no other identity can know that name, and make the project first."""
        with self.cachedb.atomic() as db:
            db.execute("insert or ignore into meta (key, value) values (?, ?)",
                       [IMPORT_PROJECT_KEY, new_uuid()])
            return db.execute("select value from meta where key = ?",
                              [IMPORT_PROJECT_KEY]).fetchone()[0]

    def summary(self) -> dict:
        db = self.db
        pending = db.execute(
            "select count(*), coalesce(sum(size), 0) from pending_files where kind = ? and "
            "(state != ? or synced_generation is null or synced_generation != generation)",
            [LOCAL, SYNCED]).fetchone()
        errors = db.execute("select bundle, path, error, attempts from pending_files where "
                            "state = ? order by id", [ERROR]).fetchall()
        flight = db.execute("select bundle, path, size, sent_bytes, state from pending_files "
                            "where state in (?, ?) order by id",
                            [STAGING, REGISTERING]).fetchall()
        bundles = db.execute("select name, state, fqid, error from pending_bundles "
                             "order by name").fetchall()
        imports = db.execute("select state, count(*) from drs_imports group by state"
                             ).fetchall()
        import_errors = db.execute("select bundle, name, error from drs_imports where "
                                   "state = ? order by id", [FAILED]).fetchall()
        invalid = db.execute("select bundle, path, error from pending_files where kind = ? "
                             "and state = ?", [DRS, ERROR]).fetchall()
        jobs = db.execute(
            "select j.job_id, j.state, j.items, j.landed, j.failed, j.submitted_at, "
            "(select count(*) from drs_imports i where i.job_id = j.job_id and i.state = ?) "
            "from drs_jobs j order by j.submitted_at desc limit ?",
            [SUBMITTED, JOBS_SHOWN]).fetchall()
        states = dict(imports)
        return {
            "imports": dict(imports),
            "import_items": {"queued": states.get(QUEUED, 0) + states.get(SUBMITTING, 0),
                             "submitted": states.get(SUBMITTED, 0),
                             "landed": states.get(DONE, 0), "failed": states.get(FAILED, 0)},
            "import_jobs": [{"id": i, "state": st, "items": n, "landed": ok,
                             "failed": bad, "submitted_at": at, "waiting": w}
                            for i, st, n, ok, bad, at, w in reversed(jobs)],
            "import_errors": [{"bundle": b, "path": p, "error": e}
                              for b, p, e in import_errors + invalid],
            "pending_files": pending[0], "pending_bytes": pending[1],
            "in_flight": [{"bundle": b, "path": p, "size": s, "sent": n, "state": st}
                          for b, p, s, n, st in flight],
            "errors": [{"bundle": b, "path": p, "error": e, "attempts": a}
                       for b, p, e, a in errors],
            "bundles": [{"name": n, "state": st, "fqid": f, "error": e}
                        for n, st, f, e in bundles],
            "commits_pending": sum(1 for _, st, _, _ in bundles if st == COMMIT),
        }

    def bundle_summary(self, name: str) -> dict:
        bundle = self.bundle(name)
        if bundle is None:
            return {}
        files = self.files(name)
        waiting = [f for f in files if f.kind == LOCAL and
                   (f.state != SYNCED or f.synced_generation != f.generation)]
        imports = [f for f in files if f.kind == DRS]
        return {"imports_waiting": sum(1 for f in imports if f.state != ERROR),
                "import_errors": [f"{f.path}: {f.error}" for f in imports if f.state == ERROR],
                "name": name, "uuid": bundle.uuid, "state": bundle.state, "fqid": bundle.fqid,
                "error": bundle.error, "files": sum(1 for f in files if f.kind != DIR),
                "waiting_files": len(waiting),
                "waiting_bytes": sum(f.size for f in waiting),
                "file_errors": [f"{f.path}: {f.error}" for f in waiting if f.state == ERROR]}
