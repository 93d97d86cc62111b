"""Contract tests of /v1/collections against a real ``hcafs serve``: owner-only, versioned."""

from __future__ import annotations

import uuid as _uuid

import pytest
import requests
from fixtures.dss_checks import assert_problem, new_ids
from fixtures.dss_checks import register as register_file
from fixtures.dss_server import ADMIN, OTHER, OUTSIDER, USER
from fixtures.staging import local_snapshot

from hcafs.versions import now_version

pytestmark = pytest.mark.s3


def register(dss, data: bytes, suffix: str = ".txt") -> dict:
    entry = register_file(dss, data, f"f{suffix}", creator_uid=0)
    return {"type": "file", "uuid": entry["uuid"], "version": entry["version"]}


@pytest.fixture(scope="module")
def items(dss) -> dict[str, dict]:
    """A file, a JSON file and a bundle a collection may point at."""
    text = register(dss, b"plain")
    meta = register(dss, b'{"project": {"title": "Lungs", "donors": [1, 2]}}', ".json")
    uuid, version = new_ids()
    answer = dss.server.call("PUT", f"/bundles/{uuid}", USER,
                             params={"replica": "aws", "version": version},
                             json={"creator_uid": 0, "files": [
                                 {"uuid": text["uuid"], "version": text["version"],
                                  "name": "plain.txt", "indexed": False}]})
    assert answer.status_code == 201, answer.text
    return {"text": text, "meta": meta, "bundle": {"type": "bundle", "uuid": uuid,
                                                   "version": version}}


def put_collection(dss, uuid: str | None, version: str | None, body: dict,
                   token: str | None = USER) -> requests.Response:
    params = {"replica": "aws"}
    if uuid is not None:
        params["uuid"] = uuid
    if version is not None:
        params["version"] = version
    return dss.server.call("PUT", "/collections", token, params=params, json=body)


def collection_body(contents: list[dict], name: str = "my collection") -> dict:
    return {"name": name, "description": "# notes", "details": {"tissue": "lung"},
            "contents": contents}


def get_collection(dss, uuid: str, version: str | None = None, token: str | None = USER):
    params = {"replica": "aws", **({"version": version} if version else {})}
    return dss.server.call("GET", f"/collections/{uuid}", token, params=params)


def make(dss, items, token: str = USER) -> tuple[str, str]:
    uuid, version = new_ids()
    answer = put_collection(dss, uuid, version,
                            collection_body([items["text"], items["bundle"]]), token)
    assert answer.status_code == 201, answer.text
    return uuid, version


def test_put_then_get_and_list(dss, items):
    uuid, version = new_ids()
    contents = [items["text"], items["bundle"], items["text"],
                {"type": "donor", "uuid": items["meta"]["uuid"],
                 "version": items["meta"]["version"], "fragment": "/project/donors/1"}]
    answer = put_collection(dss, uuid.upper(), version, collection_body(contents))
    assert answer.status_code == 201, answer.text
    assert answer.json() == {"uuid": uuid, "version": version}

    found = get_collection(dss, uuid)
    assert found.status_code == 200
    document = found.json()
    assert document["name"] == "my collection" and document["description"] == "# notes"
    assert document["details"] == {"tissue": "lung"}
    assert document["owner"] == "user@example.org"
    assert document["contents"] == [contents[0], contents[1], contents[3]]  # de-duplicated
    assert get_collection(dss, uuid, version).json() == document

    mine = dss.server.call("GET", "/collections", USER).json()["collections"]
    assert {"uuid": uuid, "version": version} in mine
    theirs = dss.server.call("GET", "/collections", OTHER).json()["collections"]
    assert {"uuid": uuid, "version": version} not in theirs


def test_only_the_owner_may_read_change_or_delete(dss, items):
    uuid, version = make(dss, items)
    before = local_snapshot(dss.store_root)
    assert_problem(get_collection(dss, uuid, token=OTHER), 403, "forbidden")
    assert_problem(get_collection(dss, uuid, token=OUTSIDER), 403, "Forbidden")
    assert_problem(get_collection(dss, uuid, token=None), 401, "Unauthorized")
    patch = dss.server.call("PATCH", f"/collections/{uuid}", OTHER,
                            params={"replica": "aws", "version": version},
                            json={"name": "stolen"})
    assert_problem(patch, 403, "forbidden")
    gone = dss.server.call("DELETE", f"/collections/{uuid}", OTHER, params={"replica": "aws"})
    assert_problem(gone, 403, "forbidden")
    overwrite = put_collection(dss, uuid, now_version(), collection_body([]), OTHER)
    assert_problem(overwrite, 403, "forbidden")
    listing = dss.server.call("GET", "/collections", OUTSIDER)
    assert_problem(listing, 403, "Forbidden")
    assert local_snapshot(dss.store_root) == before
    assert get_collection(dss, uuid).json()["name"] == "my collection"


def test_patch_makes_a_new_version(dss, items):
    uuid, version = make(dss, items)
    answer = dss.server.call("PATCH", f"/collections/{uuid}", USER,
                             params={"replica": "aws", "version": version},
                             json={"add_contents": [items["meta"]],
                                   "remove_contents": [items["bundle"]],
                                   "name": "renamed", "description": "new words",
                                   "details": {"organ": "heart"}})
    assert answer.status_code == 200, answer.text
    new_version = answer.json()["version"]
    assert answer.json()["uuid"] == uuid and new_version > version

    latest = get_collection(dss, uuid).json()
    assert latest["name"] == "renamed" and latest["description"] == "new words"
    assert latest["details"] == {"organ": "heart"}
    assert latest["contents"] == [items["text"], items["meta"]]
    old = get_collection(dss, uuid, version).json()
    assert old["name"] == "my collection"
    assert old["contents"] == [items["text"], items["bundle"]]

    only_name = dss.server.call("PATCH", f"/collections/{uuid}", USER,
                                params={"replica": "aws", "version": new_version},
                                json={"name": "third"})
    third = get_collection(dss, uuid, only_name.json()["version"]).json()
    assert third["name"] == "third" and third["contents"] == latest["contents"]


def test_delete_tombstones_the_collection(dss, items):
    uuid, version = make(dss, items)
    answer = dss.server.call("DELETE", f"/collections/{uuid}", USER, params={"replica": "aws"})
    assert answer.status_code == 200 and answer.json() == {}
    assert_problem(get_collection(dss, uuid), 404, "not_found")
    assert_problem(get_collection(dss, uuid, version), 404, "not_found")
    mine = dss.server.call("GET", "/collections", USER).json()["collections"]
    assert all(c["uuid"] != uuid for c in mine)
    again = dss.server.call("DELETE", f"/collections/{uuid}", USER, params={"replica": "aws"})
    assert_problem(again, 404, "not_found")
    revive = put_collection(dss, uuid, now_version(), collection_body([]))
    assert_problem(revive, 409, "collection_tombstone_already_exists")


def _dead_link(kind):
    return lambda items: [{"type": kind, "uuid": str(_uuid.uuid4()), "version": now_version()}]


BAD_CONTENTS = {
    "missing file": (_dead_link("file"), 422, "invalid_link"),
    "missing bundle": (_dead_link("bundle"), 422, "invalid_link"),
    "missing collection": (_dead_link("collection"), 422, "invalid_link"),
    "fragment missing": (lambda items: [dict(items["meta"], type="donor")], 422,
                         "invalid_link"),
    "fragment unresolvable": (lambda items: [dict(items["meta"], type="donor",
                                                  fragment="/project/nope")], 422,
                              "invalid_link"),
    "fragment in non-JSON": (lambda items: [dict(items["text"], type="donor",
                                                 fragment="/x")], 422, "invalid_link"),
    "item without type": (lambda items: [{"uuid": items["text"]["uuid"],
                                          "version": items["text"]["version"]}], 400,
                          "illegal_arguments"),
    "item with bad version": (lambda items: [dict(items["text"], version="../../x")], 400,
                              "illegal_version"),
    "contents not a list": (lambda items: {"a": 1}, 400, "illegal_arguments"),
}


@pytest.mark.parametrize("case", list(BAD_CONTENTS))
def test_bad_contents_are_refused_and_nothing_is_written(dss, items, case):
    build, status, code = BAD_CONTENTS[case]
    uuid, version = new_ids()
    before = local_snapshot(dss.store_root)
    assert_problem(put_collection(dss, uuid, version, collection_body(build(items))), status,
                   code)
    assert local_snapshot(dss.store_root) == before
    assert_problem(get_collection(dss, uuid), 404, "not_found")


BAD_PUTS = {
    "no uuid": (lambda body: (None, now_version(), body), "illegal_arguments"),
    "malformed uuid": (lambda body: ("x" * 36, now_version(), body), "illegal_arguments"),
    "no version": (lambda body: (str(_uuid.uuid4()), None, body), "illegal_arguments"),
    "bad version": (lambda body: (str(_uuid.uuid4()), "2020-01-01T000000Z", body),
                    "illegal_version"),
    "no name": (lambda body: (str(_uuid.uuid4()), now_version(),
                              {k: v for k, v in body.items() if k != "name"}),
                "illegal_arguments"),
    "details not an object": (lambda body: (str(_uuid.uuid4()), now_version(),
                                            dict(body, details=[1])), "illegal_arguments"),
}


@pytest.mark.parametrize("case", list(BAD_PUTS))
def test_bad_put_arguments_are_refused_and_nothing_is_written(dss, items, case):
    build, code = BAD_PUTS[case]
    uuid, version, body = build(collection_body([items["text"]]))
    before = local_snapshot(dss.store_root)
    assert_problem(put_collection(dss, uuid, version, body), 400, code)
    assert local_snapshot(dss.store_root) == before


def test_bad_patches_write_nothing(dss, items):
    uuid, version = make(dss, items)
    before = local_snapshot(dss.store_root)

    def patch(body=None, version=version, data=None):
        params = {"replica": "aws", **({"version": version} if version else {})}
        return dss.server.call("PATCH", f"/collections/{uuid}", USER, params=params,
                               json=body, data=data,
                               headers={"Content-Type": "application/json"})

    assert_problem(patch({"add_contents": _dead_link("file")(items)}), 422, "invalid_link")
    assert_problem(patch({"name": 5}), 400, "illegal_arguments")
    assert_problem(patch({"details": "text"}), 400, "illegal_arguments")
    assert_problem(patch({"remove_contents": "all"}), 400, "illegal_arguments")
    assert_problem(patch({}, version=None), 400, "illegal_arguments")
    assert_problem(patch({}, version="v2"), 400, "illegal_version")
    assert_problem(patch({}, version=now_version()), 404, "not_found")
    assert_problem(patch(data=b"not json"), 400, "illegal_arguments")
    assert local_snapshot(dss.store_root) == before


def test_listing_pages_with_link(dss, items):
    made = [make(dss, items, token=ADMIN) for _ in range(12)]
    first = dss.server.call("GET", "/collections", ADMIN, params={"per_page": 10})
    assert first.status_code == 206
    assert first.headers["X-OpenAPI-Paginated-Content-Key"] == "collections"
    assert first.headers["X-OpenAPI-Pagination"] == "true"
    assert first.headers["Link"].endswith("; rel='next'")
    second = requests.get(first.links["next"]["url"] + "&per_page=10",
                          headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30)
    assert second.status_code == 200 and "Link" not in second.headers
    listed = first.json()["collections"] + second.json()["collections"]
    assert sorted((c["uuid"], c["version"]) for c in listed) == sorted(made)
    for per_page in ("9", "501"):
        assert_problem(dss.server.call("GET", "/collections", ADMIN,
                                       params={"per_page": per_page}), 400,
                       "illegal_arguments")
