"""The ``hcafs`` command: thin subcommands over the library.

Each subcommand builds its config once, calls the library, and turns an
:class:`~hcafs.errors.HcafsError` into a one-line message and the error's exit code.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from . import __version__
from .config import (
    DEFAULT_CACHE_SIZE,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_LEASE_SCAN,
    DEFAULT_LEASE_TTL,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_JSON_BODY,
    DEFAULT_PORT,
    DEFAULT_THREADS,
    WINDOW_KINDS,
    MountConfig,
    ServeConfig,
    config_file_values,
    default_cache_dir,
    env,
    load_resolver,
    parse_bool,
    parse_size,
    xdg_dir,
)
from .errors import ConfigError, HcafsError

log = logging.getLogger("hcafs")


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "werkzeug"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _picker(args: argparse.Namespace, section: str, env_prefix: str = ""):
    """Option value from the command line, then HCAFS_* env, then the config file."""
    file = config_file_values(section)

    def pick(name: str, default=None):
        value = getattr(args, name, None)
        if value is None:
            value = env(env_prefix + name)
        if value is None:
            value = file.get(name.replace("_", "-"), file.get(name))
        return default if value is None else value

    return pick


def _read_token_file(path: str) -> str:
    try:
        with open(os.path.expanduser(path)) as handle:
            token = handle.read().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read token file {path}: {exc.strerror}") from exc
    if not token:
        raise ConfigError(f"token file {path} is empty")
    return token


def _mount_config(args: argparse.Namespace) -> MountConfig:
    pick = _picker(args, "mount")
    dss_url = pick("dss_url")
    token = getattr(args, "token", None) or env("token")
    token_file = pick("token_file")
    if not token and token_file:
        token = _read_token_file(token_file)
    cache_dir = os.path.abspath(os.path.expanduser(pick("cache_dir", default_cache_dir(dss_url))))
    log_file = pick("log_file")
    return MountConfig(
        mountpoint=os.path.abspath(args.mountpoint),
        dss_url=dss_url.rstrip("/") if dss_url else None,
        replica=pick("replica", "aws"),
        cache_dir=cache_dir,
        cache_size=parse_size(pick("cache_size", DEFAULT_CACHE_SIZE)),
        cache_min_free=parse_size(pick("cache_min_free")) if pick("cache_min_free") is not None
        else None,
        foreground=bool(args.foreground),
        token=token,
        refresh_ttl=float(pick("refresh_ttl", 300)),
        entry_timeout=float(pick("entry_timeout", 30)),
        attr_timeout=float(pick("attr_timeout", 30)),
        read_streams=int(pick("read_streams", 4)),
        read_chunk=parse_size(pick("read_chunk", "8M")),
        negative_timeout=float(pick("negative_timeout", 2)),
        kernel_entries=int(pick("kernel_entries", 0)),
        log_file=os.path.abspath(log_file) if log_file else None,
        data_dir=os.path.abspath(pick("data_dir", ServeConfig().data_dir)),
        insecure_tls=bool(getattr(args, "insecure", False)),
        staging=pick("staging"),
        s3_endpoint=pick("s3_endpoint"),
        write_back_delay=float(pick("write_back_delay", 2.0)),
        upload_workers=int(pick("upload_workers", 8)),
        creator_uid=int(pick("creator_uid", 0)),
        auto_commit=float(pick("auto_commit")) if pick("auto_commit") else None,
        delete_reason=pick("delete_reason", "deleted with hcafs"),
        import_url=pick("import_url"),
        import_token=env("import_token") or (
            _read_token_file(pick("import_token_file")) if pick("import_token_file") else None),
        import_conflict=pick("import_conflict", "SKIP"),
        import_rate_limit=int(pick("import_rate_limit", 500)),
        import_rate_window=float(pick("import_rate_window", 300)),
        drs_resolver=load_resolver(pick("drs_resolver")),
        drs_resolver_file=os.path.abspath(pick("drs_resolver")) if pick("drs_resolver")
        else None,
        drs_allow_http=bool(getattr(args, "drs_allow_http", False)),
    )


def cmd_mount(args: argparse.Namespace) -> int:
    from .mount.launch import mount, run_daemon

    config = _mount_config(args)
    if args.ready_fd is not None:
        return run_daemon(config, args.ready_fd)
    return mount(config, args.argv)


def cmd_umount(args: argparse.Namespace) -> int:
    from .mount.commands import umount

    return umount(args.mountpoint, lazy=args.lazy, wait=not args.no_wait,
                  wait_timeout=args.timeout)


def cmd_commit(args: argparse.Namespace) -> int:
    from .mount.commands import commit

    return commit(args.path, args.timeout)


def cmd_status(args: argparse.Namespace) -> int:
    from .mount.commands import status

    return status(args.mountpoint, args.json, args.watch)


def cmd_refresh(args: argparse.Namespace) -> int:
    from .mount.commands import refresh

    return refresh(args.mountpoint)


def _serve_config(args: argparse.Namespace) -> ServeConfig:
    pick = _picker(args, "serve", env_prefix="serve_")
    return ServeConfig(
        host=pick("host", "127.0.0.1"),
        port=int(pick("port", DEFAULT_PORT)),
        listen_fd=args.listen_fd,
        data_dir=pick("data_dir", ServeConfig().data_dir),
        store_url=pick("store"),
        tokens_file=pick("tokens"),
        tls_cert=pick("tls_cert"),
        tls_key=pick("tls_key"),
        threads=int(pick("threads", DEFAULT_THREADS)),
        max_connections=int(pick("max_connections", DEFAULT_MAX_CONNECTIONS)),
        header_timeout=float(pick("header_timeout", DEFAULT_HEADER_TIMEOUT)),
        max_json_body=parse_size(pick("max_json_body", DEFAULT_MAX_JSON_BODY)),
        staging_root=pick("staging_root"),
        s3_endpoint=pick("s3_endpoint"),
        async_threshold=parse_size(pick("async_threshold", 64 * 1024 * 1024)),
        ready_file=pick("ready_file"),
        import_rate_limit=int(pick("import_rate_limit", 500)),
        import_rate_window=float(pick("import_rate_window", 300)),
        import_request_limit=int(pick("import_request_limit", 1000)),
        import_request_window=float(pick("import_request_window", 300)),
        import_window_kind=pick("import_window_kind", "fixed"),
        drs_allow_http=parse_bool(pick("drs_allow_http", False)),
        drs_allow_hosts=_list(pick("drs_allow_host", ())),
        drs_allow_networks=_list(pick("drs_allow_network", ())),
        drs_resolver=pick("drs_resolver"),
        drs_max_bulk=int(pick("drs_max_bulk", 1000)),
        drs_bulk=not parse_bool(pick("drs_no_bulk", False)),
        drs_credentials=pick("drs_credentials"),
        drs_auth=pick("drs_auth", "none"),
        drs_passport_jwks=pick("drs_passport_jwks"),
        drs_passport_issuer=pick("drs_passport_issuer"),
        drs_access_ttl=float(pick("drs_access_ttl", 900)),
        workers=int(pick("workers", os.cpu_count() or 1)),
        lease_ttl=float(pick("lease_ttl", DEFAULT_LEASE_TTL)),
        lease_scan=float(pick("lease_scan", DEFAULT_LEASE_SCAN)),
        metrics_port=_optional_int(pick("metrics_port")),
        metrics_host=pick("metrics_host", "127.0.0.1"),
    )


def _optional_int(value: object) -> int | None:
    return None if value is None or value == "" else int(value)


def _list(value: object) -> tuple[str, ...]:
    """A repeated option: a list (command line, config file) or a comma-separated string
    (environment)."""
    items = value.split(",") if isinstance(value, str) else value
    return tuple(str(item).strip() for item in items if str(item).strip())


def cmd_serve(args: argparse.Namespace) -> int:
    from .server import run

    return run(_serve_config(args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hcafs", description=(
        "The Human Cell Atlas Data Storage System as a filesystem, and a DSS-compatible "
        "server."))
    parser.add_argument("--version", action="version", version=f"hcafs {__version__}")
    parser.add_argument("--log-level", default=env("log_level") or "INFO",
                        help="DEBUG, INFO, WARNING or ERROR (default INFO; $HCAFS_LOG_LEVEL)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run a DSS-compatible server", description=(
        "Serve the DSS API v1 (files, bundles, collections), GA4GH DRS and a bulk DRS "
        "import API. Options also come from "
        "HCAFS_SERVE_<OPTION> variables and the [serve] table of the config file."))
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help=f"TCP port, 0 for any free one "
                       f"(default {DEFAULT_PORT})")
    serve.add_argument("--listen-fd", type=int, metavar="FD",
                       help="serve on this inherited, listening TCP socket instead of "
                       "binding --host/--port (the mount passes one to its embedded server, "
                       "and keeps it while the server restarts, so no one else can take "
                       "the port)")
    serve.add_argument("--data-dir", help="where state lives (default "
                       f"{xdg_dir('data')}/server)")
    serve.add_argument("--store", metavar="s3://BUCKET/PREFIX",
                       help="keep ALL state in this S3 bucket instead of --data-dir")
    serve.add_argument("--tokens", metavar="FILE", help="tokens file (default "
                       "DATA_DIR/tokens.json, created with one local admin token if absent)")
    serve.add_argument("--tls-cert", metavar="FILE", help="serve https with this certificate")
    serve.add_argument("--tls-key", metavar="FILE",
                       help="the certificate's private key (PEM, PKCS#8)")
    serve.add_argument("--threads", metavar="N", type=int,
                       help=f"threads answering requests (default {DEFAULT_THREADS})")
    serve.add_argument("--max-connections", metavar="N", type=int,
                       help="open connections at most; more wait to be accepted "
                       f"(default {DEFAULT_MAX_CONNECTIONS})")
    serve.add_argument("--header-timeout", metavar="SECONDS", type=float,
                       help="close a connection that has not sent a whole request head this "
                       "long after it opened or after its previous answer (default "
                       f"{DEFAULT_HEADER_TIMEOUT:g})")
    serve.add_argument("--max-json-body", metavar="SIZE",
                       help="largest request body (all bodies are JSON; GET and HEAD take "
                       "none), 413 past it (default 1M)")
    serve.add_argument("--staging-root", metavar="DIR",
                       help="accept file:// sources inside this directory")
    serve.add_argument("--s3-endpoint", metavar="URL",
                       help="S3 endpoint for --store and s3:// sources (default: AWS config)")
    serve.add_argument("--async-threshold", metavar="SIZE",
                       help="copies larger than this answer 202 and run in the background "
                       "(default 64M)")
    serve.add_argument("--ready-file", metavar="FILE",
                       help="write {url, pid, tokens_file} as JSON here once listening")
    serve.add_argument("--import-rate-limit", metavar="N", type=int,
                       help="bulk DRS import: files admitted per identity and window "
                       "(default 500)")
    serve.add_argument("--import-rate-window", metavar="SECONDS", type=float,
                       help="the window of --import-rate-limit (default 300)")
    serve.add_argument("--import-request-limit", metavar="N", type=int,
                       help="/v2 import API requests per identity and window before 429 "
                       "(default 1000)")
    serve.add_argument("--import-request-window", metavar="SECONDS", type=float,
                       help="the window of --import-request-limit (default 300)")
    serve.add_argument("--import-window-kind", choices=WINDOW_KINDS,
                       help="fixed: each budget is whole again when a period of the window "
                       "that opened with its first use ends (the Seven Bridges contract); "
                       "sliding: no window-long interval ever holds more than the limit "
                       "(default fixed)")
    serve.add_argument("--drs-allow-http", action="store_const", const=True,
                       help="let imports fetch plain http from any host the egress policy "
                       "allows (default: loopback only)")
    serve.add_argument("--drs-allow-host", metavar="HOST[:PORT]", action="append",
                       help="let imports fetch from this host (every port, or PORT only) "
                       "even at a loopback, private or link-local address; repeatable")
    serve.add_argument("--drs-allow-network", metavar="CIDR", action="append",
                       help="let imports fetch from addresses in this network; repeatable")
    serve.add_argument("--drs-resolver", metavar="FILE",
                       help='compact DRS prefixes, JSON {"prefix": "https://host:port"}')
    serve.add_argument("--drs-max-bulk", metavar="N", type=int,
                       help="maxBulkRequestLength of this server's DRS bulk calls "
                       "(default 1000)")
    serve.add_argument("--drs-no-bulk", action="store_const", const=True,
                       help="offer no DRS bulk calls (POST /objects, /objects/access)")
    serve.add_argument("--drs-credentials", metavar="FILE",
                       help="credentials for protected DRS sources (JSON, mode 0600; "
                       "docs/drs.md#credentials-for-protected-sources)")
    serve.add_argument("--drs-auth", choices=("bearer", "passport"),
                       help="protect this server's DRS objects with a bearer token of its "
                       "tokens file, or with GA4GH passports")
    serve.add_argument("--drs-passport-jwks", metavar="FILE",
                       help="the keys (JWKS) that sign the passports --drs-auth accepts")
    serve.add_argument("--drs-passport-issuer", metavar="URL",
                       help="the iss the passports --drs-auth accepts must carry")
    serve.add_argument("--drs-access-ttl", metavar="SECONDS", type=float,
                       help="how long a protected access URL stays valid (default 900)")
    serve.add_argument("--workers", metavar="N", type=int,
                       help="worker processes (default: the machine's cores)")
    serve.add_argument("--lease-ttl", metavar="SECONDS", type=float,
                       help="how long a claim on a background copy or import job lives "
                       f"without renewal (default {DEFAULT_LEASE_TTL:g})")
    serve.add_argument("--lease-scan", metavar="SECONDS", type=float,
                       help="how often to look for expired claims to take over "
                       f"(default {DEFAULT_LEASE_SCAN:g})")
    serve.add_argument("--metrics-port", metavar="PORT", type=int,
                       help="serve Prometheus metrics on this port (default: off)")
    serve.add_argument("--metrics-host", metavar="HOST",
                       help="address of the metrics endpoint (default 127.0.0.1)")
    serve.set_defaults(func=cmd_serve)

    mount = commands.add_parser("mount", help="mount the DSS as a filesystem", description=(
        "Mount a DSS at MOUNTPOINT. With no --dss-url, an embedded server is started on "
        "127.0.0.1 with data under the XDG data dir. Options also come from HCAFS_<OPTION> "
        "variables and the [mount] table of the config file."))
    mount.add_argument("mountpoint", help="an existing, empty directory")
    mount.add_argument("--dss-url", help="the DSS, e.g. https://dss.example.org "
                       "(default: start the embedded server)")
    mount.add_argument("--replica", choices=["aws", "gcp"], help="replica (default aws)")
    mount.add_argument("--cache-dir", help="metadata and content cache (default "
                       f"{xdg_dir('cache')}/<server>)")
    mount.add_argument("--cache-size", metavar="SIZE", help="content cache limit, e.g. 20G "
                       f"(default {DEFAULT_CACHE_SIZE})")
    mount.add_argument("--cache-min-free", metavar="SIZE", help="free space the content "
                       "cache leaves on its disk, e.g. 2G; cached content also gives way to "
                       "written files when the disk is full (default: a tenth of the disk, "
                       "at most 1G)")
    mount.add_argument("--token", help="bearer token (visible to other users in ps; prefer "
                       "--token-file or $HCAFS_TOKEN)")
    mount.add_argument("--token-file", metavar="FILE", help="read the bearer token from FILE")
    mount.add_argument("--refresh-ttl", metavar="SECONDS", type=float,
                       help="re-list bundles and collections this often (default 300)")
    mount.add_argument("--attr-timeout", metavar="SECONDS", type=float,
                       help="kernel attribute cache time (default 30)")
    mount.add_argument("--entry-timeout", metavar="SECONDS", type=float,
                       help="kernel name lookup cache time (default 30)")
    mount.add_argument("--read-streams", metavar="N", type=int,
                       help="parallel ranged fetches ahead of a sequential reader (default 4)")
    mount.add_argument("--read-chunk", metavar="SIZE",
                       help="bytes per ranged fetch of those streams (default 8M)")
    mount.add_argument("--negative-timeout", metavar="SECONDS", type=float,
                       help="kernel cache time of a name that does not exist (default 2; "
                       "the daemon itself remembers a server's 404 for --entry-timeout)")
    mount.add_argument("--kernel-entries", metavar="N", type=int,
                       help="bound what the kernel keeps of a big listing (bundles/): each "
                       "time a listing has handed out more than N entries, the kernel drops "
                       "those nothing uses, and libfuse frees its node (about 260 bytes) for "
                       "each; they are looked up again when asked for, so `ls -l` of many "
                       "more than N entries is slower (default 0: no bound, the kernel drops "
                       "entries when memory is short)")
    mount.add_argument("--log-file", metavar="FILE", help="daemon log (default "
                       "CACHE_DIR/hcafs.log)")
    mount.add_argument("--data-dir", help="the embedded server's data dir")
    mount.add_argument("--insecure", action="store_true",
                       help="do not verify the server's TLS certificate")
    mount.add_argument("--staging", metavar="s3://BUCKET/PREFIX",
                       help="where written files are staged for the DSS to copy (needed "
                       "for writing to a remote DSS; the embedded server stages locally)")
    mount.add_argument("--s3-endpoint", metavar="URL",
                       help="S3 endpoint for --staging (default: the AWS config)")
    mount.add_argument("--write-back-delay", metavar="SECONDS", type=float,
                       help="sync a file once it is closed and unchanged this long "
                       "(default 2)")
    mount.add_argument("--upload-workers", metavar="N", type=int,
                       help="files staged and registered in parallel (default 8)")
    mount.add_argument("--creator-uid", metavar="UID", type=int,
                       help="creator_uid of files and bundles written (default 0)")
    mount.add_argument("--auto-commit", metavar="SECONDS", type=float,
                       help="commit a pending bundle once it has been idle this long")
    mount.add_argument("--delete-reason", metavar="TEXT",
                       help="reason sent with delete-bundle for rmdir of a bundle version")
    mount.add_argument("--import-url", metavar="URL", help="the bulk DRS import API "
                       "(default: the DSS server's own, URL/v2)")
    mount.add_argument("--import-token-file", metavar="FILE", help="its token (default: the "
                       "DSS token; or $HCAFS_IMPORT_TOKEN)")
    mount.add_argument("--import-conflict", choices=["SKIP", "RENAME", "OVERWRITE"],
                       help="conflict_resolution of .drs imports that name none (SKIP)")
    mount.add_argument("--import-rate-limit", metavar="N", type=int,
                       help="send at most N import items per window (500)")
    mount.add_argument("--import-rate-window", metavar="SECONDS", type=float,
                       help="the rate-limit window (300)")
    mount.add_argument("--drs-resolver", metavar="FILE", help="JSON table of compact DRS "
                       "prefixes: {\"prefix\": \"https://host\"}")
    mount.add_argument("--drs-allow-http", action="store_true", default=None,
                       help="let the embedded server fetch DRS objects over plain http from "
                       "hosts that are not loopback")
    mount.add_argument("-f", "--foreground", action="store_true",
                       help="stay in the foreground, logging to stderr")
    mount.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    mount.set_defaults(func=cmd_mount)

    umount = commands.add_parser("umount", help="unmount an hcafs mount")
    umount.add_argument("mountpoint")
    umount.add_argument("--lazy", action="store_true",
                        help="detach now even if busy (fusermount3 -z)")
    umount.add_argument("--no-wait", action="store_true",
                        help="do not wait for queued files and commits; they resume at the "
                        "next mount of the same cache dir")
    umount.add_argument("--timeout", type=float, metavar="SECONDS",
                        help="give up waiting for the queue after this long")
    umount.set_defaults(func=cmd_umount)

    commit = commands.add_parser("commit", help="turn a pending bundle into a bundle",
                                 description="Wait until the pending bundle's files are on "
                                 "the server, then create the bundle (or the new version of "
                                 "a working copy). Prints the bundle's FQID.")
    commit.add_argument("path", help="MOUNT/bundles/NAME")
    commit.add_argument("--timeout", type=float, metavar="SECONDS",
                        help="stop waiting after this long (the commit stays queued)")
    commit.set_defaults(func=cmd_commit)

    status = commands.add_parser("status", help="what is still on its way to the server")
    status.add_argument("mountpoint", nargs="?", help="one mount (default: all)")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--watch", action="store_true", help="refresh every second")
    status.set_defaults(func=cmd_status)

    refresh = commands.add_parser("refresh", help="re-list bundles and collections now")
    refresh.add_argument("mountpoint")
    refresh.set_defaults(func=cmd_refresh)
    return parser


def _mount_options() -> dict[str, bool]:
    """``hcafs mount``'s long options (without ``--``): True for those taking a value."""
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    options = {}
    for action in commands.choices["mount"]._actions:
        for string in action.option_strings:
            if string.startswith("--"):
                options[string[2:]] = action.nargs != 0
    return options


def fstab_main(argv: list[str] | None = None) -> int:
    """``mount.fuse.hcafs SOURCE MOUNTPOINT -o OPTIONS``: what mount(8) runs for a
    ``fuse.hcafs`` fstab line (see hcafs/mount/fstab.py and docs/mount.md)."""
    from .mount.fstab import become, mount_command

    try:
        command, user = mount_command(sys.argv[1:] if argv is None else argv,
                                      _mount_options())
        if user:
            become(user)
    except HcafsError as exc:
        print(f"mount.fuse.hcafs: {exc}", file=sys.stderr)
        return exc.exit_code
    return main(command)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the daemon's child repeats it
    _setup_logging(args.log_level)
    try:
        return args.func(args)
    except HcafsError as exc:
        print(f"hcafs {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
