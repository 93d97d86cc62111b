"""Create-once against real ``hcafs serve`` processes, on the local store and on SeaweedFS.

Two requests that create the same immutable key at the same moment (a ``threading.Barrier``
starts them together) must give exactly one winner; the loser is refused in its own answer,
and what the winner stored never changes afterwards.  The S3 backend must refuse to start on
a store that ignores ``If-None-Match`` (:class:`StrippingS3Proxy` makes one out of
SeaweedFS).  Linking another owner's collection must read exactly as linking a missing one.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import subprocess
import sys
import threading
import time
import uuid as _uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import pytest
import requests
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from fixtures.dss_server import ADMIN, OTHER, USER, DSSServer

from hcafs.versions import now_version

ROUNDS = 50
THRESHOLD = 64  # bytes: sources above it are copied in the background
SETTLE_SECONDS = 60.0
T = TypeVar("T")


@pytest.fixture(params=["local", "s3"])
def backend(request, tmp_path: Path, dss_factory, seaweed) -> Backend:
    """Two server processes sharing one store, the local one (one --data-dir) or
    ``s3://bucket/prefix`` in SeaweedFS, with a staging root for ``file://`` sources and
    a --async-threshold of 64 bytes."""
    staging = tmp_path / "staging"
    staging.mkdir()
    args = ["--staging-root", str(staging), "--async-threshold", str(THRESHOLD),
            "--s3-endpoint", seaweed.endpoint]
    bucket = ""
    if request.param == "s3":
        bucket = seaweed.make_bucket()
        args += ["--store", f"s3://{bucket}/hcafs"]
    first = dss_factory(f"{request.param}-1", args)
    second = dss_factory(f"{request.param}-2", [*args, "--data-dir", first.data_dir])
    return Backend(request.param, [first, second], staging, bucket, seaweed.client())


class Backend:
    def __init__(self, kind: str, servers: list[DSSServer], staging: Path, bucket: str,
                 s3):
        self.kind = kind
        self.servers = servers
        self.server = servers[0]
        self.staging = staging
        self.bucket = bucket
        self.s3 = s3

    def stage(self, data: bytes) -> str:
        path = self.staging / f"{hashlib.sha256(data).hexdigest()[:16]}.bin"
        path.write_bytes(data)
        return f"file://{path}"

    def stored(self, key: str) -> dict | None:
        """A document as the store holds it (read behind the server's back)."""
        if self.kind == "local":
            path = Path(self.server.data_dir) / "store" / key
            return json.loads(path.read_bytes()) if path.exists() else None
        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=f"hcafs/{key}")["Body"]
        except self.s3.exceptions.NoSuchKey:
            return None
        return json.loads(body.read())


def race(call: Callable[..., T], *arguments: tuple) -> list[T]:
    """``call(*args)`` for each tuple of arguments, all at the same moment, in threads."""
    barrier = threading.Barrier(len(arguments))

    def run(args: tuple) -> T:
        barrier.wait()
        return call(*args)

    with ThreadPoolExecutor(len(arguments)) as pool:
        return list(pool.map(run, arguments))


def put_file(server: DSSServer, uuid: str, version: str, url: str) -> requests.Response:
    return server.call("PUT", f"/files/{uuid}", USER, params={"version": version},
                       json={"source_url": url, "creator_uid": 3})


def head_sha256(server: DSSServer, uuid: str, version: str) -> str | None:
    answer = server.call("HEAD", f"/files/{uuid}", params={"replica": "aws",
                                                           "version": version})
    if answer.status_code == 404:
        return None
    assert answer.status_code == 200, (answer.status_code, answer.headers)
    return answer.headers["X-DSS-SHA256"]


def settled_sha256(server: DSSServer, uuid: str, version: str) -> str:
    """HEAD's sha256 once the file exists (a background copy may still be running)."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while (found := head_sha256(server, uuid, version)) is None:
        assert time.monotonic() < deadline, f"{uuid}.{version} never appeared"
        time.sleep(0.1)
    return found


def one_winner(answers: list[requests.Response], won: set[int], code: str) -> int:
    """The index of the only answer in ``won``; the other is a 409 with ``code``."""
    statuses = [a.status_code for a in answers]
    winners = [n for n, status in enumerate(statuses) if status in won]
    assert len(winners) == 1, [a.text for a in answers]
    loser = answers[1 - winners[0]]
    assert loser.status_code == 409, loser.text
    assert loser.json()["code"] == code
    return winners[0]


def _content(round_: int, racer: int, size: int) -> bytes:
    head = f"round {round_} racer {racer} {_uuid.uuid4()}\n".encode()
    return head + b"x" * max(0, size - len(head))


# ---------------------------------------------------------------- files


def _sizes(round_: int) -> tuple[int, int]:
    """Both small (copied in the request), both big (background), or one of each."""
    if round_ < ROUNDS - 10:
        return 0, 0
    if round_ < ROUNDS - 5:
        return 4 * THRESHOLD, 4 * THRESHOLD
    return 0, 4 * THRESHOLD


def test_racing_puts_of_one_file_version_have_one_winner(backend):
    server = backend.server
    expected: dict[tuple[str, str], str] = {}
    for round_ in range(ROUNDS):
        uuid, version = str(_uuid.uuid4()), now_version()
        datas = [_content(round_, racer, size) for racer, size in enumerate(_sizes(round_))]
        urls = [backend.stage(data) for data in datas]
        answers = race(put_file, *((peer, uuid, version, url)
                                   for peer, url in zip(backend.servers, urls, strict=True)))
        winner = one_winner(answers, {201, 202}, "file_already_exists")
        sha = hashlib.sha256(datas[winner]).hexdigest()
        assert settled_sha256(server, uuid, version) == sha, f"round {round_}"
        for peer in backend.servers * 2:
            assert head_sha256(peer, uuid, version) == sha, f"round {round_}"
        expected[uuid, version] = sha
    for (uuid, version), sha in expected.items():  # every background copy is done by now
        for peer in backend.servers:
            assert head_sha256(peer, uuid, version) == sha


def test_racing_puts_of_the_same_file_are_idempotent(backend):
    server = backend.server
    for round_ in range(5):
        uuid, version = str(_uuid.uuid4()), now_version()
        data = _content(round_, 0, 0)
        url = backend.stage(data)
        answers = race(put_file, *[(server, uuid, version, url)] * 2)
        assert sorted(a.status_code for a in answers) == [200, 201], \
            [a.text for a in answers]
        assert head_sha256(server, uuid, version) == hashlib.sha256(data).hexdigest()
        assert put_file(server, uuid, version, url).status_code == 200
    big = backend.stage(_content(99, 0, 4 * THRESHOLD))
    uuid, version = str(_uuid.uuid4()), now_version()
    answers = race(put_file, *[(server, uuid, version, big)] * 2)
    assert [a.status_code for a in answers] == [202, 202]
    assert answers[0].json()["task_id"] == answers[1].json()["task_id"]
    settled_sha256(server, uuid, version)


# ---------------------------------------------------------------- bundles and tombstones


def _two_files(backend) -> list[dict]:
    files = []
    for n in range(2):
        uuid, version = str(_uuid.uuid4()), now_version()
        answer = put_file(backend.server, uuid, version, backend.stage(_content(n, n, 0)))
        assert answer.status_code == 201, answer.text
        files.append({"uuid": uuid, "version": version, "name": f"f{n}.txt",
                      "indexed": False})
    return files


def put_bundle(server: DSSServer, uuid: str, version: str, files: list[dict]
               ) -> requests.Response:
    return server.call("PUT", f"/bundles/{uuid}", USER,
                       params={"version": version, "replica": "aws"},
                       json={"files": files, "creator_uid": 3})


def bundle_names(server: DSSServer, uuid: str, version: str) -> list[str]:
    answer = server.call("GET", f"/bundles/{uuid}", params={"version": version,
                                                             "replica": "aws"})
    assert answer.status_code == 200, answer.text
    return [f["name"] for f in answer.json()["bundle"]["files"]]


def test_racing_puts_of_one_bundle_version_have_one_winner(backend):
    files = _two_files(backend)
    for _ in range(ROUNDS):
        uuid, version = str(_uuid.uuid4()), now_version()
        contents = [[files[0]], [files[1]]]
        answers = race(put_bundle, *((peer, uuid, version, c)
                                     for peer, c in zip(backend.servers, contents, strict=True)))
        winner = one_winner(answers, {201}, "bundle_already_exists")
        for peer in backend.servers * 2:
            assert bundle_names(peer, uuid, version) == [contents[winner][0]["name"]]


def delete_bundle(server: DSSServer, uuid: str, version: str, reason: str
                  ) -> requests.Response:
    return server.call("DELETE", f"/bundles/{uuid}", ADMIN,
                       params={"version": version, "replica": "aws"},
                       json={"reason": reason})


def test_racing_deletes_of_one_bundle_version_store_one_tombstone(backend):
    server = backend.server
    files = _two_files(backend)
    for round_ in range(ROUNDS):
        uuid, version = str(_uuid.uuid4()), now_version()
        assert put_bundle(server, uuid, version, files).status_code == 201
        reasons = [f"reason {round_}.{n}" for n in range(2)]
        answers = race(delete_bundle, *((peer, uuid, version, r)
                                        for peer, r in zip(backend.servers, reasons, strict=True)))
        winner = one_winner(answers, {200}, "bundle_tombstone_already_exists")
        for _ in range(3):
            stone = backend.stored(f"bundle-tombstones/{uuid}.{version}")
            assert stone["reason"] == reasons[winner], f"round {round_}"
        gone = server.call("GET", f"/bundles/{uuid}", params={"version": version,
                                                               "replica": "aws"})
        assert gone.status_code == 404


# ---------------------------------------------------------------- collections


def put_collection_at(server: DSSServer, token: str, uuid: str, version: str, name: str
                      ) -> requests.Response:
    return server.call("PUT", "/collections", token,
                       params={"uuid": uuid, "version": version, "replica": "aws"},
                       json={"name": name, "description": "d", "details": {},
                             "contents": []})


def collection_name(server: DSSServer, token: str, uuid: str, version: str) -> str:
    answer = server.call("GET", f"/collections/{uuid}", token,
                         params={"version": version, "replica": "aws"})
    assert answer.status_code == 200, answer.text
    return answer.json()["name"]


def test_racing_puts_of_one_collection_version_have_one_winner(backend):
    for round_ in range(ROUNDS // 5):
        uuid, version = str(_uuid.uuid4()), now_version()
        names = [f"round {round_} racer {n}" for n in range(2)]
        answers = race(put_collection_at, *((peer, USER, uuid, version, name)
                                            for peer, name in zip(backend.servers, names,
                                                                  strict=True)))
        winner = one_winner(answers, {201}, "collection_already_exists")
        for peer in backend.servers * 2:
            assert collection_name(peer, USER, uuid, version) == names[winner]
        assert backend.stored(f"collections/{uuid}.{version}")["name"] == names[winner]
        # The winner's own request again is a repeat, not a conflict; the loser's stays one.
        again = put_collection_at(backend.server, USER, uuid, version, names[winner])
        assert again.status_code == 201, again.text
        lost = put_collection_at(backend.server, USER, uuid, version, names[1 - winner])
        assert lost.status_code == 409 and lost.json()["code"] == "collection_already_exists"


def test_racing_owners_of_one_new_collection_uuid_have_one_winner(backend):
    for round_ in range(ROUNDS // 5):
        uuid = str(_uuid.uuid4())
        tokens = [USER, OTHER]
        answers = race(put_collection_at, *((peer, token, uuid, now_version(), f"r{round_}")
                                            for peer, token in zip(backend.servers, tokens,
                                                                   strict=True)))
        statuses = [a.status_code for a in answers]
        assert sorted(statuses) == [201, 403], [a.text for a in answers]
        owner, other = (0, 1) if statuses[0] == 201 else (1, 0)
        assert answers[other].json()["code"] == "forbidden"
        listed = backend.server.call("GET", "/collections", tokens[other],
                                     params={"replica": "aws"})
        assert uuid not in {c["uuid"] for c in listed.json()["collections"]}
        later = put_collection_at(backend.servers[other], tokens[other], uuid, now_version(),
                                  "later")
        assert later.status_code == 403, later.text
        mine = put_collection_at(backend.servers[other], tokens[owner], uuid, now_version(),
                                 "mine")
        assert mine.status_code == 201, mine.text


# ---------------------------------------------------------------- Idempotency-Key


def create_import(server: DSSServer, body: dict, key: str) -> requests.Response:
    return requests.post(f"{server.url}/v2/bulk/drs/imports/create", json=body,
                         headers={"X-SBG-Auth-Token": USER, "Idempotency-Key": key},
                         timeout=60)


def _import_body(n: int) -> dict:
    # Never fetched successfully: nothing answers on port 1 (the job's outcome is not the
    # point here, only which job the create calls answer with).
    return {"items": [{"drs_uri": f"drs://127.0.0.1:1/object-{n}",
                       "project": "user/create-once", "name": f"n{n}.txt"}]}


def test_racing_creates_with_one_idempotency_key(backend):
    server = backend.server
    for round_ in range(10):
        key = str(_uuid.uuid4())
        same = race(create_import, *((peer, _import_body(round_), key)
                                     for peer in backend.servers))
        assert [a.status_code for a in same] == [200, 200], [a.text for a in same]
        assert same[0].json()["id"] == same[1].json()["id"]
        key = str(_uuid.uuid4())
        other = race(create_import, (server, _import_body(round_), key),
                     (backend.servers[1], _import_body(round_ + 100), key))
        statuses = sorted(a.status_code for a in other)
        assert statuses == [200, 422], [a.text for a in other]
        refused = next(a for a in other if a.status_code == 422).json()
        assert refused["status"] == 422 and "Idempotency-Key" in refused["message"]


# ---------------------------------------------------------------- the start-up probe


class StrippingS3Proxy:
    """An S3 relay that drops ``If-None-Match`` from every request: a store that ignores
    the condition.  SigV4 signs that header, so the proxy signs each request again with
    the same credentials (``strip=False`` relays the header: the control)."""

    def __init__(self, upstream: str, access_key: str, secret_key: str, region: str,
                 strip: bool = True):
        parts = urlsplit(upstream)
        self._upstream = (parts.hostname, parts.port)
        self._base = upstream.rstrip("/")
        self._credentials = Credentials(access_key, secret_key)
        self._region = region
        self.strip = strip
        self.stripped = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format, *args):  # noqa: A002 - quiet
                pass

            def _any(self):
                proxy._relay(self)

            do_GET = do_HEAD = do_PUT = do_DELETE = do_POST = _any

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}"
        threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.1},
                         daemon=True, name="stripping-s3-proxy").start()

    def _relay(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        dropped = {"authorization", "x-amz-date", "x-amz-content-sha256", "host",
                   "connection", "keep-alive", "content-length"}
        if self.strip and "If-None-Match" in handler.headers:
            dropped.add("if-none-match")
            self.stripped += 1
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in dropped}
        signed = AWSRequest(method=handler.command, url=self._base + handler.path,
                            headers=headers, data=body)
        S3SigV4Auth(self._credentials, "s3", self._region).add_auth(signed)
        upstream = http.client.HTTPConnection(*self._upstream, timeout=60)
        try:
            upstream.putrequest(handler.command, handler.path, skip_accept_encoding=True)
            for name, value in signed.headers.items():
                upstream.putheader(name, value)
            upstream.putheader("Content-Length", str(len(body)))
            upstream.endheaders(body)
            answer = upstream.getresponse()
            payload = answer.read()
            handler.send_response(answer.status, answer.reason)
            for name, value in answer.getheaders():
                if name.lower() not in ("connection", "keep-alive", "transfer-encoding",
                                        "content-length", "date", "server"):
                    handler.send_header(name, value)
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            if handler.command != "HEAD":
                handler.wfile.write(payload)
        finally:
            upstream.close()

    def close(self) -> None:
        self._http.shutdown()
        self._http.server_close()


def _serve(tmp_path: Path, seaweed, endpoint: str, bucket: str) -> subprocess.CompletedProcess:
    """``hcafs serve --store`` through ``endpoint``, stopped once it says it listens."""
    ready = tmp_path / "ready.json"
    command = [sys.executable, "-m", "hcafs", "serve", "--host", "127.0.0.1", "--port", "0",
               "--data-dir", str(tmp_path / "data"), "--ready-file", str(ready),
               "--store", f"s3://{bucket}/probe", "--s3-endpoint", endpoint]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               stdin=subprocess.DEVNULL, text=True,
                               env={**os.environ, **seaweed.env()})
    deadline = time.monotonic() + 60
    while process.poll() is None and not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    if process.poll() is None:
        process.terminate()
    try:
        out, err = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def test_s3_store_that_ignores_if_none_match_is_refused_at_start(tmp_path, seaweed):
    bucket = seaweed.make_bucket()
    control = StrippingS3Proxy(seaweed.endpoint, seaweed.access_key, seaweed.secret_key,
                               seaweed.region, strip=False)
    proxy = StrippingS3Proxy(seaweed.endpoint, seaweed.access_key, seaweed.secret_key,
                             seaweed.region)
    try:
        served = _serve(tmp_path / "control", seaweed, control.url, bucket)
        assert "listening on" in served.stderr, served.stderr  # the relay itself works
        refused = _serve(tmp_path / "stripped", seaweed, proxy.url, bucket)
    finally:
        control.close()
        proxy.close()
    assert proxy.stripped >= 2
    assert refused.returncode not in (0, None), refused.stderr
    assert "listening on" not in refused.stderr
    assert "does not honour If-None-Match" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    leftovers = seaweed.client().list_objects_v2(Bucket=bucket, Prefix="probe/")
    assert leftovers.get("KeyCount", 0) == 0  # the probe key is removed either way


# ---------------------------------------------------------------- collections of others


def put_collection(server: DSSServer, token: str, contents: list[dict]) -> requests.Response:
    return server.call("PUT", "/collections", token,
                       params={"uuid": str(_uuid.uuid4()), "version": now_version(),
                               "replica": "aws"},
                       json={"name": "c", "description": "d", "details": {},
                             "contents": contents})


def _anonymous(answer: requests.Response, fqid: str) -> tuple[int, dict]:
    body = answer.json()
    body["title"] = body["title"].replace(fqid, "FQID")
    return answer.status_code, body


def test_linking_another_owners_collection_reads_as_a_missing_one(tmp_path, dss_factory):
    server = dss_factory("collections")
    made = put_collection(server, USER, [])
    assert made.status_code == 201, made.text
    theirs = {"type": "collection", **made.json()}
    missing = {"type": "collection", "uuid": str(_uuid.uuid4()), "version": now_version()}
    fqid = f"{theirs['uuid']}.{theirs['version']}"
    missing_fqid = f"{missing['uuid']}.{missing['version']}"

    assert put_collection(server, USER, [theirs]).status_code == 201  # the owner may link
    linked = put_collection(server, OTHER, [theirs])
    absent = put_collection(server, OTHER, [missing])
    assert (linked.status_code, absent.status_code) == (422, 422), linked.text
    assert _anonymous(linked, fqid) == _anonymous(absent, missing_fqid)

    own = put_collection(server, OTHER, [])
    own_uuid, own_version = own.json()["uuid"], own.json()["version"]

    def patch(item: dict) -> requests.Response:
        return server.call("PATCH", f"/collections/{own_uuid}", OTHER,
                           params={"version": own_version, "replica": "aws"},
                           json={"add_contents": [item]})

    assert _anonymous(patch(theirs), fqid) == _anonymous(patch(missing), missing_fqid)
    # The owner's collection is still theirs: GET, PATCH and DELETE by another are 403.
    for method, body in (("GET", None), ("PATCH", {"name": "x"}), ("DELETE", None)):
        answer = server.call(method, f"/collections/{theirs['uuid']}", OTHER,
                             params={"version": theirs["version"], "replica": "aws"},
                             json=body)
        assert answer.status_code == 403 and answer.json()["code"] == "forbidden", method


# ---------------------------------------------------------------- the store primitives

_COUNTER = """
import json, sys, time
from hcafs.remote.s3 import S3
from hcafs.server.store import LocalStore, S3Store
kind, where, endpoint, times, start = sys.argv[1:]
store = LocalStore(where) if kind == "local" else S3Store(where, S3(endpoint))
time.sleep(max(0.0, float(start) - time.time()))  # every worker starts together
for _ in range(int(times)):
    while True:
        data, tag = store.read_versioned("counter")
        if store.replace("counter", json.dumps(json.loads(data) + 1).encode(), tag):
            break
"""


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_replace_is_a_compare_and_swap_across_processes(kind, tmp_path, seaweed,
                                                        monkeypatch):
    from hcafs.remote.s3 import S3
    from hcafs.server.store import LocalStore, S3Store

    for name, value in seaweed.env().items():
        monkeypatch.setenv(name, value)
    where = str(tmp_path / "store") if kind == "local" else \
        f"s3://{seaweed.make_bucket()}/cas"
    store = LocalStore(where) if kind == "local" else S3Store(where, S3(seaweed.endpoint))
    assert store.create("counter", b"0")
    assert not store.create("counter", b"7")
    assert store.read("counter") == b"0"
    _, tag = store.read_versioned("counter")
    assert not store.replace("missing", b"1", tag)
    assert store.read("missing") is None
    times = 200 if kind == "local" else 50
    start = str(time.time() + 5)
    workers = [subprocess.Popen([sys.executable, "-c", _COUNTER, kind, where,
                                 seaweed.endpoint, str(times), start]) for _ in range(4)]
    assert [worker.wait(timeout=120) for worker in workers] == [0] * 4
    assert json.loads(store.read("counter")) == 4 * times  # no increment lost
    assert not store.replace("counter", b"0", tag)  # a stale tag changes nothing
    assert json.loads(store.read("counter")) == 4 * times


def _bind(folders, folder: str, name: str, file_id: str, resolution: str) -> str:
    """The name ``bind`` used, or how it refused."""
    from hcafs.server.folders import FolderError

    try:
        return folders.bind(folder, name, file_id, resolution)
    except FolderError as exc:
        return f"refused {exc.body['status']}"


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_racing_skip_and_rename_bindings_never_share_a_name(kind, tmp_path, seaweed,
                                                            monkeypatch):
    from hcafs.remote.s3 import S3
    from hcafs.server.folders import Folders
    from hcafs.server.store import LocalStore, S3Store

    for name, value in seaweed.env().items():
        monkeypatch.setenv(name, value)
    store = LocalStore(str(tmp_path / "store")) if kind == "local" else \
        S3Store(f"s3://{seaweed.make_bucket()}/names", S3(seaweed.endpoint))
    folders = Folders(store)
    folder = folders.root("user/names")["id"]
    for round_ in range(20):
        name = f"same-{round_}.txt"
        ids = [f"{_uuid.uuid4()}.{now_version()}" for _ in range(2)]
        resolution = "SKIP" if round_ % 2 else "RENAME"
        named = race(_bind, *((folders, folder, name, i, resolution) for i in ids))
        if resolution == "SKIP":
            assert sorted(named) == sorted([name, "refused 409"]), named
            assert folders.lookup(folder, name)["id"] == ids[named.index(name)]
        else:
            assert sorted(named) == sorted([name, f"_1_{name}"]), named
            for file_id, used in zip(ids, named, strict=True):
                assert folders.lookup(folder, used)["id"] == file_id
