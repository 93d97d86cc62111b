"""The mount's SQLite database: metadata cache and content-cache index.

One file, ``CACHE_DIR/hcafs.db``, in WAL mode with ``synchronous=NORMAL``: a commit is safe
from a crash of the daemon at once, and from a power loss after the next checkpoint or
:meth:`CacheDB.make_durable` (which ``fsync`` through the mount calls).  Each thread gets
its own connection, so FUSE worker threads and background workers never contend for a
Python-level lock; SQLite serialises writers itself.

The schema is created and changed only by the migrations below, applied once at open.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import threading
from collections.abc import Iterator

import sqlite_utils
from sqlite_utils.migrations import Migrations

from ..versions import version_datetime

BUSY_SECONDS = 30.0  # how long a writer waits for the database before it gives up

migrations = Migrations("hcafs")

# What a statement raises when the database cannot take it now (locked, disk full): callers
# outside this package catch this name, not sqlite3's.
DatabaseError = sqlite3.OperationalError


@migrations()
def m001_metadata(db: sqlite_utils.Database) -> None:
    db["meta"].create({"key": str, "value": str}, pk="key")
    # The last complete listing of /bundles/all: replaced whole, never piecemeal.
    db["bundles"].create({"fqid": str, "uuid": str, "version": str}, pk="fqid")
    # Manifests are immutable per version, so kept for good once fetched.
    db["manifests"].create({"fqid": str, "creator_uid": int, "files": str}, pk="fqid")
    db["files"].create({"fqid": str, "info": str}, pk="fqid")
    db["collections"].create({"uuid": str, "version": str, "name": str, "dirname": str,
                              "contents": str}, pk="uuid")
    db["collections"].create_index(["dirname"], unique=True)


@migrations()
def m002_blobs(db: sqlite_utils.Database) -> None:
    # One row per blob in the content cache; `blocks` is a bitmap of the 1 MiB blocks
    # present on disk (durable: written after the data is fsynced).
    db["blobs"].create({"sha256": str, "size": int, "blocks": bytes, "present": int,
                        "complete": int, "last_access": float, "pinned": int}, pk="sha256")
    db["blobs"].create_index(["last_access"])


@migrations()
def m003_journal(db: sqlite_utils.Database) -> None:
    # Pending bundles: directories under bundles/ being written.  See journal.py.
    db["pending_bundles"].create({
        "name": str, "uuid": str, "base_version": str, "state": str, "version": str,
        "patch_sent": int, "fqid": str, "error": str, "created": float, "changed": float,
    }, pk="name", not_null={"uuid", "state"})
    db["pending_files"].create({
        "id": int, "bundle": str, "path": str, "kind": str, "size": int, "mtime": float,
        "mode": int, "indexed": int, "generation": int, "state": str, "synced_generation": int,
        "file_uuid": str, "file_version": str, "sha256": str, "sha1": str, "crc32c": str,
        "s3_etag": str, "content_type": str, "attempts": int, "next_try": float,
        "error": str, "sent_bytes": int, "changed": float,
    }, pk="id", not_null={"bundle", "path", "kind", "state"})
    db["pending_files"].create_index(["bundle", "path"], unique=True)
    db["pending_files"].create_index(["state"])


@migrations()
def m004_drs_imports(db: sqlite_utils.Database) -> None:
    # The DRS import queue (see drs_queue.py): one row per item of a .drs file.
    db["drs_imports"].create({
        "id": int, "drs_file_id": int, "bundle": str, "name": str, "drs_uri": str,
        "metadata": str, "tags": str, "conflict": str, "state": str, "batch": str,
        "job_id": str, "attempts": int, "next_try": float, "error": str,
        "created": float, "submitted_at": float, "finished_at": float,
    }, pk="id", not_null={"bundle", "name", "drs_uri", "state"})
    db["drs_imports"].create_index(["state"])
    db["drs_imports"].create_index(["submitted_at"])
    db["drs_imports"].create_index(["batch"])


@migrations()
def m005_refusals(db: sqlite_utils.Database) -> None:
    # The latest refusals of the mount (see mount/refusals.py), for `hcafs status`.
    db["refusals"].create({"id": int, "at": float, "operation": str, "path": str,
                           "errno": str, "reason": str}, pk="id")
    # Names this mount gave collection items (`ln -s TARGET collections/C/NAME`): the
    # server keeps only the item, so the name lives here, per collection and item.
    db["collection_names"].create({"collection": str, "kind": str, "fqid": str,
                                   "name": str}, pk=("collection", "kind", "fqid"))
    db["collection_names"].create_index(["collection", "name"], unique=True)


@migrations()
def m006_block_checksums(db: sqlite_utils.Database) -> None:
    # crc32c of each present block (4 bytes per block, big-endian, in block order), taken
    # from the bytes as they were fetched: a block whose bytes on disk no longer match is
    # refetched instead of served.  Blocks cached before this column existed have no sum
    # and count as absent.
    db["blobs"].add_column("crcs", bytes)


@migrations()
def m007_drs_jobs(db: sqlite_utils.Database) -> None:
    # The bulk import jobs the DRS queue made, as last polled (for `hcafs status`).
    db["drs_jobs"].create({"job_id": str, "state": str, "items": int, "landed": int,
                           "failed": int, "submitted_at": float, "polled_at": float},
                          pk="job_id")


def mtime_ns(version: str) -> int:
    """The modification time a listed bundle version shows: the moment its version names,
    in ns since the epoch (0 for a version that names none)."""
    try:
        return int(version_datetime(version).timestamp() * 1e9)
    except ValueError:
        return 0


@migrations()
def m008_bundle_times(db: sqlite_utils.Database) -> None:
    # The bundle list is kept in SQLite and read by readdir page by page, a million rows
    # at a time when it is that long: each row carries the mtime its directory shows, so
    # no date is parsed while listing.  Rows listed before this column are filled here.
    db["bundles"].add_column("mtime_ns", int)
    db.conn.create_function("hcafs_mtime_ns", 1, mtime_ns, deterministic=True)
    db.execute("update bundles set mtime_ns = hcafs_mtime_ns(version)")


@migrations()
def m009_job_items(db: sqlite_utils.Database) -> None:
    # Each submitted item's place in the job it was sent in: a job's results name items by
    # that place, and items of the job that were applied, failed or queued again before the
    # rest must not shift the others' places (rows submitted before this column use their
    # order among the job's rows, as before).
    db["drs_imports"].add_column("job_item", int)


@migrations()
def m010_pending_ids_never_reused(db: sqlite_utils.Database) -> None:
    # A pending file's id names its data file and guards the sync engine's steps (with its
    # generation), so an id must never be handed out twice: a plain INTEGER PRIMARY KEY
    # gives a deleted top id to the next file.  The table is made again with AUTOINCREMENT
    # (SQLite then never reuses an id), its rows and indexes kept.
    sql = db.execute("select sql from sqlite_master where type = 'table' and "
                     "name = 'pending_files'").fetchone()[0]
    if "AUTOINCREMENT" in sql.upper():
        return
    made, keyed = re.subn(r'([\["]id[\]"]\s+INTEGER\s+PRIMARY\s+KEY)\b', r"\1 AUTOINCREMENT",
                          sql, count=1, flags=re.I)
    made, named = re.subn(r'^(\s*CREATE\s+TABLE\s+)(\[|")?pending_files(\]|")?\s*\(',
                          r"\1[pending_files_new] (", made, count=1, flags=re.I)
    if not keyed or not named:
        raise RuntimeError(f"pending_files has an unexpected schema: {sql}")
    indexes = [row[0] for row in db.execute(
        "select sql from sqlite_master where type = 'index' and tbl_name = 'pending_files' "
        "and sql is not null")]
    columns = ", ".join(f"[{c.name}]" for c in db["pending_files"].columns)
    db.execute(made)
    db.execute(f"insert into pending_files_new ({columns}) select {columns} "
               "from pending_files")
    db.execute("drop table pending_files")
    db.execute("alter table pending_files_new rename to pending_files")
    for index in indexes:
        db.execute(index)


REFUSALS_KEPT = 50


def _private_file(path: str) -> None:
    """The database holds the caller's collections (owner-private on the server): create it
    0600 whatever the umask, and narrow an older one (SQLite makes its -wal and -shm files
    with the database's own mode)."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600))
    for name in (path, path + "-wal", path + "-shm"):
        try:
            info = os.lstat(name)
        except FileNotFoundError:
            continue
        if info.st_mode & 0o077 and info.st_uid == os.geteuid():
            os.chmod(name, 0o600)


class CacheDB:
    """:meth:`db` is the calling thread's connection to ``path``.

    Connections are kept per OS thread id.  libfuse starts and ends worker threads as load
    comes and goes, so connections of threads that have ended are closed when new ones are
    made (a thread-local would leak one connection per ended thread).
    """

    SWEEP_AT = 16

    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        _private_file(path)
        self._lock = threading.Lock()
        # This process's writers take turns here, woken at once when the one before them
        # commits; SQLite's own busy handler (for other processes) sleeps 1, 2, 5, 10 ms …
        # between tries, which put whole milliseconds on a FUSE create that came while a
        # close was being recorded.
        self._writer = threading.Lock()
        self._connections: dict[int, sqlite_utils.Database] = {}
        migrations.apply(self.db())

    def db(self) -> sqlite_utils.Database:
        tid = threading.get_native_id()
        db = self._connections.get(tid)
        if db is not None:
            return db
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: every commit survives a crash of the process (kill -9);
        # only a power loss can undo the latest ones, and fsync() through the mount
        # closes that gap with make_durable().
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(f"PRAGMA busy_timeout={int(BUSY_SECONDS * 1000)}")
        db = sqlite_utils.Database(conn)
        with self._lock:
            if len(self._connections) >= self.SWEEP_AT:
                self._sweep()
            self._connections[tid] = db
        return db

    def _sweep(self) -> None:
        """Close the connections of threads that no longer exist (lock held)."""
        for tid in list(self._connections):
            if not os.path.exists(f"/proc/self/task/{tid}"):
                self._connections.pop(tid).conn.close()

    @contextlib.contextmanager
    def atomic(self) -> Iterator[sqlite_utils.Database]:
        """One write transaction, taking the write lock up front (``BEGIN IMMEDIATE``).

        A deferred transaction that reads first and writes later can fail at once with
        "database is locked" when another connection writes in between; an immediate one
        waits its turn instead: behind this process's other writers on a lock, behind other
        processes through busy_timeout.
        """
        db = self.db()
        if db.conn.in_transaction:
            with db.atomic():
                yield db
            return
        # Waits no longer than SQLite would have: a writer stuck that long is a fault,
        # reported as SQLite reports it, not a hang.
        if not self._writer.acquire(timeout=BUSY_SECONDS):
            raise sqlite3.OperationalError(f"database is locked (another writer of this "
                                           f"process held it for {BUSY_SECONDS:.0f} s)")
        try:
            db.conn.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.conn.execute("ROLLBACK")
                raise
            db.conn.execute("COMMIT")
        finally:
            self._writer.release()

    def make_durable(self) -> None:
        """Force every commit so far to disk (a checkpoint syncs the WAL and the database)."""
        self.db().execute("PRAGMA wal_checkpoint(FULL)")

    def get_meta(self, key: str) -> str | None:
        row = self.db().execute("select value from meta where key = ?", [key]).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.db()["meta"].upsert({"key": key, "value": value}, pk="key")

    def add_refusal(self, at: float, operation: str, path: str, errno: str,
                    reason: str) -> None:
        """Keep one refusal; only the latest :data:`REFUSALS_KEPT` are kept."""
        with self.atomic() as db:
            db["refusals"].insert({"at": at, "operation": operation, "path": path,
                                   "errno": errno, "reason": reason})
            db.execute("delete from refusals where id <= (select max(id) from refusals) - ?",
                       [REFUSALS_KEPT])

    def refusals(self, limit: int = 5) -> list[dict]:
        """The latest refusals, oldest first."""
        rows = self.db().execute("select at, operation, path, errno, reason from refusals "
                                 "order by id desc limit ?", [limit]).fetchall()
        return [{"at": r[0], "operation": r[1], "path": r[2], "errno": r[3], "reason": r[4]}
                for r in reversed(rows)]
