"""How ``hcafs serve`` is deployed: several processes on one S3 store, restarts, https."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest
import requests
from fixtures.drs_repo import self_signed_cert
from fixtures.dss_checks import assert_problem, new_ids
from fixtures.dss_server import ADMIN, USER, DSSServer, write_tokens
from fixtures.faults import TcpGate
from fixtures.staging import local_snapshot, s3_snapshot, stage

from hcafs.errors import ApiError
from hcafs.readyfile import wait_for
from hcafs.remote.client import DSSClient
from hcafs.versions import now_version

pytestmark = pytest.mark.s3


def write_bundle(server: DSSServer, s3, bucket: str, payload: bytes) -> dict:
    """A file (from an S3 source), a bundle holding it and a collection pointing at it."""
    file_uuid, version = new_ids()
    url = stage(s3, bucket, payload, name="cells.tsv", content_type="text/tab-separated-values")
    answer = server.call("PUT", f"/files/{file_uuid}", USER, params={"version": version},
                         json={"source_url": url, "creator_uid": 2})
    assert answer.status_code == 201, answer.text
    bundle_uuid = new_ids()[0]
    answer = server.call("PUT", f"/bundles/{bundle_uuid}", USER,
                         params={"version": version, "replica": "aws"},
                         json={"creator_uid": 2, "files": [
                             {"uuid": file_uuid, "version": version, "name": "cells.tsv",
                              "indexed": False}]})
    assert answer.status_code == 201, answer.text
    collection_uuid = new_ids()[0]
    answer = server.call("PUT", "/collections", USER,
                         params={"uuid": collection_uuid, "version": version, "replica": "aws"},
                         json={"name": "c", "description": "", "details": {}, "contents": [
                             {"type": "bundle", "uuid": bundle_uuid, "version": version}]})
    assert answer.status_code == 201, answer.text
    return {"file": file_uuid, "bundle": bundle_uuid, "collection": collection_uuid,
            "version": version, "payload": payload}


def read_back(server: DSSServer, written: dict) -> dict:
    """Everything :func:`write_bundle` wrote, read through ``server``; checks the bytes."""
    bundle = server.call("GET", f"/bundles/{written['bundle']}", params={"replica": "aws"})
    assert bundle.status_code == 200, bundle.text
    found = server.call("GET", f"/files/{written['file']}",
                        params={"replica": "aws", "version": written["version"]})
    assert found.status_code == 302
    assert found.headers["Location"].startswith(server.url + "/blobs/")
    assert requests.get(found.headers["Location"], timeout=30).content == written["payload"]
    collection = server.call("GET", f"/collections/{written['collection']}", USER,
                             params={"replica": "aws"})
    assert collection.status_code == 200, collection.text
    return {"bundle": bundle.json(), "collection": collection.json(),
            "head": {k: v for k, v in found.headers.items() if k.startswith("X-DSS-")}}


def every_bundle(server: DSSServer) -> list[dict]:
    client = DSSClient(server.url)
    return [{"uuid": u, "version": v} for u, v in client.iter_bundles(per_page=10)]


def test_two_servers_share_one_s3_store(dss_factory, seaweed, staging_bucket):
    bucket = seaweed.make_bucket()
    store = ["--store", f"s3://{bucket}/dss", "--async-threshold", "1M"]
    one = dss_factory("one", args=store)
    two = dss_factory("two", args=store)
    s3 = seaweed.client()

    written = write_bundle(one, s3, staging_bucket, b"gene\tcount\nACTB\t12\n")
    seen_by_two = read_back(two, written)
    assert seen_by_two == read_back(one, written)
    assert seen_by_two["bundle"]["bundle"]["files"][0]["content-type"] == \
        "text/tab-separated-values"

    more = [write_bundle(two, s3, staging_bucket, os.urandom(64)) for _ in range(11)]
    listed_one, listed_two = every_bundle(one), every_bundle(two)
    assert listed_one == listed_two
    assert {(w["bundle"], w["version"]) for w in [written, *more]} == \
        {(b["uuid"], b["version"]) for b in listed_one}

    # an asynchronous copy started through one finishes where two can see it
    big = os.urandom(1536 * 1024)
    file_uuid, version = new_ids()
    answer = one.call("PUT", f"/files/{file_uuid}", USER, params={"version": version},
                      json={"source_url": stage(s3, staging_bucket, big), "creator_uid": 0})
    assert answer.status_code == 202
    info = DSSClient(two.url).wait_file(file_uuid, version, timeout=30, interval=0.1)
    assert info.size == len(big)

    # a tombstone written through two hides the bundle from one
    assert two.call("DELETE", f"/bundles/{written['bundle']}", ADMIN,
                    params={"replica": "aws"}, json={"reason": "gone"}).status_code == 200
    assert_problem(one.call("GET", f"/bundles/{written['bundle']}", params={"replica": "aws"}),
                   404, "not_found")
    assert {"uuid": written["bundle"], "version": written["version"]} not in every_bundle(one)

    keys = s3_snapshot(s3, bucket)
    assert keys and all(k.startswith("dss/") for k in keys)
    assert any(re.match(r"dss/blobs/[0-9a-f]{64}\.", k) for k in keys)
    assert f"dss/bundles/{written['bundle']}.{written['version']}" in keys
    for server in (one, two):
        assert not os.path.exists(os.path.join(server.data_dir, "store"))


def test_a_missing_store_bucket_stops_the_server_at_start(tmp_path, seaweed):
    server = DSSServer(str(tmp_path / "nobucket"), env=seaweed.env(),
                       args=["--store", "s3://no-such-bucket-here/x"])
    with pytest.raises(RuntimeError, match="does not exist"):
        server.start(timeout=30)


@pytest.mark.parametrize("backend,sig", [
    pytest.param(backend, sig, id=f"{backend}-{sig.name}")
    for backend in ("local", "s3") for sig in (signal.SIGTERM, signal.SIGKILL)])
def test_data_written_before_a_restart_is_intact_after(dss_factory, seaweed, staging_bucket,
                                                       backend, sig):
    args = ["--store", f"s3://{seaweed.make_bucket()}/p"] if backend == "s3" else []
    server = dss_factory("restart", args=args)
    written = write_bundle(server, seaweed.client(), staging_bucket, os.urandom(3000))
    before = read_back(server, written)
    server.stop(sig)
    server.start()
    assert read_back(server, written) == before
    patched = server.call("PATCH", f"/bundles/{written['bundle']}", USER,
                          params={"replica": "aws", "version": written["version"]}, json={})
    assert patched.status_code == 200


def test_a_copy_cut_short_by_a_crash_resumes_after_restart(dss_factory, seaweed,
                                                            staging_bucket):
    gate = TcpGate(seaweed.endpoint)
    try:
        server = dss_factory("resume", args=["--async-threshold", "1M",
                                             "--s3-endpoint", gate.endpoint])
        data = os.urandom(2 * 1024 * 1024)
        uuid, version = new_ids()
        url = stage(seaweed.client(), staging_bucket, data)
        gate.close_gate()
        answer = server.call("PUT", f"/files/{uuid}", USER, params={"version": version},
                             json={"source_url": url, "creator_uid": 0})
        assert answer.status_code == 202
        assert gate.stalled.wait(30)
        server.stop(signal.SIGKILL)
        store = os.path.join(server.data_dir, "store")
        assert not any(k.startswith(("blobs/", "files/")) for k in local_snapshot(store))
        gate.open_gate()
        server.start()
        info = DSSClient(server.url).wait_file(uuid, version, timeout=30, interval=0.1)
        assert info.size == len(data)
        assert "resumed 1 asynchronous copies" in server.log()
        location = DSSClient(server.url).file_url(uuid, version)
        assert requests.get(location, timeout=30).content == data
    finally:
        gate.open_gate()
        gate.close()


# ---------------------------------------------------------------- https


def test_https_with_a_self_signed_certificate(dss_factory, seaweed, staging_bucket, tmp_path):
    cert, key = self_signed_cert(tmp_path)
    server = dss_factory("tls", args=["--tls-cert", cert, "--tls-key", key])
    assert server.url.startswith("https://127.0.0.1:")

    client = DSSClient(server.url, token=USER, verify=cert)
    data = b"over tls\n" * 100
    uuid, version = new_ids()
    status, _ = client.put_file(uuid, version, stage(seaweed.client(), staging_bucket, data))
    assert status == 201
    assert client.head_file(uuid, version).size == len(data)
    location = client.file_url(uuid, version)
    assert location.startswith(server.url + "/blobs/")
    assert client.read_range(location, 9, 18) == data[9:18]
    bundle_uuid = new_ids()[0]
    client.put_bundle(bundle_uuid, version, [{"uuid": uuid, "version": version,
                                              "name": "tls.txt", "indexed": False}])
    assert client.get_bundle(bundle_uuid)["files"][0]["name"] == "tls.txt"
    client.put_collection(bundle_uuid, now_version(), "tls", [])
    assert [c["uuid"] for c in client.list_collections()] == [bundle_uuid]

    with pytest.raises(requests.exceptions.SSLError):
        requests.get(server.api + "/swagger.json", timeout=10)  # not trusted by default
    with pytest.raises(ApiError) as refused:
        DSSClient(server.url, token="wrong", verify=cert).list_collections()
    assert refused.value.status == 401
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(server.url.replace("https://", "http://") + "/v1/swagger.json",
                     timeout=10)


# ---------------------------------------------------------------- configuration


def test_options_come_from_the_environment_and_the_config_file(tmp_path, seaweed):
    """docs/server.md: flag > HCAFS_SERVE_* > [serve] in $HCAFS_CONFIG."""
    staging = tmp_path / "staging"
    staging.mkdir()
    tokens = write_tokens(str(tmp_path / "tokens.json"))
    config = tmp_path / "config.toml"
    config.write_text(f"""[serve]
data-dir = "{tmp_path / 'data'}"
tokens = "{tokens}"
staging_root = "{staging}"
async-threshold = "1G"
port = 1
""")
    ready = tmp_path / "ready.json"
    env = {**os.environ, **seaweed.env(), "HCAFS_CONFIG": str(config),
           "HCAFS_SERVE_READY_FILE": str(ready), "HCAFS_SERVE_PORT": "0",
           "HCAFS_SERVE_ASYNC_THRESHOLD": "1K"}
    process = subprocess.Popen([sys.executable, "-m", "hcafs", "serve", "--host", "127.0.0.1"],
                               env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        wait_for(ready.exists, 30, "the server to listen", process)
        url = json.loads(ready.read_text())["url"]
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":1")
        (staging / "two-k.bin").write_bytes(os.urandom(2048))
        client = DSSClient(url, token=USER)
        uuid, version = new_ids()
        status, _ = client.put_file(uuid, version, f"file://{staging / 'two-k.bin'}")
        assert status == 202  # the environment's 1K beat the file's 1G
        assert client.wait_file(uuid, version, timeout=30, interval=0.05).size == 2048
        assert os.path.isdir(tmp_path / "data" / "store" / "files")
    finally:
        process.terminate()
        process.wait(15)
