"""Contract tests of /v1/files against a real ``hcafs serve`` with SeaweedFS as the source.

Each refusal is checked twice: the DSS error it gives, and that the store did not change.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid as _uuid

import pytest
import requests
from fixtures.dss_checks import assert_problem, new_ids
from fixtures.dss_server import OUTSIDER, USER
from fixtures.staging import local_snapshot, stage

from hcafs.checksums import checksum_bytes
from hcafs.versions import now_version

pytestmark = pytest.mark.s3


def put_file(dss, uuid: str, version: str | None, source_url: str, creator_uid: int = 7,
             token: str = USER, **kwargs) -> requests.Response:
    params = {"version": version} if version is not None else {}
    return dss.server.call("PUT", f"/files/{uuid}", token, params=params,
                           json={"source_url": source_url, "creator_uid": creator_uid},
                           **kwargs)


def head_file(dss, uuid: str, version: str | None = None) -> requests.Response:
    params = {"replica": "aws", **({"version": version} if version else {})}
    return dss.server.call("HEAD", f"/files/{uuid}", params=params)


def get_file(dss, uuid: str, version: str | None = None, **extra) -> requests.Response:
    params = {"replica": "aws", **({"version": version} if version else {}), **extra}
    return dss.server.call("GET", f"/files/{uuid}", params=params)


def assert_headers_match(headers, data: bytes, version: str, content_type: str,
                         creator_uid: int = 7) -> None:
    sums = checksum_bytes(data)
    assert headers["X-DSS-VERSION"] == version
    assert headers["X-DSS-SIZE"] == str(len(data))
    assert headers["X-DSS-CONTENT-TYPE"] == content_type
    assert headers["X-DSS-CREATOR-UID"] == str(creator_uid)
    assert headers["X-DSS-SHA256"] == sums.sha256
    assert headers["X-DSS-SHA1"] == sums.sha1
    assert headers["X-DSS-CRC32C"] == sums.crc32c
    assert headers["X-DSS-S3-ETAG"] == sums.s3_etag


# ---------------------------------------------------------------- s3:// sources, sync


def test_put_from_s3_then_head_and_get_bytes(dss):
    data = b"hello, cell atlas\n" * 10
    url = stage(dss.s3, dss.bucket, data, name="cells.csv", content_type="text/csv")
    uuid, version = new_ids()

    answer = put_file(dss, uuid.upper(), version, url)
    assert answer.status_code == 201, answer.text
    sums = checksum_bytes(data)
    # the stored version's checksums come with the answer (an hcafs extension: no HEAD needed)
    described = {"version": version, "size": len(data), "content_type": "text/csv",
                 "creator_uid": 7, "sha256": sums.sha256, "sha1": sums.sha1,
                 "crc32c": sums.crc32c, "s3_etag": sums.s3_etag}
    assert answer.json() == described
    repeat = put_file(dss, uuid, version, url)
    assert repeat.status_code == 200 and repeat.json() == described

    head = head_file(dss, uuid, version)
    assert head.status_code == 200 and head.content == b""
    assert_headers_match(head.headers, data, version, "text/csv")
    assert head_file(dss, uuid).headers["X-DSS-VERSION"] == version  # latest

    found = get_file(dss, uuid, version)
    assert found.status_code == 302
    assert_headers_match(found.headers, data, version, "text/csv")
    location = found.headers["Location"]
    assert location.startswith(dss.server.url + "/blobs/")
    blob = requests.get(location, timeout=30)
    assert blob.status_code == 200 and blob.content == data


def test_checksums_may_come_from_object_metadata_tags_win(dss):
    data = os.urandom(1000)
    sums = checksum_bytes(data).tags()
    only_meta = stage(dss.s3, dss.bucket, data, tags=None, metadata=sums)
    uuid, version = new_ids()
    assert put_file(dss, uuid, version, only_meta).status_code == 201

    wrong_meta = dict(sums, **{"hca-dss-sha256": "0" * 64})
    tags_win = stage(dss.s3, dss.bucket, data, metadata=wrong_meta)
    uuid2, version2 = new_ids()
    assert put_file(dss, uuid2, version2, tags_win).status_code == 201
    assert head_file(dss, uuid2, version2).headers["X-DSS-SHA256"] == sums["hca-dss-sha256"]


def test_identical_repeat_is_200_and_a_conflict_is_409(dss):
    data = b"repeat me"
    url = stage(dss.s3, dss.bucket, data)
    uuid, version = new_ids()
    assert put_file(dss, uuid, version, url).status_code == 201
    before = local_snapshot(dss.store_root)

    again = put_file(dss, uuid, version, url)
    assert again.status_code == 200 and again.json()["version"] == version
    assert again.json()["sha256"] == hashlib.sha256(data).hexdigest()
    assert_problem(put_file(dss, uuid, version, url, creator_uid=8), 409,
                   "file_already_exists")
    other = stage(dss.s3, dss.bucket, b"other bytes")
    assert_problem(put_file(dss, uuid, version, other), 409, "file_already_exists")

    assert local_snapshot(dss.store_root) == before
    assert head_file(dss, uuid, version).headers["X-DSS-CREATOR-UID"] == "7"


def test_same_content_under_another_uuid_shares_the_blob(dss):
    data = os.urandom(2048)
    url = stage(dss.s3, dss.bucket, data)
    first, version = new_ids()
    assert put_file(dss, first, version, url).status_code == 201
    blobs = {k for k in local_snapshot(dss.store_root) if k.startswith("blobs/")}
    second, _ = new_ids()
    assert put_file(dss, second, version, url).status_code == 201
    assert {k for k in local_snapshot(dss.store_root) if k.startswith("blobs/")} == blobs
    assert get_file(dss, second, version).headers["Location"] == \
        get_file(dss, first, version).headers["Location"]


def test_a_new_version_becomes_the_latest(dss):
    uuid, old = new_ids()
    assert put_file(dss, uuid, old, stage(dss.s3, dss.bucket, b"v1")).status_code == 201
    new = now_version()
    assert put_file(dss, uuid, new, stage(dss.s3, dss.bucket, b"v2!")).status_code == 201
    assert head_file(dss, uuid).headers["X-DSS-VERSION"] == new
    assert head_file(dss, uuid).headers["X-DSS-SIZE"] == "3"
    assert head_file(dss, uuid, old).headers["X-DSS-SIZE"] == "2"


# ---------------------------------------------------------------- refusals that write nothing


def _tagged(**changes):
    return lambda dss, data: stage(dss.s3, dss.bucket, data, tag_changes=changes)


BAD_SOURCES = {
    "no sha256 tag": (_tagged(**{"hca-dss-sha256": None}), 422, "missing_checksum"),
    "no sha1 tag": (_tagged(**{"hca-dss-sha1": None}), 422, "missing_checksum"),
    "no crc32c tag": (_tagged(**{"hca-dss-crc32c": None}), 422, "missing_checksum"),
    "no s3_etag tag": (_tagged(**{"hca-dss-s3_etag": None}), 422, "missing_checksum"),
    "no tags at all": (lambda dss, data: stage(dss.s3, dss.bucket, data, tags=None), 422,
                       "missing_checksum"),
    "malformed sha256": (_tagged(**{"hca-dss-sha256": "not-hex"}), 422, "invalid_checksum"),
    "malformed s3_etag": (_tagged(**{"hca-dss-s3_etag": "abc-1"}), 422, "invalid_checksum"),
    "wrong sha256": (_tagged(**{"hca-dss-sha256": "ab" * 32}), 422, "invalid_checksum"),
    "wrong sha1": (_tagged(**{"hca-dss-sha1": "cd" * 20}), 422, "invalid_checksum"),
    "wrong crc32c": (_tagged(**{"hca-dss-crc32c": "01234567"}), 422, "invalid_checksum"),
    "wrong s3 etag": (_tagged(**{"hca-dss-s3_etag": "ef" * 16}), 422, "invalid_checksum"),
    "gs:// source": (lambda dss, data: "gs://bucket/key", 400, "unknown_source_schema"),
    "wasb:// source": (lambda dss, data: "wasb://c@a/key", 400, "unknown_source_schema"),
    "https:// source": (lambda dss, data: "https://example.org/x", 400,
                        "unknown_source_schema"),
    "not a URL": (lambda dss, data: "just words", 400, "unknown_source_schema"),
    "missing object": (lambda dss, data: f"s3://{dss.bucket}/no/such/key", 404, "not_found"),
    "file:// outside staging root": (lambda dss, data: "file:///etc/hostname", 400,
                                     "illegal_arguments"),
    "file:// ../ escape": (lambda dss, data: f"file://{dss.staging_root}/../server/tokens.json",
                           400, "illegal_arguments"),
    "file:// symlink escape": (lambda dss, data: _symlink_escape(dss), 400,
                               "illegal_arguments"),
    "file:// missing": (lambda dss, data: f"file://{dss.staging_root}/nothing-here", 404,
                        "not_found"),
}


def _symlink_escape(dss) -> str:
    link = dss.staging_root / f"escape-{_uuid.uuid4().hex}"
    link.symlink_to(os.path.join(dss.server.workdir, "tokens.json"))
    return f"file://{link}"


@pytest.mark.parametrize("case", list(BAD_SOURCES))
def test_bad_source_is_refused_and_nothing_is_written(dss, case):
    make_url, status, code = BAD_SOURCES[case]
    data = os.urandom(4096)
    url = make_url(dss, data)
    uuid, version = new_ids()
    before = local_snapshot(dss.store_root)

    assert_problem(put_file(dss, uuid, version, url), status, code)

    assert local_snapshot(dss.store_root) == before
    assert_problem(head_file(dss, uuid, version), 404, "not_found")


BAD_REQUESTS = {
    "malformed uuid": (lambda url: ("not-a-uuid", now_version(), {"source_url": url,
                                                                  "creator_uid": 1}),
                       "illegal_arguments"),
    "uuid too short": (lambda url: (str(_uuid.uuid4())[:-1], now_version(),
                                    {"source_url": url, "creator_uid": 1}), "illegal_arguments"),
    "uuid with a trailing newline": (lambda url: (str(_uuid.uuid4()) + "%0A", now_version(),
                                                  {"source_url": url, "creator_uid": 1}),
                                     "illegal_arguments"),
    "version with a trailing newline": (lambda url: (str(_uuid.uuid4()), now_version() + "\n",
                                                     {"source_url": url, "creator_uid": 1}),
                                        "illegal_version"),
    "no version": (lambda url: (str(_uuid.uuid4()), None, {"source_url": url,
                                                           "creator_uid": 1}),
                   "illegal_arguments"),
    "version with colons": (lambda url: (str(_uuid.uuid4()), "2019-08-02T20:24:56.025543Z",
                                         {"source_url": url, "creator_uid": 1}),
                            "illegal_version"),
    "version short fraction": (lambda url: (str(_uuid.uuid4()), "2019-08-02T202456.0255Z",
                                            {"source_url": url, "creator_uid": 1}),
                               "illegal_version"),
    "impossible date": (lambda url: (str(_uuid.uuid4()), "2019-02-30T202456.025543Z",
                                     {"source_url": url, "creator_uid": 1}), "illegal_version"),
    "no source_url": (lambda url: (str(_uuid.uuid4()), now_version(), {"creator_uid": 1}),
                      "illegal_arguments"),
    "no creator_uid": (lambda url: (str(_uuid.uuid4()), now_version(), {"source_url": url}),
                       "illegal_arguments"),
    "creator_uid not an int": (lambda url: (str(_uuid.uuid4()), now_version(),
                                            {"source_url": url, "creator_uid": "7"}),
                               "illegal_arguments"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_put_arguments_are_refused_and_nothing_is_written(dss, case):
    url = stage(dss.s3, dss.bucket, b"valid source")
    build, code = BAD_REQUESTS[case]
    uuid, version, body = build(url)
    before = local_snapshot(dss.store_root)
    params = {"version": version} if version else {}
    answer = dss.server.call("PUT", f"/files/{uuid}", USER, params=params, json=body)
    assert_problem(answer, 400, code)
    assert local_snapshot(dss.store_root) == before


@pytest.mark.parametrize("body", [
    b"{not json", b"[1, 2]", b"\xff\xfe",
    b'{"source_url": "file:///x\\udcff", "creator_uid": 1}',  # a lone surrogate
    b'{"a": ' * 70 + b"1" + b"}" * 70,  # nested past the limit
    b'{"source_url": "s3://b/k", "creator_uid": NaN}'])
def test_a_body_that_is_not_a_json_object_is_refused(dss, body):
    uuid, version = new_ids()
    before = local_snapshot(dss.store_root)
    answer = dss.server.call("PUT", f"/files/{uuid}", USER, params={"version": version},
                             data=body, headers={"Content-Type": "application/json"})
    assert_problem(answer, 400, "illegal_arguments")
    assert local_snapshot(dss.store_root) == before


# ---------------------------------------------------------------- file:// sources


def test_file_source_inside_staging_root_gets_server_computed_checksums(dss):
    data = b'{"donor": 1}'
    folder = dss.staging_root / "sub"
    folder.mkdir(exist_ok=True)
    (folder / "donor.json").write_bytes(data)
    uuid, version = new_ids()

    answer = put_file(dss, uuid, version, f"file://{folder / 'donor.json'}")
    assert answer.status_code == 201, answer.text
    assert_headers_match(head_file(dss, uuid, version).headers, data, version,
                         "application/json")
    blob = requests.get(get_file(dss, uuid, version).headers["Location"], timeout=30)
    assert blob.content == data
    assert put_file(dss, uuid, version, f"file://{folder / 'donor.json'}").status_code == 200


def test_a_directory_swapped_for_a_link_mid_request_never_leads_outside_the_root(dss,
                                                                                 tmp_path):
    """A staged directory swapped, again and again, for a link to a directory outside the
    staging root while PUTs name a file in it: no PUT reads, moves or publishes the file
    outside (each name is opened below the root without following a link)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = b"outside the staging root\n"
    (outside / "f.txt").write_bytes(secret)
    real = dss.staging_root / f"real-{_uuid.uuid4().hex}"
    real.mkdir()
    (real / "f.txt").write_bytes(b"staged\n")
    parked, link = real.with_name(real.name + ".parked"), real.with_name(real.name + ".link")
    link.symlink_to(outside)
    stop = threading.Event()

    def swap():
        while not stop.is_set():
            os.rename(real, parked)
            os.rename(link, real)  # real is now the link
            os.rename(real, link)
            os.rename(parked, real)

    swapper = threading.Thread(target=swap, daemon=True)
    swapper.start()
    published = []
    try:
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and len(published) < 40:
            uuid, version = new_ids()
            answer = put_file(dss, uuid, version, f"file://{real}/f.txt")
            if answer.status_code == 201:
                published.append((uuid, version))
                stop.set()
                swapper.join()
                (real / "f.txt").write_bytes(b"staged\n")  # moved in: staged again
                stop.clear()
                swapper = threading.Thread(target=swap, daemon=True)
                swapper.start()
            else:
                assert answer.status_code in (400, 404, 409), answer.text
    finally:
        stop.set()
        swapper.join()
    assert (outside / "f.txt").read_bytes() == secret
    for uuid, version in published:
        blob = requests.get(get_file(dss, uuid, version).headers["Location"], timeout=30)
        assert blob.content == b"staged\n"


def test_a_staged_file_with_another_name_is_copied_not_moved(dss):
    """A staged file with a second (hard) link is copied into the store, not moved: the
    blob must not share an inode with a name another process could write."""
    folder = dss.staging_root / f"linked-{_uuid.uuid4().hex}"
    folder.mkdir()
    (folder / "a.bin").write_bytes(b"linked bytes\n")
    os.link(folder / "a.bin", folder / "other-name")
    uuid, version = new_ids()
    answer = put_file(dss, uuid, version, f"file://{folder / 'a.bin'}")
    assert answer.status_code == 201, answer.text
    assert (folder / "a.bin").exists()  # copied: the staged file stays where it was
    (folder / "other-name").write_bytes(b"changed later\n")
    blob = requests.get(get_file(dss, uuid, version).headers["Location"], timeout=30)
    assert blob.content == b"linked bytes\n"


def test_file_source_needs_a_staging_root(dss_factory, tmp_path):
    server = dss_factory("no-staging")
    path = tmp_path / "x.txt"
    path.write_bytes(b"x")
    answer = server.call("PUT", f"/files/{_uuid.uuid4()}", USER,
                         params={"version": now_version()},
                         json={"source_url": f"file://{path}", "creator_uid": 0})
    assert_problem(answer, 400, "unknown_source_schema")


# ---------------------------------------------------------------- asynchronous copies


def test_large_file_copies_asynchronously(dss):
    """Above --async-threshold (1M): 202, HEAD 404 and GET 301 while copying, then 200/302."""
    data = os.urandom(3 * 1024 * 1024 + 17)
    url = stage(dss.s3, dss.bucket, data, content_type="application/gzip")
    uuid, version = new_ids()
    dss.gate.close_gate()
    try:
        answer = put_file(dss, uuid, version, url)
        assert answer.status_code == 202, answer.text
        task = answer.json()["task_id"]
        assert answer.json()["version"] == version
        assert dss.gate.stalled.wait(30), "the copy never started reading the source"

        assert_problem(head_file(dss, uuid, version), 404, "not_found")
        running = get_file(dss, uuid, version)
        assert running.status_code == 301
        assert running.headers["Retry-After"].isdigit()
        assert running.headers["Location"].startswith(f"{dss.server.api}/files/{uuid}?")
        assert "X-DSS-SHA256" not in running.headers
        again = put_file(dss, uuid, version, url)
        assert again.status_code == 202 and again.json()["task_id"] == task
        assert_problem(put_file(dss, uuid, version, url, creator_uid=99), 409,
                       "file_already_exists")
    finally:
        dss.gate.open_gate()

    deadline = time.monotonic() + 30
    while (head := head_file(dss, uuid, version)).status_code == 404:
        assert time.monotonic() < deadline, "the async copy did not finish"
        time.sleep(0.1)
    assert head.status_code == 200
    assert_headers_match(head.headers, data, version, "application/gzip")
    found = get_file(dss, uuid, version)
    assert found.status_code == 302
    assert requests.get(found.headers["Location"], timeout=30).content == data
    assert put_file(dss, uuid, version, url).status_code == 200


def test_a_failed_async_copy_publishes_nothing_and_head_says_422(dss):
    data = os.urandom(2 * 1024 * 1024)
    url = stage(dss.s3, dss.bucket, data, tag_changes={"hca-dss-sha256": "12" * 32})
    uuid, version = new_ids()
    before = {k for k in local_snapshot(dss.store_root) if not k.startswith("copies/")}
    answer = put_file(dss, uuid, version, url)
    assert answer.status_code == 202, answer.text
    deadline = time.monotonic() + 30
    while (head := head_file(dss, uuid, version)).status_code == 404:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert head.status_code == 422
    assert_problem(get_file(dss, uuid, version), 422, "invalid_checksum")
    after = {k for k in local_snapshot(dss.store_root) if not k.startswith("copies/")}
    assert after == before


# ---------------------------------------------------------------- reads


def test_blob_ranges(dss):
    data = bytes(range(256)) * 40
    uuid, version = new_ids()
    assert put_file(dss, uuid, version, stage(dss.s3, dss.bucket, data)).status_code == 201
    location = get_file(dss, uuid, version).headers["Location"]

    def fetch(spec: str) -> requests.Response:
        return requests.get(location, headers={"Range": spec}, timeout=30)

    part = fetch("bytes=100-199")
    assert part.status_code == 206 and part.content == data[100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{len(data)}"
    tail = fetch("bytes=10000-")
    assert tail.status_code == 206 and tail.content == data[10000:]
    suffix = fetch("bytes=-5")
    assert suffix.status_code == 206 and suffix.content == data[-5:]
    past = fetch(f"bytes={len(data)}-")
    assert past.status_code == 416
    assert past.headers["Content-Range"] == f"bytes */{len(data)}"
    whole = requests.get(location, timeout=30)
    assert whole.status_code == 200 and whole.headers["Accept-Ranges"] == "bytes"
    disposition = get_file(dss, uuid, version, content_disposition="attachment; filename=x")
    named = requests.get(disposition.headers["Location"], timeout=30)
    assert named.headers["Content-Disposition"] == "attachment; filename=x"
    assert_problem(get_file(dss, uuid, version, content_disposition="a\r\nSet-Cookie: x=1"),
                   400, "illegal_arguments")


def test_unknown_files_and_blobs_are_404(dss):
    uuid, version = new_ids()
    assert_problem(head_file(dss, uuid), 404, "not_found")
    assert_problem(get_file(dss, uuid, version), 404, "not_found")
    for junk in ("../../tokens", "2019-08-02T202456.025543Z/../x", "latest"):
        assert_problem(get_file(dss, uuid, junk), 404, "not_found")
    missing = requests.get(f"{dss.server.url}/blobs/{'0' * 64}.{'0' * 40}.{'0' * 32}.{'0' * 8}",
                           timeout=30)
    assert_problem(missing, 404, "not_found")
    assert_problem(requests.get(f"{dss.server.url}/blobs/..%2Ftokens.json", timeout=30), 404,
                   "not_found")


def test_reads_need_a_replica_and_a_valid_uuid(dss):
    uuid, _ = new_ids()
    assert_problem(dss.server.call("HEAD", f"/files/{uuid}"), 400, "illegal_arguments")
    assert_problem(dss.server.call("GET", f"/files/{uuid}", params={"replica": "azure"}), 400,
                   "illegal_arguments")
    assert_problem(dss.server.call("GET", "/files/nope", params={"replica": "aws"}), 400,
                   "illegal_arguments")


def test_put_file_needs_group_hca(dss):
    url = stage(dss.s3, dss.bucket, b"outsider")
    uuid, version = new_ids()
    before = local_snapshot(dss.store_root)
    assert_problem(put_file(dss, uuid, version, url, token=OUTSIDER), 403, "Forbidden")
    assert_problem(put_file(dss, uuid, version, url, token=None), 401, "Unauthorized")
    assert local_snapshot(dss.store_root) == before
