"""A real SQLite cache database that can be made to fail at its Nth statement.

The fault: :class:`CrashingCacheDB` hands out connections whose ``execute`` raises
:class:`InjectedCrash` at the armed statement, as if the process died between two statements
of a change.  Everything else is the real :class:`~hcafs.cache.cachedb.CacheDB` (migrations,
WAL, ``BEGIN IMMEDIATE`` transactions).
"""

from __future__ import annotations

import sqlite3
import threading

import sqlite_utils

from hcafs.cache.cachedb import CacheDB

TABLES = ("pending_bundles", "pending_files", "drs_imports", "drs_jobs", "bundles",
          "manifests", "meta")


class InjectedCrash(Exception):
    """Raised by the armed statement, before it runs."""


class _CountingDatabase(sqlite_utils.Database):
    def __init__(self, conn: sqlite3.Connection, owner: CrashingCacheDB):
        self._owner = owner
        super().__init__(conn)

    def execute(self, sql, parameters=None):
        self._owner.tick(sql)
        return super().execute(sql, parameters)


class CrashingCacheDB(CacheDB):
    def __init__(self, path: str):
        self.statements = 0
        self._crash_at: int | None = None
        self._tick_lock = threading.Lock()
        super().__init__(path)

    def db(self) -> sqlite_utils.Database:
        db = super().db()
        if not isinstance(db, _CountingDatabase):
            db = _CountingDatabase(db.conn, self)
            self._connections[threading.get_native_id()] = db
        return db

    def tick(self, sql: str) -> None:
        with self._tick_lock:
            self.statements += 1
            if self._crash_at is not None and self.statements == self._crash_at:
                self._crash_at = None
                raise InjectedCrash(f"statement {self.statements}: {sql[:60]}")

    def count_from_here(self) -> None:
        self.statements = 0

    def crash_at(self, statement: int) -> None:
        """Fail the ``statement``-th statement from now (1 = the next one)."""
        self.statements = 0
        self._crash_at = statement

    def snapshot(self) -> dict[str, list[tuple]]:
        """Every row of the tables a change may touch, read on a fresh connection."""
        conn = sqlite3.connect(self.path)
        try:
            return {table: sorted(conn.execute(f"select * from {table}").fetchall(), key=repr)
                    for table in TABLES}
        finally:
            conn.close()
