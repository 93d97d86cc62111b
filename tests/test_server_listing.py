"""GET /v1/bundles/all from the listing index, and the upgrade of an older store.

:meth:`Store.scan` must give every key under a prefix in key order from any start, on both
backends; /bundles/all must page without skipping or repeating a version while creates land
across its page boundaries; and a store written by the previous release must come up under
this one with its bundles listed, readable and in the event journal.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import sys
import threading
import uuid as _uuid
from pathlib import Path

import pytest
import requests
from fixtures.dss_server import ADMIN, USER, DSSServer

from hcafs.remote.s3 import S3
from hcafs.server.store import LocalStore, S3Store
from hcafs.versions import now_version

pytestmark = pytest.mark.s3

REPO = Path(__file__).resolve().parent.parent
PREVIOUS_RELEASE = "af7029d"  # the last commit before the listing index and the journal


# ---------------------------------------------------------------- Store.scan


def _keys() -> list[str]:
    rng = random.Random(7)
    keys = [f"idx/{a}/{b}/{a}{b}{rng.randrange(16**4):04x}.{n}"
            for a in ("0a", "3f", "ff") for b in ("00", "7c") for n in range(3)]
    # no name is both a folder and the start of a file's name at one level: S3 servers that
    # keep folders (SeaweedFS) list such a folder first, not in byte order
    return sorted(set(keys + ["idx/3f/x", "idx/3e.top", "idy/other", "idx-sibling/k"]))


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path, seaweed, monkeypatch):
    if request.param == "local":
        return LocalStore(str(tmp_path / "store"))
    for name, value in seaweed.env().items():
        monkeypatch.setenv(name, value)
    return S3Store(f"s3://{seaweed.make_bucket()}/pre", S3(seaweed.endpoint))


def test_scan_gives_every_key_under_a_prefix_in_order_from_any_start(store):
    keys = _keys()
    for key in random.Random(3).sample(keys, len(keys)):
        assert store.create(key, b"{}")
    under = [k for k in keys if k.startswith("idx/")]
    assert list(store.scan("idx/")) == under
    assert list(store.scan("idx/3f")) == [k for k in keys if k.startswith("idx/3f")]
    assert list(store.scan("idx/3f/7")) == [k for k in keys if k.startswith("idx/3f/7")]
    for after in [*under, "idx/", "idx/3", "idx/3f/", "idx/3f/7c/3f7c", "idx/zz", "a", "z"]:
        assert list(store.scan("idx/", after)) == [k for k in under if k > after], after
    lazy = store.scan("idx/", under[4])
    assert [next(lazy), next(lazy)] == under[5:7]
    assert store.mark("idx/3f/00/marked") and not store.mark("idx/3f/00/marked")
    assert store.read("idx/3f/00/marked") == b""


# ---------------------------------------------------------------- /bundles/all


@pytest.fixture(params=["local", "s3"])
def server(request, tmp_path: Path, dss_factory, seaweed) -> tuple[DSSServer, list[dict]]:
    staging = tmp_path / "staging"
    staging.mkdir()
    args = ["--staging-root", str(staging)]
    if request.param == "s3":
        args += ["--store", f"s3://{seaweed.make_bucket()}/hcafs",
                 "--s3-endpoint", seaweed.endpoint]
    server = dss_factory("listing", args)
    return server, [_register(server, staging, b"listed")]


def _register(server: DSSServer, staging: Path, data: bytes) -> dict:
    path = staging / hashlib.sha256(data).hexdigest()[:16]
    path.write_bytes(data)
    uuid, version = str(_uuid.uuid4()), now_version()
    answer = server.call("PUT", f"/files/{uuid}", USER, params={"version": version},
                         json={"source_url": f"file://{path}", "creator_uid": 3})
    assert answer.status_code == 201, answer.text
    return {"uuid": uuid, "version": version, "name": "f.txt", "indexed": False}


def _put(server: DSSServer, files: list[dict], uuid: str, version: str) -> None:
    answer = server.call("PUT", f"/bundles/{uuid}", USER,
                         params={"replica": "aws", "version": version},
                         json={"files": files, "creator_uid": 3})
    assert answer.status_code == 201, answer.text


def _delete(server: DSSServer, uuid: str, version: str | None = None) -> None:
    params = {"replica": "aws", **({"version": version} if version else {})}
    answer = server.call("DELETE", f"/bundles/{uuid}", ADMIN, params=params,
                         json={"reason": "gone"})
    assert answer.status_code == 200, answer.text


def listing(server: DSSServer, **params) -> list[str]:
    answer = server.call("GET", "/bundles/all", params={"replica": "aws", **params})
    found = []
    while True:
        assert answer.status_code in (200, 206), answer.text
        found += [f"{b['uuid']}.{b['version']}" for b in answer.json()["bundles"]]
        if answer.status_code == 200:
            return found
        answer = requests.get(answer.links["next"]["url"], timeout=30)


def test_paging_while_creates_land_skips_and_repeats_nothing(server):
    server, files = server
    existing = [(str(_uuid.uuid4()), now_version()) for _ in range(60)]
    for uuid, version in existing:
        _put(server, files, uuid, version)
    stop = threading.Event()
    landed: list[str] = []

    def create() -> None:  # new versions all over the key space, during the paging
        while not stop.is_set() and len(landed) < 200:
            uuid, version = str(_uuid.uuid4()), now_version()
            _put(server, files, uuid, version)
            landed.append(f"{uuid}.{version}")

    writer = threading.Thread(target=create)
    writer.start()
    try:
        rounds = [listing(server, per_page=10) for _ in range(3)]
    finally:
        stop.set()
        writer.join()
    assert landed, "no create landed while paging"
    before = {f"{u}.{v}" for u, v in existing}
    for found in rounds:
        assert len(found) == len(set(found)), "a version came twice"
        assert found == sorted(found)
        assert before <= set(found), "a version that existed was skipped"
        assert set(found) <= before | set(landed)
    assert set(listing(server, per_page=500)) == before | set(landed)


def test_deleted_versions_leave_the_listing(server):
    server, files = server
    uuid, other = str(_uuid.uuid4()), str(_uuid.uuid4())
    versions = [now_version() for _ in range(3)]
    for version in versions:
        _put(server, files, uuid, version)
    _put(server, files, other, versions[0])
    _delete(server, uuid, versions[1])
    assert listing(server, prefix=uuid[:8]) == [f"{uuid}.{versions[0]}",
                                                f"{uuid}.{versions[2]}"]
    _delete(server, uuid)
    assert listing(server, prefix=uuid[:8]) == []
    late = now_version()  # a version put after the whole bundle was deleted stays hidden
    answer = server.call("PUT", f"/bundles/{uuid}", USER,
                         params={"replica": "aws", "version": late},
                         json={"files": files, "creator_uid": 3})
    assert answer.status_code == 201
    assert listing(server, prefix=uuid[:4]) == [f for f in listing(server)
                                                if f.startswith(uuid[:4]) and
                                                not f.startswith(uuid)]
    assert f"{other}.{versions[0]}" in listing(server, prefix=other[:1])


# ---------------------------------------------------------------- upgrade


@pytest.fixture
def previous_release(tmp_path: Path) -> Path:
    """The previous release's ``hcafs`` package, from git (skipped without the history)."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs the git history of hcafs")
    found = subprocess.run(["git", "-C", str(REPO), "cat-file", "-e",
                            f"{PREVIOUS_RELEASE}^{{commit}}"], capture_output=True)
    if found.returncode != 0:
        pytest.skip(f"commit {PREVIOUS_RELEASE} is not in this clone")
    target = tmp_path / "previous"
    target.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", PREVIOUS_RELEASE, "hcafs"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def test_a_store_written_by_the_previous_release_is_listed_read_and_journalled(
        tmp_path: Path, previous_release: Path):
    staging = tmp_path / "staging"
    staging.mkdir()
    args = ["--staging-root", str(staging)]
    old = DSSServer(str(tmp_path / "old"), args=args, loopback_peers=False,  # older options
                    env={"PYTHONPATH": str(previous_release), "PYTHONSAFEPATH": "1"})
    old.start()
    try:
        no_events = old.call("GET", "/events", params={"replica": "aws"})
        assert no_events.status_code == 404  # the old code answers: it has no journal
        assert not (Path(old.data_dir) / "store" / "bundle-index").exists()
        files = [_register(old, staging, b"old release")]
        made = sorted((str(_uuid.uuid4()), now_version()) for _ in range(25))
        for uuid, version in made:
            _put(old, files, uuid, version)
        _delete(old, made[3][0], made[3][1])
        _delete(old, made[7][0])
        assert not (Path(old.data_dir) / "store" / "bundle-index").exists()
        listed_before = listing(old, per_page=10)
    finally:
        old.stop()
    live = [f"{u}.{v}" for n, (u, v) in enumerate(made) if n not in (3, 7)]
    assert listed_before == live

    new = DSSServer(str(tmp_path / "new"), args=[*args, "--data-dir", old.data_dir])
    new.start()
    try:
        assert listing(new, per_page=10) == live
        for fqid in live[:3]:
            uuid, version = fqid.split(".", 1)
            answer = new.call("GET", f"/bundles/{uuid}", params={"replica": "aws"})
            assert answer.status_code == 200 and answer.json()["bundle"]["version"] == version
        gone = new.call("GET", f"/bundles/{made[7][0]}", params={"replica": "aws"})
        assert gone.status_code == 404
        answer = new.call("GET", "/events", params={"replica": "aws", "per_page": 10})
        assert answer.status_code == 200
        events = [e for s in answer.json()["event_streams"] for e in s["events"]]
        assert sorted(e["fqid"] for e in events) == live
        assert {e["type"] for e in events} == {"create"}
        cursor = answer.json()["cursor"]
        uuid, version = str(_uuid.uuid4()), now_version()
        _put(new, files, uuid, version)  # new events come after the migrated ones
        answer = new.call("GET", "/events", params={"replica": "aws", "since": cursor})
        assert [e["fqid"] for s in answer.json()["event_streams"] for e in s["events"]] == [
            f"{uuid}.{version}"]
        assert listing(new, per_page=10) == sorted([*live, f"{uuid}.{version}"])
    finally:
        new.stop()
    # a second start neither indexes nor journals again
    store = Path(old.data_dir) / "store"
    before = sorted(str(p.relative_to(store)) for p in store.rglob("*") if ".tmp" not in
                    p.parts)
    new.start()
    try:
        assert listing(new, per_page=10) == sorted([*live, f"{uuid}.{version}"])
    finally:
        new.stop()
    after = sorted(str(p.relative_to(store)) for p in store.rglob("*") if ".tmp" not in
                   p.parts)
    assert after == before


def test_previous_release_import_is_the_package_from_git(previous_release: Path):
    """The old server really runs the archived code, not this checkout."""
    probe = subprocess.run([sys.executable, "-c", "import hcafs; print(hcafs.__file__)"],
                           env={**os.environ, "PYTHONPATH": str(previous_release),
                                "PYTHONSAFEPATH": "1"},
                           capture_output=True, text=True, check=True)
    assert probe.stdout.strip().startswith(str(previous_release))
