"""Refusals: every errno the mount returns on purpose, explained once.

A refusal is an answer the mount gives by design (EROFS for a write to a bundle version,
EINVAL for a link that points nowhere the mount knows, EACCES when the server said no, ...).
The FUSE adapter hands each one here with the callback, the path and the reason the model
gave.  Each distinct (reason, path) is logged once at WARNING, so a loop of stats that keeps
being refused leaves one line (a refusal that names a key of its own is logged once for
all paths: an attribute `cp -a` sets on every file it copies), and it is recorded in the
cache database, where ``hcafs status`` shows the latest few without asking the daemon.

Threading: FUSE threads call :meth:`Refusals.record` concurrently; the set of reasons
already seen is kept under a lock.
"""

from __future__ import annotations

import errno
import logging
import threading
import time

from ..cache.cachedb import CacheDB, DatabaseError

log = logging.getLogger("hcafs.refusals")

# The errnos the mount returns on purpose and explains (ENOENT is an answer, not a refusal).
EXPLAINED = frozenset({errno.EINVAL, errno.EROFS, errno.EACCES, errno.ENOTDIR, errno.EEXIST,
                       errno.ENOTEMPTY, errno.ENOSPC, errno.EDQUOT, errno.EBUSY,
                       errno.EPERM, errno.EOPNOTSUPP, errno.EFBIG})
SEEN_LIMIT = 10_000  # forget the oldest reasons past this many (a bound, not a policy)


class Refusals:
    def __init__(self, db: CacheDB | None = None):
        self.db = db
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], None] = {}

    def record(self, operation: str, path: str, code: int, reason: str,
               key: str | None = None) -> None:
        """Log and keep one refusal, unless the same reason for the same path was seen
        (or, when the refusal gives a ``key``, one with that key: said once for all
        paths)."""
        if code not in EXPLAINED:
            return
        key = (key, "") if key else (reason, path)
        with self._lock:
            if key in self._seen:
                return
            self._seen[key] = None
            if len(self._seen) > SEEN_LIMIT:
                self._seen.pop(next(iter(self._seen)))
        name = errno.errorcode.get(code, str(code))
        # A name that is not UTF-8 reaches here with surrogate escapes: written as \x..
        path = path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        reason = reason.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        log.warning("%s %s refused with %s: %s", operation, path, name, reason)
        if self.db is not None:
            try:
                self.db.add_refusal(time.time(), operation, path, name, reason)
            except DatabaseError as exc:  # a full disk must not turn a refusal into EIO
                log.debug("refusal not recorded: %s", exc)
