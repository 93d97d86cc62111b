"""Auth, error shape and plumbing of ``hcafs serve``: 401/403 rules, tokens kept out of the
log, the generated local token, problem+json everywhere, Retry-After on 5xx."""

from __future__ import annotations

import json
import os
import stat
import uuid as _uuid

import pytest
import requests
from fixtures.dss_checks import assert_problem, new_ids
from fixtures.dss_server import ADMIN, OTHER, OUTSIDER, TOKENS, USER, DSSServer
from fixtures.staging import local_snapshot

from hcafs.versions import now_version

pytestmark = pytest.mark.s3

UUID = "0e7c2b7a-1f5e-4d7e-9b8a-2f6f2c1d9e01"
VERSION = "2020-01-01T000000.000000Z"

# Every restricted operation, with enough arguments to pass validation.
SECURED = {
    "put file": ("PUT", f"/files/{UUID}", {"version": VERSION},
                 {"source_url": "s3://b/k", "creator_uid": 0}),
    "put bundle": ("PUT", f"/bundles/{UUID}", {"version": VERSION, "replica": "aws"},
                   {"files": [], "creator_uid": 0}),
    "patch bundle": ("PATCH", f"/bundles/{UUID}", {"version": VERSION, "replica": "aws"}, {}),
    "delete bundle": ("DELETE", f"/bundles/{UUID}", {"replica": "aws"}, {"reason": "x"}),
    "put collection": ("PUT", "/collections", {"uuid": UUID, "version": VERSION,
                                               "replica": "aws"},
                       {"name": "n", "description": "", "details": {}, "contents": []}),
    "list collections": ("GET", "/collections", {}, None),
    "get collection": ("GET", f"/collections/{UUID}", {"replica": "aws"}, None),
    "patch collection": ("PATCH", f"/collections/{UUID}", {"replica": "aws",
                                                           "version": VERSION}, {}),
    "delete collection": ("DELETE", f"/collections/{UUID}", {"replica": "aws"}, None),
}

BAD_AUTH = {
    "no header": None,
    "unknown token": "Bearer not-a-known-token",
    "empty bearer": "Bearer ",
    "basic scheme": "Basic dXNlcjpwYXNz",
    "bare token": USER,
}


@pytest.mark.parametrize("auth", list(BAD_AUTH))
@pytest.mark.parametrize("operation", list(SECURED))
def test_restricted_operations_need_a_known_token(dss, operation, auth):
    method, path, params, body = SECURED[operation]
    headers = {"Authorization": BAD_AUTH[auth]} if BAD_AUTH[auth] else {}
    before = local_snapshot(dss.store_root)
    answer = dss.server.call(method, path, params=params, json=body, headers=headers)
    assert_problem(answer, 401, "Unauthorized")
    assert local_snapshot(dss.store_root) == before


@pytest.mark.parametrize("operation", ["put file", "put collection", "list collections",
                                       "get collection", "patch collection",
                                       "delete collection", "delete bundle"])
def test_a_token_outside_group_hca_is_forbidden(dss, operation):
    method, path, params, body = SECURED[operation]
    before = local_snapshot(dss.store_root)
    assert_problem(dss.server.call(method, path, OUTSIDER, params=params, json=body), 403,
                   "Forbidden")
    assert local_snapshot(dss.store_root) == before


def test_only_an_admin_may_delete_a_bundle(dss):
    path = dss.staging_root / "admin-test.txt"
    path.write_bytes(b"x")
    file_uuid, version = new_ids()
    assert dss.server.call("PUT", f"/files/{file_uuid}", USER, params={"version": version},
                           json={"source_url": f"file://{path}",
                                 "creator_uid": 0}).status_code == 201
    uuid = str(_uuid.uuid4())
    assert dss.server.call("PUT", f"/bundles/{uuid}", USER,
                           params={"version": version, "replica": "aws"},
                           json={"creator_uid": 0, "files": [
                               {"uuid": file_uuid, "version": version, "name": "x",
                                "indexed": False}]}).status_code == 201
    for token in (USER, OTHER):
        answer = dss.server.call("DELETE", f"/bundles/{uuid}", token,
                                 params={"replica": "aws"}, json={"reason": "mine"})
        assert_problem(answer, 403, "Forbidden")
    assert dss.server.call("GET", f"/bundles/{uuid}", params={"replica": "aws"}).ok
    assert dss.server.call("DELETE", f"/bundles/{uuid}", ADMIN, params={"replica": "aws"},
                           json={"reason": "admin"}).status_code == 200


def test_reads_need_no_token(dss):
    for path, params in (("/bundles/all", {"replica": "aws"}), ("/swagger.json", {})):
        assert dss.server.call("GET", path, params=params).status_code == 200
    head = dss.server.call("HEAD", f"/files/{UUID}", params={"replica": "aws"})
    assert head.status_code == 404  # not 401
    assert dss.server.call("GET", f"/bundles/{UUID}",
                           params={"replica": "aws"}).status_code == 404


def test_tokens_never_reach_the_log(tmp_path, seaweed):
    """At DEBUG, after good, bad and refused calls with every token, the log has none."""
    server = DSSServer(str(tmp_path / "debug"), env={**seaweed.env(),
                                                     "HCAFS_LOG_LEVEL": "DEBUG"})
    server.start()
    unknown = "never-seen-token-" + _uuid.uuid4().hex
    try:
        for token in (*TOKENS, unknown):
            for method, path, params, body in SECURED.values():
                server.call(method, path, token, params=params, json=body)
            server.call("PUT", "/bundles/not-a-uuid", token, data=b"{broken")
        server.call("GET", "/collections", headers={"Authorization": f"Basic {ADMIN}"})
    finally:
        server.stop()
    log = server.log()
    assert "PUT /v1/files/" in log and "DELETE /v1/bundles/" in log  # the log is written
    for token in (*TOKENS, unknown):
        assert token not in log


def test_a_generated_local_token_is_an_admin(tmp_path, seaweed):
    server = DSSServer(str(tmp_path / "gen"), env=seaweed.env())
    server.tokens_file = str(tmp_path / "gen" / "data" / "tokens.json")
    os.makedirs(os.path.dirname(server.tokens_file), exist_ok=True)
    server.start()
    try:
        assert "created a local admin token" in server.log()
        mode = stat.S_IMODE(os.stat(server.tokens_file).st_mode)
        assert mode == 0o600
        with open(server.tokens_file) as handle:
            table = json.load(handle)
        (token, entry), = table.items()
        assert entry["admin"] is True and "hca" in entry["groups"]
        assert token not in server.log()
        answer = server.call("PUT", "/collections", token,
                             params={"uuid": str(_uuid.uuid4()), "version": now_version(),
                                     "replica": "aws"},
                             json={"name": "n", "description": "", "details": {},
                                   "contents": []})
        assert answer.status_code == 201
        assert_problem(server.call("GET", "/collections", USER), 401, "Unauthorized")
    finally:
        server.stop()


def test_the_tokens_file_is_reread_when_it_changes(dss_factory, tmp_path):
    server = dss_factory("reload")
    fresh = "fresh-token-" + _uuid.uuid4().hex
    assert_problem(server.call("GET", "/collections", fresh), 401, "Unauthorized")
    table = dict(TOKENS, **{fresh: {"email": "new@example.org", "groups": ["hca"]}})
    tmp = server.tokens_file + ".new"
    with open(tmp, "w") as handle:
        json.dump(table, handle)
    os.utime(tmp, (1, 1))  # a different mtime than the file it replaces
    os.replace(tmp, server.tokens_file)
    assert server.call("GET", "/collections", fresh).status_code == 200


# ---------------------------------------------------------------- errors and plumbing


def test_a_server_error_is_problem_json_with_retry_after(dss):
    """A corrupt metadata document (written behind the server's back) gives a 500."""
    uuid, version = new_ids()
    path = dss.store_root / "files" / f"{uuid}.{version}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"{corrupt")
    try:
        answer = dss.server.call("GET", f"/files/{uuid}",
                                 params={"replica": "aws", "version": version})
        body = assert_problem(answer, 500, "unhandled_exception")
        assert answer.headers["Retry-After"] == "10"
        assert "Traceback" not in answer.text and body["stacktrace"] == ""
        head = dss.server.call("HEAD", f"/files/{uuid}",
                               params={"replica": "aws", "version": version})
        assert head.status_code == 500 and head.headers["Retry-After"] == "10"
    finally:
        path.unlink()
    assert f"error {body['error_id']}: unhandled" in dss.server.log()


def test_unknown_routes_and_methods_are_problem_json(dss):
    assert_problem(dss.server.call("GET", "/nowhere"), 404, "not_found")
    assert_problem(requests.get(f"{dss.server.url}/v3/files", timeout=30), 404, "not_found")
    answer = dss.server.call("POST", f"/files/{UUID}", USER)
    assert answer.status_code == 405
    assert answer.headers["Content-Type"] == "application/problem+json"


def test_every_answer_has_a_content_type(dss):
    """The hca CLI reads Content-Type of every non-HEAD answer."""
    for method, path, params in (("GET", "/swagger.json", {}),
                                 ("GET", "/bundles/all", {"replica": "aws"}),
                                 ("GET", f"/files/{UUID}", {"replica": "aws"})):
        assert dss.server.call(method, path, params=params).headers["Content-Type"]
    version = requests.get(f"{dss.server.url}/version", timeout=30)
    assert version.json()["version_info"]["version"]
    assert requests.get(f"{dss.server.url}/internal/health", timeout=30).json()["health"] == "ok"


def test_swagger_marks_exactly_the_restricted_operations(dss):
    spec = dss.server.call("GET", "/swagger.json").json()
    assert spec["openapi"].startswith("3.")
    assert spec["servers"] == [{"url": dss.server.api}]
    secured = {(path, method) for path, item in spec["paths"].items()
               for method, op in item.items() if "security" in op}
    assert secured == {("/files/{uuid}", "put"), ("/bundles/{uuid}", "put"),
                       ("/bundles/{uuid}", "patch"), ("/bundles/{uuid}", "delete"),
                       ("/collections", "get"), ("/collections", "put"),
                       ("/collections/{uuid}", "get"), ("/collections/{uuid}", "patch"),
                       ("/collections/{uuid}", "delete")}
