"""A bound on how many entries of a big listing the kernel keeps, and so libfuse.

Every entry that READDIRPLUS hands the kernel becomes a dentry and an inode there, and
libfuse's high-level API keeps a node (about 260 bytes with its name) for each inode the
kernel holds, until the kernel forgets it.  The kernel forgets a FUSE inode as soon as its
dentry goes (FUSE inodes are not kept unused), but it keeps unused dentries until memory is
short.  So ``ls -l`` of a million bundle versions would leave a million nodes in the daemon.

:class:`KernelNames` counts the entries each open directory (each listing) hands to the
kernel.  Once more than ``limit`` have gone out since its last prune, the listing is *due*,
and before its next reply is filled the kernel is asked to drop the directory's cached
entries: one notification for the directory's own name
(``fuse_lowlevel_notify_inval_entry``), which makes the kernel prune every entry under it,
at any depth, that nothing uses (an open file, or a working directory inside it, keeps its
own).  The pruned inodes are forgotten, and libfuse frees their nodes.

Why then: a reader asks for the next reply only once it has used up the entries of the last
one, and ``ls -l`` stats each entry as it reads it, so what a prune drops has already been
used.  The reply filled right after a prune carries a single entry: the kernel sent its
request before the prune, and it marks the attributes of inodes made from such a reply as
stale (each would cost ``ls -l`` a GETATTR); the next request goes out after the prune.
Readers that list everything first and stat afterwards, or several readers at once, find
some entries dropped before they stat them: those are looked up again (correct, slower).
A directory of at most ``limit`` entries is never pruned, however often it is listed; the
kernel keeps at most about ``limit`` entries per listing in progress, plus the last
``limit`` of the listing before.

Measured on a million entries: pruning as soon as the count was reached dropped the reply
just handed out (and ``ls`` looked each of its entries up again), and one notification per
entry made ``ls -l`` four times slower than one per ``limit``.

Threading: FUSE threads call :meth:`listed` and :meth:`before_reply`; a thread of its own
sends the notifications, and a reply waits for its prune at most :data:`PRUNE_WAIT` seconds
(the kernel takes the parent directory's lock for a notification, which a lookup there may
hold while it waits for a FUSE thread, so a callback never waits on one unboundedly).
"""

from __future__ import annotations

import errno
import logging
import threading
from collections import deque
from collections.abc import Callable

log = logging.getLogger(__name__)

PRUNE_WAIT = 2.0  # seconds a reply waits for the prune due before it
# directory -> whether the kernel held it; raises OSError with the kernel's errno
Prune = Callable[[str], bool]


class KernelNames:
    def __init__(self, limit: int, prune: Prune):
        self.limit = limit
        self._prune = prune
        self._cond = threading.Condition()
        self._handed: dict[object, int] = {}  # open directory -> entries since its prune
        self._due: set[object] = set()  # open directories to prune before their next reply
        self._asked: deque[_Ask] = deque()  # prunes for the thread, in order
        self._stopped = False
        self._dead = False  # the thread ended on an error: the bound is off
        self._thread: threading.Thread | None = None
        self._warned: set[int] = set()  # errnos already logged
        self.pruned = 0  # prunes the kernel carried out (for status)
        self.late = 0  # replies that did not wait for their prune to end

    @property
    def enabled(self) -> bool:
        return self.limit > 0

    def start(self) -> None:
        if not self.enabled or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="kernel-names", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def listed(self, listing: object, count: int) -> None:
        """``count`` more entries of the open directory ``listing`` were just handed to
        the kernel."""
        if not self.enabled or not count:
            return
        with self._cond:
            handed = self._handed.get(listing, 0) + count
            if handed > self.limit:
                handed = 0
                self._due.add(listing)
            self._handed[listing] = handed

    def closed(self, listing: object) -> None:
        """The open directory ``listing`` was released."""
        with self._cond:
            self._handed.pop(listing, None)
            self._due.discard(listing)

    def before_reply(self, listing: object, directory: str) -> bool:
        """A reply for the open directory ``listing`` (of ``directory``) is about to be
        filled: run the prune due, if any.  True if the kernel pruned, or may be pruning
        now (then the reply should carry a single entry; see above)."""
        with self._cond:
            if listing not in self._due or self._stopped or self._thread is None \
                    or self._dead:
                return False
            self._due.discard(listing)
            ask = _Ask(directory)
            self._asked.append(ask)
            self._cond.notify()
        if ask.done.wait(PRUNE_WAIT):
            return ask.pruned
        with self._cond:
            self.late += 1
            if ask in self._asked:  # not begun: the next reply asks again
                self._asked.remove(ask)
                self._due.add(listing)
                waiting = True
            else:  # under way: this reply races it either way
                waiting = False
        log.warning("pruning the kernel's entries of %s took longer than %.0f s; the "
                    "listing goes on meanwhile", directory, PRUNE_WAIT)
        return not waiting

    def status(self) -> dict:
        with self._cond:
            return {"limit": self.limit, "since_prune": sum(self._handed.values()),
                    "pruned": self.pruned, "late": self.late,
                    "working": self.enabled and not self._dead}

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._stopped and not self._asked:
                        self._cond.wait()
                    if self._stopped:
                        return
                    ask = self._asked.popleft()
                try:
                    ask.pruned = self._prune(ask.directory)
                    if ask.pruned:
                        with self._cond:
                            self.pruned += 1
                except OSError as exc:
                    self._refused(ask.directory, exc)
                finally:
                    ask.done.set()
        except Exception:
            log.exception("the kernel-entries bound stopped working; the kernel keeps "
                          "listed entries until it needs the memory")
            with self._cond:
                self._dead = True
        finally:
            with self._cond:
                for ask in self._asked:
                    ask.done.set()
                self._asked.clear()

    def _refused(self, directory: str, exc: OSError) -> None:
        """A prune the kernel refused: logged once per errno (ENOTCONN/EBADF: unmounting)."""
        if exc.errno in (errno.ENOTCONN, errno.EBADF) or exc.errno in self._warned:
            log.debug("pruning the kernel's entries of %s: %s", directory, exc)
            return
        self._warned.add(exc.errno)
        log.warning("the kernel refused to prune its entries of %s (%s); they stay until "
                    "it needs the memory", directory, exc)


class _Ask:
    """One prune a reply waits for."""

    def __init__(self, directory: str):
        self.directory = directory
        self.done = threading.Event()
        self.pruned = False  # set by the thread before ``done``
