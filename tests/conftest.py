"""Shared fixtures: real peers started for the tests (see tests/fixtures/).

* ``seaweed`` (session): a SeaweedFS S3 store on loopback (:class:`fixtures.SeaweedFS`).
* ``hca_cli`` (session): factory ``hca_cli(base_url, token="test-token", *, s3=None,
  env_extra=None) -> HcaCli`` for the official ``hca`` CLI; skips if ``.venv-hca`` is
  missing (``make hca-venv``).
* ``free_port()`` is a plain helper: ``from fixtures import free_port``.

FUSE hygiene: at session start, dead FUSE mounts left under pytest's temp root by aborted
runs are lazily unmounted; at session end, every FUSE mount still under this run's temp
dir is.

Daemon logs: a test that ran a real mount fails if the daemon logged an ERROR or a
traceback while the test ran, unless the test expects it:
``@pytest.mark.allow_daemon_errors("regex", ...)`` names the lines it allows.

Tiers: ``tests/unit/`` holds the model tier (real SQLite, no FUSE) and the adapter tier
(the FUSE Operations over a failing fake model); ``make test-fast`` runs just those.
"""

from __future__ import annotations

import getpass
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from fixtures import HCA_BIN, HcaCli, SeaweedFS, start_seaweed, unmount_leftovers
from fixtures.dss_server import DSSServer
from fixtures.faults import TcpGate
from fixtures.hcafs_mount import STARTED, log_size, unexpected_log_errors
from fixtures.worlds import DrsWorld, published_world


def _pytest_temp_root(config: pytest.Config) -> Path:
    """Where pytest puts its numbered temp dirs (mirrors pytest's own choice)."""
    if config.option.basetemp:
        return Path(config.option.basetemp)
    try:
        user = getpass.getuser()
    except (ImportError, KeyError, OSError):
        user = "unknown"
    root = os.environ.get("PYTEST_DEBUG_TEMPROOT") or tempfile.gettempdir()
    return Path(root) / f"pytest-of-{user}"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "allow_daemon_errors(*patterns): ERROR lines (regular "
                            "expressions) the mount daemon may log in this test")


@pytest.fixture(autouse=True)
def daemon_log_check(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test whose mount daemons logged an error it did not declare."""
    offsets = {id(m): log_size(m) for m in STARTED}
    yield
    allowed = [p for mark in request.node.iter_markers("allow_daemon_errors")
               for p in mark.args]
    problems = []
    for mount in STARTED:
        for line in unexpected_log_errors(mount, offsets.get(id(mount), mount.log_start),
                                          allowed):
            problems.append(f"{mount.log_file}: {line}")
    report = os.environ.get("HCAFS_TEST_LOG_REPORT")
    if problems and report:  # calibration: collect instead of failing
        with open(report, "a") as handle:
            handle.writelines(f"{request.node.nodeid}\t{p}\n" for p in problems)
    elif problems:
        pytest.fail("the mount daemon logged unexpected errors:\n" + "\n".join(problems[:20]),
                    pytrace=False)


def pytest_sessionstart(session: pytest.Session) -> None:
    # Only dead mounts: a live one may belong to another pytest run on this machine.
    unmount_leftovers([_pytest_temp_root(session.config)], only_dead=True)


def pytest_sessionfinish(session: pytest.Session) -> None:
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None:
        return
    try:
        base = factory.getbasetemp()
    except OSError:
        return
    unmount_leftovers([base])


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """A SeaweedFS S3 store on 127.0.0.1, running for the whole session."""
    store = start_seaweed(tmp_path_factory.mktemp("seaweed"))
    try:
        yield store
    finally:
        store.stop()


HcaCliFactory = Callable[..., HcaCli]


@pytest.fixture(scope="session")
def hca_cli(tmp_path_factory: pytest.TempPathFactory) -> HcaCliFactory:
    """Factory for :class:`fixtures.HcaCli`, each with its own config in a fresh temp dir.

    ``hca_cli(base_url, token="test-token", *, s3=None, env_extra=None)``: ``base_url`` is
    the server's root (``http://127.0.0.1:PORT``); ``token=None`` writes no oauth2_token;
    ``s3`` (a :class:`fixtures.SeaweedFS`) adds its AWS variables for ``hca dss upload``.
    """
    if not HCA_BIN.exists():
        pytest.skip(f"{HCA_BIN} missing: run `make hca-venv`")

    def make(
        base_url: str,
        token: str | None = "test-token",
        *,
        s3: SeaweedFS | None = None,
        env_extra: Mapping[str, str] | None = None,
    ) -> HcaCli:
        extra = {**(s3.env() if s3 is not None else {}), **(env_extra or {})}
        return HcaCli(base_url, token, tmp_path_factory.mktemp("hca-cli"), extra)

    return make


# ---------------------------------------------------------------- hcafs serve (server tests)


@pytest.fixture(scope="session")
def staging_bucket(seaweed: SeaweedFS) -> str:
    """One SeaweedFS bucket where tests stage source objects for PUT /files."""
    return seaweed.make_bucket("hcafs-staging")


@pytest.fixture
def dss_factory(tmp_path: Path, seaweed: SeaweedFS) -> Iterator[Callable[..., DSSServer]]:
    """Factory ``make(name, args=(), env=None) -> DSSServer`` (started, with the SeaweedFS
    AWS variables); every server it started is stopped by PID at teardown."""
    started: list[DSSServer] = []

    def make(name: str = "server", args: Sequence[str] = (),
             env: Mapping[str, str] | None = None) -> DSSServer:
        server = DSSServer(str(tmp_path / name), args=list(args),
                           env={**seaweed.env(), **(env or {})})
        started.append(server)
        return server.start()

    yield make
    for server in started:
        server.stop()


@dataclass
class DssRig:
    """A module's server: local store, a staging root, S3 sources through a :class:`TcpGate`."""

    server: DSSServer
    gate: TcpGate
    staging_root: Path
    store_root: Path
    s3: object  # a boto3 client straight to SeaweedFS
    bucket: str


@pytest.fixture(scope="module")
def dss(tmp_path_factory: pytest.TempPathFactory, seaweed: SeaweedFS,
        staging_bucket: str) -> Iterator[DssRig]:
    """``hcafs serve`` with --data-dir, --staging-root and --async-threshold 1M, reaching
    SeaweedFS through a gate that can stall object reads (asynchronous copies)."""
    work = tmp_path_factory.mktemp("dss")
    staging = work / "staging"
    staging.mkdir()
    gate = TcpGate(seaweed.endpoint)
    server = DSSServer(str(work / "server"), env=seaweed.env(), args=[
        "--staging-root", str(staging), "--async-threshold", "1M",
        "--s3-endpoint", gate.endpoint])
    server.start()
    try:
        yield DssRig(server, gate, staging, Path(server.data_dir) / "store",
                     seaweed.client(), staging_bucket)
    finally:
        server.stop()
        gate.close()


# ---------------------------------------------------------------- real-mount worlds


@pytest.fixture(scope="module")
def mount_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A server holding one bundle with nested names, a large file and a collection."""
    yield from published_world(tmp_path_factory.mktemp("mount-world"))


@pytest.fixture
def drs_world(tmp_path: Path, seaweed: SeaweedFS) -> Iterator[DrsWorld]:
    """The DSS with its import API behind a fault proxy, and an external DRS server."""
    world = DrsWorld(tmp_path / "world", seaweed)
    yield world
    world.close()
