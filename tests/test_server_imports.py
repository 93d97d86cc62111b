"""The bulk DRS import API of a real ``hcafs serve``, importing from a second real server
that plays the external DRS repository (plain http on loopback).

Faults come from the repository itself (a blob altered on disk, objects that do not exist),
from addresses that do not answer, and from :class:`RewritingProxy`, which rewrites the
repository's DRS answers.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid as _uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from fixtures import free_port
from fixtures.drs_repo import (
    DrsRepo,
    RewritingProxy,
    max_in_period,
    max_in_window,
    periods,
    start_repo,
    wait_finished,
)
from fixtures.dss_server import ADMIN, OTHER, OUTSIDER, USER, DSSServer

from hcafs.checksums import checksum_bytes
from hcafs.remote.client import DSSClient
from hcafs.server.imports import WAIT_MAX, WAITERS_PER_IDENTITY

STATES = ["SUBMITTED", "RESOLVING", "RUNNING", "FINISHED"]
RATE_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> DrsRepo:
    started = start_repo(tmp_path_factory.mktemp("repo"))
    yield started
    started.server.stop()


@pytest.fixture(scope="module")
def importer(tmp_path_factory, repo) -> DSSServer:
    work = tmp_path_factory.mktemp("importer")
    table = work / "resolver.json"
    table.write_text(json.dumps({"dg.test": repo.server.url,
                                 "dg.plain": "http://example.invalid:1"}))
    server = DSSServer(str(work / "server"), args=["--drs-resolver", str(table)])
    yield server.start()
    server.stop()


def create(server: DSSServer, body: object, token: str | None = USER,
           headers: dict | None = None) -> requests.Response:
    headers = dict(headers or {})
    if token:
        headers["X-SBG-Auth-Token"] = token
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return requests.post(f"{server.url}/v2/bulk/drs/imports/create", data=data,
                         headers={"Content-Type": "application/json", **headers}, timeout=30)


def run_import(server: DSSServer, items: list[dict], token: str = USER, **extra) -> dict:
    """Submit, check the create answer, and wait for FINISHED."""
    answer = create(server, {"items": items, **extra}, token)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert set(body) == {"href", "id", "result", "state"}
    assert body["state"] == "SUBMITTED" and body["result"] == []
    assert body["id"].isdigit() and body["href"] == \
        f"{server.url}/v2/bulk/drs/imports/{body['id']}"
    for name in RATE_HEADERS:
        assert answer.headers[name].isdigit()
    job, seen = wait_finished(server, body["id"], token)
    assert seen == [s for s in STATES if s in seen]  # never backwards
    assert len(job["result"]) >= len(items)
    return job


def errors(job: dict) -> list[tuple[int, int, int]]:
    """(item, status, code) of every error result."""
    return [(r["item"], r["error"]["status"], r["error"]["code"])
            for r in job["result"] if "error" in r]


def read_through_dss(server: DSSServer, resource: dict) -> bytes:
    dss = resource["dss"]
    assert resource["id"] == f"{dss['uuid']}.{dss['version']}"
    location = DSSClient(server.url).file_url(dss["uuid"], dss["version"])
    return requests.get(location, timeout=30).content


def sbg_error(answer: requests.Response, status: int, code: int | None = None) -> dict:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert set(body) == {"status", "code", "message", "more_info"}
    assert body["status"] == status and isinstance(body["message"], str) and body["message"]
    assert body["code"] == (code if code is not None else status)
    for name in RATE_HEADERS:
        assert name in answer.headers
    return body


def log_answer(server: DSSServer, token: str | None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.get(f"{server.url}/internal/imports/log", headers=headers, timeout=30)


def import_log(server: DSSServer) -> dict:
    answer = log_answer(server, ADMIN)
    assert answer.status_code == 200, answer.text
    return answer.json()


def project(request) -> str:
    return f"tester/{request.node.name.replace('_', '-')[:60]}"


# ---------------------------------------------------------------- the happy path


def test_files_and_a_bundle_are_imported_and_readable_through_the_dss(repo, importer,
                                                                      request):
    cells = b'{"cells": [1, 2, 3]}\n'
    single = repo.put_file(cells, "cells.json")
    members = {"matrix.tsv": b"gene\tcount\nACTB\t12\n", "qc/report.txt": b"fine\n" * 100}
    bundle, _ = repo.put_bundle(members)
    loose = repo.put_file(b"no name given", "loose.bin")
    where = project(request)
    job = run_import(importer, [
        {"drs_uri": repo.uri(single), "project": where, "name": "cells.json",
         "metadata": {"sample": "S1", "n": 3}},
        {"drs_uri": repo.uri(bundle.split(".")[0]), "project": where, "name": "run1"},
        {"drs_uri": repo.uri(loose), "project": where},
    ], tags=["ICDC", "t2"])

    assert errors(job) == []
    assert [r["item"] for r in job["result"]] == [0, 1, 1, 2]
    assert job["started_on"] <= job["finished_on"]
    resources = [r["resource"] for r in job["result"]]
    expected = [cells, *members.values(), b"no name given"]
    for resource, data in zip(resources, expected, strict=True):
        assert read_through_dss(importer, resource) == data
        assert resource["size"] == len(data) and resource["type"] == "file"
        assert resource["project"] == where and resource["tags"] == ["ICDC", "t2"]
        assert resource["href"] == f"{importer.url}/v2/files/{resource['id']}"
        head = DSSClient(importer.url).head_file(resource["dss"]["uuid"],
                                                 resource["dss"]["version"])
        assert head.sha256 == checksum_bytes(data).sha256 and head.creator_uid == 0
    assert [r["name"] for r in resources] == ["cells.json", "matrix.tsv", "report.txt",
                                              loose]
    assert "member" not in resources[0] and "member" not in resources[3]
    assert [r["member"] for r in resources[1:3]] == ["matrix.tsv", "qc/report.txt"]
    assert resources[0]["metadata"] == {"sample": "S1", "n": 3}
    assert resources[1]["metadata"] == {}
    head = DSSClient(importer.url).head_file(resources[0]["dss"]["uuid"])
    assert head.content_type == "application/json"

    # folders: the project root, run1 below it, qc below run1
    root = resources[0]["parent"]
    assert resources[3]["parent"] == root
    run1 = requests.get(f"{importer.url}/v2/files/{resources[1]['parent']}",
                        headers={"X-SBG-Auth-Token": USER}, timeout=30).json()
    assert run1 | {"href": None} == {"id": resources[1]["parent"], "type": "folder",
                                     "name": "run1", "project": where, "parent": root,
                                     "href": None}
    qc = requests.get(f"{importer.url}/v2/files/{resources[2]['parent']}",
                      headers={"X-SBG-Auth-Token": USER}, timeout=30).json()
    assert (qc["name"], qc["parent"]) == ("qc", run1["id"])
    listing = requests.get(f"{importer.url}/v2/files", params={"project": where},
                           headers={"X-SBG-Auth-Token": USER}, timeout=30)
    assert listing.headers["X-Total-Matching-Query"] == "3"
    assert [(i["name"], i["type"]) for i in listing.json()["items"]] == sorted(
        [("cells.json", "file"), ("run1", "folder"), (loose, "file")])

    # the resources as the files API gives them, one by one and in bulk
    for resource in resources:
        one = requests.get(f"{importer.url}/v2/files/{resource['id']}",
                           headers={"X-SBG-Auth-Token": USER}, timeout=30)
        assert one.json() == resource
    bogus = f"{_uuid.uuid4()}.2020-01-01T000000.000000Z"
    bulk = requests.post(f"{importer.url}/v2/bulk/files/get",
                         json={"file_ids": [resources[0]["id"], bogus]},
                         headers={"X-SBG-Auth-Token": USER}, timeout=30).json()
    assert bulk["items"][0] == {"resource": resources[0]}
    assert bulk["items"][1]["error"]["status"] == 404
    assert bulk["items"][1]["error"]["code"] == 5002

    # imported files are DRS objects of the importer in turn
    drs = requests.get(f"{importer.url}/ga4gh/drs/v1/objects/{resources[0]['id']}",
                       timeout=30).json()
    assert {"type": "sha-256", "checksum": hashlib.sha256(cells).hexdigest()} in \
        drs["checksums"]

    history = next(j for j in import_log(importer)["jobs"] if j["id"] == job["id"])
    assert [h["state"] for h in history["history"]] == STATES
    assert [h["time"] for h in history["history"]] == sorted(h["time"] for h in
                                                               history["history"])


# ---------------------------------------------------------------- destinations and names


def test_conflict_resolution_skip_rename_overwrite(repo, importer, request):
    where = project(request)
    first, second = repo.put_file(b"first\n"), repo.put_file(b"second\n")

    def one(fqid: str, resolution: str | None = None, name: str = "same.txt") -> dict:
        extra = {"conflict_resolution": resolution} if resolution else {}
        job = run_import(importer, [{"drs_uri": repo.uri(fqid), "project": where,
                                     "name": name}], **extra)
        [result] = job["result"]
        return result

    original = one(first)["resource"]
    skipped = one(second)  # SKIP is the default
    assert skipped["error"]["status"] == 409 and skipped["error"]["code"] == 5003
    assert skipped["error"]["more_info"] == original["href"]
    assert one(second, "SKIP")["error"]["code"] == 5003
    assert one(second, "RENAME")["resource"]["name"] == "_1_same.txt"
    renamed = one(second, "RENAME")["resource"]
    assert renamed["name"] == "_2_same.txt"
    assert read_through_dss(importer, renamed) == b"second\n"
    overwritten = one(second, "OVERWRITE")["resource"]
    assert overwritten["name"] == "same.txt" and overwritten["id"] != original["id"]

    def named(name: str) -> list[str]:
        found = requests.get(f"{importer.url}/v2/files",
                             params={"project": where, "name": name},
                             headers={"X-SBG-Auth-Token": USER}, timeout=30).json()
        return [item["id"] for item in found["items"]]

    assert named("same.txt") == [overwritten["id"]]
    assert named("_2_same.txt") == [renamed["id"]]
    assert read_through_dss(importer, original) == b"first\n"  # files are never deleted

    # within one job, and into the same folder by its id
    job = run_import(importer, [
        {"drs_uri": repo.uri(first), "parent": original["parent"], "name": "twice"},
        {"drs_uri": repo.uri(second), "project": where, "name": "twice"}],
        conflict_resolution="RENAME")
    assert [r["resource"]["name"] for r in job["result"]] == ["twice", "_1_twice"]


def test_parent_folders_and_paths_in_names(repo, importer, request):
    where = project(request)
    fqid = repo.put_file(b"deep")
    job = run_import(importer, [{"drs_uri": repo.uri(fqid), "project": where,
                                 "name": "a/b/deep.txt"}])
    [deep] = [r["resource"] for r in job["result"]]
    folder_b = deep["parent"]
    job = run_import(importer, [
        {"drs_uri": repo.uri(fqid), "parent": folder_b, "name": "beside.txt"},
        {"drs_uri": repo.uri(fqid), "parent": "0" * 24, "name": "nowhere.txt"},
        {"drs_uri": repo.uri(fqid), "parent": folder_b, "name": "deep.txt/inside"}])
    beside = job["result"][0]["resource"]
    assert (beside["parent"], beside["project"]) == (folder_b, where)
    assert errors(job) == [(1, 404, 5026), (2, 409, 5022)]
    answer = requests.get(f"{importer.url}/v2/files", params={"parent": folder_b},
                          headers={"X-SBG-Auth-Token": USER}, timeout=30)
    assert [i["name"] for i in answer.json()["items"]] == ["beside.txt", "deep.txt"]


# ---------------------------------------------------------------- per-item failures


def test_failures_are_per_item_and_the_rest_of_the_job_succeeds(repo, importer, request,
                                                                  tmp_path):
    where = project(request)
    good = repo.put_file(b"good bytes\n", "good.txt")
    original = b"A" * 4096
    altered = repo.put_file(original, "altered.bin")
    path = repo.blob_path(altered)
    path.write_bytes(b"B" * 4096)  # same size, other bytes: the DRS checksums now lie
    bundle, _ = repo.put_bundle({"x.txt": b"x", "y.txt": b"y"})
    closed = free_port()
    uris = [
        repo.uri(good),                              # 0 ok
        "garbage",                                   # 1 malformed
        "drs://",                                    # 2 malformed
        "drs://justahost",                           # 3 malformed: no id
        "drs://127.0.0.1:99999/abc",                 # 4 malformed: port
        "drs://no-such-host.invalid/abc",            # 5 unknown host
        "drs://dg.nowhere:abc",                      # 6 unresolvable prefix
        repo.uri(str(_uuid.uuid4())),                # 7 404
        repo.uri(altered),                           # 8 checksum mismatch
        f"drs://127.0.0.1:{closed}/abc",             # 9 nothing listens
        repo.uri(bundle),                            # 10 ok, two members
        "drs://has space/x",                         # 11 malformed
    ]
    job = run_import(importer, [{"drs_uri": u, "project": where, "name": f"n{i}"}
                                for i, u in enumerate(uris)])
    assert errors(job) == [(1, 400, 5101), (2, 400, 5101), (3, 400, 5101), (4, 400, 5101),
                           (5, 404, 5102), (6, 404, 5102), (7, 404, 5002), (8, 422, 5104),
                           (9, 502, 5103), (11, 400, 5101)]
    ok = [r for r in job["result"] if "resource" in r]
    assert [r["item"] for r in ok] == [0, 10, 10]
    assert [read_through_dss(importer, r["resource"]) for r in ok] == [b"good bytes\n",
                                                                      b"x", b"y"]
    assert "sha-256" in job["result"][8]["error"]["message"]
    # nothing of the altered file reached the importer's store
    blobs = [p.name for p in (Path(importer.data_dir) / "store" / "blobs").iterdir()]
    for data in (original, b"B" * 4096):
        assert not any(b.startswith(hashlib.sha256(data).hexdigest()) for b in blobs)
    listing = requests.get(f"{importer.url}/v2/files", params={"project": where},
                           headers={"X-SBG-Auth-Token": USER}, timeout=30).json()
    assert [i["name"] for i in listing["items"]] == ["n0", "n10"]


def _on_object(change):
    """Rewrite DRS objects only (not the access answers under the same path)."""
    return lambda body: change(body) if "checksums" in body else body


def test_checksums_sizes_and_access_methods_rewritten_by_a_proxy(repo, importer, request):
    where = project(request)
    proxy = RewritingProxy(repo.server.url)
    try:
        data = {name: f"payload {name}\n".encode() * 20 for name in
                ("wrong_sha", "md5_only", "access_id_only", "unknown_sum", "size",
                 "s3_only", "trunc512", "mime_ok", "mime_bad")}
        fqids = {name: repo.put_file(payload) for name, payload in data.items()}

        def sums(name: str, body: dict, kinds: list[str]) -> dict:
            return dict(body, checksums=[c for c in body["checksums"] if c["type"] in kinds])

        changes = {
            "wrong_sha": lambda b: dict(b, checksums=[{"type": "sha-256",
                                                       "checksum": "0" * 64}]),
            "md5_only": lambda b: sums("md5_only", b, ["md5"]),
            "access_id_only": lambda b: dict(b, access_methods=[
                {"type": "https", "access_id": "https"}]),
            "unknown_sum": lambda b: dict(b, checksums=[{"type": "sha3-256",
                                                         "checksum": "ab" * 32}]),
            "size": lambda b: dict(b, size=b["size"] + 1),
            "s3_only": lambda b: dict(b, access_methods=[
                {"type": "s3", "access_url": {"url": "s3://bucket/key"}}]),
            "trunc512": lambda b: dict(b, checksums=[{"type": "trunc512", "checksum":
                                                      hashlib.sha512(data["trunc512"])
                                                      .digest()[:24].hex()}]),
            "mime_ok": lambda b: dict(b, mime_type="text/x-hcafs"),
            "mime_bad": lambda b: dict(b, mime_type="text/plain\r\nX-Evil: 1"),
        }
        for name, change in changes.items():
            proxy.rewrites[fqids[name].split(".")[0]] = _on_object(change)
        names = list(changes)
        job = run_import(importer, [{"drs_uri": f"drs://{proxy.host}/{fqids[n]}",
                                     "project": where, "name": n} for n in names])
        outcome = {names[r["item"]]: r for r in job["result"]}
        for name in ("md5_only", "access_id_only", "trunc512", "mime_ok", "mime_bad"):
            assert read_through_dss(importer, outcome[name]["resource"]) == data[name]
        types = {name: DSSClient(importer.url).head_file(
            outcome[name]["resource"]["dss"]["uuid"]).content_type
            for name in ("mime_ok", "mime_bad")}  # names without a known extension
        assert types == {"mime_ok": "text/x-hcafs", "mime_bad": "application/octet-stream"}
        for name, code in (("wrong_sha", 5104), ("size", 5104), ("unknown_sum", 5105),
                           ("s3_only", 5105)):
            assert outcome[name]["error"]["code"] == code, outcome[name]
            assert outcome[name]["error"]["status"] == 422
    finally:
        proxy.close()


def test_compact_identifiers_go_through_the_resolver_table(repo, importer, request):
    where = project(request)
    fqid = repo.put_file(b"compact")
    job = run_import(importer, [
        {"drs_uri": f"drs://dg.test:{fqid}", "project": where, "name": "colon"},
        {"drs_uri": f"drs://dg.test/{fqid}", "project": where, "name": "slash"},
        {"drs_uri": f"drs://DG.TEST:{fqid}", "project": where, "name": "upper"},
        {"drs_uri": "drs://dg.other:abc", "project": where, "name": "unknown"},
        {"drs_uri": "drs://dg.plain:abc", "project": where, "name": "plain-http"}])
    assert [read_through_dss(importer, r["resource"]) for r in job["result"][:3]] == \
        [b"compact"] * 3
    assert errors(job) == [(3, 404, 5102), (4, 422, 5105)]
    assert "plain http" in job["result"][4]["error"]["message"]


# ---------------------------------------------------------------- refusals and auth


def test_bad_requests_are_refused_whole_with_the_sbg_error_shape(repo, importer, request):
    where = project(request)
    item = {"drs_uri": repo.uri(repo.put_file(b"r")), "project": where}
    sbg_error(create(importer, {"items": [item] * 101}), 400)
    sbg_error(create(importer, {"items": []}), 400)
    sbg_error(create(importer, {"tags": ["x"]}), 400)
    sbg_error(create(importer, {"items": item}), 400)
    sbg_error(create(importer, {"items": [item], "conflict_resolution": "MERGE"}), 400)
    sbg_error(create(importer, {"items": [item], "tags": "x"}), 400)
    sbg_error(create(importer, {"items": [dict(item, parent="a" * 24)]}), 400, 5031)
    sbg_error(create(importer, {"items": [{"drs_uri": item["drs_uri"]}]}), 400, 5029)
    sbg_error(create(importer, {"items": [dict(item, project="no-slash")]}), 400, 3012)
    sbg_error(create(importer, {"items": [{"drs_uri": "x", "parent": "xyz"}]}), 400)
    sbg_error(create(importer, {"items": [dict(item, metadata=[1])]}), 400)
    sbg_error(create(importer, {"items": [dict(item, name="a//b")]}), 400)
    sbg_error(create(importer, {"items": [dict(item, name="../up")]}), 400)
    sbg_error(create(importer, {"items": [{"project": where}]}), 400)
    sbg_error(create(importer, {"items": ["drs://x/y"]}), 400)
    sbg_error(create(importer, "{not json"), 400)

    sbg_error(create(importer, {"items": [item]}, token=None), 401)
    sbg_error(create(importer, {"items": [item]}, token="wrong-token"), 401)
    sbg_error(create(importer, {"items": [item]}, token=OUTSIDER), 403)
    bearer = create(importer, {"items": [item]}, token=None,
                    headers={"Authorization": f"Bearer {USER}"})
    assert bearer.status_code == 200, bearer.text
    job_id = bearer.json()["id"]
    wait_finished(importer, job_id)

    def get(token: str, job: str = job_id) -> requests.Response:
        return requests.get(f"{importer.url}/v2/bulk/drs/imports/{job}",
                            headers={"X-SBG-Auth-Token": token}, timeout=30)

    assert get(ADMIN).status_code == 200
    sbg_error(get(OTHER), 404)
    sbg_error(get(USER, "12345"), 404)
    sbg_error(get(USER, "not-a-job"), 404)
    sbg_error(requests.get(f"{importer.url}/v2/files/{_uuid.uuid4()}",
                           headers={"X-SBG-Auth-Token": USER}, timeout=30), 404, 5002)

    assert log_answer(importer, None).status_code == 401
    assert log_answer(importer, USER).status_code == 403
    calls = import_log(importer)["calls"]
    refused = [c for c in calls if not c["accepted"]]
    assert any(c["items"] == 101 and "at most 100" in c["reason"] for c in refused)
    assert not any(c["identity"] is None for c in refused)  # no token: nothing written
    assert any(c["identity"] == "outsider@example.org" for c in refused)
    assert all(c["items"] <= 100 for c in calls if c["accepted"])
    assert any(c["job"] == job_id for c in calls if c["accepted"])


def test_an_idempotency_key_makes_a_repeated_create_return_the_same_job(repo, importer,
                                                                         request):
    item = {"drs_uri": repo.uri(repo.put_file(b"once")), "project": project(request),
            "name": "once.txt"}
    key = {"Idempotency-Key": str(_uuid.uuid4())}
    first = create(importer, {"items": [item]}, headers=key)
    again = create(importer, {"items": [item]}, headers=key)
    assert first.status_code == again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    sbg_error(create(importer, {"items": [item, item]}, headers=key), 422)
    job, _ = wait_finished(importer, first.json()["id"])
    assert errors(job) == [] and len(job["result"]) == 1  # imported once, not twice
    # (another identity's job for the same name, after the first one: no race for it)
    other = create(importer, {"items": [item]}, token=OTHER, headers=key)
    assert other.json()["id"] != first.json()["id"]
    calls = [c for c in import_log(importer)["calls"] if c["job"] == first.json()["id"]]
    assert [(c["reason"], c["replay"]) for c in calls] == \
        [(None, False), ("repeated Idempotency-Key", True)]


# ---------------------------------------------------------------- rate limits


def test_a_poll_that_names_the_jobs_version_is_answered_304(repo, importer, request):
    fqid = repo.put_file(b"polled with an etag\n")
    items = [{"drs_uri": repo.uri(fqid), "project": project(request), "name": f"e{n}"}
             for n in range(3)]
    job = run_import(importer, items)
    url, auth = f"{importer.url}/v2/bulk/drs/imports/{job['id']}", {"X-SBG-Auth-Token": USER}
    full = requests.get(url, headers=auth, timeout=30)
    etag = full.headers["ETag"]
    assert full.status_code == 200 and etag.startswith('"') and full.json() == job
    again = requests.get(url, headers={**auth, "If-None-Match": etag}, timeout=30)
    assert again.status_code == 304 and again.content == b"" and again.headers["ETag"] == etag
    for name in RATE_HEADERS:  # a 304 still tells the caller its budget
        assert again.headers[name].isdigit()
    stale = requests.get(url, headers={**auth, "If-None-Match": '"0123", W/' + etag},
                         timeout=30)
    assert stale.status_code == 304  # a weak match of any listed tag
    other = requests.get(url, headers={**auth, "If-None-Match": '"not-it"'}, timeout=30)
    assert other.status_code == 200 and other.json() == job
    # another identity holding the tag learns nothing: the job does not exist for it
    foreign = requests.get(url, headers={"X-SBG-Auth-Token": OTHER, "If-None-Match": etag},
                           timeout=30)
    assert foreign.status_code == 404
    # the tag names the stored version: a job that moves on gets a new one
    job2 = create(importer, {"items": items[:1]}).json()
    url2 = f"{importer.url}/v2/bulk/drs/imports/{job2['id']}"
    first = requests.get(url2, headers=auth, timeout=30)
    wait_finished(importer, job2["id"], USER)
    last = requests.get(url2, headers={**auth, "If-None-Match": first.headers["ETag"]},
                        timeout=30)
    if first.json()["state"] == "FINISHED":  # it was done before the first look
        assert last.status_code == 304 and last.headers["ETag"] == first.headers["ETag"]
    else:
        assert (last.status_code, last.json()["state"]) == (200, "FINISHED")
        assert last.headers["ETag"] != first.headers["ETag"]


def test_a_poll_that_prefers_to_wait_is_held_until_its_job_changes(repo, tmp_path):
    """``Prefer: wait=N`` with the current tag: the answer comes when the job changes (here
    when the file budget lets its last files in), or after N seconds as a 304; a malformed
    preference is no wait; another identity still gets its 404 at once; and one process
    holds only a few polls of one identity at a time, answering the others at once."""
    server = DSSServer(str(tmp_path / "held"), args=[
        "--import-rate-limit", "2", "--import-rate-window", "3", "--workers", "1"]).start()
    try:
        fqid = repo.put_file(b"a held poll\n")
        items = [{"drs_uri": repo.uri(fqid), "project": "tester/held", "name": f"h{n}"}
                 for n in range(4)]
        job_id = create(server, {"items": items}).json()["id"]
        url, auth = f"{server.url}/v2/bulk/drs/imports/{job_id}", {"X-SBG-Auth-Token": USER}
        deadline = time.monotonic() + 20
        while True:  # the first two files are in; the others wait for the window
            first = requests.get(url, headers=auth, timeout=30)
            if len(first.json()["result"]) == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert len(first.json()["result"]) == 2, first.json()
        started = time.monotonic()
        while True:  # held polls, until the window lets the others in
            begun = time.monotonic()
            held = requests.get(url, headers={**auth, "If-None-Match": first.headers["ETag"],
                                              "Prefer": "respond-async, wait=8"}, timeout=30)
            assert held.headers["Preference-Applied"] == f"wait={WAIT_MAX}"  # the cap
            if held.status_code == 200:
                break
            assert held.status_code == 304 and time.monotonic() - begun >= WAIT_MAX - 0.2
            assert time.monotonic() - started < 15, "the job never moved on"
        assert len(held.json()["result"]) > 2, held.text
        assert time.monotonic() - started >= 0.3  # it waited for the change
        job, _ = wait_finished(server, job_id, USER)
        etag = requests.get(url, headers=auth, timeout=30).headers["ETag"]
        started = time.monotonic()
        done = requests.get(url, headers={**auth, "If-None-Match": etag, "Prefer": "wait=1"},
                            timeout=30)
        assert done.status_code == 304 and done.headers["Preference-Applied"] == "wait=1"
        assert 0.9 <= time.monotonic() - started < 3.0  # a finished job never changes
        for bad in ("wait=soon", "wait=-1", "wait=99999999", "wait", "wait=\u00b2"):
            started = time.monotonic()
            quick = requests.get(url, headers={**auth, "If-None-Match": etag, "Prefer": bad},
                                 timeout=30)
            assert quick.status_code == 304 and "Preference-Applied" not in quick.headers
            assert time.monotonic() - started < 0.9, bad
        started = time.monotonic()
        foreign = requests.get(url, headers={"X-SBG-Auth-Token": OTHER, "If-None-Match": etag,
                                             "Prefer": "wait=3"}, timeout=30)
        assert foreign.status_code == 404 and time.monotonic() - started < 0.9
        # more held polls at once than one process holds for one identity: the rest are
        # answered now
        def poll(_):
            begun = time.monotonic()
            answer = requests.get(url, headers={**auth, "If-None-Match": etag,
                                                "Prefer": "wait=3"}, timeout=30)
            return answer.status_code, "Preference-Applied" in answer.headers, \
                time.monotonic() - begun
        with ThreadPoolExecutor(10) as pool:
            answers = list(pool.map(poll, range(10)))
        assert all(status == 304 for status, _, _ in answers)
        assert sum(1 for _, applied, _ in answers if applied) == WAITERS_PER_IDENTITY, answers
        assert all(took < 1.5 for _, applied, took in answers if not applied), answers
        assert job["state"] == "FINISHED"
    finally:
        server.stop()


@pytest.mark.parametrize("kind", ["fixed", "sliding"])
def test_a_job_past_the_file_budget_waits_for_the_window_and_finishes(repo, tmp_path, kind):
    server = DSSServer(str(tmp_path / "limited"), args=[
        "--import-rate-limit", "20", "--import-rate-window", "3",
        "--import-window-kind", kind]).start()
    try:
        fqid = repo.put_file(b"rate limited\n")
        items = [{"drs_uri": repo.uri(fqid), "project": "tester/rate", "name": f"f{n:02d}"}
                 for n in range(50)]
        answer = create(server, {"items": items})
        assert answer.status_code == 200, answer.text
        assert answer.headers["X-RateLimit-Limit"] == "20"
        job_id = answer.json()["id"]
        remaining, partial = set(), set()
        while True:
            polled = requests.get(f"{server.url}/v2/bulk/drs/imports/{job_id}",
                                  headers={"X-SBG-Auth-Token": USER}, timeout=30)
            remaining.add(polled.headers["X-RateLimit-Remaining"])
            job = polled.json()
            if job["state"] == "FINISHED":
                break
            if job["state"] == "RUNNING":
                partial.add(len(job["result"]))
            time.sleep(0.2)
        assert errors(job) == [] and len(job["result"]) == 50
        assert "0" in remaining and {20, 40} & partial  # it waited, RUNNING, part done
        admitted = [a["time"] for a in import_log(server)["admissions"]
                    if a["job"] == job_id]
        assert len(admitted) == 50
        if kind == "sliding":
            assert max_in_window(admitted, 3.0) <= 20
        else:  # three periods: 20, 20 and 10, each opening once the one before has ended
            assert [count for _, count in periods(admitted, 3.0)] == [20, 20, 10]
        assert max(admitted) - min(admitted) >= 6.0  # two windows had to reopen
        # the units fetched ahead of their admission had their documents staged: all placed
        stores = glob.glob(str(tmp_path / "limited" / "**" / ".tmp"), recursive=True)
        assert stores and [name for store in stores for _, _, names in os.walk(store)
                           for name in names] == []
    finally:
        server.stop()


def test_the_request_budget_answers_429_with_code_1000(repo, tmp_path):
    server = DSSServer(str(tmp_path / "requests"), args=[
        "--import-request-limit", "5", "--import-request-window", "60"]).start()
    try:
        for _ in range(5):
            answer = requests.get(f"{server.url}/v2/files/{_uuid.uuid4()}",
                                  headers={"X-SBG-Auth-Token": USER}, timeout=30)
            assert answer.status_code == 404
        item = {"drs_uri": repo.uri(repo.put_file(b"429")), "project": "tester/requests"}
        limited = create(server, {"items": [item]})
        body = sbg_error(limited, 429, 1000)
        assert "Rate limit exceeded" in body["message"]
        assert limited.headers["X-RateLimit-Limit"] == "5"
        assert limited.headers["X-RateLimit-Remaining"] == "0"
        assert time.time() < int(limited.headers["X-RateLimit-Reset"]) <= time.time() + 61
        assert 0 < int(limited.headers["Retry-After"]) <= 60
        assert create(server, {"items": [item]}, token=OTHER).status_code == 200
        refused = [c for c in import_log(server)["calls"] if not c["accepted"]]
        assert [(c["identity"], c["items"]) for c in refused] == [("user@example.org", 1)]
    finally:
        server.stop()


def test_many_requests_of_one_identity_at_once_are_not_refused_under_the_limit(tmp_path):
    """64 clients of one identity at the same instant, far below the request limit, on two
    workers: losing the shared budget's compare-and-swap to each other is no 429."""
    server = DSSServer(str(tmp_path / "contended"), args=["--workers", "2"]).start()
    try:
        barrier = threading.Barrier(64)

        def client(_: int) -> list[int]:
            with requests.Session() as session:
                barrier.wait(timeout=60)
                return [session.get(f"{server.url}/v2/files/{_uuid.uuid4()}",
                                    headers={"X-SBG-Auth-Token": USER},
                                    timeout=60).status_code for _ in range(4)]

        with ThreadPoolExecutor(64) as pool:
            statuses = [code for codes in pool.map(client, range(64)) for code in codes]
        assert statuses.count(404) == len(statuses) == 256, sorted(set(statuses))
    finally:
        server.stop()


def test_jobs_survive_a_crash_and_resume_within_the_budget(repo, tmp_path):
    server = DSSServer(str(tmp_path / "crash"), args=[
        "--import-rate-limit", "4", "--import-rate-window", "2"]).start()
    try:
        fqid = repo.put_file(b"survivor\n" * 1000)
        items = [{"drs_uri": repo.uri(fqid), "project": "tester/crash", "name": f"s{n}"}
                 for n in range(10)]
        job_id = create(server, {"items": items}).json()["id"]
        deadline = time.monotonic() + 20
        while True:
            job = requests.get(f"{server.url}/v2/bulk/drs/imports/{job_id}",
                               headers={"X-SBG-Auth-Token": USER}, timeout=30).json()
            if job["state"] == "RUNNING" and len(job["result"]) >= 4:
                break
            assert time.monotonic() < deadline
            time.sleep(0.05)
        server.stop(signal.SIGKILL)
        server.start()
        job, _ = wait_finished(server, job_id)
        assert errors(job) == []
        assert sorted(r["resource"]["name"] for r in job["result"]) == \
            sorted(i["name"] for i in items)
        assert "resumed 1 DRS import jobs" in server.log()
        admitted = [a["time"] for a in import_log(server)["admissions"]
                    if a["job"] == job_id]
        assert len(admitted) >= 10 and max_in_period(admitted, 2.0) <= 4
        server.restart()
        assert wait_finished(server, job_id)[0] == job
    finally:
        server.stop()


def test_import_options_come_from_the_environment_and_the_config_file(repo, tmp_path):
    """docs/drs.md options: [serve] keys and HCAFS_SERVE_* variables, like the others."""
    table = tmp_path / "resolver.json"
    table.write_text(json.dumps({"dg.plain": "http://example.invalid:1"}))
    config = tmp_path / "config.toml"
    config.write_text(f"""[serve]
import-rate-limit = 7
import_rate_window = 30
drs-allow-http = true
drs-resolver = "{table}"
""")
    server = DSSServer(str(tmp_path / "configured"), env={
        "HCAFS_CONFIG": str(config), "HCAFS_SERVE_IMPORT_REQUEST_LIMIT": "40",
        "HCAFS_SERVE_IMPORT_WINDOW_KIND": "sliding"}).start()
    try:
        job = run_import(server, [{"drs_uri": "drs://dg.plain:abc", "project": "tester/cfg"}])
        # http to a host that is not loopback was allowed: the failure is the unknown host
        assert errors(job) == [(0, 404, 5102)]
        limits = import_log(server)["limits"]
        assert (limits["files"], limits["files_window_seconds"], limits["requests"],
                limits["window_kind"]) == (7, 30.0, 40, "sliding")
        statuses = [requests.get(f"{server.url}/v2/files/{_uuid.uuid4()}",
                                 headers={"X-SBG-Auth-Token": USER}, timeout=30)
                    for _ in range(40)]
        assert statuses[0].headers["X-RateLimit-Limit"] == "7"  # the file budget
        assert statuses[-1].status_code == 429
        assert statuses[-1].headers["X-RateLimit-Limit"] == "40"  # the request budget
    finally:
        server.stop()


def test_an_unknown_window_kind_is_refused_before_listening(tmp_path):
    result = subprocess.run([sys.executable, "-m", "hcafs", "serve", "--port", "0",
                             "--data-dir", str(tmp_path / "d")],
                            env={**os.environ, "HCAFS_SERVE_IMPORT_WINDOW_KIND": "leaky"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0, result.stderr
    assert "--import-window-kind must be fixed or sliding, not 'leaky'" in result.stderr
    assert "listening on" not in result.stderr
