"""Contract tests of /v1/bundles against a real ``hcafs serve``."""

from __future__ import annotations

import os
import threading
import uuid as _uuid

import pytest
import requests
from fixtures.dss_checks import assert_problem, new_ids, register
from fixtures.dss_server import ADMIN, OUTSIDER, USER
from fixtures.staging import local_snapshot, stage

from hcafs.versions import now_version

pytestmark = pytest.mark.s3


def put_bundle(dss, uuid: str, version: str | None, files, creator_uid: int = 3,
               token: str = USER) -> requests.Response:
    params = {"replica": "aws", **({"version": version} if version else {})}
    return dss.server.call("PUT", f"/bundles/{uuid}", token, params=params,
                           json={"files": files, "creator_uid": creator_uid})


def get_bundle(dss, uuid: str, version: str | None = None, **params) -> requests.Response:
    params = {"replica": "aws", **({"version": version} if version else {}), **params}
    return dss.server.call("GET", f"/bundles/{uuid}", params=params)


@pytest.fixture(scope="module")
def two_files(dss) -> list[dict]:
    return [register(dss, b"alpha", "a.txt"), register(dss, b'{"b": 2}', "meta/b.json")]


def test_put_then_get_a_bundle(dss, two_files):
    uuid, version = new_ids()
    answer = put_bundle(dss, uuid, version, two_files)
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["version"] == version
    manifest = body["manifest"]
    assert [f["name"] for f in manifest["files"]] == ["a.txt", "meta/b.json"]
    assert {"s3-etag", "content-type", "sha256", "size", "indexed"} <= set(manifest["files"][0])

    found = get_bundle(dss, uuid)
    assert found.status_code == 200
    assert found.headers["X-OpenAPI-Pagination"] == "false"
    assert found.headers["X-OpenAPI-Paginated-Content-Key"] == "bundle.files"
    assert "Link" not in found.headers
    bundle = found.json()["bundle"]
    assert bundle["uuid"] == uuid and bundle["version"] == version
    assert bundle["creator_uid"] == 3
    first, second = bundle["files"]
    assert first["name"] == "a.txt" and first["size"] == 5 and first["indexed"] is False
    assert first["content-type"] == "text/plain"
    assert first["s3_etag"] == manifest["files"][0]["s3-etag"]
    assert second["indexed"] is True and second["content-type"] == "application/json"
    assert get_bundle(dss, uuid, version).json() == found.json()


def test_identical_repeat_is_200_and_a_conflict_is_409(dss, two_files):
    uuid, version = new_ids()
    assert put_bundle(dss, uuid, version, two_files).status_code == 201
    before = local_snapshot(dss.store_root)
    again = put_bundle(dss, uuid, version, two_files)
    assert again.status_code == 200 and again.json()["version"] == version
    assert_problem(put_bundle(dss, uuid, version, two_files[:1]), 409, "bundle_already_exists")
    assert_problem(put_bundle(dss, uuid, version, two_files, creator_uid=4), 409,
                   "bundle_already_exists")
    assert local_snapshot(dss.store_root) == before
    assert len(get_bundle(dss, uuid).json()["bundle"]["files"]) == 2


def _missing(files):
    return [*files, {"uuid": str(_uuid.uuid4()), "version": now_version(), "name": "gone",
                     "indexed": False}]


def _wrong_version(files):
    return [dict(files[0], version=now_version())]


def _duplicate(files):
    return [files[0], dict(files[1], name=files[0]["name"])]


def _field(name, value):
    return lambda files: [dict(files[0], **{name: value})]


def _without(name):
    return lambda files: [{k: v for k, v in files[0].items() if k != name}]


BAD_FILES = {
    "file missing": (_missing, "file_missing"),
    "file version missing": (_wrong_version, "file_missing"),
    "duplicate name": (_duplicate, "duplicate_filename"),
    "absolute name": (_field("name", "/etc/passwd"), "illegal_arguments"),
    "dot-dot name": (_field("name", "a/../../b"), "illegal_arguments"),
    "name ..": (_field("name", ".."), "illegal_arguments"),
    "name .. and a newline": (_field("name", "..\n"), "illegal_arguments"),
    "file uuid with a trailing newline": (lambda files: [dict(files[0],
                                                              uuid=files[0]["uuid"] + "\n")],
                                          "illegal_arguments"),
    "backslash name": (_field("name", "a\\b"), "illegal_arguments"),
    "malformed file uuid": (_field("uuid", "zzz"), "illegal_arguments"),
    "malformed file version": (_field("version", "2019-08-02"), "illegal_version"),
    "indexed not bool": (_field("indexed", "yes"), "illegal_arguments"),
    "no name": (_without("name"), "illegal_arguments"),
    "no indexed": (_without("indexed"), "illegal_arguments"),
    "files not a list": (lambda files: {"a": 1}, "illegal_arguments"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_manifest_is_refused_and_nothing_is_written(dss, two_files, case):
    make, code = BAD_FILES[case]
    uuid, version = new_ids()
    before = local_snapshot(dss.store_root)
    assert_problem(put_bundle(dss, uuid, version, make(two_files)), 400, code)
    assert local_snapshot(dss.store_root) == before
    assert_problem(get_bundle(dss, uuid), 404, "not_found")


BAD_PUTS = {
    "malformed uuid": (lambda f: ("1234", now_version(), {"files": f, "creator_uid": 1}),
                       "illegal_arguments"),
    "uuid with a trailing newline": (lambda f: (str(_uuid.uuid4()) + "%0A", now_version(),
                                                {"files": f, "creator_uid": 1}),
                                     "illegal_arguments"),
    "no version": (lambda f: (str(_uuid.uuid4()), None, {"files": f, "creator_uid": 1}),
                   "illegal_arguments"),
    "bad version": (lambda f: (str(_uuid.uuid4()), "2020-13-01T000000.000000Z",
                               {"files": f, "creator_uid": 1}), "illegal_version"),
    "no files": (lambda f: (str(_uuid.uuid4()), now_version(), {"creator_uid": 1}),
                 "illegal_arguments"),
    "no creator_uid": (lambda f: (str(_uuid.uuid4()), now_version(), {"files": f}),
                       "illegal_arguments"),
}


@pytest.mark.parametrize("case", list(BAD_PUTS))
def test_bad_put_arguments_are_refused_and_nothing_is_written(dss, two_files, case):
    make, code = BAD_PUTS[case]
    uuid, version, body = make(two_files)
    before = local_snapshot(dss.store_root)
    params = {"replica": "aws", **({"version": version} if version else {})}
    assert_problem(dss.server.call("PUT", f"/bundles/{uuid}", USER, params=params, json=body),
                   400, code)
    assert local_snapshot(dss.store_root) == before


def test_non_json_body_and_bad_replica_are_refused(dss, two_files):
    uuid, version = new_ids()
    before = local_snapshot(dss.store_root)
    answer = dss.server.call("PUT", f"/bundles/{uuid}", USER,
                             params={"replica": "aws", "version": version}, data=b"files=1",
                             headers={"Content-Type": "application/json"})
    assert_problem(answer, 400, "illegal_arguments")
    answer = dss.server.call("PUT", f"/bundles/{uuid}", USER,
                             params={"replica": "s3", "version": version},
                             json={"files": two_files, "creator_uid": 1})
    assert_problem(answer, 400, "illegal_arguments")
    assert local_snapshot(dss.store_root) == before


# ---------------------------------------------------------------- paging


@pytest.fixture(scope="module")
def big_bundle(dss) -> tuple[str, str, list[dict]]:
    entry = register(dss, b"shared content")
    files = [dict(entry, name=f"file-{i:02d}.txt") for i in range(25)]
    uuid, version = new_ids()
    assert put_bundle(dss, uuid, version, files).status_code == 201
    return uuid, version, files


def test_get_bundle_pages_with_link_and_openapi_headers(dss, big_bundle):
    uuid, version, files = big_bundle
    first = get_bundle(dss, uuid, per_page=10)
    names, statuses, url = [], [], None
    page = first
    while True:
        statuses.append(page.status_code)
        names += [f["name"] for f in page.json()["bundle"]["files"]]
        assert page.headers["X-OpenAPI-Paginated-Content-Key"] == "bundle.files"
        if page.status_code != 206:
            assert page.headers["X-OpenAPI-Pagination"] == "false"
            assert "Link" not in page.headers
            break
        assert page.headers["X-OpenAPI-Pagination"] == "true"
        assert page.headers["Link"].endswith("; rel='next'")
        url = page.links["next"]["url"]
        assert url.startswith(dss.server.api + f"/bundles/{uuid}?")
        # The hca CLI re-sends its original parameters after the Link's own ones.
        page = requests.get(url + "&replica=aws&per_page=10", timeout=30)
    assert statuses == [206, 206, 200]
    assert names == [f["name"] for f in files]
    assert page.json()["bundle"]["version"] == version


@pytest.mark.parametrize("per_page", ["9", "501", "0", "-1", "ten"])
def test_per_page_out_of_range_is_illegal(dss, big_bundle, per_page):
    uuid, _, _ = big_bundle
    assert_problem(get_bundle(dss, uuid, per_page=per_page), 400, "illegal_arguments")
    answer = dss.server.call("GET", "/bundles/all", params={"replica": "aws",
                                                            "per_page": per_page})
    assert_problem(answer, 400, "illegal_arguments")


def test_per_page_bounds_and_repeated_parameters_are_accepted(dss, big_bundle):
    uuid, _, files = big_bundle
    assert get_bundle(dss, uuid, per_page=500).status_code == 200
    assert len(get_bundle(dss, uuid).json()["bundle"]["files"]) == 25  # default 500
    url = f"{dss.server.api}/bundles/{uuid}?replica=aws&per_page=10&replica=aws&per_page=10"
    answer = requests.get(url, timeout=30)
    assert answer.status_code == 206 and len(answer.json()["bundle"]["files"]) == 10
    assert get_bundle(dss, uuid, per_page=10, start_at=20).status_code == 200


def test_directurls_and_presignedurls_exclude_each_other(dss, big_bundle):
    uuid, _, _ = big_bundle
    assert_problem(get_bundle(dss, uuid, directurls="true", presignedurls="true"), 400,
                   "only_one_urltype")


def test_unknown_bundle_and_junk_version_are_404(dss, big_bundle):
    assert_problem(get_bundle(dss, str(_uuid.uuid4())), 404, "not_found")
    assert_problem(get_bundle(dss, big_bundle[0], now_version()), 404, "not_found")
    assert_problem(get_bundle(dss, big_bundle[0], "../../../tokens"), 404, "not_found")
    assert_problem(get_bundle(dss, "not-a-uuid"), 400, "illegal_arguments")


# ---------------------------------------------------------------- PATCH


def patch(dss, uuid, version, body, token=USER):
    params = {"replica": "aws", **({"version": version} if version else {})}
    return dss.server.call("PATCH", f"/bundles/{uuid}", token, params=params, json=body)


def test_patch_adds_and_removes_into_a_new_version(dss, two_files):
    uuid, version = new_ids()
    assert put_bundle(dss, uuid, version, two_files).status_code == 201
    extra = register(dss, b"gamma", "c.txt")
    not_there = dict(two_files[1], version=now_version())

    answer = patch(dss, uuid, version, {"add_files": [extra],
                                        "remove_files": [two_files[0], not_there]})
    assert answer.status_code == 200, answer.text
    new_version = answer.json()["version"]
    assert answer.json()["uuid"] == uuid and new_version > version

    latest = get_bundle(dss, uuid).json()["bundle"]
    assert latest["version"] == new_version
    assert [f["name"] for f in latest["files"]] == ["meta/b.json", "c.txt"]
    old = get_bundle(dss, uuid, version).json()["bundle"]
    assert [f["name"] for f in old["files"]] == ["a.txt", "meta/b.json"]

    empty = patch(dss, uuid, new_version, {})
    assert empty.status_code == 200 and empty.json()["version"] > new_version


def test_bad_patches_write_nothing(dss, two_files):
    uuid, version = new_ids()
    assert put_bundle(dss, uuid, version, two_files).status_code == 201
    before = local_snapshot(dss.store_root)
    assert_problem(patch(dss, uuid, version, {"add_files": [dict(two_files[1],
                                                                 name="a.txt")]}),
                   400, "duplicate_filename")
    assert_problem(patch(dss, uuid, version, {"add_files": _missing([])}), 400, "file_missing")
    assert_problem(patch(dss, uuid, None, {}), 400, "illegal_arguments")
    assert_problem(patch(dss, uuid, "yesterday", {}), 400, "illegal_version")
    assert_problem(patch(dss, uuid, now_version(), {}), 404, "not_found")
    assert_problem(patch(dss, str(_uuid.uuid4()), version, {}), 404, "not_found")
    assert_problem(patch(dss, uuid, version, {"add_files": "x"}), 400, "illegal_arguments")
    assert_problem(patch(dss, uuid, version, {}, token=None), 401, "Unauthorized")
    assert local_snapshot(dss.store_root) == before


# ---------------------------------------------------------------- DELETE and /bundles/all


def delete(dss, uuid, version=None, reason="test", token=ADMIN, body=None):
    params = {"replica": "aws", **({"version": version} if version else {})}
    return dss.server.call("DELETE", f"/bundles/{uuid}", token, params=params,
                           json={"reason": reason} if body is None else body)


def all_bundles(dss, **params) -> list[dict]:
    """Every entry of /bundles/all, following Link pages; checks the paging headers."""
    answer = dss.server.call("GET", "/bundles/all", params={"replica": "aws", **params})
    items = []
    while True:
        assert answer.headers["X-OpenAPI-Paginated-Content-Key"] == "bundles"
        body = answer.json()
        items += body["bundles"]
        assert body["page_count"] == len(body["bundles"])
        if answer.status_code == 200:
            assert body["has_more"] is False and "Link" not in answer.headers
            return items
        assert answer.status_code == 206 and body["has_more"] is True
        assert answer.headers["X-OpenAPI-Pagination"] == "true"
        answer = requests.get(answer.links["next"]["url"], timeout=30)


def test_delete_needs_admin_and_a_reason_then_tombstones(dss, two_files):
    uuid, version = new_ids()
    assert put_bundle(dss, uuid, version, two_files).status_code == 201
    before = local_snapshot(dss.store_root)
    assert_problem(delete(dss, uuid, token=USER), 403, "Forbidden")
    assert_problem(delete(dss, uuid, token=None), 401, "Unauthorized")
    assert_problem(delete(dss, uuid, body={}), 400, "illegal_arguments")
    assert_problem(delete(dss, uuid, reason=""), 400, "illegal_arguments")
    assert_problem(delete(dss, str(_uuid.uuid4())), 404, "not_found")
    assert local_snapshot(dss.store_root) == before
    assert get_bundle(dss, uuid).status_code == 200

    done = delete(dss, uuid, reason="withdrawn")
    assert done.status_code == 200 and done.json() == {}
    assert_problem(get_bundle(dss, uuid), 404, "not_found")
    assert_problem(get_bundle(dss, uuid, version), 404, "not_found")
    assert delete(dss, uuid, reason="withdrawn").status_code == 200
    assert_problem(delete(dss, uuid, reason="another reason"), 409,
                   "bundle_tombstone_already_exists")
    assert {"uuid": uuid, "version": version} not in all_bundles(dss, prefix=uuid[:8])
    # the files themselves stay
    head = dss.server.call("HEAD", f"/files/{two_files[0]['uuid']}", params={"replica": "aws"})
    assert head.status_code == 200


def test_deleting_one_version_leaves_the_others(dss, two_files):
    uuid, old = new_ids()
    assert put_bundle(dss, uuid, old, two_files).status_code == 201
    new = now_version()
    assert put_bundle(dss, uuid, new, two_files[:1]).status_code == 201
    assert delete(dss, uuid, new).status_code == 200
    assert_problem(get_bundle(dss, uuid, new), 404, "not_found")
    assert get_bundle(dss, uuid).json()["bundle"]["version"] == old
    listed = all_bundles(dss, prefix=uuid)
    assert listed == [{"uuid": uuid, "version": old}]


def test_bundles_all_pages_by_prefix_and_omits_tombstones(dss, two_files):
    prefix = _uuid.uuid4().hex[:8]
    made = []
    for _ in range(23):
        uuid = f"{prefix}{str(_uuid.uuid4())[8:]}"
        version = now_version()
        assert put_bundle(dss, uuid, version, two_files).status_code == 201
        made.append({"uuid": uuid, "version": version})
    made.sort(key=lambda b: (b["uuid"], b["version"]))

    first = dss.server.call("GET", "/bundles/all",
                            params={"replica": "aws", "prefix": prefix, "per_page": 10})
    assert first.status_code == 206
    assert first.headers["Link"].endswith("; rel='next'")
    body = first.json()
    assert body["per_page"] == 10 and body["search_prefix"] == f"bundles/{prefix}"
    assert body["bundles"] == made[:10]
    assert all_bundles(dss, prefix=prefix, per_page=10) == made
    assert all_bundles(dss, prefix=prefix.upper(), per_page=10) == made

    gone = made.pop(5)
    assert delete(dss, gone["uuid"]).status_code == 200
    assert all_bundles(dss, prefix=prefix, per_page=10) == made
    everything = all_bundles(dss, per_page=500)
    assert gone not in everything and all(b in everything for b in made)
    assert_problem(dss.server.call("GET", "/bundles/all",
                                   params={"replica": "aws", "prefix": "../x"}),
                   400, "illegal_arguments")


def test_put_and_patch_need_a_token_but_no_group(dss, two_files):
    uuid, version = new_ids()
    before = local_snapshot(dss.store_root)
    assert_problem(put_bundle(dss, uuid, version, two_files, token=None), 401, "Unauthorized")
    assert_problem(put_bundle(dss, uuid, version, two_files, token="made-up"), 401,
                   "Unauthorized")
    assert local_snapshot(dss.store_root) == before
    assert put_bundle(dss, uuid, version, two_files, token=OUTSIDER).status_code == 201


def test_put_bundle_waits_for_a_file_still_being_copied(dss):
    """A bundle may name a file whose asynchronous copy is running: PUT waits for it."""
    data = os.urandom(1024 * 1024 + 100)
    url = stage(dss.s3, dss.bucket, data)
    file_uuid, version = new_ids()
    uuid = str(_uuid.uuid4())
    entry = {"uuid": file_uuid, "version": version, "name": "big.bin", "indexed": False}
    answers: list[requests.Response] = []
    dss.gate.close_gate()
    try:
        put = dss.server.call("PUT", f"/files/{file_uuid}", USER, params={"version": version},
                              json={"source_url": url, "creator_uid": 0})
        assert put.status_code == 202
        assert dss.gate.stalled.wait(30)
        waiting = threading.Thread(target=lambda: answers.append(
            put_bundle(dss, uuid, version, [entry])))
        waiting.start()
        waiting.join(1.0)
        assert waiting.is_alive() and not answers  # still waiting for the copy
    finally:
        dss.gate.open_gate()
    waiting.join(30)
    assert answers and answers[0].status_code == 201, answers and answers[0].text
    assert get_bundle(dss, uuid).json()["bundle"]["files"][0]["size"] == len(data)
