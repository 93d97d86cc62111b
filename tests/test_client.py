"""The DSS client library against a real ``hcafs serve``, with faults injected by a small HTTP
proxy in front of it (the only fake: it answers some requests with errors or resets)."""

from __future__ import annotations

import threading
import uuid as _uuid

import pytest
import requests
from fixtures.dss_checks import new_ids
from fixtures.dss_server import OUTSIDER, USER
from fixtures.faults import Fault, FaultyHttpProxy
from fixtures.ports import free_port
from fixtures.staging import stage

from hcafs.errors import ApiError, ApiUnauthorized, NotFound, PermissionDenied, Unreachable
from hcafs.remote.bulk_import import BulkImportClient
from hcafs.remote.client import DSSClient, RetryPolicy

FAST = RetryPolicy(attempts=4, base_delay=0.05, max_delay=5.0)

pytestmark = pytest.mark.s3


@pytest.fixture
def proxy(dss):
    relay = FaultyHttpProxy(dss.server.url)
    yield relay
    relay.close()


@pytest.fixture
def client(proxy) -> DSSClient:
    return DSSClient(proxy.url, token=USER, retry=FAST)


@pytest.fixture(scope="module")
def bundle(dss) -> tuple[str, str, list[dict]]:
    """A bundle of 25 files (one blob), written through the real server."""
    direct = DSSClient(dss.server.url, token=USER)
    path = dss.staging_root / "client-test.txt"
    path.write_bytes(b"0123456789" * 100)
    file_uuid, version = new_ids()
    status, _ = direct.put_file(file_uuid, version, f"file://{path}")
    assert status in (200, 201)
    files = [{"uuid": file_uuid, "version": version, "name": f"n{i:02d}", "indexed": False}
             for i in range(25)]
    uuid = str(_uuid.uuid4())
    direct.put_bundle(uuid, version, files)
    return uuid, version, files


def gaps(proxy: FaultyHttpProxy) -> list[float]:
    times = [seen.at for seen in proxy.seen]
    return [b - a for a, b in zip(times, times[1:], strict=False)]


# ---------------------------------------------------------------- retries


def test_503_is_retried_after_its_retry_after(proxy, client, bundle):
    proxy.inject(Fault.error(503, retry_after="1"), Fault.error(503, retry_after="1"))
    assert len(client.get_bundle(bundle[0])["files"]) == 25
    assert len(proxy.seen) == 3
    assert all(gap >= 0.95 for gap in gaps(proxy)), gaps(proxy)


def test_429_is_retried_after_its_retry_after(proxy, client, bundle):
    proxy.inject(Fault.error(429, retry_after="1"))
    assert client.get_bundle(bundle[0])["uuid"] == bundle[0]
    assert len(proxy.seen) == 2 and gaps(proxy)[0] >= 0.95


def test_5xx_without_retry_after_backs_off_and_retries(proxy, client, bundle):
    proxy.inject(Fault.error(500), Fault.error(502), Fault.error(504))
    assert client.get_bundle(bundle[0])["uuid"] == bundle[0]
    assert [s.fault.status if s.fault else 200 for s in proxy.seen] == [500, 502, 504, 200]


def test_connection_resets_are_retried(proxy, client, bundle):
    proxy.inject(Fault(reset=True), Fault(reset=True))
    assert client.get_bundle(bundle[0])["uuid"] == bundle[0]
    assert len(proxy.seen) == 3


def test_a_put_is_retried_too(proxy, client, bundle):
    proxy.inject(Fault(reset=True), Fault.error(503, retry_after="0"))
    uuid, version = new_ids()
    client.put_collection(uuid, version, "retried", [])
    assert client.get_collection(uuid)["name"] == "retried"
    assert [s.method for s in proxy.seen[:3]] == ["PUT", "PUT", "PUT"]


def test_giving_up_raises_typed_errors(proxy, client, bundle):
    proxy.inject(*[Fault.error(503, retry_after="0", code="overloaded")] * 4)
    with pytest.raises(ApiError) as failed:
        client.get_bundle(bundle[0])
    assert (failed.value.status, failed.value.code) == (503, "overloaded")
    assert failed.value.title == "injected fault" and failed.value.transient
    assert len(proxy.seen) == 4

    proxy.inject(*[Fault(reset=True)] * 4)
    with pytest.raises(Unreachable):
        client.get_bundle(bundle[0])
    assert len(proxy.seen) == 8


def test_an_error_without_a_problem_body_is_still_typed(proxy, client, bundle):
    proxy.inject(*[Fault(status=502)] * 4)
    with pytest.raises(ApiError) as failed:
        client.get_bundle(bundle[0])
    assert failed.value.status == 502 and failed.value.code == "http_502"
    assert failed.value.title == "Bad Gateway"


def test_client_errors_are_not_retried_and_carry_the_dss_code(proxy, client, dss):
    with pytest.raises(ApiError) as missing:
        client.get_bundle(str(_uuid.uuid4()))
    assert (missing.value.status, missing.value.code) == (404, "not_found")
    assert missing.value.title == "Cannot find bundle!" and not missing.value.transient
    assert len(proxy.seen) == 1

    url = stage(dss.s3, dss.bucket, b"x")
    outsider = DSSClient(proxy.url, token=OUTSIDER, retry=FAST)
    with pytest.raises(ApiError) as forbidden:
        outsider.put_file(*new_ids(), url)
    assert (forbidden.value.status, forbidden.value.code) == (403, "Forbidden")
    assert OUTSIDER not in str(forbidden.value) and OUTSIDER not in repr(outsider)

    with pytest.raises(ApiError) as bad:
        client.put_file(str(_uuid.uuid4()), "not-a-version", url)
    assert (bad.value.status, bad.value.code) == (400, "illegal_version")
    assert len(proxy.seen) == 3


def test_nobody_listening_is_unreachable():
    client = DSSClient(f"http://127.0.0.1:{free_port()}", retry=RetryPolicy(attempts=2,
                                                                              base_delay=0.01))
    with pytest.raises(Unreachable):
        client.get_bundle(str(_uuid.uuid4()))


# ---------------------------------------------------------------- pagination


def test_get_bundle_follows_every_page(proxy, client, bundle):
    uuid, version, files = bundle
    got = client.get_bundle(uuid, per_page=10)
    assert got["version"] == version
    assert [f["name"] for f in got["files"]] == [f["name"] for f in files]
    assert len(proxy.seen) == 3
    assert "start_at=20" in proxy.seen[2].path


def test_a_fault_between_pages_is_retried(proxy, client, bundle):
    pages = client.pages(f"/bundles/{bundle[0]}", {"replica": "aws", "per_page": 10})
    first = next(pages)
    proxy.inject(Fault.error(503, retry_after="0"), Fault(reset=True))
    rest = list(pages)
    names = [f["name"] for page in [first, *rest] for f in page["bundle"]["files"]]
    assert names == [f["name"] for f in bundle[2]]
    assert len(proxy.seen) == 5


def test_iter_bundles_and_list_collections_page(proxy, client, bundle, dss):
    prefix = _uuid.uuid4().hex[:8]
    made = set()
    for _ in range(12):
        uuid = prefix + str(_uuid.uuid4())[8:]
        version = new_ids()[1]
        client.put_bundle(uuid, version, bundle[2][:1])
        made.add((uuid, version))
    assert set(client.iter_bundles(prefix=prefix, per_page=10)) == made

    mine_before = {c["uuid"] for c in client.list_collections()}
    for _ in range(11):
        client.put_collection(str(_uuid.uuid4()), new_ids()[1], "paged", [])
    start = len(proxy.seen)
    mine = client.list_collections(per_page=10)
    assert len({c["uuid"] for c in mine} - mine_before) == 11
    assert len(proxy.seen) - start >= 2


# ---------------------------------------------------------------- files


def test_file_url_follows_301_with_retry_after(proxy, client, bundle):
    file_uuid, version = bundle[2][0]["uuid"], bundle[2][0]["version"]
    again = f"{proxy.url}/v1/files/{file_uuid}?replica=aws&version={version}&token=t1"
    proxy.inject(Fault(status=301, headers={"Location": again, "Retry-After": "1"}))
    location = client.file_url(file_uuid, version)
    assert location.startswith(proxy.url + "/blobs/")  # the server names the host asked
    assert len(proxy.seen) == 2 and "token=t1" in proxy.seen[1].path
    assert gaps(proxy)[0] >= 0.95


def test_wait_file_polls_until_an_async_copy_is_done(proxy, client, dss):
    data = bytes(1024 * 1024 + 1)
    url = stage(dss.s3, dss.bucket, data)
    uuid, version = new_ids()
    dss.gate.close_gate()
    try:
        status, body = client.put_file(uuid, version, url)
        assert status == 202 and body["task_id"]
        assert dss.gate.stalled.wait(30)
        done: list = []
        waiter = threading.Thread(target=lambda: done.append(
            client.wait_file(uuid, version, timeout=30, interval=0.05)))
        waiter.start()
        while sum(1 for s in proxy.seen if s.method == "HEAD") < 3:
            assert waiter.is_alive()
            threading.Event().wait(0.05)
    finally:
        dss.gate.open_gate()
    waiter.join(30)
    assert done and done[0].size == len(data) and done[0].version == version


def test_reads_of_bytes_are_retried(proxy, client, bundle):
    file_uuid, version = bundle[2][0]["uuid"], bundle[2][0]["version"]
    proxied = client.file_url(file_uuid, version)
    assert proxied.startswith(proxy.url)
    proxy.inject(Fault(reset=True), Fault.error(503, retry_after="0"))
    assert client.read_range(proxied, 5, 25) == (b"0123456789" * 100)[5:25]
    assert client.read_range(proxied, 995, 2000) == b"56789"
    assert client.read_range(proxied, 1000, 1010) == b""
    assert b"".join(client.stream(proxied, 990)) == b"0123456789"
    assert requests.get(proxied, timeout=30).content == b"0123456789" * 100


# ---------------------------------------------------------------- the bulk-import client


def test_bulk_import_calls_share_the_retry_path(proxy):
    api = BulkImportClient(proxy.url, USER, retry=FAST)
    proxy.when(Fault.error(503, retry_after="0"), method="POST",
               path="/v2/bulk/drs/imports/create", times=1)
    proxy.seen.clear()
    item = {"drs_uri": "drs://127.0.0.1:9/" + str(_uuid.uuid4()), "name": "x.bin",
            "project": "hcafs/test", "metadata": {}}
    key = str(_uuid.uuid4())
    job = api.create([item], "SKIP", [], key)
    posts = [s for s in proxy.seen if s.method == "POST"]
    assert len(posts) == 2  # the 503, then the same request again
    assert api.create([item], "SKIP", [], key)["id"] == job["id"]  # same key, same job
    assert api.get(job["id"])["id"] == job["id"]
    assert api.limit is not None and api.limit.limit > 0  # the server's X-RateLimit-* headers


def test_bulk_import_errors_come_from_the_one_status_map(proxy):
    with pytest.raises(PermissionDenied) as raised:
        BulkImportClient(proxy.url, "not-a-token", retry=FAST).get("no-such-job")
    assert isinstance(raised.value, ApiUnauthorized) and raised.value.status == 401
    with pytest.raises(NotFound):
        BulkImportClient(proxy.url, USER, retry=FAST).get(str(_uuid.uuid4()))
