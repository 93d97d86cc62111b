"""Bulk DRS resolution, against real ``hcafs serve`` peers behind a counting relay.

The peers are DRS repositories (``hcafs serve`` with ``--drs-max-bulk``, ``--drs-no-bulk``
and ``--drs-auth bearer``); the importer is another ``hcafs serve``.  Every call the
importer makes to a peer passes a :class:`fixtures.relay.CountingRelay`, which counts it.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from fixtures.drs_repo import start_repo, wait_finished
from fixtures.dss_server import USER, DSSServer
from fixtures.relay import CountingRelay

from hcafs.remote.client import DSSClient

DRS = "/ga4gh/drs/v1"


def write_credentials(path, entries: list[dict]) -> str:
    with open(path, "w") as handle:
        json.dump({"entries": entries}, handle)
    os.chmod(path, 0o600)
    return str(path)


def submit(server: DSSServer, items: list[dict], token: str = USER) -> str:
    answer = requests.post(f"{server.url}/v2/bulk/drs/imports/create", json={"items": items},
                           headers={"X-SBG-Auth-Token": token}, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()["id"]


def content(number: int) -> bytes:
    return f"bulk object {number}\n".encode() * (1 + number % 7)


def read_back(server: DSSServer, resource: dict) -> bytes:
    dss = resource["dss"]
    location = DSSClient(server.url).file_url(dss["uuid"], dss["version"])
    return requests.get(location, timeout=30).content


@pytest.fixture(scope="module")
def protected(tmp_path_factory):
    """A bearer-protected repository whose bulk length is 100, behind a relay."""
    repo = start_repo(tmp_path_factory.mktemp("bulk-repo"),
                      ("--drs-max-bulk", "100", "--drs-auth", "bearer"))
    relay = CountingRelay(repo.server.url)
    yield repo, relay
    relay.close()
    repo.server.stop()


def test_the_served_bulk_length_is_announced_and_enforced(protected):
    repo, _ = protected
    info = requests.get(f"{repo.server.url}{DRS}/service-info", timeout=30).json()
    assert info["maxBulkRequestLength"] == 100
    auth = {"Authorization": f"Bearer {USER}"}
    too_many = requests.post(f"{repo.server.url}{DRS}/objects", headers=auth, timeout=30,
                             json={"bulk_object_ids": [f"x{n}" for n in range(101)]})
    assert too_many.status_code == 413 and too_many.json()["status_code"] == 413
    fine = requests.post(f"{repo.server.url}{DRS}/objects", headers=auth, timeout=30,
                         json={"bulk_object_ids": [f"x{n}" for n in range(100)]})
    assert fine.status_code == 200 and fine.json()["summary"]["unresolved"] == 100
    unauthenticated = requests.post(f"{repo.server.url}{DRS}/objects", timeout=30,
                                    json={"bulk_object_ids": ["x"]})
    assert unauthenticated.status_code == 401


def test_250_items_take_three_bulk_calls_three_access_calls_and_no_single_gets(
        tmp_path, protected):
    repo, relay = protected
    with ThreadPoolExecutor(8) as pool:
        fqids = list(pool.map(lambda n: repo.put_file(content(n), f"b{n}"), range(250)))
    credentials = write_credentials(tmp_path / "credentials.json", [
        {"match": relay.host, "bearer": USER, "users": ["user@example.org"]}])
    importer = DSSServer(str(tmp_path / "importer"), args=[
        "--drs-credentials", credentials, "--import-rate-limit", "100000"]).start()
    try:
        before = len(relay.passed)
        jobs = [submit(importer, [{"drs_uri": f"drs://{relay.host}/{fqid}",
                                   "project": "user/bulk", "name": f"n{n:03d}"}
                                  for n, fqid in enumerate(fqids) if n // 100 == part])
                for part in range(3)]
        results = [r for job in jobs for r in wait_finished(importer, job, USER, 180)[0]
                   ["result"]]
        assert all("resource" in r for r in results), [r for r in results if "error" in r][:3]
        by_name = {r["resource"]["name"]: r["resource"] for r in results}
        for n in (0, 1, 99, 100, 249):
            assert read_back(importer, by_name[f"n{n:03d}"]) == content(n)
        calls = relay.passed[before:]
        posts = [c for c in calls if c.method == "POST" and c.path == f"{DRS}/objects"]
        access = [c for c in calls if c.method == "POST" and c.path == f"{DRS}/objects/access"]
        singles = [c for c in calls if c.method == "GET" and
                   c.path.startswith(f"{DRS}/objects/")]
        blobs = [c for c in calls if c.method == "GET" and c.path.startswith(f"{DRS}/blobs/")]
        assert 1 <= len(posts) <= 3, [c.path for c in calls if c.method == "POST"]
        assert 1 <= len(access) <= 3
        assert singles == []
        assert len(blobs) == 250
        # read once by each worker process that runs a job (default: one per core)
        assert sum(1 for c in calls if "service-info" in c.path) <= (os.cpu_count() or 1)
    finally:
        importer.stop()


def test_a_server_without_bulk_is_read_one_object_at_a_time(tmp_path):
    repo = start_repo(tmp_path / "plain-repo", ("--drs-no-bulk",))
    relay = CountingRelay(repo.server.url)
    importer = DSSServer(str(tmp_path / "importer"),
                         args=["--import-rate-limit", "100000"]).start()
    try:
        info = requests.get(f"{repo.server.url}{DRS}/service-info", timeout=30).json()
        assert "maxBulkRequestLength" not in info
        refused = requests.post(f"{repo.server.url}{DRS}/objects", timeout=30,
                                json={"bulk_object_ids": ["x"]})
        assert refused.status_code == 404
        fqids = [repo.put_file(content(n), f"p{n}") for n in range(12)]
        job = wait_finished(importer, submit(importer, [
            {"drs_uri": f"drs://{relay.host}/{fqid}", "project": "user/plain"}
            for fqid in fqids]), USER, 120)[0]
        assert all("resource" in r for r in job["result"]), job
        assert [read_back(importer, r["resource"]) for r in job["result"]] == \
            [content(n) for n in range(12)]
        assert relay.count("POST", f"{DRS}/objects") == 0
        singles = [c for c in relay.passed if c.method == "GET" and
                   c.path.startswith(f"{DRS}/objects/")]
        assert sorted(c.path.rsplit("/", 1)[1] for c in singles) == sorted(fqids)
        assert hashlib.sha256(read_back(importer, job["result"][3]["resource"])).hexdigest() \
            == hashlib.sha256(content(3)).hexdigest()
    finally:
        importer.stop()
        relay.close()
        repo.server.stop()
