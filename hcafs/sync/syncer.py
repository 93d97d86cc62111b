"""The sync engine: stages and registers pending files, then commits pending bundles.

A file is picked up once it is closed and has not changed for the write-back delay.  Its
uuid and version are fixed in the journal before the first attempt, so every retry (after
a 5xx, a reset, a timeout, or a crash and remount) registers the same uuid and version and
the server answers 200 to the repeat.  Failures are retried with capped backoff
(:data:`~hcafs.retry.BACKGROUND`) and never drop anything: the bytes stay in the cache dir
until the server has them.

A commit waits until every file of the bundle is registered, then calls put-bundle with a
version chosen once (so a repeat is a 200), or, for a working copy, patch-bundle.  PATCH
always makes a new version, so before repeating one the engine looks for the version its
earlier attempt may already have made, and adopts it instead of making a second one.

Threading: one scheduler thread picks work and runs commits; a pool of upload workers each
own one file at a time.  Workers change only their file's journal row, through guarded
transactions (see ``journal.py``); the scheduler alone changes bundle rows.
"""

from __future__ import annotations

import heapq
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from ..cache.blobcache import BlobCache
from ..cache.catalog import Catalog
from ..cache.journal import (
    COMMIT,
    DIR,
    DRS,
    ERROR,
    LOCAL,
    OPEN,
    REGISTERING,
    SYNCED,
    BundleRow,
    FileRow,
    Journal,
)
from ..checksums import Checksums
from ..errors import ApiError, HcafsError, NotFound, RemoteError, VersionConflict
from ..model.pending import PendingBundles
from ..remote.client import DSSClient, FileInfo
from ..retry import BACKGROUND
from .staging import Stager, content_type

log = logging.getLogger(__name__)

TICK = 0.5
COPY_POLL = 0.5  # seconds between looks at a background copy, at most
COPY_WAIT = 3600.0


class SyncStats:
    """Where the sync engine's time went, for the log and the benchmarks: seconds summed
    over files per stage (``stage``, ``register``, ``copy`` for background copies the
    engine waited for, ``commit``), bytes staged, files staged with the checksums computed
    as they were written and files that needed a checksum pass of their own, and failed
    attempts by cause."""

    def __init__(self):
        self._lock = threading.Lock()
        self.seconds: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.staged_bytes = 0
        self.sums_written = 0  # staged with the checksums computed while written
        self.sums_passes = 0  # staged with a checksum pass of their own
        self.retries: dict[str, int] = {}

    def add(self, stage: str, seconds: float, size: int = 0) -> None:
        with self._lock:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds
            self.counts[stage] = self.counts.get(stage, 0) + 1
            self.staged_bytes += size

    def summed(self, while_written: bool) -> None:
        with self._lock:
            if while_written:
                self.sums_written += 1
            else:
                self.sums_passes += 1

    def retry(self, cause: str) -> None:
        with self._lock:
            self.retries[cause] = self.retries.get(cause, 0) + 1

    def line(self, unconfirmed: int = 0) -> str:
        with self._lock:
            stages = " ".join(f"{name}={self.seconds[name]:.2f}s/{self.counts[name]}"
                              for name in sorted(self.seconds))
            retries = ",".join(f"{cause}:{n}" for cause, n in sorted(self.retries.items()))
            return (f"{stages} staged_bytes={self.staged_bytes} "
                    f"sums_written={self.sums_written} sums_passes={self.sums_passes} "
                    f"retries={retries or 'none'} unconfirmed_heads={unconfirmed}")


class Syncer:
    def __init__(self, journal: Journal, pending: PendingBundles, stager: Stager,
                 client: DSSClient, catalog: Catalog, blobs: BlobCache, *, delay: float,
                 workers: int, creator_uid: int, auto_commit: float | None,
                 on_commit=lambda name, fqid: None):
        self.journal = journal
        self.pending = pending
        self.stager = stager
        self.client = client
        self.catalog = catalog
        self.blobs = blobs
        self.delay = delay
        self.creator_uid = creator_uid
        self.auto_commit = auto_commit
        self.on_commit = on_commit
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="upload")
        self._inflight: set[int] = set()  # queued or being synced
        self._queue: list[tuple[int, int, FileRow]] = []  # heap: biggest file first
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._commit_retry: dict[str, float] = {}  # bundle name -> next attempt (epoch)
        self._commit_attempts: dict[str, int] = {}
        self._held_open: set[str] = set()  # bundles whose wait for a writer was logged
        self.stats = SyncStats()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sync", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._schedule()
                self._commits()
                self.stager.flush()
            except Exception:
                log.exception("sync scheduler error")
            self._wake.wait(TICK)
            self._wake.clear()

    # ------------------------------------------------------------ files

    def _schedule(self) -> None:
        """Queue the due files.  Each pool task takes the biggest file queued when it
        starts, not the one it was submitted with: a big file closed late (or made due
        by a commit) goes ahead of the small ones already waiting, so its long stage and
        copy overlap theirs instead of running alone at the end."""
        due = [row for row in self.journal.due(time.time(), self.delay)
               if not self.pending.is_open_for_write(row.id)]
        queued = 0
        with self._lock:  # all queued before any task starts: one order, by size
            for row in due:
                if row.id not in self._inflight:
                    self._inflight.add(row.id)
                    heapq.heappush(self._queue, (-row.size, row.id, row))
                    queued += 1
        for _ in range(queued):
            self._pool.submit(self._next)

    def _next(self) -> None:
        with self._lock:
            row = heapq.heappop(self._queue)[2]
        self._sync(row)

    def _sync(self, claimed) -> None:
        # The row was read before this worker claimed it; another worker may have finished
        # the file since.  Work from the journal as it is now.
        row = claimed
        try:
            row = self.journal.file_by_id(claimed.id)
            if row is None or (row.state == SYNCED and
                               row.synced_generation == row.generation):
                return  # removed, or synced by another worker meanwhile
            self._sync_file(row)
        except RemoteError as exc:
            self.stats.retry(type(exc).__name__)
            delay = self.journal.failed(row.id, row.generation, str(exc))
            log.warning("sync of %s/%s failed (retry in %.0fs): %s", row.bundle, row.path,
                        delay, exc)
        except VersionConflict as exc:
            self.stats.retry(type(exc).__name__)
            delay = self.journal.failed(row.id, row.generation, str(exc), new_version=True)
            log.error("sync of %s/%s failed (retry in %.0fs as a new version): %s",
                      row.bundle, row.path, delay, exc)
        except (HcafsError, OSError) as exc:
            self.stats.retry(type(exc).__name__)
            delay = self.journal.failed(row.id, row.generation, str(exc))
            log.error("sync of %s/%s failed (retry in %.0fs): %s", row.bundle, row.path,
                      delay, exc)
        except Exception as exc:
            self.stats.retry("internal")
            self.journal.failed(row.id, row.generation, f"internal error: {exc}")
            log.exception("sync of %s/%s crashed", row.bundle, row.path)
        finally:
            with self._lock:
                self._inflight.discard(claimed.id)
                drained = not self._inflight
            if drained:  # a commit may be ready now; otherwise the next tick looks
                self._wake.set()

    def _registered_before(self, row) -> bool:
        """True if an earlier attempt registered this generation although its answer was
        lost (a reset, a server restart): the row is then synced from the server's answer
        (see :meth:`_confirm`) and the file is not staged again."""
        if row.state != ERROR or not (row.file_uuid and row.file_version and row.crc32c):
            return False
        try:
            info = self.client.head_file(row.file_uuid, row.file_version)
        except NotFound:
            return False
        except ApiError as exc:
            if exc.status != 422:
                raise
            # The server's copy of it failed (its record says why): a new put-file under
            # the same version replaces that record, so the file is staged and put again.
            log.info("%s/%s: the server's copy of %s.%s failed (%s); staging it again",
                     row.bundle, row.path, row.file_uuid, row.file_version, exc)
            return False
        self._confirm(row, row.file_uuid, row.file_version, _staged_sums(row), info,
                      " (registered by an earlier attempt)")
        return True

    def _confirm(self, row, file_uuid: str, version: str, sums: Checksums, info,
                 how: str = "") -> None:
        """The one check of the server's file (``info``: a HEAD's answer, or what an
        hcafs server's put-file answer says of it) against what was written (``sums``):
        the row is synced with the server's four checksums, or, if the server holds other
        bytes under that version (its staged copy was changed before the server took it
        in), :class:`VersionConflict`, and the next attempt stages under a new version.
        Either way the staged copy is done with."""
        wrong = sums.mismatches(info)
        self.stager.discard(file_uuid, version, row.path)
        if wrong:
            raise VersionConflict(
                f"the server holds another {', '.join(wrong)} for {row.path} as "
                f"{file_uuid}.{version} than was written: "
                + ", ".join(f"{name} {getattr(info, name)}, not {getattr(sums, name)}"
                            for name in wrong))
        if self.journal.registered(row.id, row.generation, info):
            log.info("synced %s/%s as %s.%s%s", row.bundle, row.path, file_uuid, version, how)

    def _sync_file(self, row) -> None:
        if self._registered_before(row):
            return
        if row.state == REGISTERING and row.sha256 and row.file_version:
            # Staged with all four checksums by an earlier attempt: registered from there.
            # (A partial row, crc32c only, is staged again: its staged copy was not
            # fsynced, see staging.py.)
            file_uuid, version = row.file_uuid, row.file_version
            source = self.stager.source_url(file_uuid, version, row.path)
            sums = _staged_sums(row)
        else:
            ids = self.journal.begin_staging(row.id, row.generation)
            if ids is None:
                return  # written again meanwhile: the new generation will come round
            file_uuid, version = ids
            sent_at = [0.0]

            def progress(sent: int) -> None:
                now = time.monotonic()
                if now - sent_at[0] > 0.5:
                    sent_at[0] = now
                    self.journal.progress(row.id, sent)

            known: list = []  # what the write's checksums were, once the stager asked

            def written(fd: int):
                known.append(self.pending.written_checksums(row.id, fd))
                return known[-1]

            started = time.monotonic()
            source, sums = self.stager.stage(
                self.pending.data_path(row.id), file_uuid, version, row.path, progress,
                known=written)
            self.stats.add("stage", time.monotonic() - started, sums.size)
            self.stats.summed(bool(known) and known[-1] == sums)
            if not self.journal.staged(row.id, row.generation, sums, content_type(row.path)):
                # Written again while staged: the new generation takes a new version.
                self.stager.discard(file_uuid, version, row.path)
                return
            self.journal.progress(row.id, sums.size)
        started = time.monotonic()
        try:
            status, answer = self.client.put_file(file_uuid, version, source, self.creator_uid)
        except ApiError as exc:
            if exc.status != 409 or exc.code != "file_already_exists":
                raise
            # The version exists with other checksums than this source's tags: an earlier
            # attempt's answer was lost after the server took in a changed staged copy.
            try:
                info = self.client.head_file(file_uuid, version)
            except NotFound:
                raise RemoteError(
                    f"put-file of {row.path} as {file_uuid}.{version} was refused ({exc}): "
                    "another copy of that version is still running on the server; "
                    "trying again once it ends") from exc
            self._confirm(row, file_uuid, version, sums, info)
            return
        registered = time.monotonic()
        self.stats.add("register", registered - started)
        if status == 202:
            info = self._wait_copied(file_uuid, version)
            self.stats.add("copy", time.monotonic() - registered)
        else:  # an hcafs server's answer holds what a HEAD would say
            info = FileInfo.from_answer(file_uuid, version, answer) or \
                self.client.head_file(file_uuid, version)
        self._confirm(row, file_uuid, version, sums, info)

    def _wait_copied(self, file_uuid: str, version: str):
        """The file once the server's background copy of it is done: looked for often at
        first, then every :data:`COPY_POLL` seconds."""
        return self.client.wait_file(file_uuid, version, timeout=COPY_WAIT, interval=0.1,
                                     longest=COPY_POLL)

    # ------------------------------------------------------------ commits

    def _commits(self) -> None:
        now = time.time()
        for bundle in self.journal.bundles():
            if bundle.state == OPEN and self.auto_commit and bundle.changed and \
                    now - bundle.changed >= self.auto_commit and self._ready(bundle) and \
                    any(f.kind != DIR for f in self.journal.files(bundle.name)):
                log.info("auto-committing %s after %.0fs idle", bundle.name, self.auto_commit)
                self.journal.request_commit(bundle.name)
                bundle = self.journal.bundle(bundle.name)
            if bundle.state != COMMIT or self._commit_retry.get(bundle.name, 0) > now:
                continue
            failed = [f for f in self.journal.files(bundle.name)
                      if f.kind == DRS and f.state == ERROR]
            if failed:
                reasons = "; ".join(f"{f.path}: {f.error}" for f in failed[:3])
                self.journal.commit_failed(bundle.name, f"imports failed: {reasons}",
                                           give_up=True)
                continue
            # Sealed: no change to the bundle is taken while its commit is sent, so the
            # file list sent is what the bundle holds when its rows are dropped.
            if not self.pending.seal(bundle.name):
                self._log_held_open(bundle.name)  # the close of that file comes first
                continue
            self._held_open.discard(bundle.name)
            try:
                if self._ready(bundle):
                    self._commit(bundle)
            finally:
                self.pending.unseal(bundle.name)

    def _log_held_open(self, name: str) -> None:
        """Say once per wait why a requested commit is not sent yet."""
        if name in self._held_open:
            return
        open_ = self.pending.open_for_writing(name)
        if not open_:  # closed since the seal was refused: the next pass sends it
            return
        self._held_open.add(name)
        log.info("commit of %s waits: %s %s open for writing; it is sent once %s closed",
                 name, ", ".join(open_[:3]) + (" …" if len(open_) > 3 else ""),
                 "is" if len(open_) == 1 else "are", "it is" if len(open_) == 1 else "they are")

    def _ready(self, bundle: BundleRow) -> bool:
        """Every file of the bundle is registered, every import done, none open for writing."""
        for row in self.journal.files(bundle.name):
            if row.kind == DRS:
                return False
            if row.kind != LOCAL:
                continue
            if row.state != SYNCED or row.synced_generation != row.generation or \
                    self.pending.is_open_for_write(row.id):
                return False
        return True

    def _commit(self, bundle: BundleRow) -> None:
        files = [f for f in self.journal.files(bundle.name) if f.kind != DIR]
        entries = [{"uuid": f.file_uuid, "version": f.file_version, "name": f.path,
                    "indexed": f.is_indexed} for f in files]
        started = time.monotonic()
        try:
            if bundle.base_version is None:
                version = self.journal.commit_version(bundle.name)
                self.client.put_bundle(bundle.uuid, version, entries, self.creator_uid)
            else:
                version = self._patch(bundle, entries)
        except ApiError as exc:
            if exc.transient:
                self._retry_commit(bundle, str(exc))
                return
            self.journal.commit_failed(bundle.name, str(exc), give_up=True)
            log.error("commit of %s refused: %s", bundle.name, exc)
            return
        except RemoteError as exc:
            self._retry_commit(bundle, str(exc))
            return
        self.stats.add("commit", time.monotonic() - started)
        self.stager.flush()  # the staged copies of its files go before the commit is told
        fqid = f"{bundle.uuid}.{version}"
        self.journal.committed(bundle.name, fqid)
        self.catalog.add_bundle(fqid)
        self.on_commit(bundle.name, fqid)
        self._adopt(files)
        self._commit_retry.pop(bundle.name, None)
        self._commit_attempts.pop(bundle.name, None)
        log.info("committed %s as %s (%d files)", bundle.name, fqid, len(files))
        log.info("sync stats: %s", self.stats.line(getattr(self.stager, "unconfirmed", 0)))

    def _retry_commit(self, bundle: BundleRow, reason: str) -> None:
        attempt = self._commit_attempts.get(bundle.name, 0) + 1
        self._commit_attempts[bundle.name] = attempt
        delay = BACKGROUND.backoff(attempt)
        self._commit_retry[bundle.name] = time.time() + delay
        self.journal.commit_failed(bundle.name, reason, give_up=False)
        log.warning("commit of %s failed (retry in %.0fs): %s", bundle.name, delay, reason)

    def _patch(self, bundle: BundleRow, entries: list[dict]) -> str:
        base = self.catalog.manifest(f"{bundle.uuid}.{bundle.base_version}")["files"]
        key = lambda e: (e["name"], e["uuid"], e["version"], bool(e["indexed"]))  # noqa: E731
        wanted = {key(e) for e in entries}
        have = {key(e) for e in base}
        if bundle.patch_sent:
            made = self._find_patched(bundle, wanted)
            if made is not None:
                log.info("commit of %s: adopting %s, made by an earlier attempt",
                         bundle.name, made)
                return made
        add = [e for e in entries if key(e) not in have]
        remove = [{"uuid": e["uuid"], "version": e["version"], "name": e["name"],
                   "indexed": bool(e["indexed"])} for e in base if key(e) not in wanted]
        self.journal.mark_patch_sent(bundle.name)
        answer = self.client.patch_bundle(bundle.uuid, bundle.base_version, add, remove)
        return answer["version"]

    def _find_patched(self, bundle: BundleRow, wanted: set) -> str | None:
        for uuid, version in self.client.iter_bundles(prefix=bundle.uuid):
            if uuid != bundle.uuid or version <= bundle.base_version:
                continue
            files = self.client.get_bundle(uuid, version)["files"]
            if {(f["name"], f["uuid"], f["version"], bool(f["indexed"])) for f in files} \
                    == wanted:
                return version
        return None

    def _adopt(self, files) -> None:
        """Committed bytes move into the content cache instead of being fetched again."""
        for row in files:
            if row.kind != LOCAL or not row.sha256:
                continue
            path = self.pending.data_path(row.id)
            try:
                self.blobs.adopt(row.sha256, row.size, path)
            except OSError as exc:
                log.debug("could not adopt %s: %s", path, exc)
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass

    # ------------------------------------------------------------ draining

    def busy(self) -> bool:
        summary = self.journal.summary()
        return bool(summary["pending_files"] or summary["commits_pending"])


def _staged_sums(row: FileRow) -> Checksums:
    """The checksums staging recorded for the row (a partial set: crc32c and size only)."""
    return Checksums(sha256=row.sha256 or "", sha1=row.sha1 or "", crc32c=row.crc32c or "",
                     s3_etag=row.s3_etag or "", size=row.size)
