"""Configuration, built once into frozen objects; the environment is read here and only here.

Precedence for every setting: command-line option, then ``HCAFS_*`` environment variable,
then the config file (``$XDG_CONFIG_HOME/hcafs/config.toml``), then the default.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import stat
import tomllib
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

MiB = 1024 * 1024
DEFAULT_PORT = 8440
DEFAULT_ASYNC_THRESHOLD = 64 * MiB
DEFAULT_THREADS = 32
DEFAULT_MAX_CONNECTIONS = 1024
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_LEASE_TTL = 30.0  # seconds; docs/server.md#running-several-servers
DEFAULT_LEASE_SCAN = 10.0
DEFAULT_MAX_JSON_BODY = MiB
WINDOW_KINDS = ("fixed", "sliding")  # of the import budgets (hcafs.server.budgets)


def xdg_dir(kind: str) -> str:
    """``$XDG_<KIND>_HOME/hcafs`` with the XDG defaults (``data``, ``config``, ``cache``)."""
    defaults = {"data": ".local/share", "config": ".config", "cache": ".cache"}
    base = os.environ.get(f"XDG_{kind.upper()}_HOME") or os.path.join(
        os.path.expanduser("~"), defaults[kind])
    return os.path.join(base, "hcafs")


def env(name: str) -> str | None:
    """An ``HCAFS_<NAME>`` environment variable, or None when unset or empty."""
    return os.environ.get(f"HCAFS_{name.upper()}") or None


def config_file_values(section: str) -> dict[str, Any]:
    """One ``[section]`` of the config file (``HCAFS_CONFIG`` names another file)."""
    path = env("config") or os.path.join(xdg_dir("config"), "config.toml")
    if not os.path.exists(path):
        return {}
    try:
        with open(path, "rb") as handle:
            values = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path}: {exc}") from exc
    table = values.get(section, {})
    if not isinstance(table, dict):
        raise ConfigError(f"config file {path}: [{section}] must be a table")
    return table


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*\Z", re.I)


def parse_bool(value: str | bool) -> bool:
    """``true``/``false`` (also ``1``/``0``, ``yes``/``no``, ``on``/``off``) as a bool."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"not a boolean: {value!r} (use true or false)")


def parse_size(text: str | int) -> int:
    """``'10G'``, ``'512MiB'``, ``'1.5T'`` or a plain byte count, as bytes (powers of 1024)."""
    if isinstance(text, int):
        return text
    match = _SIZE_RE.match(str(text))
    if not match:
        raise ConfigError(f"not a size: {text!r} (try 512M, 10G or a byte count)")
    scale = 1024 ** " kmgt".index(match[2].lower() or " ")
    return int(float(match[1]) * scale)


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``hcafs serve`` needs, resolved."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    listen_fd: int | None = None  # a listening TCP socket inherited from the caller
    data_dir: str = field(default_factory=lambda: os.path.join(xdg_dir("data"), "server"))
    store_url: str | None = None
    tokens_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    threads: int = DEFAULT_THREADS  # request threads per worker process
    max_connections: int = DEFAULT_MAX_CONNECTIONS  # open connections per worker process
    header_timeout: float = DEFAULT_HEADER_TIMEOUT  # seconds for a request head, idle included
    max_json_body: int = DEFAULT_MAX_JSON_BODY  # bytes of a JSON request body
    staging_root: str | None = None
    s3_endpoint: str | None = None
    async_threshold: int = DEFAULT_ASYNC_THRESHOLD
    ready_file: str | None = None
    copy_workers: int = 4
    import_rate_limit: int = 500
    import_rate_window: float = 300.0
    import_request_limit: int = 1000
    import_request_window: float = 300.0
    import_window_kind: str = "fixed"  # of both import budgets: fixed periods, or sliding
    drs_allow_http: bool = False
    drs_allow_hosts: tuple[str, ...] = ()  # HOST or HOST:PORT the egress policy opens
    drs_allow_networks: tuple[str, ...] = ()  # CIDR ranges the egress policy opens
    drs_resolver: str | None = None
    drs_max_bulk: int = 1000  # maxBulkRequestLength of this server's DRS bulk calls
    drs_bulk: bool = True  # offer the DRS bulk calls
    drs_credentials: str | None = None  # credentials for protected DRS sources (0600)
    drs_auth: str = "none"  # none, bearer or passport: who may read this server's DRS
    drs_passport_jwks: str | None = None
    drs_passport_issuer: str | None = None
    drs_access_ttl: float = 900.0  # seconds a protected access URL stays valid
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)  # worker processes
    lease_ttl: float = DEFAULT_LEASE_TTL  # seconds a claim on background work lives unrenewed
    lease_scan: float = DEFAULT_LEASE_SCAN  # seconds between scans for expired claims
    metrics_port: int | None = None  # Prometheus endpoint, off unless given
    metrics_host: str = "127.0.0.1"

    @property
    def resolved_tokens_file(self) -> str:
        return self.tokens_file or os.path.join(self.data_dir, "tokens.json")

    def validate(self) -> ServeConfig:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("--tls-cert and --tls-key go together")
        for path in (self.tls_cert, self.tls_key):
            if path and not os.path.isfile(path):
                raise ConfigError(f"TLS file {path} does not exist")
        if self.store_url and not self.store_url.startswith("s3://"):
            raise ConfigError(f"--store takes s3://bucket/prefix, not {self.store_url!r}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port {self.port} is not a TCP port")
        if self.tls_key:
            _check_pkcs8(self.tls_key)
        if not 1 <= self.threads <= 1024:
            raise ConfigError("--threads must be between 1 and 1024")
        if not 1 <= self.max_connections <= 65536:
            raise ConfigError("--max-connections must be between 1 and 65536")
        if not 0.001 <= self.header_timeout <= 60:
            raise ConfigError("--header-timeout must be between 0.001 and 60 seconds")
        if self.max_json_body < 1:
            raise ConfigError("--max-json-body must be at least one byte")
        if self.staging_root and not os.path.isdir(self.staging_root):
            raise ConfigError(f"staging root {self.staging_root} is not a directory")
        for name in ("import_rate_limit", "import_rate_window", "import_request_limit",
                     "import_request_window"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive")
        if self.import_window_kind not in WINDOW_KINDS:
            raise ConfigError("--import-window-kind must be fixed or sliding, not "
                              f"{self.import_window_kind!r}")
        if not 1 <= self.workers <= 256:
            raise ConfigError("--workers must be between 1 and 256")
        if not 0.5 <= self.lease_ttl <= 3600:
            raise ConfigError("--lease-ttl must be between 0.5 and 3600 seconds")
        if not 0.1 <= self.lease_scan <= self.lease_ttl:
            raise ConfigError("--lease-scan must be between 0.1 seconds and --lease-ttl")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"--metrics-port {self.metrics_port} is not a TCP port")
        if self.drs_resolver and not os.path.isfile(self.drs_resolver):
            raise ConfigError(f"DRS resolver table {self.drs_resolver} does not exist")
        for network in self.drs_allow_networks:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError as exc:
                raise ConfigError(f"--drs-allow-network {network!r} is not a CIDR "
                                  "network") from exc
        for host in self.drs_allow_hosts:
            if not _ALLOW_HOST_RE.match(host):
                raise ConfigError(f"--drs-allow-host {host!r} is not HOST or HOST:PORT")
        if self.drs_max_bulk <= 0:
            raise ConfigError("--drs-max-bulk must be positive")
        if self.drs_access_ttl <= 0:
            raise ConfigError("--drs-access-ttl must be positive")
        if self.drs_auth not in ("none", "bearer", "passport"):
            raise ConfigError(f"--drs-auth takes bearer or passport, not {self.drs_auth!r}")
        if self.drs_auth == "passport" and not (self.drs_passport_jwks and
                                                 self.drs_passport_issuer):
            raise ConfigError("--drs-auth passport needs --drs-passport-jwks and "
                              "--drs-passport-issuer")
        for path in (self.drs_credentials, self.drs_passport_jwks):
            if path and not os.path.isfile(path):
                raise ConfigError(f"{path} does not exist")
        return self


_ALLOW_HOST_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)"
                            r"(:([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}"
                            r"|655[0-2][0-9]|6553[0-5]))?\Z")


def _check_pkcs8(path: str) -> None:
    """The HTTP front reads PEM PKCS#8 keys only; say so before it fails obscurely."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError as exc:
        raise ConfigError(f"cannot read TLS key {path}: {exc.strerror}") from exc
    if b"-----BEGIN PRIVATE KEY-----" not in head:
        raise ConfigError(f"TLS key {path} is not a PEM PKCS#8 key (BEGIN PRIVATE KEY); "
                          "convert it with: openssl pkcs8 -topk8 -nocrypt -in OLD -out NEW")


DEFAULT_CACHE_SIZE = "10G"


@dataclass(frozen=True)
class MountConfig:
    """Everything ``hcafs mount`` needs, resolved."""

    mountpoint: str
    dss_url: str | None = None  # None: start the embedded server
    replica: str = "aws"
    cache_dir: str = ""
    cache_size: int = parse_size(DEFAULT_CACHE_SIZE)
    cache_min_free: int | None = None  # None: a tenth of the cache disk, at most 1 GiB
    foreground: bool = False
    token: str | None = field(default=None, repr=False)
    refresh_ttl: float = 300.0
    entry_timeout: float = 30.0
    attr_timeout: float = 30.0
    negative_timeout: float = 2.0
    kernel_entries: int = 0  # prune a big listing's kernel entries every N (0: never)
    max_readahead: int = 64 * MiB
    read_streams: int = 4  # parallel ranged fetches ahead of a sequential reader
    read_chunk: int = 8 * MiB  # bytes per ranged fetch of those streams
    log_file: str | None = None
    data_dir: str = field(default_factory=lambda: os.path.join(xdg_dir("data"), "server"))
    insecure_tls: bool = False
    staging: str | None = None  # s3://bucket/prefix; the embedded server stages locally
    s3_endpoint: str | None = None
    write_back_delay: float = 2.0
    upload_workers: int = 8
    creator_uid: int = 0
    auto_commit: float | None = None
    delete_reason: str = "deleted with hcafs"
    import_url: str | None = None  # the bulk DRS import API; default: the DSS server's /v2
    import_token: str | None = field(default=None, repr=False)
    import_conflict: str = "SKIP"
    import_rate_limit: int = 500
    import_rate_window: float = 300.0
    drs_resolver: dict = field(default_factory=dict)  # compact prefix -> https://host
    drs_resolver_file: str | None = None
    drs_allow_http: bool = False

    @property
    def embedded(self) -> bool:
        return self.dss_url is None

    def validate(self) -> MountConfig:
        if self.replica not in ("aws", "gcp"):
            raise ConfigError(f"--replica must be aws or gcp, not {self.replica!r}")
        if self.refresh_ttl <= 0:
            raise ConfigError("--refresh-ttl must be positive")
        if self.cache_size < 64 * MiB:
            raise ConfigError("--cache-size must be at least 64M")
        if self.staging and not self.staging.startswith("s3://"):
            raise ConfigError(f"--staging takes s3://bucket/prefix, not {self.staging!r}")
        if self.import_conflict not in ("SKIP", "RENAME", "OVERWRITE"):
            raise ConfigError("--import-conflict must be SKIP, RENAME or OVERWRITE")
        if self.import_rate_limit < 1 or self.import_rate_window <= 0:
            raise ConfigError("--import-rate-limit and --import-rate-window must be positive")
        if self.read_streams < 1 or self.read_chunk < MiB:
            raise ConfigError("--read-streams must be at least 1 and --read-chunk at least 1M")
        if self.kernel_entries < 0:
            raise ConfigError("--kernel-entries cannot be negative (0: no bound)")
        if self.upload_workers < 1:
            raise ConfigError("--upload-workers must be at least 1")
        if self.write_back_delay < 0:
            raise ConfigError("--write-back-delay cannot be negative")
        if self.dss_url and not re.match(r"^https?://", self.dss_url):
            raise ConfigError(f"--dss-url must start with http:// or https://: {self.dss_url!r}")
        return self


def default_cache_dir(dss_url: str | None) -> str:
    """One cache per server: ``$XDG_CACHE_HOME/hcafs/<host_port>`` (``embedded`` for ours)."""
    if dss_url is None:
        return os.path.join(xdg_dir("cache"), "embedded")
    slug = re.sub(r"[^A-Za-z0-9.-]+", "_", re.sub(r"^https?://", "", dss_url)).strip("_")
    return os.path.join(xdg_dir("cache"), slug or "default")


def runtime_dir() -> str:
    """Where running mounts leave their pid and paths (``$XDG_RUNTIME_DIR/hcafs``; without
    XDG_RUNTIME_DIR, ``/tmp/hcafs-UID/hcafs``, whose owner and mode
    :func:`ensure_runtime_dir` checks because anyone may create it first)."""
    return os.path.join(_runtime_base(), "hcafs")


def _runtime_base() -> str:
    return os.environ.get("XDG_RUNTIME_DIR") or os.path.join("/tmp", f"hcafs-{os.getuid()}")


def private_dir(path: str, what: str) -> str:
    """``path`` as a directory only this user may enter: made (mode 0700) if missing,
    refused with the reason if it is a symlink, not a directory, someone else's, or open
    to others.  The check uses ``lstat``, so a planted symlink is never followed."""
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ConfigError(f"cannot create {what} {path}: {exc.strerror}") from exc
    info = os.lstat(path)
    me = os.geteuid()
    if stat.S_ISLNK(info.st_mode):
        raise ConfigError(f"{what} {path} is a symbolic link; hcafs uses only a real "
                          "directory there (remove the link)")
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"{what} {path} is not a directory")
    if info.st_uid != me:
        raise ConfigError(f"{what} {path} belongs to uid {info.st_uid}, not to you (uid "
                          f"{me}); someone else may have made it: remove it, or choose "
                          "another place")
    if info.st_mode & 0o077:
        raise ConfigError(f"{what} {path} is open to other users (mode "
                          f"{stat.S_IMODE(info.st_mode):04o}); run: chmod 700 {path}")
    return path


def ensure_runtime_dir() -> str:
    """:func:`runtime_dir`, made private and checked (and its /tmp parent, when used)."""
    if not os.environ.get("XDG_RUNTIME_DIR"):
        private_dir(_runtime_base(), "the runtime dir")
    return private_dir(runtime_dir(), "the runtime dir")


def load_resolver(path: str | None) -> dict[str, str]:
    """The DRS resolver table: JSON ``{"prefix": "https://host[:port]"}``."""
    if not path:
        return {}
    try:
        with open(os.path.expanduser(path)) as handle:
            table = json.load(handle)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"DRS resolver table {path}: {exc}") from exc
    if not isinstance(table, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                              and re.match(r"^https?://", v)
                                              for k, v in table.items()):
        raise ConfigError(f"DRS resolver table {path} must map prefixes to http(s) URLs")
    return table
