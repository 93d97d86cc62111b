"""``hcafs serve``: a DSS-compatible server (see docs/server.md)."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from ..config import ServeConfig, load_resolver
from ..remote.s3 import S3
from .app import App
from .auth import Tokens, create_tokens_file
from .copier import Copier
from .credentials import Credentials
from .drs import DrsObjects, DrsReader, Resolver
from .dss import DSS
from .egress import Egress, EgressPolicy
from .imports import Importer, ImportLimits
from .passports import DrsGuard, PassportCheck
from .store import LocalStore, S3Store, Store

log = logging.getLogger("hcafs.server")


class _QuietHandler(WSGIRequestHandler):
    """werkzeug's handler without its own access log (the app logs every request)."""

    def log_request(self, code="-", size="-") -> None:
        pass


@dataclass
class Server:
    """A running server: its URL, its HTTP server and what it owns."""

    config: ServeConfig
    http: BaseWSGIServer
    app: App
    copier: Copier
    importer: Importer
    tokens_file: str
    created_token: bool

    @property
    def url(self) -> str:
        scheme = "https" if self.config.tls_cert else "http"
        host = self.config.host if ":" not in self.config.host else f"[{self.config.host}]"
        return f"{scheme}://{host}:{self.http.server_port}"

    def serve_forever(self) -> None:
        try:
            self.http.serve_forever(poll_interval=0.2)
        finally:
            self.http.server_close()
            self.importer.close()
            self.copier.close()

    def start_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="dss-server", daemon=True)
        thread.start()
        return thread

    def shutdown(self) -> None:
        self.http.shutdown()


def build(config: ServeConfig) -> Server:
    """Open the store, load the tokens and bind the socket (nothing is served yet)."""
    config.validate()
    os.makedirs(config.data_dir, exist_ok=True)
    s3 = S3(config.s3_endpoint)
    store: Store
    if config.store_url:
        store = S3Store(config.store_url, s3)
        store.check()
    else:
        store = LocalStore(os.path.join(config.data_dir, "store"))
    tokens_file = config.resolved_tokens_file
    created = False
    if not os.path.exists(tokens_file):
        create_tokens_file(tokens_file)
        created = True
    tokens = Tokens(tokens_file)
    copier = Copier(store, s3, config.staging_root, config.async_threshold,
                    config.copy_workers)
    egress = Egress(EgressPolicy(config.drs_allow_hosts, config.drs_allow_networks,
                                 config.drs_allow_http))
    reader = DrsReader(Resolver(load_resolver(config.drs_resolver)), egress)
    limits = ImportLimits(config.import_rate_limit, config.import_rate_window,
                          config.import_request_limit, config.import_request_window)
    importer = Importer(store, reader, limits, os.path.join(config.data_dir, "import-spool"),
                        credentials=Credentials.load(config.drs_credentials))
    dss = DSS(store, copier)
    passports = PassportCheck(config.drs_passport_jwks, config.drs_passport_issuer) \
        if config.drs_auth == "passport" else None
    guard = DrsGuard(config.drs_auth, tokens, passports, config.drs_access_ttl)
    app = App(dss, tokens, importer,
              DrsObjects(dss, config.drs_max_bulk, config.drs_bulk, guard))
    ssl_context = (config.tls_cert, config.tls_key) if config.tls_cert else None
    http = make_server(config.host, config.port, app, threaded=True,
                       request_handler=_QuietHandler, ssl_context=ssl_context)
    http.daemon_threads = True
    resumed = copier.resume()
    if resumed:
        log.info("resumed %d asynchronous copies", resumed)
    resumed = importer.start()
    if resumed:
        log.info("resumed %d DRS import jobs", resumed)
    return Server(config, http, app, copier, importer, tokens_file, created)


def run(config: ServeConfig) -> int:
    """``hcafs serve``: build, announce, serve until SIGTERM or SIGINT."""
    server = build(config)
    print(f"hcafs serve: listening on {server.url}", file=sys.stderr)
    print(f"hcafs serve: data in {server.app.dss.store.describe()}", file=sys.stderr)
    if server.created_token:
        print(f"hcafs serve: created a local admin token in {server.tokens_file}",
              file=sys.stderr)
    if config.ready_file:
        tmp = config.ready_file + ".tmp"
        with open(tmp, "w") as handle:
            json.dump({"url": server.url, "pid": os.getpid(),
                       "tokens_file": server.tokens_file}, handle)
        os.replace(tmp, config.ready_file)

    def stop(signum, frame):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.serve_forever()
    print("hcafs serve: stopped", file=sys.stderr)
    return 0
