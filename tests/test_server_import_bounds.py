"""Bounded work and authorisation in the bulk DRS import of a real ``hcafs serve``.

Peers: :class:`fixtures.hostile_drs.HostileDrs` where a DRS server must misbehave (bundles
that contain themselves, objects declaring more bytes than the disk holds, checksums that
do not match), a real ``hcafs serve`` repository where an honest one is needed, with
:class:`fixtures.drs_repo.RewritingProxy` and :class:`fixtures.faults.FaultyHttpProxy` in
front of it to change what it offers or hold it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
import requests
from fixtures.drs_repo import RewritingProxy, start_repo, wait_finished
from fixtures.dss_server import ADMIN, OTHER, USER, DSSServer
from fixtures.faults import Fault, FaultyHttpProxy
from fixtures.hostile_drs import (
    HostileDrs,
    json_reply,
    only_error,
    run_import,
    start_importer,
    store_keys,
)

from hcafs.server.folders import folder_id
from hcafs.server.imports import JOB_BYTES, MAX_MEMBERS


@pytest.fixture
def hostile():
    server = HostileDrs()
    yield server
    server.close()


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    started = start_repo(tmp_path_factory.mktemp("repo"))
    yield started
    started.server.stop()


@pytest.fixture(scope="module")
def importer(tmp_path_factory):
    server = DSSServer(str(tmp_path_factory.mktemp("importer") / "server")).start()
    yield server
    server.stop()


def sbg(server: DSSServer, method: str, path: str, token: str, **kwargs) -> requests.Response:
    return requests.request(method, f"{server.url}{path}", timeout=30,
                            headers={"X-SBG-Auth-Token": token}, **kwargs)


def submit(server: DSSServer, items: list[dict], token: str = USER, **extra) -> str:
    answer = sbg(server, "POST", "/v2/bulk/drs/imports/create", token,
                 json={"items": items, **extra})
    assert answer.status_code == 200, answer.text
    return answer.json()["id"]


def run_import_as(server: DSSServer, items: list[dict], token: str, timeout: float = 120,
                  **extra) -> dict:
    return wait_finished(server, submit(server, items, token, **extra), token, timeout)[0]


# ---------------------------------------------------------------- fan-out


def _bundle(hostile: HostileDrs, object_id: str, members: list[str]) -> dict:
    return {"id": object_id, "size": 0, "checksums": [],
            "contents": [{"name": f"m{n}", "drs_uri": [hostile.uri(m)]}
                         for n, m in enumerate(members)]}


def test_an_object_answer_nested_too_deep_or_not_text_fails_its_item(tmp_path, hostile):
    """A DRS server's answer nested 100,000 levels deep (the JSON parser ran out of stack)
    or naming the object with a lone surrogate (no file name can hold it) is an error
    result of its item; the job finishes, and nothing crashed in the importer."""
    deep = b'{"a": ' * 100_000 + b"1" + b"}" * 100_000
    hostile.routes["/ga4gh/drs/v1/objects/deep"] = (200, {"Content-Type":
                                                          "application/json"}, deep)
    hostile.blob_object("odd", hostile.url("/data/odd"))
    status, headers, body = hostile.routes["/ga4gh/drs/v1/objects/odd"]
    hostile.routes["/ga4gh/drs/v1/objects/odd"] = (
        status, headers, body[:-1] + b', "name": "odd\\udcff.txt"}')
    importer = start_importer(tmp_path, "importer", hostile.host)
    try:
        job = run_import(importer, [{"drs_uri": hostile.uri(name), "project": "user/hostile"}
                                    for name in ("deep", "odd")])
        errors = [entry.get("error") for entry in job["result"]]
        assert [(e["status"], e["code"]) for e in errors] == [(502, 5103)] * 2, job
        assert "nests more than" in errors[0]["message"]
        assert "lone surrogate" in errors[1]["message"]
        assert "crashed" not in importer.log()
    finally:
        importer.stop()


def test_a_bundle_that_contains_itself_is_refused_after_two_reads(tmp_path, hostile):
    """Two members per level, both the bundle again under other ids: once 511 reads and
    256 results; now the item fails when the first member turns out to be the bundle."""
    loop = _bundle(hostile, "loop", ["loop-a", "loop-b"])
    for path in ("loop", "loop-a", "loop-b"):
        hostile.routes[f"/ga4gh/drs/v1/objects/{path}"] = json_reply(loop)
    hostile.routes["/ga4gh/drs/v1/objects/direct"] = json_reply(
        _bundle(hostile, "direct", ["direct"]))
    importer = start_importer(tmp_path, "importer", hostile.host)
    try:
        job = run_import(importer, [{"drs_uri": hostile.uri("loop"), "project": "user/loop"}])
        error = only_error(job)
        assert (error["status"], error["code"]) == (422, 5110) and "itself" in error["message"]
        assert hostile.count("/ga4gh/drs/v1/objects/") == 2
        job = run_import(importer, [{"drs_uri": hostile.uri("direct"),
                                     "project": "user/loop"}])
        assert only_error(job)["code"] == 5110
        assert hostile.count("/ga4gh/drs/v1/objects/direct") == 1  # known before fetching
    finally:
        importer.stop()


def test_the_member_budget_admits_a_bundle_of_1000_and_stops_a_larger_tree(
        tmp_path, hostile):
    # 1,000 members that cannot be imported (no checksum): the bundle is admitted whole
    wide = {"id": "wide", "size": 0, "checksums": [], "contents": [
        {"name": f"f{n:04d}", "drs_uri": [hostile.uri(f"leaf-{n}")]} for n in range(1000)]}
    hostile.routes["/ga4gh/drs/v1/objects/wide"] = json_reply(wide)
    leaf = {"id": "leaf", "size": 1, "checksums": [], "access_methods": []}
    hostile.routes.update({f"/ga4gh/drs/v1/objects/leaf-{n}": json_reply(leaf)
                           for n in range(1000)})

    def tree(path: str):  # every node a new bundle of 40 new nodes
        node = path.rsplit("/", 1)[1]
        return json_reply(_bundle(hostile, node, [f"{node}.{n}" for n in range(40)]))

    hostile.routes["/ga4gh/drs/v1/objects/tree*"] = tree
    importer = start_importer(tmp_path, "importer", hostile.host)
    try:
        job = run_import(importer, [{"drs_uri": hostile.uri("wide"), "project": "user/wide"}])
        assert len(job["result"]) == 1000
        assert {e["error"]["code"] for e in job["result"]} == {5105}  # each member's own
        before = hostile.count("/ga4gh/drs/v1/objects/tree")
        job = run_import(importer, [{"drs_uri": hostile.uri("tree"), "project": "user/tree"}])
        error = only_error(job)
        assert (error["status"], error["code"]) == (422, 5109), error
        assert f"more than {MAX_MEMBERS} members" in error["message"]
        assert hostile.count("/ga4gh/drs/v1/objects/tree") - before == MAX_MEMBERS + 1
    finally:
        importer.stop()


# ---------------------------------------------------------------- spool and checks


def test_an_object_larger_than_the_free_disk_is_refused_before_any_byte_is_fetched(
        tmp_path, hostile):
    free = shutil.disk_usage(tmp_path).free
    if free + 2**30 >= JOB_BYTES:
        pytest.skip("more free disk than a job's quota")
    for name, size in (("huge", free + 2**30), ("past-quota", JOB_BYTES + 1)):
        hostile.routes[f"/ga4gh/drs/v1/objects/{name}"] = json_reply({
            "id": name, "size": size,
            "checksums": [{"type": "sha-256", "checksum": "0" * 64}],
            "access_methods": [{"type": "https", "access_url": {"url": hostile.url("/blob")}}]})
    hostile.routes["/blob"] = (200, {}, b"never asked for")
    importer = start_importer(tmp_path, "importer", hostile.host)
    try:
        job = run_import(importer, [{"drs_uri": hostile.uri(name), "project": "user/huge"}
                                    for name in ("huge", "past-quota")])
        errors = [e["error"] for e in job["result"]]
        assert [(e["status"], e["code"]) for e in errors] == [(507, 5111)] * 2, errors
        assert "free disk" in errors[0]["message"] and "quota" in errors[1]["message"]
        assert hostile.count("/blob") == 0
    finally:
        importer.stop()


def test_a_failed_check_says_nothing_about_the_bytes(tmp_path, hostile):
    """The error of a mismatch names what the DRS object claimed, never the size or the
    hash of what was fetched."""
    data = b"bytes someone wants to learn about\n"
    for name, claim in (("short", {"size": len(data) + 5}),
                        ("wrong", {"checksums": [{"type": "sha-256", "checksum": "1" * 64}]}),
                        ("long", {"size": 3})):
        found = {"id": name, "size": len(data), "access_methods": [
            {"type": "https", "access_url": {"url": hostile.url("/blob")}}],
            "checksums": [{"type": "sha-256", "checksum": hashlib.sha256(data).hexdigest()}]}
        hostile.routes[f"/ga4gh/drs/v1/objects/{name}"] = json_reply({**found, **claim})
    hostile.routes["/blob"] = (200, {}, data)
    importer = start_importer(tmp_path, "importer", hostile.host)
    try:
        job = run_import(importer, [{"drs_uri": hostile.uri(n), "project": "user/checks"}
                                    for n in ("short", "wrong", "long")])
        assert [e["error"]["code"] for e in job["result"]] == [5104] * 3, job
        for entry in job["result"]:
            text = json.dumps(entry["error"])
            assert hashlib.sha256(data).hexdigest() not in text
            assert hashlib.md5(data).hexdigest() not in text
            assert str(len(data)) not in text
    finally:
        importer.stop()


def test_a_weak_checksum_is_verified_and_labelled(repo, importer):
    proxy = RewritingProxy(repo.server.url)
    try:
        fqid = repo.put_file(b"checked by md5 alone\n")
        md5 = hashlib.md5(b"checked by md5 alone\n").hexdigest()

        def md5_only(found: dict) -> dict:
            return dict(found, checksums=[{"type": "md5", "checksum": md5}])

        proxy.rewrites[f"/objects/{fqid}"] = md5_only
        job = run_import(importer, [
            {"drs_uri": f"drs://{proxy.host}/{fqid}", "project": "user/weak", "name": "md5"},
            {"drs_uri": repo.uri(fqid), "project": "user/weak", "name": "sha"}])
        labels = [e["resource"]["verified"] for e in job["result"]]
        assert labels == ["verified by md5 only", "verified by sha-256"], job
    finally:
        proxy.close()


# ---------------------------------------------------------------- who may do what


def test_an_unauthenticated_create_writes_nothing(repo, importer):
    item = {"drs_uri": repo.uri(repo.put_file(b"never")), "project": "user/anon"}
    before = store_keys(importer)
    for headers in ({}, {"X-SBG-Auth-Token": "wrong"}, {"Authorization": "Bearer wrong"},
                    {"Authorization": "Basic x"}):
        for _ in range(10):
            answer = requests.post(f"{importer.url}/v2/bulk/drs/imports/create",
                                   json={"items": [item]}, headers=headers, timeout=30)
            assert answer.status_code == 401
    assert store_keys(importer) == before


def test_import_records_are_their_owners_and_only_members_import_into_a_project(repo, importer):
    fqid = repo.put_file(b"the owner's bytes\n")
    other_fqid = repo.put_file(b"someone else's bytes\n")
    project = "user/private-records"
    job = run_import(importer, [{"drs_uri": repo.uri(fqid), "project": project,
                                 "name": "mine.txt", "metadata": {"secret": "tag"}}])
    record = job["result"][0]["resource"]
    assert "owner" not in record

    # records: the owner (and admins) read them; to anyone else they do not exist
    for token, status in ((USER, 200), (ADMIN, 200), (OTHER, 404)):
        assert sbg(importer, "GET", f"/v2/files/{record['id']}", token).status_code == status
    bulk = sbg(importer, "POST", "/v2/bulk/files/get", OTHER,
               json={"file_ids": [record["id"]]}).json()["items"]
    assert bulk[0]["error"]["code"] == 5002 and "resource" not in bulk[0]
    listed = sbg(importer, "GET", "/v2/files", OTHER, params={"project": project}).json()
    assert listed["items"] == []
    listed = sbg(importer, "GET", "/v2/files", USER, params={"project": project}).json()
    assert [i["id"] for i in listed["items"]] == [record["id"]]

    # Any import into another's project, by its id or its root folder: refused per item
    # before anything is fetched, and no name is added (a name planted there would make
    # the owner's own SKIP imports of that name land nothing).
    for where, conflict in ((("project", project), "OVERWRITE"), (("project", project), "SKIP"),
                            (("parent", record["parent"]), "RENAME"),
                            (("parent", record["parent"]), "SKIP")):
        for name in ("mine.txt", "planted.txt", "a/planted.txt"):
            job = run_import_as(importer, [{"drs_uri": repo.uri(other_fqid), where[0]: where[1],
                                            "name": name}], OTHER, conflict_resolution=conflict)
            error = only_error(job)
            assert (error["status"], error["code"]) == (403, 5001), (where, conflict, error)
            assert "was made by another identity" in error["message"]
    listed = sbg(importer, "GET", "/v2/files", USER, params={"project": project}).json()
    assert [i["id"] for i in listed["items"]] == [record["id"]]
    # ... and refused before its object is asked for: no request reaches the DRS host
    with socket.create_server(("127.0.0.1", 0)) as probe:
        probe.setblocking(False)
        host = f"127.0.0.1:{probe.getsockname()[1]}"
        job = run_import_as(importer, [{"drs_uri": f"drs://{host}/probe", "project": project,
                                        "name": "z"},
                                       {"drs_uri": f"drs://{host}/probe", "name": "z",
                                        "parent": record["parent"]}], OTHER)
        assert [(r["error"]["status"], r["error"]["code"]) for r in job["result"]] == \
            [(403, 5001)] * 2, job
        with pytest.raises(BlockingIOError):
            probe.accept()
    # ... and in one's own project it works
    job = run_import_as(importer, [{"drs_uri": repo.uri(other_fqid), "project": project,
                                    "name": "mine.txt"}], USER,
                        conflict_resolution="OVERWRITE")
    replaced = job["result"][0]["resource"]
    assert replaced["name"] == "mine.txt" and replaced["id"] != record["id"]

    # a project shared with OTHER (the members list of its root folder document)
    root = Path(importer.data_dir) / "store" / "import-folders" / replaced["parent"]
    document = json.loads(root.read_text())
    assert document["owner"] == "user@example.org"
    root.write_text(json.dumps(dict(document, members=["other@example.org"])))
    job = run_import_as(importer, [{"drs_uri": repo.uri(fqid), "project": project,
                                    "name": "mine.txt"}], OTHER,
                        conflict_resolution="OVERWRITE")
    assert "resource" in job["result"][0], job


def test_a_project_named_after_another_identity_is_that_identitys_to_make(repo, importer):
    """``user/...`` is user@'s: no one else can make it first and shut its owner out (any
    case of the name); a project named after no identity is its first importer's; the
    mount's ``hcafs/...`` projects are no one's to reserve."""
    fqid = repo.put_file(b"squat\n")
    for project in ("user/squatted", "USER/squatted2"):
        job = run_import_as(importer, [{"drs_uri": repo.uri(fqid), "project": project,
                                        "name": "x"}], OTHER)
        error = only_error(job)
        assert (error["status"], error["code"]) == (403, 5001), error
        assert "named after another identity (user)" in error["message"]
        assert f"import-folders/{folder_id(project, '')}" not in store_keys(importer)
    job = run_import_as(importer, [{"drs_uri": repo.uri(fqid), "project": "user/squatted",
                                    "name": "x"}], USER)
    assert "resource" in job["result"][0], job
    for project in ("nobody-known/first-come", "hcafs/0f3c"):
        job = run_import_as(importer, [{"drs_uri": repo.uri(fqid), "project": project,
                                        "name": "x"}], OTHER)
        assert "resource" in job["result"][0], (project, job)


# ---------------------------------------------------------------- fairness


def test_one_users_slow_source_does_not_delay_another_users_import(tmp_path, repo):
    """USER's four jobs all read a DRS server that hangs (a fault proxy holds every
    request); OTHER's job, from a server that answers, finishes meanwhile."""
    slow = FaultyHttpProxy(repo.server.url)
    hold = threading.Event()
    slow.when(Fault(hold=hold), path="/ga4gh/drs/v1/objects", times=1000)  # bulk too
    importer = DSSServer(str(tmp_path / "fair")).start()
    try:
        fqid = repo.put_file(b"fair share\n")
        held = [submit(importer, [{"drs_uri": f"drs://{slow.url.split('://')[1]}/{fqid}",
                                   "project": "user/slow", "name": f"s{n}"}])
                for n in range(4)]
        deadline = time.monotonic() + 30
        while sum(1 for s in slow.seen if s.fault) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sum(1 for s in slow.seen if s.fault) >= 2  # the slow jobs are running
        job = run_import_as(importer, [{"drs_uri": repo.uri(fqid), "project": "other/fast"}],
                            OTHER, timeout=60)
        assert "resource" in job["result"][0], job
        assert not hold.is_set()
        assert all(sbg(importer, "GET", f"/v2/bulk/drs/imports/{j}", USER).json()["state"]
                   != "FINISHED" for j in held)
        hold.set()
        for job_id in held:
            assert "resource" in wait_finished(importer, job_id, USER, 120)[0]["result"][0]
    finally:
        hold.set()
        importer.stop()
        slow.close()
