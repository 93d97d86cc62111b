"""GA4GH DRS v1 endpoints of a real ``hcafs serve``: objects, bundles, access, service-info,
bulk, and ``{msg, status_code}`` errors.  Reads need no token."""

from __future__ import annotations

import hashlib
import uuid as _uuid

import pytest
import requests
from fixtures.drs_repo import DrsRepo, start_repo
from fixtures.dss_server import ADMIN

from hcafs.checksums import checksum_bytes
from hcafs.versions import now_version, version_datetime


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> DrsRepo:
    started = start_repo(tmp_path_factory.mktemp("drs"))
    yield started
    started.server.stop()


def drs_get(repo: DrsRepo, path: str, **kwargs) -> requests.Response:
    return requests.get(f"{repo.server.url}/ga4gh/drs/v1{path}", timeout=30, **kwargs)


def assert_drs_error(answer: requests.Response, status: int) -> dict:
    assert answer.status_code == status, answer.text
    assert answer.headers["Content-Type"] == "application/json"
    body = answer.json()
    assert set(body) == {"msg", "status_code"} and body["status_code"] == status
    assert isinstance(body["msg"], str) and body["msg"]
    return body


def test_a_file_is_a_blob_object_with_checksums_and_an_https_access_url(repo):
    data = b'{"cells": 12}\n' * 50
    fqid = repo.put_file(data, "cells.json")
    uuid, version = fqid.split(".", 1)
    found = drs_get(repo, f"/objects/{fqid}")
    assert found.status_code == 200 and found.headers["Content-Type"] == "application/json"
    body = found.json()
    sums = checksum_bytes(data)
    assert body["id"] == fqid
    assert body["self_uri"] == f"drs://{repo.host}/{fqid}"
    assert body["size"] == len(data) and body["version"] == version
    assert body["mime_type"] == "application/json"
    created = version_datetime(version).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert body["created_time"] == body["updated_time"] == created
    assert {c["type"]: c["checksum"] for c in body["checksums"]} == {
        "sha-256": sums.sha256, "sha-1": sums.sha1, "crc32c": sums.crc32c,
        "etag": sums.s3_etag, "md5": hashlib.md5(data).hexdigest()}
    assert "contents" not in body
    [method] = body["access_methods"]
    assert method["type"] == "https" and method["access_id"] == "https"
    url = method["access_url"]["url"]
    assert url.startswith(f"{repo.server.url}/blobs/{sums.sha256}.")  # plain http server
    assert requests.get(url, timeout=30).content == data

    # the uuid alone is the latest version; upper case is accepted
    later = repo.put_file(b"newer bytes", "cells.json", version=now_version())
    later_uuid = later.split(".", 1)[0]
    assert drs_get(repo, f"/objects/{later_uuid}").json()["id"] == later
    assert drs_get(repo, f"/objects/{uuid.upper()}.{version}").json()["id"] == fqid


def test_a_bundle_is_a_bundle_object_whose_contents_name_its_files(repo):
    files = {"matrix.tsv": b"gene\tcount\n", "qc/report.json": b"{}", "big.bin": b"x" * 5000}
    bundle, fqids = repo.put_bundle(files)
    body = drs_get(repo, f"/objects/{bundle}").json()
    assert body["id"] == bundle and body["self_uri"] == f"drs://{repo.host}/{bundle}"
    assert body["size"] == sum(len(d) for d in files.values())
    assert body["contents"] == [{"name": name, "id": fqids[name],
                                 "drs_uri": [f"drs://{repo.host}/{fqids[name]}"]}
                                for name in files]
    expected = hashlib.sha256("".join(sorted(checksum_bytes(d).sha256
                                             for d in files.values())).encode()).hexdigest()
    assert body["checksums"] == [{"type": "sha-256", "checksum": expected}]
    assert "access_methods" not in body
    # every member resolves through its own drs_uri, to its own bytes
    for name, member in zip(files, body["contents"], strict=True):
        object_id = member["drs_uri"][0].rsplit("/", 1)[1]
        url = drs_get(repo, f"/objects/{object_id}").json()["access_methods"][0]
        assert requests.get(url["access_url"]["url"], timeout=30).content == files[name]
    bare = bundle.split(".", 1)[0]
    assert drs_get(repo, f"/objects/{bare}").json() == body
    assert drs_get(repo, f"/objects/{bundle}", params={"expand": "true"}).json() == body


def test_access_by_access_id(repo):
    data = b"through the access endpoint"
    fqid = repo.put_file(data)
    answer = drs_get(repo, f"/objects/{fqid}/access/https")
    assert answer.status_code == 200
    assert answer.json()["headers"] == []
    assert requests.get(answer.json()["url"], timeout=30).content == data
    assert "'s3'" in assert_drs_error(drs_get(repo, f"/objects/{fqid}/access/s3"), 404)["msg"]
    bundle, _ = repo.put_bundle({"a": b"a"})
    assert_drs_error(drs_get(repo, f"/objects/{bundle}/access/https"), 404)
    assert_drs_error(drs_get(repo, f"/objects/{_uuid.uuid4()}/access/https"), 404)


def test_service_info(repo):
    body = drs_get(repo, "/service-info").json()
    assert body["type"] == {"group": "org.ga4gh", "artifact": "drs", "version": "1.4.0"}
    for name in ("id", "name", "version"):
        assert isinstance(body[name], str) and body[name]
    assert body["organization"]["url"] == repo.server.url
    assert body["maxBulkRequestLength"] >= 1


def test_errors_are_msg_and_status_code(repo):
    assert_drs_error(drs_get(repo, f"/objects/{_uuid.uuid4()}"), 404)
    assert_drs_error(drs_get(repo, f"/objects/{_uuid.uuid4()}.{now_version()}"), 404)
    assert_drs_error(drs_get(repo, "/objects/not-an-id"), 404)
    fqid = repo.put_file(b"v")
    assert_drs_error(drs_get(repo, f"/objects/{fqid.split('.')[0]}.2019-02-30T000000.000000Z"),
                     404)
    assert_drs_error(drs_get(repo, "/no-such-endpoint"), 404)
    assert_drs_error(requests.delete(f"{repo.server.url}/ga4gh/drs/v1/objects/{fqid}",
                                     timeout=30), 405)
    assert_drs_error(requests.post(f"{repo.server.url}/ga4gh/drs/v1/objects", data="[",
                                   timeout=30), 400)
    # a deleted bundle is gone from DRS too
    bundle, _ = repo.put_bundle({"gone": b"gone"})
    uuid = bundle.split(".", 1)[0]
    deleted = repo.server.call("DELETE", f"/bundles/{uuid}", ADMIN, params={"replica": "aws"},
                               json={"reason": "test"})
    assert deleted.status_code == 200
    assert_drs_error(drs_get(repo, f"/objects/{bundle}"), 404)


def test_bulk_objects(repo):
    fqid = repo.put_file(b"bulk")
    missing = str(_uuid.uuid4())
    url = f"{repo.server.url}/ga4gh/drs/v1/objects"
    body = requests.post(url, json={"bulk_object_ids": [fqid, missing]}, timeout=30).json()
    assert body["summary"] == {"requested": 2, "resolved": 1, "unresolved": 1}
    assert [o["id"] for o in body["resolved_drs_object"]] == [fqid]
    assert body["unresolved_drs_objects"] == [{"error_code": 404, "object_ids": [missing]}]
    limit = drs_get(repo, "/service-info").json()["maxBulkRequestLength"]
    assert_drs_error(requests.post(url, json={"bulk_object_ids": [fqid] * (limit + 1)},
                                   timeout=30), 413)
    assert_drs_error(requests.post(url, json={"bulk_object_ids": []}, timeout=30), 400)
