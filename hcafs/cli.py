"""The ``hcafs`` command: thin subcommands over the library.

Each subcommand builds its config once, calls the library, and turns an
:class:`~hcafs.errors.HcafsError` into a one-line message and the error's exit code.
"""

from __future__ import annotations

import argparse
import logging
import sys

from . import __version__
from .config import DEFAULT_PORT, ServeConfig, config_file_values, env, parse_size, xdg_dir
from .errors import HcafsError

log = logging.getLogger("hcafs")


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "werkzeug"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _serve_config(args: argparse.Namespace) -> ServeConfig:
    file = config_file_values("serve")

    def pick(name: str, default=None):
        value = getattr(args, name, None)
        if value is None:
            value = env(f"serve_{name}")
        if value is None:
            value = file.get(name.replace("_", "-"), file.get(name))
        return default if value is None else value

    return ServeConfig(
        host=pick("host", "127.0.0.1"),
        port=int(pick("port", DEFAULT_PORT)),
        data_dir=pick("data_dir", ServeConfig().data_dir),
        store_url=pick("store"),
        tokens_file=pick("tokens"),
        tls_cert=pick("tls_cert"),
        tls_key=pick("tls_key"),
        staging_root=pick("staging_root"),
        s3_endpoint=pick("s3_endpoint"),
        async_threshold=parse_size(pick("async_threshold", 64 * 1024 * 1024)),
        ready_file=pick("ready_file"),
    )


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
        "Serve the DSS API v1 (files, bundles, collections). Options also come from "
        "HCAFS_SERVE_<OPTION> variables and the [serve] table of the config file."))
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help=f"TCP port, 0 for any free one "
                       f"(default {DEFAULT_PORT})")
    serve.add_argument("--data-dir", help="where state lives (default "
                       f"{xdg_dir('data')}/server)")
    serve.add_argument("--store", metavar="s3://BUCKET/PREFIX",
                       help="keep ALL state in this S3 bucket instead of --data-dir")
    serve.add_argument("--tokens", metavar="FILE", help="tokens file (default "
                       "DATA_DIR/tokens.json, created with one local admin token if absent)")
    serve.add_argument("--tls-cert", metavar="FILE", help="serve https with this certificate")
    serve.add_argument("--tls-key", metavar="FILE", help="the certificate's private key")
    serve.add_argument("--staging-root", metavar="DIR",
                       help="accept file:// sources inside this directory")
    serve.add_argument("--s3-endpoint", metavar="URL",
                       help="S3 endpoint for --store and s3:// sources (default: AWS config)")
    serve.add_argument("--async-threshold", metavar="SIZE",
                       help="copies larger than this answer 202 and run in the background "
                       "(default 64M)")
    serve.add_argument("--ready-file", metavar="FILE",
                       help="write {url, pid, tokens_file} as JSON here once listening")
    serve.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
