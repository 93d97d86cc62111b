"""``hcafs serve``: a DSS-compatible server (see docs/server.md).

The HTTP front is granian (Rust, hyper): it parses requests, runs TLS handshakes and keeps
idle connections in its event loop, so a silent or slow client costs a socket, never a
Python thread.  This module is the thin adapter around it:

* :func:`prepare` checks everything that can be wrong (options, store, tokens file) before
  anything listens, so a bad start is a one-line error and a non-zero exit;
* :func:`_listen` binds the socket itself, so ``--port 0`` names its real port at once;
* :class:`_Front` is granian's process supervisor, given that socket; it runs in the
  ``hcafs serve`` process, handles SIGTERM and SIGINT, and forks the worker processes;
* :func:`_worker_app` runs in each worker after the fork: it builds the application and its
  background engines (asynchronous copies, DRS imports) there, once per process, stops them
  when the worker exits, and writes ``--ready-file`` once the worker can answer.

Workers share nothing a client can observe: every record, claim, lease and budget is in the
store, so ``--workers N`` on one data dir behaves as N servers on one bucket
(docs/server.md#running-several-servers).  Background work is claimed with a lease
(:mod:`.leases`); a :class:`Scanner` in every worker takes over expired ones.

Threading: each worker answers requests on at most ``--threads`` threads and keeps at most
``--max-connections`` connections; the engines own their own threads (see copier.py and
imports.py).  The supervisor process runs no application code.
"""

from __future__ import annotations

import ctypes
import json
import logging
import multiprocessing.util
import os
import shutil
import signal
import socket
import sys
import threading
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from granian._granian import SocketHolder
from granian.constants import HTTPModes, Interfaces, SSLProtocols
from granian.http import HTTP1Settings
from granian.server.mp import MPServer

from ..config import ServeConfig, load_resolver
from ..errors import ConfigError, HcafsError
from ..remote.s3 import S3
from . import metrics
from .app import App
from .auth import Tokens, create_tokens_file
from .copier import Copier
from .credentials import Credentials
from .drs import DrsObjects, DrsReader, Resolver
from .dss import DSS
from .egress import Egress, EgressPolicy
from .imports import WAITERS, Importer, ImportLimits
from .leases import Leases
from .passports import DrsGuard, PassportCheck
from .store import LocalStore, S3Store, Store

log = logging.getLogger("hcafs.server")

BACKLOG = 1024
STOP_TIMEOUT = 5  # seconds a worker gets to finish after SIGTERM before it is killed


@dataclass(frozen=True)
class Prepared:
    """What :func:`prepare` found: the tokens file, and whether it had to create it."""

    tokens_file: str
    created_token: bool
    store: str


def _open_store(config: ServeConfig) -> tuple[Store, S3]:
    s3 = S3(config.s3_endpoint)
    if config.store_url:
        store = S3Store(config.store_url, s3)
        store.check()
        return store, s3
    return LocalStore(os.path.join(config.data_dir, "store")), s3


def prepare(config: ServeConfig) -> Prepared:
    """Validate the options, open the store and load the tokens, serving nothing yet."""
    config.validate()
    os.makedirs(config.data_dir, exist_ok=True)
    store, _ = _open_store(config)
    tokens_file = config.resolved_tokens_file
    created = False
    if not os.path.exists(tokens_file):
        create_tokens_file(tokens_file)
        created = True
    Tokens(tokens_file)
    load_resolver(config.drs_resolver)
    _clear_dead(os.path.join(config.data_dir, "import-spool"))
    return Prepared(tokens_file, created, store.describe())


def _clear_dead(folder: str) -> None:
    """Remove the per-process folders (named by PID) in ``folder`` of processes that no
    longer run: another server process may share the data dir."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return
    for name in names:
        if name.isdigit():
            try:
                os.kill(int(name), 0)
                continue
            except ProcessLookupError:
                pass
            except OSError:
                continue
        shutil.rmtree(os.path.join(folder, name), ignore_errors=True)


class Scanner:
    """Every ``period`` seconds, hands the copies and import jobs whose lease expired to
    this process's engines (which claim them; another process may win the claim).

    Threading: one thread, started by :meth:`start`, stopped through an Event."""

    def __init__(self, period: float, copier: Copier, importer: Importer):
        self.period, self.copier, self.importer = period, copier, importer
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._scan, name="lease-scan", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _scan(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.copier.resume()
                self.importer.rescan()
            except HcafsError as exc:  # the store is unreachable: scan again next period
                log.warning("lease scan failed: %s", exc)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


@dataclass
class Engines:
    """The background work of one worker process."""

    copier: Copier
    importer: Importer
    leases: Leases
    scanner: Scanner

    def close(self) -> None:
        self.scanner.close()
        self.importer.close()
        self.copier.close()
        self.leases.close()


def build_app(config: ServeConfig) -> tuple[App, Engines]:
    """The WSGI application and its started engines (call once per process)."""
    store, s3 = _open_store(config)
    tokens = Tokens(config.resolved_tokens_file)
    leases = Leases(store, config.lease_ttl)
    copier = Copier(store, s3, config.staging_root, config.async_threshold,
                    config.copy_workers, leases=leases)
    egress = Egress(EgressPolicy(config.drs_allow_hosts, config.drs_allow_networks,
                                 config.drs_allow_http))
    reader = DrsReader(Resolver(load_resolver(config.drs_resolver)), egress)
    limits = ImportLimits(config.import_rate_limit, config.import_rate_window,
                          config.import_request_limit, config.import_request_window,
                          window_kind=config.import_window_kind)
    spool = os.path.join(config.data_dir, "import-spool", str(os.getpid()))
    importer = Importer(store, reader, limits, spool,
                        credentials=Credentials.load(config.drs_credentials), leases=leases,
                        # a quarter of the request threads at most wait in held polls
                        held_polls=max(1, min(WAITERS, config.threads // 4)),
                        user_names=tokens.user_names)
    dss = DSS(store, copier)
    passports = PassportCheck(config.drs_passport_jwks, config.drs_passport_issuer) \
        if config.drs_auth == "passport" else None
    guard = DrsGuard(config.drs_auth, tokens, passports, config.drs_access_ttl)
    app = App(dss, tokens, importer,
              DrsObjects(dss, config.drs_max_bulk, config.drs_bulk, guard),
              max_json_body=config.max_json_body,
              details=lambda: {"workers": config.workers, "leases_held": leases.held()})
    leases.start()
    resumed = copier.resume()
    if resumed:
        log.info("resumed %d asynchronous copies", resumed)
    resumed = importer.start()
    if resumed:
        log.info("resumed %d DRS import jobs", resumed)
    scanner = Scanner(config.lease_scan, copier, importer)
    scanner.start()
    return app, Engines(copier, importer, leases, scanner)


def url_of(config: ServeConfig, port: int) -> str:
    scheme = "https" if config.tls_cert else "http"
    host = config.host if ":" not in config.host else f"[{config.host}]"
    return f"{scheme}://{host}:{port}"


def _listen(config: ServeConfig) -> socket.socket:
    """The listening socket, bound before the workers start (they inherit it), or the one
    inherited as ``--listen-fd``."""
    if config.listen_fd is not None:
        return _inherited(config.listen_fd)
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit it: an answer's headers and a short body go out at once
    # instead of waiting for the client's delayed ACK (about 30 ms per small blob GET).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((config.host, config.port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {config.host}:{config.port}: "
                          f"{exc.strerror}") from exc
    sock.listen(BACKLOG)
    sock.setblocking(False)
    sock.set_inheritable(True)
    return sock


def _inherited(fd: int) -> socket.socket:
    """``--listen-fd``: a TCP socket already bound and listening, or a clear refusal."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise ConfigError(f"--listen-fd {fd}: not an open socket ({exc.strerror})") from exc
    if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET,
                                                              socket.AF_INET6) or \
            not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.detach()
        raise ConfigError(f"--listen-fd {fd}: not a listening TCP socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    sock.set_inheritable(True)
    return sock


class _Front(MPServer):
    """granian's supervisor, serving a socket bound by :func:`_listen`."""

    def __init__(self, listener: socket.socket, **options):
        self._listener = listener
        super().__init__(**options)

    def _init_shared_socket(self) -> None:
        self._ssp = None
        self._shd = SocketHolder(self._listener.fileno(), False, BACKLOG)
        self._sfd = self._listener.fileno()
        self._sso = self._listener

    def _respawn_workers(self, workers, *args, **kwargs):
        dead = [self.wrks[idx].inner.pid for idx in workers]
        super()._respawn_workers(workers, *args, **kwargs)
        for pid in dead:  # its live gauges (copies, imports, leases in flight) go
            metrics.worker_died(pid)


def _die_with_parent() -> None:
    """A worker dies with its supervisor: a SIGKILL of ``hcafs serve`` stops everything at
    once, as it did when one process served (the supervisor stops workers gracefully on
    SIGTERM and SIGINT itself)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _write_ready(path: str, url: str, pid: int, tokens_file: str) -> None:
    """``{url, pid, tokens_file}``, renamed into place so no reader sees half of it."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as handle:
        json.dump({"url": url, "pid": pid, "tokens_file": tokens_file}, handle)
    os.replace(tmp, path)


def _worker_app(config: ServeConfig, url: str) -> App:
    """Runs in a worker process after the fork: the application, then the ready file."""
    _die_with_parent()
    metrics.enable()
    app, engines = build_app(config)
    multiprocessing.util.Finalize(None, engines.close, exitpriority=10)
    if config.ready_file:
        _write_ready(config.ready_file, url, os.getppid(), config.resolved_tokens_file)
    return app


def _front(config: ServeConfig, listener: socket.socket) -> _Front:
    level = "debug" if log.getEffectiveLevel() <= logging.DEBUG else "error"
    tls = {}
    if config.tls_cert:
        tls = {"ssl_cert": Path(config.tls_cert), "ssl_key": Path(config.tls_key),
               "ssl_protocol_min": SSLProtocols.tls12}
    host, port = listener.getsockname()[:2]
    try:
        return _Front(
            listener, target="hcafs.server", address=host, port=port,
            interface=Interfaces.WSGI, http=HTTPModes.http1, websockets=False,
            workers=config.workers, blocking_threads=config.threads,
            backlog=BACKLOG, backpressure=config.max_connections,
            http1_settings=HTTP1Settings(header_read_timeout=int(config.header_timeout * 1000)),
            log_level=level, log_access=False,
            log_dictconfig={"loggers": {"_granian": {"handlers": [], "propagate": True}}},
            respawn_failed_workers=True, workers_kill_timeout=STOP_TIMEOUT, **tls)
    except Exception as exc:  # granian checks the certificate and key as it starts
        raise ConfigError(f"cannot start the HTTP server: {exc}") from exc


def run(config: ServeConfig) -> int:
    """``hcafs serve``: prepare, bind, announce, serve until SIGTERM or SIGINT."""
    prepared = prepare(config)
    listener = _listen(config)
    url = url_of(config, listener.getsockname()[1])
    front = _front(config, listener)
    if config.metrics_port is not None:
        _clear_dead(os.path.join(config.data_dir, "metrics"))
        metrics.prepare_dir(os.path.join(config.data_dir, "metrics", str(os.getpid())))
        try:
            port = metrics.serve_endpoint(config.metrics_host, config.metrics_port)
        except OSError as exc:
            raise ConfigError(f"cannot serve metrics on {config.metrics_host}:"
                              f"{config.metrics_port}: {exc.strerror}") from exc
        print(f"hcafs serve: metrics on http://{config.metrics_host}:{port}/metrics",
              file=sys.stderr)
    print(f"hcafs serve: listening on {url}", file=sys.stderr)
    print(f"hcafs serve: data in {prepared.store}", file=sys.stderr)
    if prepared.created_token:
        print(f"hcafs serve: created a local admin token in {prepared.tokens_file}",
              file=sys.stderr)
    front.serve(target_loader=partial(_worker_app, config, url), wrap_loader=False)
    print("hcafs serve: stopped", file=sys.stderr)
    return 0
