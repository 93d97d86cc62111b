"""Budgets shared by every ``hcafs serve`` process on one store.

A :class:`SharedBudget` admits at most ``limit`` events per ``window`` seconds per key,
counted across all processes and workers, over one of two kinds of window:

* ``fixed`` (the default, the Seven Bridges contract: "the import will continue
  automatically after the five-minute period expires"): a period of ``window`` seconds
  opens with the first admission after the previous one ended, and holds at most ``limit``;
  the budget is whole again the moment it ends (``X-RateLimit-Reset``).  Any ``window``
  seconds thus hold at most ``2 * limit`` (the end of one period and the start of the next);
* ``sliding``: no interval of ``window`` seconds ever holds more than ``limit``.

Each key's admissions live in one store document, ``budgets/{name}-{key}``: the times of the
events still counted, oldest first, and for a fixed window the start of its period.  An
admission is a read-modify-write of that document, made with a compare-and-swap
(:meth:`Store.replace`, ``If-Match`` on S3) or a create-once for the first one; a swap that
loses to another process reads again, at most :data:`RETRIES` times, with a short random
pause.

Exactness (docs/drs.md#budgets-across-servers): an event is admitted only by a write that
succeeded against the latest version of the document, which then holds it, so no interval
of ``window`` seconds (sliding), or no period (fixed), ever holds more than ``limit``
admitted events, whatever the number of processes.  The budget can fall short of its
limit: a caller that lost :data:`RETRIES` swaps in a row is told to wait
:data:`CONTENDED_WAIT` seconds although room was left, and a deferred caller comes back
only when the slot (or period) it waits for is free, plus its scheduling delay.  Expiry
compares the processes' wall clocks; their skew adds to the shortfall, never to an excess,
as long as it stays below the window.

Threading: safe from any thread; all state is in the store.  Within one process, callers
that ask for one key at the same moment are served by one write (a group commit): the
first becomes the leader and admits its own events and those of every caller that arrived
while the previous write was in flight, in the order they asked, through one
compare-and-swap.  Followers wait on the leader, so concurrent jobs of one process never
race each other's swaps.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..config import WINDOW_KINDS
from . import metrics
from .store import Store

RETRIES = 8
CONTENDED_WAIT = 0.05  # seconds a caller that kept losing the swap is told to wait
PREFIX = "budgets/"


@dataclass
class _Ask:
    """One caller's request for ``count`` events, and its answer once given."""

    count: int
    answer: tuple[list[float], float] | Exception | None = None


@dataclass
class _Queue:
    """The callers waiting for one key's next write in this process."""

    cond: threading.Condition = field(default_factory=threading.Condition)
    asks: list[_Ask] = field(default_factory=list)
    writing: bool = False


class SharedBudget:
    """At most ``limit`` events per ``window`` seconds per key, across processes."""

    def __init__(self, store: Store, name: str, limit: int, window: float,
                 clock: Callable[[], float] = time.time, kind: str = "fixed"):
        if kind not in WINDOW_KINDS:
            raise ValueError(f"unknown budget window kind {kind!r}")
        self.store, self.name, self.kind = store, name, kind
        self.limit, self.window, self._clock = limit, window, clock
        self._queues: dict[str, _Queue] = {}
        self._queues_lock = threading.Lock()

    def _key(self, key: str) -> str:
        return f"{PREFIX}{self.name}-{key}"

    def _live(self, raw: bytes | None, now: float) -> tuple[float | None, list[float]]:
        """``(start, events)``: the events that count at ``now``, and for a fixed window
        the start of the period they belong to (None: no period is open)."""
        doc = json.loads(raw) if raw is not None else {}
        events = doc.get("events", [])
        if self.kind == "sliding":
            return None, [when for when in events if when > now - self.window]
        start = doc.get("start")
        if start is None:  # written by a sliding budget: its oldest live event opens it
            live = [when for when in events if when > now - self.window]
            return (live[0], live) if live else (None, [])
        if now >= start + self.window:
            return None, []
        # Every event stored with the period is in it (the list starts afresh when a
        # period opens): a process whose clock runs behind the one that opened it is
        # counted too, not dropped.
        return start, events

    def _back(self, start: float | None, events: list[float]) -> float:
        """When the next event may be admitted, the budget being spent."""
        return start + self.window if start is not None else events[0] + self.window

    def take(self, key: str) -> tuple[float | None, float]:
        """``(when, 0)`` if an event was admitted now, else ``(None, seconds to wait)``."""
        admitted, wait = self.take_many(key, 1)
        return (admitted[0], 0.0) if admitted else (None, wait)

    def take_many(self, key: str, count: int) -> tuple[list[float], float]:
        """Admit up to ``count`` events now, in one write: ``(times, wait)``, where
        ``times`` holds one entry per admitted event and ``wait`` is how long until the
        next one could be (0 when all ``count`` were admitted).  The write may be shared
        with other callers of this process (see the module's *Threading*)."""
        times, wait, _ = self.take_batch(key, count)
        return times, wait

    def take_batch(self, key: str, count: int) -> tuple[list[float], float, float | None]:
        """:meth:`take_many`, and the start of the fixed-window period the events were
        admitted in (None for a sliding window, or when none was admitted)."""
        if count <= 0:
            return [], 0.0, None
        with self._queues_lock:
            queue = self._queues.setdefault(key, _Queue())
        ask = _Ask(count)
        with queue.cond:
            queue.asks.append(ask)
            while queue.writing and ask.answer is None:
                queue.cond.wait()
            if ask.answer is None:  # this caller leads the next write
                asks, queue.asks, queue.writing = queue.asks, [], True
        if ask.answer is None:
            answers: list | None = None
            try:
                answers = self._admit(key, [a.count for a in asks])
            except Exception as exc:  # each caller of the write sees its failure
                answers = [exc] * len(asks)
            finally:
                with queue.cond:
                    if answers is None:  # the leader was interrupted: the others ask again
                        queue.asks[:0] = [waiting for waiting in asks if waiting is not ask]
                    else:
                        for waiting, answer in zip(asks, answers, strict=True):
                            waiting.answer = answer
                    queue.writing = False
                    queue.cond.notify_all()
        if isinstance(ask.answer, Exception):
            raise ask.answer
        assert ask.answer is not None
        return ask.answer

    def _admit(self, key: str, counts: list[int]
               ) -> list[tuple[list[float], float, float | None]]:
        """Admit the events of several callers, in their order, in one write: each
        caller's ``(times, wait, period)`` as :meth:`take_batch` returns it."""
        doc = self._key(key)
        for _ in range(RETRIES):
            found = self.store.read_versioned(doc)
            now = self._clock()
            start, events = self._live(found[0] if found else None, now)
            room = min(sum(counts), self.limit - len(events))
            if room <= 0:
                for _ in counts:
                    metrics.budget_wait(self.name)
                return [([], max(self._back(start, events) - now, 0.01), None)] * len(counts)
            if self.kind == "fixed" and start is None:
                start = now  # this admission opens a period
            # A clock behind the one that opened the period stamps its admissions with the
            # period's start, so they can never fall before it.
            when = max(now, start) if self.kind == "fixed" else now
            events = sorted([*events, *[when] * room])  # another clock may run behind
            body = {"events": events} if start is None else {"start": start, "events": events}
            data = json.dumps(body, separators=(",", ":")).encode()
            if found is None:
                done = self.store.create(doc, data)
            else:
                done = self.store.replace(doc, data, found[1])
            if done:
                answers, left = [], room
                wait = max(self._back(start, events) - now, 0.01)
                for count in counts:
                    got = min(count, left)
                    left -= got
                    if got < count:
                        metrics.budget_wait(self.name)
                    answers.append(([when] * got, 0.0 if got == count else wait,
                                    start if got else None))
                return answers
            metrics.budget_conflict(self.name)
            time.sleep(random.uniform(0.002, 0.02))
        for _ in counts:
            metrics.budget_wait(self.name)
        return [([], CONTENDED_WAIT, None)] * len(counts)

    def state(self, key: str) -> tuple[int, float, float]:
        """``(remaining, next_free, all_free)``: epoch seconds when the next event is
        admitted again, and when the whole budget is back."""
        now = self._clock()
        start, events = self._live(self.store.read(self._key(key)), now)
        if not events:
            return self.limit, now, now
        next_free = self._back(start, events) if len(events) >= self.limit else now
        all_free = start + self.window if start is not None else events[-1] + self.window
        return self.limit - len(events), next_free, all_free
