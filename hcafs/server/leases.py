"""Leases: at most one live process works a piece of background work, whichever process
accepted it.

A lease is a small document in the store, ``leases/{name}``::

    {"holder": "host:pid:random", "token": N, "expires": EPOCH_SECONDS,
     "publish": {"key": ..., "data": ...}}        (the last only while a publish is due;
                                                   a list of them for a batch)

* :meth:`Leases.claim` creates it once (token 1), or takes over one that expired (or was
  released) by a compare-and-swap that raises the token by one, so the token counts the
  holders the work has had: it is the *fencing token*.
* The holder renews it with :meth:`Store.replace` (``If-Match`` on S3, ``flock`` plus
  rename locally) every ``ttl / 3`` seconds; a renewal that fails means another process
  took the work over, and the holder stops.
* :meth:`Leases.publish` is the fenced write.  The holder first swaps its lease record for
  one that names the key and the bytes it is about to create, conditional on the record
  being the one it last wrote; only then is the key created (create-once).  A holder that
  stalled past its TTL (paused, not dead) finds its record replaced, its swap refused, and
  publishes nothing (:class:`LeaseLost`).  A holder that swapped and then died leaves its
  publish in the record, and whoever takes the lease over finishes that create first, so a
  publish that passed the fence always lands, exactly once.  :meth:`Leases.publish_many`
  fences a batch of keys with one swap, the same way.

Expiry compares the wall clocks of the processes: their skew must stay well under the TTL
(NTP keeps it to milliseconds).  A process picks up an expired lease within TTL plus one
scan period of the holder's last renewal (docs/server.md#running-several-servers).

Threading: :meth:`start` starts one renewer thread; every change of a held lease (renew,
publish, release) happens under that lease's own lock, so the fences and creates of
different leases run side by side; the table of held leases has a lock of its own, always
taken after a lease's, never before.  :meth:`close` stops the thread through an Event,
joins it, and releases what is still held.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import HcafsError
from ..processes import pid_alive
from . import metrics
from .store import Staged, Store, content

log = logging.getLogger(__name__)

PREFIX = "leases/"


class LeaseLost(HcafsError):
    """Another process took the work over: this holder must not publish."""


@dataclass
class Lease:
    """A lease this process holds (or held, once :attr:`lost`)."""

    name: str
    token: int
    tag: str = ""
    record: dict = field(default_factory=dict)
    lost: bool = False
    # Its record's swaps (renewals, fences and the creates behind them) go one at a time;
    # other leases' do not wait for them.
    lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)


def _machine() -> str:
    """This kernel and PID namespace: where a holder's PID means the same process."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            boot = handle.read().strip()[:8]
        return f"{socket.gethostname()}/{boot}/{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return ""


MACHINE = _machine()


def holder_id() -> str:
    return f"{MACHINE}:{os.getpid()}:{secrets.token_hex(4)}"


def _dead(holder: str) -> bool:
    """True if ``holder`` was a process of this machine that no longer runs (a restarted
    server need not wait a TTL for its own previous life's leases)."""
    machine, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if not MACHINE or machine != MACHINE or not pid.isdigit():
        return False
    return not pid_alive(int(pid))


def _expired(record: dict) -> bool:
    return record.get("expires", 0) <= time.time() or _dead(record.get("holder", ""))


def gone(holder: str) -> bool:
    """True if ``holder`` (a :func:`holder_id`) is known to run no more: a process of this
    machine that exited.  False when that cannot be told (another machine)."""
    return _dead(holder)


class Leases:
    def __init__(self, store: Store, ttl: float, holder: str | None = None):
        self.store = store
        self.ttl = ttl
        self.holder = holder or holder_id()
        self._held: dict[str, Lease] = {}
        self._lock = threading.Lock()  # _held only; taken after a lease's lock, never before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew_all, name="lease-renew",
                                        daemon=True)

    def _record(self, token: int, publish: dict | None = None) -> dict:
        record = {"holder": self.holder, "token": token, "expires": time.time() + self.ttl}
        if publish is not None:
            record["publish"] = publish
        return record

    # ------------------------------------------------------------ claiming

    def claim(self, name: str) -> Lease | None:
        """The lease on ``name``, if nobody else holds a live one; None if somebody does."""
        key = PREFIX + name
        while True:
            found = self.store.read_versioned(key)
            if found is None:
                record = self._record(1)
                if self.store.create(key, _dumps(record)):
                    return self._hold(name, record, key)
                continue
            earlier, tag = json.loads(found[0]), found[1]
            if not _expired(earlier):
                return None
            if "publish" in earlier:  # the previous holder passed the fence, then died
                publish = earlier["publish"]
                for one in publish if isinstance(publish, list) else [publish]:
                    self.store.create(one["key"], one["data"].encode())
            record = self._record(int(earlier.get("token", 0)) + 1)
            if self.store.replace(key, _dumps(record), tag):
                if earlier.get("holder"):
                    log.info("took over %s from %s (token %d)", name, earlier["holder"],
                             record["token"])
                return self._hold(name, record, key)

    def _hold(self, name: str, record: dict, key: str) -> Lease:
        found = self.store.read_versioned(key)
        tag = found[1] if found is not None and json.loads(found[0]) == record else ""
        lease = Lease(name, record["token"], tag, record)
        if not tag:  # replaced between our write and this read: already lost
            lease.lost = True
            return lease
        with self._lock:
            self._held[name] = lease
            metrics.leases_held(len(self._held))
        return lease

    def live(self, name: str) -> bool:
        """True if some process holds an unexpired lease on ``name``."""
        raw = self.store.read(PREFIX + name)
        return raw is not None and not _expired(json.loads(raw))

    # ------------------------------------------------------------ holding

    def _swap(self, lease: Lease, record: dict) -> bool:
        """Replace the lease record, if it is still the one this holder wrote."""
        if lease.lost:
            return False
        data = _dumps(record)
        if not lease.tag or not self.store.replace(PREFIX + lease.name, data, lease.tag):
            self._lose(lease)
            return False
        found = self.store.read_versioned(PREFIX + lease.name)
        if found is None or found[0] != data:
            self._lose(lease)
            return False
        lease.tag, lease.record = found[1], record
        return True

    def renew(self, lease: Lease) -> bool:
        """Push the expiry on by one TTL; False (and the lease is lost) if it was taken."""
        with lease.lock:
            return self._swap(lease, self._record(lease.token))

    def check(self, lease: Lease) -> None:
        """Raise :class:`LeaseLost` unless this process still holds ``lease``."""
        if not self.renew(lease):
            raise LeaseLost(f"the lease on {lease.name} (token {lease.token}) was taken over")

    def publish(self, lease: Lease, key: str, data: bytes) -> bool:
        """Create ``key`` under the fence: True if created, False if it already existed;
        :class:`LeaseLost` (nothing written) if another process took the lease over."""
        return self.publish_many(lease, [(key, data)])[0]

    def publish_many(self, lease: Lease, items: list[tuple[str, bytes | Staged]],
                     run: Callable[[list[tuple]], list] | None = None,
                     defer: set[str] | None = None) -> list[bool]:
        """Create each ``(key, data)`` under one fence: the lease record names them all,
        so a takeover finishes what a holder that died after the fence began.  The creates
        are one group (:meth:`.store.Store.create_many`; ``run`` makes them in parallel
        on a store that writes one document at a time).  For each key, True if created,
        False if it already existed; :class:`LeaseLost` (nothing written) if another
        process took the lease over.
        ``defer``: the names are durable once the caller settles it
        (:meth:`.store.Store.write`)."""
        named = [{"key": key, "data": content(data).decode()} for key, data in items]
        with lease.lock:
            if not self._swap(lease, self._record(lease.token,
                                                  named if len(named) > 1 else named[0])):
                keys = ", ".join(key for key, _ in items[:3])
                raise LeaseLost(f"publish of {keys}{', …' if len(items) > 3 else ''} "
                                f"refused: the lease on {lease.name} (token {lease.token}) "
                                f"was taken over")
            return self.store.create_many(items, defer, run=run)

    def release(self, lease: Lease) -> None:
        """Give the lease up (the work is done, or handed back): expire it, then drop it."""
        with lease.lock:
            released = self._swap(lease, dict(self._record(lease.token), expires=0))
            lease.lost = True
            with self._lock:
                self._held.pop(lease.name, None)
                metrics.leases_held(len(self._held))
        if released:
            self.store.delete(PREFIX + lease.name)

    def _lose(self, lease: Lease) -> None:
        if not lease.lost:
            log.warning("lost the lease on %s (token %d) to another process", lease.name,
                        lease.token)
        lease.lost = True
        with self._lock:
            self._held.pop(lease.name, None)
            metrics.leases_held(len(self._held))

    def held(self) -> int:
        with self._lock:
            return len(self._held)

    # ------------------------------------------------------------ the renewer

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop renewing, and hand back every lease still held (call once the engines
        stopped working), so another process takes the work up at its next scan."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        with self._lock:
            leases = list(self._held.values())
        for lease in leases:
            try:
                self.release(lease)
            except HcafsError as exc:
                log.warning("cannot hand back the lease on %s: %s", lease.name, exc)

    def _renew_all(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            with self._lock:
                leases = list(self._held.values())
            for lease in leases:
                # A lease whose holder is fencing (its publish may wait for the fetch
                # threads) was just renewed by that fence: pass it this round rather than
                # hold up every other lease's renewal behind it.
                if not lease.lock.acquire(blocking=False):
                    continue
                try:
                    self._swap(lease, self._record(lease.token))
                except HcafsError as exc:  # the store is unreachable: try again next round
                    log.warning("cannot renew the lease on %s: %s", lease.name, exc)
                finally:
                    lease.lock.release()


def _dumps(record: dict) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
