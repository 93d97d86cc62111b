"""A bound on how many entries of a big listing the kernel keeps, and so libfuse.

Every entry that READDIRPLUS hands the kernel becomes a dentry and an inode there, and
libfuse's high-level API keeps a node (about 260 bytes with its name) for each inode the
kernel holds, until the kernel forgets it.  The kernel forgets a FUSE inode as soon as its
dentry goes (FUSE inodes are not kept unused), but it keeps unused dentries until memory is
short.  So ``ls -l`` of a million bundle versions would leave a million nodes in the daemon.

:class:`KernelNames` counts the entries of each directory handed to the kernel.  Once
another ``limit`` have gone out, the directory is *due*, and before the next reply for it
is filled the kernel is asked to drop the directory's entries: one notification for the
directory's own name (``fuse_lowlevel_notify_inval_entry``), which makes the kernel prune
every cached entry under it that nothing uses (an open file or a working directory keeps
its own).  The pruned inodes are forgotten, and libfuse frees their nodes.

Why then: a reader asks for the next reply only when it has used up the entries of the last
one, and ``ls -l`` stats each entry as it reads it, so what a prune drops has already been
used.  Pruning as soon as the count is reached dropped the reply just handed out (about
4,850 entries of 1 MiB), and ``ls`` looked each of them up again.  One notification per
``limit`` entries costs next to nothing; one per entry, tried first, made ``ls -l`` of a
million entries four times slower.  A directory read in full with no more than ``limit``
entries is never pruned.

Threading: FUSE threads call :meth:`listed` and :meth:`before_reply`; a thread of its own
sends the notifications, and the reply waits for it at most :data:`PRUNE_WAIT` seconds
(the kernel takes the parent directory's lock for a notification, so a FUSE callback never
waits on one unboundedly).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

PRUNE_WAIT = 2.0  # seconds a reply waits for the prune due before it
Prune = Callable[[str], bool]  # directory -> whether the kernel held it; may raise OSError


class KernelNames:
    def __init__(self, limit: int, prune: Prune):
        self.limit = limit
        self._prune = prune
        self._cond = threading.Condition()
        self._handed: dict[str, int] = {}  # directory -> entries handed since its last prune
        self._due: set[str] = set()  # directories to prune before their next reply
        self._asked: dict[str, threading.Event] = {}  # prunes asked of the thread: set when done
        self._stopped = False
        self._thread: threading.Thread | None = None
        self.pruned = 0  # prunes the kernel carried out (for status)

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

    def listed(self, directory: str, count: int) -> None:
        """``count`` more entries of ``directory`` were just handed to the kernel."""
        if not self.enabled or not count:
            return
        with self._cond:
            handed = self._handed.get(directory, 0) + count
            if handed >= self.limit:
                handed = 0
                self._due.add(directory)
            self._handed[directory] = handed

    def before_reply(self, directory: str) -> None:
        """A reply for ``directory`` is about to be filled: run the prune due, if any."""
        with self._cond:
            if directory not in self._due or self._stopped or self._thread is None:
                return
            self._due.discard(directory)
            done = self._asked.setdefault(directory, threading.Event())
            self._cond.notify()
        if not done.wait(PRUNE_WAIT):
            log.debug("the prune of %s is taking longer than %.0fs; replying without it",
                      directory, PRUNE_WAIT)

    def outstanding(self) -> int:
        """Entries handed out since the last prune of their directory (an upper bound on
        what the kernel holds of them)."""
        with self._cond:
            return sum(self._handed.values())

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and not self._asked:
                    self._cond.wait()
                if self._stopped:
                    for done in self._asked.values():
                        done.set()
                    return
                directory, done = next(iter(self._asked.items()))
            try:
                if self._prune(directory):
                    self.pruned += 1
            except OSError as exc:  # e.g. the mount is going away
                log.debug("could not prune the kernel's entries of %s: %s", directory, exc)
            finally:
                with self._cond:
                    self._asked.pop(directory, None)
                done.set()
