"""The mount daemon: wires the server connection, caches, model and FUSE adapter together.

:meth:`Daemon.prepare` does everything that can fail with a clear reason before anything is
mounted: lock the cache dir, start the embedded server if no server is configured, check the
token, and load or refresh the listing.  :meth:`Daemon.serve` mounts and blocks until the
filesystem is unmounted.

Threading: background threads (the listing refresher, read-ahead workers) start in FUSE's
``init`` and stop in ``destroy``; the embedded server is a child process stopped by PID.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import signal
import socket
import stat
import subprocess
import threading
import time
from urllib.parse import urlsplit

from ..cache.blobcache import BlobCache
from ..cache.cachedb import CacheDB
from ..cache.catalog import Catalog
from ..cache.journal import Journal
from ..config import MountConfig, ensure_runtime_dir, private_dir
from ..errors import ApiError, ApiUnauthorized, Busy, ConfigError, PermissionDenied, Unreachable
from ..model.pending import PendingBundles
from ..model.tree import Tree
from ..readyfile import NotReady, start_server, stop
from ..remote.bulk_import import BulkImportClient
from ..remote.client import DSSClient, RetryPolicy
from ..remote.s3 import S3
from ..retry import BACKGROUND
from ..sync.drs_queue import DrsQueue
from ..sync.staging import LocalStager, S3Stager, Stager
from ..sync.syncer import Syncer
from ..tokenfile import first_token
from .records import MountRecord
from .refusals import Refusals

log = logging.getLogger("hcafs.daemon")

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the embedded server's child process
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


READ_AHEAD_KB = 1024
# Idle FUSE worker threads kept alive.  libfuse 3.14 otherwise ends and starts threads
# under load (slow writes, and each new thread needs its own SQLite connection).
MAX_IDLE_THREADS = 32
WATCH_INTERVAL = 1.0  # seconds between checks that the embedded server still runs
MAX_RESTART_DELAY = 30.0  # the longest wait between attempts to start it again
PORT_FILE = "embedded-port"  # in the data dir: the embedded server's port at the last mount
LISTEN_BACKLOG = 1024  # connections the kernel queues on the mount's socket (also mid-restart)


def _widen_readahead(mountpoint: str) -> None:
    """Let the kernel send 1 MiB read requests instead of 128 KiB ones.

    The FUSE connection asks for 1 MiB of read-ahead, but the kernel caps it at the mount's
    ``read_ahead_kb`` (128 by default), which only root can raise.  Runs in its own thread:
    the stat below is answered by the FUSE loop that is starting up.
    """
    try:
        device = os.stat(mountpoint).st_dev
        path = f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb"
        with open(path, "w") as handle:
            handle.write(str(READ_AHEAD_KB))
        log.debug("read_ahead_kb of %s set to %d", mountpoint, READ_AHEAD_KB)
    except OSError as exc:
        log.debug("kept the default read-ahead (%s)", exc)


class EmbeddedServer:
    """``hcafs serve`` on 127.0.0.1, owned by the mount daemon.

    :meth:`watch` starts a thread that starts the server again, on the same port (so every
    URL the mount holds stays good), whenever it exits before :meth:`stop`.  That thread and
    :meth:`stop` are the only ones to change ``process``, under ``_lock``.
    """

    def __init__(self, data_dir: str, args: list[str] | None = None):
        self.data_dir = data_dir
        self.args = args or []
        self.staging_root = os.path.join(data_dir, "staging")
        self.process: subprocess.Popen | None = None
        self.url = ""
        self.port = 0
        self.tokens_file = os.path.join(data_dir, "tokens.json")
        self.port_file = os.path.join(data_dir, PORT_FILE)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self._listener: socket.socket | None = None  # the mount's, lent to each server

    def start(self, timeout: float = 30.0) -> None:
        """Start the server on the mount's listening socket.  The socket is made at the
        first start, on the port the server had at the last mount if that is free (so
        ``drs://127.0.0.1:PORT/...`` URIs and URLs written down then still name it), and
        the daemon keeps it open until :meth:`stop`: while the server restarts, no other
        process can take the port and be sent the mount's token."""
        if self._listener is None:
            self._listener = self._bind()
            self.port = self._listener.getsockname()[1]
            self._start(timeout)  # it makes the data dir
            _remember_port(self.port_file, self.port)
            return
        self._start(timeout)

    def _bind(self) -> socket.socket:
        last = _remembered_port(self.port_file)
        for port in ((last, 0) if last else (0,)):
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                listener.bind(("127.0.0.1", port))
            except OSError as exc:
                listener.close()
                if port == 0:
                    raise ConfigError(f"the embedded server cannot listen on 127.0.0.1: "
                                      f"{exc.strerror}") from exc
                log.warning("port %d, the embedded server's port at the last mount, is in "
                            "use by another process (%s); the server starts on another port, "
                            "and URLs naming the old one (such as drs:// URIs of its files) "
                            "now reach that process, not this server", port, exc.strerror)
                continue
            listener.listen(LISTEN_BACKLOG)
            return listener
        raise AssertionError("unreachable: port 0 binds or raises")

    def _start(self, timeout: float) -> None:
        os.makedirs(self.staging_root, exist_ok=True)
        ready = os.path.join(self.data_dir, f"ready-{os.getpid()}.json")
        log_path = os.path.join(self.data_dir, "server.log")
        fd = self._listener.fileno()
        try:
            self.process, info = start_server(
                ["--host", "127.0.0.1", "--listen-fd", str(fd), "--data-dir", self.data_dir,
                 "--staging-root", self.staging_root, *self.args], ready, log_path=log_path,
                timeout=timeout, preexec_fn=_die_with_parent, pass_fds=(fd,))
        except NotReady as exc:
            raise ConfigError(f"the embedded server did not start; see {log_path}") from exc
        self.url = info["url"]
        self.port = urlsplit(self.url).port or 0
        os.unlink(ready)

    def watch(self) -> None:
        self._watcher = threading.Thread(target=self._watch, name="embedded-server",
                                         daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        while not self._stopping.wait(WATCH_INTERVAL):
            process = self.process
            if process is None or process.poll() is None:
                continue
            log.warning("the embedded server (pid %d) exited (%s); starting it again at %s",
                        process.pid, _exit_reason(process.returncode), self.url)
            attempt = 0
            while not self._stopping.is_set():
                with self._lock:
                    if self._stopping.is_set():
                        return
                    try:
                        self.start()
                        log.info("the embedded server is back at %s (pid %d)", self.url,
                                 self.process.pid)
                        break
                    except ConfigError as exc:
                        attempt += 1
                        delay = min(MAX_RESTART_DELAY, BACKGROUND.backoff(attempt))
                        log.error("%s; trying again in %.0fs", exc, delay)
                self._stopping.wait(delay)

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            if self.process is not None:
                stop(self.process)
            self.process = None
            if self._listener is not None:
                self._listener.close()
                self._listener = None
        if self._watcher is not None:
            self._watcher.join(timeout=5)


def _remembered_port(path: str) -> int:
    """The port written by :func:`_remember_port`, or 0 (said in the log when the file is
    there but holds no usable port).  Read as a small regular file only, without blocking:
    a FIFO, a device or a link planted there is passed over."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return 0
    except OSError as exc:
        log.warning("the embedded server's last port is not read from %s (%s); it starts "
                    "on any free port", path, exc.strerror)
        return 0
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            text = None
        else:
            text = os.read(fd, 16).decode("ascii", "replace")
    finally:
        os.close(fd)
    port = int(text.strip()) if text is not None and text.strip().isdigit() else 0
    if not 1024 <= port <= 65535:
        log.warning("%s holds no port the embedded server can use (a number from 1024 to "
                    "65535); it starts on any free port", path)
        return 0
    return port


def _remember_port(path: str, port: int) -> None:
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        with open(temporary, "w", encoding="ascii") as handle:
            handle.write(f"{port}\n")
        os.replace(temporary, path)
    except OSError as exc:  # the next mount takes any port: nothing is lost
        log.warning("cannot record the embedded server's port in %s: %s", path, exc)


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


class Daemon:
    def __init__(self, config: MountConfig):
        self.config = config
        self.server: EmbeddedServer | None = None
        self._lock_fd: int | None = None
        self.record: MountRecord | None = None

    # ------------------------------------------------------------ before mounting

    def prepare(self) -> None:
        config = self.config
        private_dir(config.cache_dir, "the cache dir")
        ensure_runtime_dir()
        self._lock_cache_dir()
        token = config.token
        if config.embedded:
            self.server = EmbeddedServer(config.data_dir, self._server_args())
            self.server.start()
            url = self.server.url
            token = token or first_token(self.server.tokens_file)
            log.info("started the embedded server at %s (data in %s)", url, config.data_dir)
        else:
            url = config.dss_url
        self.url = url
        verify = not config.insecure_tls
        self.client = DSSClient(url, token=token, replica=config.replica, verify=verify)
        self.db = CacheDB(os.path.join(config.cache_dir, "hcafs.db"))
        self._check_cache_owner("embedded" if config.embedded else url)
        quick = DSSClient(url, token=token, replica=config.replica, verify=verify,
                          retry=RetryPolicy(attempts=2, base_delay=0.2))
        self.catalog = Catalog(self.db, self.client, config.refresh_ttl, quick=quick,
                               negative_ttl=config.entry_timeout)
        self._first_contact(quick)
        self.blobs = BlobCache(os.path.join(config.cache_dir, "blobs"), self.db,
                               config.cache_size, streams=config.read_streams,
                               max_readahead=config.max_readahead, chunk=config.read_chunk,
                               min_free=config.cache_min_free)
        self.journal = Journal(self.db)
        self.tree = Tree(self.catalog, self.blobs, None, config.max_readahead,
                         config.delete_reason)
        self.syncer = None
        self.drs_queue = None
        stager = self._stager()
        if stager is not None:
            self.tree.pending = PendingBundles(self.journal,
                                               os.path.join(config.cache_dir, "pending"),
                                               self.catalog, self.blobs, self.tree.fetcher,
                                               complete_sums=stager.complete_checksums)
            self.drs_queue = self._drs_queue(token, verify)
            self.tree.pending.drs_queue = self.drs_queue
            self.syncer = Syncer(self.journal, self.tree.pending, stager, self.client,
                                 self.catalog, self.blobs, delay=config.write_back_delay,
                                 workers=config.upload_workers,
                                 creator_uid=config.creator_uid,
                                 auto_commit=config.auto_commit,
                                 on_commit=lambda name, fqid: self.tree.forget_name(
                                     f"/bundles/{name}"))
        elif self.journal.summary()["pending_files"]:
            raise ConfigError(f"{config.cache_dir} holds files not yet synced; mount it with "
                              "the --staging it was written with")

    def _server_args(self) -> list[str]:
        """The embedded server follows the mount's import settings."""
        config = self.config
        args = ["--import-rate-limit", str(config.import_rate_limit),
                "--import-rate-window", str(config.import_rate_window),
                # a personal server on loopback: its DRS peers may be too
                "--drs-allow-network", "127.0.0.0/8", "--drs-allow-network", "::1/128"]
        if config.drs_resolver_file:
            args += ["--drs-resolver", config.drs_resolver_file]
        if config.drs_allow_http:
            args.append("--drs-allow-http")
        return args

    def _drs_queue(self, token: str | None, verify: bool) -> DrsQueue:
        config = self.config
        api = BulkImportClient(config.import_url or self.url, config.import_token or token,
                               verify=verify)
        return DrsQueue(self.journal, api, self.client,
                        limit=config.import_rate_limit, window=config.import_rate_window,
                        default_conflict=config.import_conflict, resolver=config.drs_resolver,
                        on_change=self._import_applied)

    def _import_applied(self, bundle: str, drs_paths: list[str]) -> None:
        """Imports' results were applied in ``bundle``: their ``.drs`` files (at
        ``drs_paths``) are gone or marked, and new names may be there.  The kernel forgets
        what it cached of both (else a ``stat`` of a ``.drs`` file would go on working for
        the entry timeout), and the sync engine looks at the bundle."""
        self.syncer.wake()
        folders = {""}
        for path in drs_paths:
            self.tree.invalidate(f"/bundles/{bundle}/{path}")
            # The entry too: else an `echo URI > NAME.drs` made again within the entry
            # timeout opens the kernel's stale entry, and gets ENOENT.
            self.tree.forget_name(f"/bundles/{bundle}/{path}")
            folders.add(path.rpartition("/")[0])  # where the imported names appear
        for folder in sorted(folders):
            self.tree.invalidate(f"/bundles/{bundle}/{folder}".rstrip("/"))

    def _stager(self) -> Stager | None:
        if self.config.staging:
            return S3Stager(self.config.staging, S3(self.config.s3_endpoint, sign_payload=False))
        if self.server is not None:
            return LocalStager(self.server.staging_root)
        return None

    def _lock_cache_dir(self) -> None:
        path = os.path.join(self.config.cache_dir, "lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            raise Busy(f"cache dir {self.config.cache_dir} is in use by another hcafs "
                       "mount") from exc
        self._lock_fd = fd

    def _check_cache_owner(self, owner: str) -> None:
        known = self.db.get_meta("server")
        if known is None:
            self.db.set_meta("server", owner)
        elif known != owner:
            raise ConfigError(f"cache dir {self.config.cache_dir} belongs to {known}; "
                              "use another --cache-dir for this server")

    def _first_contact(self, quick: DSSClient) -> None:
        """Check the token and load the listing; fail only if nothing usable is cached."""
        try:
            if quick.has_token:
                try:
                    quick.request("GET", "/collections", params={"per_page": 10}, auth=True)
                except ApiUnauthorized as exc:
                    raise ConfigError("the server rejected the token (401 "
                                      "Unauthorized); check --token/--token-file") from exc
                except PermissionDenied:
                    pass  # a valid token that may not list collections
            if not self.catalog.complete:
                # The first page now (it proves the server answers); the rest of the
                # listing goes on in the background once mounted.
                self.catalog.refresh(quick, pages=1)
            # A complete listing is served at once and caught up by the refresher.
        except (Unreachable, ApiError) as exc:
            if isinstance(exc, ApiError) and not exc.transient:
                raise
            if not self.catalog.bundle_count() and not self.catalog.refreshed_at:
                raise Unreachable(f"server {self.url} is unreachable and nothing is cached "
                                  f"in {self.config.cache_dir}") from exc
            log.warning("server %s is unreachable; serving the cached listing", self.url)

    # ------------------------------------------------------------ mounted

    def serve(self, ready) -> int:
        from .fuse_ops import FUSE, Operations

        config = self.config
        log_file = config.log_file or os.path.join(config.cache_dir, "hcafs.log")
        self.record = MountRecord(config.mountpoint, os.getpid(), config.cache_dir, log_file,
                                  self.url)

        def on_init() -> None:
            threading.Thread(target=_widen_readahead, args=(config.mountpoint,),
                             name="readahead-kb", daemon=True).start()
            self.catalog.start()
            if self.server is not None:
                self.server.watch()
            if self.syncer is not None:
                self.syncer.start()
            if self.drs_queue is not None:
                self.drs_queue.start()
            self.tree.mounted_at = time.time()
            self.record.save()
            where = f"embedded server {self.url}, data in {config.data_dir}" \
                if config.embedded else self.url
            ready.send(f"OK mounted {where} at {config.mountpoint} "
                       f"(cache {config.cache_dir}, log {log_file})")
            log.info("mounted at %s", config.mountpoint)

        def on_destroy() -> None:
            if self.drs_queue is not None:
                self.drs_queue.stop()
            if self.syncer is not None:
                self.syncer.stop()
                left = self.journal.summary()
                if left["pending_files"] or left["commits_pending"]:
                    log.warning("unmounted with %d files (%d bytes) and %d commits still "
                                "queued; they resume at the next mount of %s",
                                left["pending_files"], left["pending_bytes"],
                                left["commits_pending"], config.cache_dir)
            self.catalog.stop()
            self.blobs.close()

        operations = Operations(self.tree, (config.entry_timeout, config.attr_timeout,
                                            config.negative_timeout), on_init, on_destroy,
                                Refusals(self.db), config.mountpoint, config.kernel_entries)
        self.tree.invalidate = operations.invalidate
        self.tree.forget_name = operations.forget_name
        self.tree.adapter_status = operations.adapter_status
        try:
            FUSE(operations, config.mountpoint, foreground=True, nothreads=False,
                 fsname="hcafs", subtype="hcafs", default_permissions=True,
                 max_idle_threads=MAX_IDLE_THREADS)
        except RuntimeError as exc:
            ready.send(f"ERR 1 mounting {config.mountpoint} failed ({exc}); see {log_file}")
            return 1
        finally:
            self.shutdown()
        log.info("unmounted %s", config.mountpoint)
        return 0

    def shutdown(self) -> None:
        if self.server is not None:
            self.server.stop()
        if self.record is not None:
            self.record.remove()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

