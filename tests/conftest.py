"""Shared fixtures: real peers started for the tests (see tests/fixtures/).

* ``seaweed`` (session): a SeaweedFS S3 store on loopback (:class:`fixtures.SeaweedFS`).
* ``hca_cli`` (session): factory ``hca_cli(base_url, token="test-token", *, s3=None,
  env_extra=None) -> HcaCli`` for the official ``hca`` CLI; skips if ``.venv-hca`` is
  missing (``make hca-venv``).
* ``free_port()`` is a plain helper: ``from fixtures import free_port``.

FUSE hygiene: at session start, dead FUSE mounts left under pytest's temp root by aborted
runs are lazily unmounted; at session end, every FUSE mount still under this run's temp
dir is.
"""

from __future__ import annotations

import getpass
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
from fixtures import HCA_BIN, HcaCli, SeaweedFS, start_seaweed, unmount_leftovers


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
