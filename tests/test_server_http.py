"""The HTTP front of ``hcafs serve`` under hostile clients (all on 127.0.0.1, all bounded).

Each test starts its own server, stops it by PID, and measures the server's own process
tree through /proc: its threads, and the worker's resident memory.
"""

from __future__ import annotations

import json
import os
import re
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from fixtures.drs_repo import self_signed_cert
from fixtures.dss_server import ADMIN, USER, DSSServer

MiB = 1024 * 1024
ERROR_ID = re.compile(r"^[0-9a-f]{12}$")


@pytest.fixture
def serve(tmp_path: Path) -> Iterator:
    """``make(name, *args) -> DSSServer``, started; every one is stopped by PID."""
    started: list[DSSServer] = []

    def make(name: str, *args: str) -> DSSServer:
        # One worker process unless a test asks for more: the thread and memory checks
        # below watch the worker that serves the request.
        workers = [] if "--workers" in args else ["--workers", "1"]
        server = DSSServer(str(tmp_path / name), args=[*workers, *args])
        started.append(server)
        return server.start()

    yield make
    for server in started:
        server.stop()


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        try:
            with open(f"/proc/{current}/task/{current}/children") as handle:
                todo += [int(child) for child in handle.read().split()]
        except FileNotFoundError:
            pass
    return pids


def _threads(server: DSSServer) -> int:
    return sum(len(os.listdir(f"/proc/{pid}/task")) for pid in _tree(server.process.pid))


def _worker(server: DSSServer) -> int:
    workers = _tree(server.process.pid)[1:]
    assert workers, "hcafs serve has no worker process"
    return workers[0]


def _memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid``, in bytes."""
    with open(f"/proc/{pid}/status") as handle:
        fields = dict(line.split(":", 1) for line in handle)
    return {name: int(fields[name].split()[0]) * 1024 for name in ("VmRSS", "VmHWM")}


def _connect(server: DSSServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=30)


def _timed_get(url: str, **kwargs) -> tuple[int, float]:
    started = time.monotonic()
    answer = requests.get(url, timeout=30, **kwargs)
    return answer.status_code, time.monotonic() - started


def _send_body(server: DSSServer, head: str, chunks: Iterator[bytes]
               ) -> tuple[int, dict[str, str], bytes, int]:
    """Send ``head``, then the chunks until the server answers.

    Returns the answer's status, headers and body, and the body bytes sent before it came.
    """
    sock = _connect(server)
    sent = 0
    try:
        sock.sendall(head.encode())
        for chunk in chunks:
            if select.select([sock], [], [], 0)[0]:
                break
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        answer = b""
        while b"\r\n\r\n" not in answer:
            data = sock.recv(65536)
            assert data, f"no answer, only {answer!r}"
            answer += data
        head_bytes, _, body = answer.partition(b"\r\n\r\n")
        status_line, *lines = head_bytes.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.partition(":") for line in lines)}
        while len(body) < int(headers.get("content-length", 0)):
            data = sock.recv(65536)
            assert data, "the answer's body was cut short"
            body += data
        return int(status_line.split()[1]), headers, body, sent
    finally:
        sock.close()


def _megabytes(count: int) -> Iterator[bytes]:
    chunk = b"[" * MiB
    for _ in range(count):
        yield chunk


def _chunked(count: int) -> Iterator[bytes]:
    for chunk in _megabytes(count):
        yield f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    yield b"0\r\n\r\n"


# ---------------------------------------------------------------- slow and silent clients


def test_an_idle_tls_connection_does_not_stop_other_clients(serve, tmp_path,
                                                             record_property):
    cert, key = self_signed_cert(tmp_path)
    server = serve("tls", "--tls-cert", cert, "--tls-key", key)
    silent = [_connect(server) for _ in range(3)]  # never a ClientHello
    try:
        time.sleep(0.5)
        status, elapsed = _timed_get(f"{server.url}/internal/health", verify=cert)
        record_property("seconds_to_answer_beside_idle_tls", round(elapsed, 3))
        print(f"answered in {elapsed:.3f}s beside 3 idle TLS connections")
        assert status == 200
        assert elapsed < 5
    finally:
        for sock in silent:
            sock.close()


def test_200_half_sent_requests_neither_stop_clients_nor_add_threads(serve, record_property):
    server = serve("slow", "--threads", "8", "--header-timeout", "3")
    requests.get(f"{server.url}/internal/health", timeout=30)
    before = _threads(server)
    half = []
    for _ in range(200):
        sock = _connect(server)
        sock.sendall(b"GET /v1/bundles/all?replica=aws HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        half.append(sock)
    try:
        time.sleep(0.5)
        times = []
        for _ in range(20):
            status, elapsed = _timed_get(f"{server.url}/v1/bundles/all?replica=aws")
            assert status == 200
            times.append(elapsed)
        during = _threads(server)
        record_property("threads_before_during", f"{before} {during}")
        record_property("slowest_answer_seconds", round(max(times), 3))
        print(f"threads {before} -> {during}; slowest answer {max(times):.3f}s")
        assert max(times) < 5
        assert during <= before + 8  # at most the request threads, not one per connection
        # the header timeout closes every half-sent request
        deadline = time.monotonic() + 20
        for sock in half:
            sock.settimeout(max(deadline - time.monotonic(), 0.1))
            try:
                assert sock.recv(100) == b""
            except ConnectionResetError:
                pass
    finally:
        for sock in half:
            sock.close()


# ---------------------------------------------------------------- body limits


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_300_mib_body_is_refused_before_it_is_read(serve, framing, record_property):
    server = serve(f"big-{framing}")
    worker = _worker(server)
    requests.get(f"{server.url}/internal/health", timeout=30)
    before = _memory(worker)["VmRSS"]
    if framing == "chunked":
        head = "Transfer-Encoding: chunked"
        chunks = _chunked(300)
    else:
        head = f"Content-Length: {300 * MiB}"
        chunks = _megabytes(300)
    status, headers, raw, sent = _send_body(
        server, "POST /ga4gh/drs/v1/objects HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: application/json\r\n{head}\r\n\r\n", chunks)
    assert status == 413, raw
    assert headers["content-type"] == "application/problem+json"
    body = json.loads(raw)
    assert body["status"] == 413 and body["code"] == "payload_too_large"
    growth = _memory(worker)["VmHWM"] - before
    record_property("rss_growth_mib", round(growth / MiB, 1))
    record_property("bytes_sent_before_the_answer", sent)
    print(f"413 after {sent / MiB:.0f} MiB sent; worker RSS growth {growth / MiB:.1f} MiB")
    assert growth <= 50 * MiB
    assert requests.get(f"{server.url}/internal/health", timeout=30).status_code == 200


def test_a_200_mib_blob_streams_whole_and_ranged(serve, tmp_path, record_property):
    staging = tmp_path / "staging"
    staging.mkdir()
    server = serve("blob", "--staging-root", str(staging), "--async-threshold", "1G")
    source = staging / "big.bin"
    with open(source, "wb") as handle:
        for n in range(200):
            handle.write(bytes([n]) * MiB)
    uuid, version = "0b6c1f1e-3d1a-4a7e-9c55-0d5f3e7a9b03", "2026-01-01T000000.000000Z"
    assert server.call("PUT", f"/files/{uuid}", USER, params={"version": version},
                       json={"source_url": f"file://{source}", "creator_uid": 0}
                       ).status_code == 201
    blob = server.call("GET", f"/files/{uuid}", params={"replica": "aws", "version": version}
                       ).headers["Location"]
    worker = _worker(server)
    before = _memory(worker)["VmRSS"]
    received = 0
    with requests.get(blob, stream=True, timeout=60) as answer:
        assert answer.status_code == 200
        assert answer.headers["Content-Length"] == str(200 * MiB)
        for chunk in answer.iter_content(MiB):
            received += len(chunk)
    assert received == 200 * MiB
    ranged = requests.get(blob, headers={"Range": f"bytes={150 * MiB - 2}-{150 * MiB + 1}"},
                          timeout=60)
    assert ranged.status_code == 206 and ranged.content == bytes([149, 149, 150, 150])
    growth = _memory(worker)["VmHWM"] - before
    record_property("rss_growth_mib", round(growth / MiB, 1))
    print(f"200 MiB blob streamed; worker RSS growth {growth / MiB:.1f} MiB")
    assert growth <= 50 * MiB
    # Small ranged reads on one keep-alive connection (what a mount's random reads send):
    # with Nagle on, each answer's body waited for the client's delayed ACK, ~30 ms a read.
    with requests.Session() as session:
        times = []
        for n in range(60):
            started = time.perf_counter()
            small = session.get(blob, headers={"Range": f"bytes={n * MiB}-{n * MiB}"},
                                timeout=60)
            times.append(time.perf_counter() - started)
            assert small.status_code == 206 and small.content == bytes([n])
    times = times[20:]  # past the connection's first quick ACKs
    median = sorted(times)[len(times) // 2]
    record_property("small_range_median_ms", round(median * 1000, 1))
    assert median < 0.015, f"a 1-byte ranged GET takes {median * 1000:.1f} ms (median)"


def test_json_bodies_have_a_limit_and_get_and_head_take_none(serve):
    server = serve("limits", "--max-json-body", "1K")
    small = {"bulk_object_ids": ["x"]}
    assert requests.post(f"{server.url}/ga4gh/drs/v1/objects", json=small,
                         timeout=30).status_code != 413
    big = {"bulk_object_ids": ["x" * 2000]}
    answer = requests.post(f"{server.url}/ga4gh/drs/v1/objects", json=big, timeout=30)
    assert answer.status_code == 413
    assert answer.headers["Content-Type"] == "application/problem+json"
    assert requests.get(f"{server.url}/v1/bundles/all?replica=aws", data=b"null",
                        timeout=30).status_code == 200  # as sevenbridges-python sends
    answer = requests.get(f"{server.url}/v1/bundles/all", data=b"{}" * 1000, timeout=30)
    assert answer.status_code == 413 and answer.json()["title"] == "this request takes no body"
    chunked = requests.post(f"{server.url}/ga4gh/drs/v1/objects",
                            data=iter([b'{"bulk_object_ids": ["', b"x" * 2000, b'"]}']),
                            timeout=30)
    assert chunked.status_code == 413


# ---------------------------------------------------------------- no tracebacks


def _assert_no_traceback(answer: requests.Response, server: DSSServer) -> None:
    """A clean 4xx, or a 500 whose error id names the traceback in the server log."""
    assert "Traceback" not in answer.text and 'File "' not in answer.text
    print(answer.request.method, answer.request.path_url[:40], answer.status_code,
          answer.text[:160])
    assert answer.status_code in (400, 500), answer.text
    if answer.status_code == 500:
        body = answer.json()
        assert ERROR_ID.match(body["error_id"])
        assert answer.headers["Content-Type"] == "application/problem+json"
        log = server.log()
        at = log.index(f"error {body['error_id']}: unhandled")
        assert "Traceback (most recent call last)" in log[at:at + 5000]


def test_nested_json_and_a_nul_in_a_file_url_leak_no_traceback(serve, tmp_path):
    staging = tmp_path / "staging"
    staging.mkdir()
    server = serve("bad", "--staging-root", str(staging))
    nested = "[" * 100_000 + "]" * 100_000
    for method, path, token in [("POST", "/ga4gh/drs/v1/objects", None),
                                ("PUT", "/v1/bundles/4b9b8c36-7d6b-4a8f-9d35-6d9c0b3d4e1a"
                                 "?replica=aws&version=2026-01-01T000000.000000Z", USER),
                                ("POST", "/v2/bulk/drs/imports/create", USER)]:
        headers = {"Content-Type": "application/json", "X-SBG-Auth-Token": USER}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        answer = requests.request(method, server.url + path, data=nested, headers=headers,
                                  timeout=30)
        _assert_no_traceback(answer, server)
    source = "file://" + str(staging / "a") + "\u0000b"
    answer = server.call("PUT", "/files/4b9b8c36-7d6b-4a8f-9d35-6d9c0b3d4e1b", USER,
                         params={"version": "2026-01-01T000000.000000Z"},
                         json={"source_url": source, "creator_uid": 0})
    _assert_no_traceback(answer, server)


def test_health_says_ok_to_anyone_and_details_to_an_admin(serve):
    server = serve("health")
    url = f"{server.url}/internal/health"
    assert requests.get(url, timeout=30).json() == {"health": "ok"}
    user = requests.get(url, headers={"Authorization": f"Bearer {USER}"}, timeout=30)
    assert user.json() == {"health": "ok"}
    wrong = requests.get(url, headers={"Authorization": "Bearer nope"}, timeout=30)
    assert wrong.status_code == 200 and wrong.json() == {"health": "ok"}
    admin = requests.get(url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30).json()
    assert admin["health"] == "ok" and admin["store"] == os.path.join(server.data_dir, "store")


def test_sigterm_stops_supervisor_and_worker(serve):
    server = serve("stop")
    pids = _tree(server.process.pid)
    assert len(pids) >= 2
    server.process.terminate()
    assert server.process.wait(timeout=15) == 0
    deadline = time.monotonic() + 10
    while any(os.path.exists(f"/proc/{pid}") for pid in pids[1:]):
        assert time.monotonic() < deadline, "a worker outlived hcafs serve"
        time.sleep(0.05)
    assert "hcafs serve: stopped" in server.log()
    server.process = None



# ---------------------------------------------------------------- the hca CLI over https


@pytest.mark.hca_cli
def test_the_hca_cli_downloads_a_bundle_over_https(serve, hca_cli, tmp_path):
    cert, key = self_signed_cert(tmp_path)
    staging = tmp_path / "staging"
    staging.mkdir()
    server = serve("hca-tls", "--tls-cert", cert, "--tls-key", key,
                   "--staging-root", str(staging))
    data = os.urandom(3 * MiB + 5)
    (staging / "reads.bin").write_bytes(data)
    file_uuid, bundle_uuid = "0b6c1f1e-3d1a-4a7e-9c55-0d5f3e7a9b01", \
        "0b6c1f1e-3d1a-4a7e-9c55-0d5f3e7a9b02"
    version = "2026-01-01T000000.000000Z"
    tls = {"verify": cert, "headers": {"Authorization": f"Bearer {USER}"}, "timeout": 60}
    assert requests.put(f"{server.api}/files/{file_uuid}", params={"version": version},
                        json={"source_url": f"file://{staging / 'reads.bin'}",
                              "creator_uid": 0}, **tls).status_code == 201
    assert requests.put(f"{server.api}/bundles/{bundle_uuid}",
                        params={"version": version, "replica": "aws"},
                        json={"creator_uid": 0, "files": [
                            {"uuid": file_uuid, "version": version, "name": "reads.bin",
                             "indexed": False}]}, **tls).status_code == 201
    cli = hca_cli(server.url, USER, env_extra={"REQUESTS_CA_BUNDLE": cert})
    cli.run("dss", "download", "--bundle-uuid", bundle_uuid, "--replica", "aws",
            "--download-dir", str(tmp_path / "dl"))
    assert (tmp_path / "dl" / f"{bundle_uuid}.{version}" / "reads.bin").read_bytes() == data


def test_hostile_paths_hosts_and_ranges_get_clean_answers(serve, tmp_path):
    """A decoded newline in a path cannot forge an access-log line; a Host header that is
    no host is a 400 (answers build URLs from it); a suffix range longer than the blob is
    the whole blob (RFC 9110); file:// sources that are a directory, have a name past 255
    bytes or a NUL are 4xx, not 500."""
    staging = tmp_path / "staging"
    (staging / "dir").mkdir(parents=True)
    (staging / "six.txt").write_bytes(b"sixsix")
    server = serve("hostile", "--staging-root", str(staging))
    forged = "2026-01-01 00:00:00,000 INFO hcafs.server.access: DELETE /v1/bundles/x 200"
    requests.get(f"{server.url}/v1/files/x%0a{forged.replace(' ', '%20')}", timeout=30)
    assert not any(line.startswith("2026-01-01") for line in server.log().splitlines())
    assert "/v1/files/x\\n2026-01-01" in server.log()  # logged, escaped

    for host in ("a b", "user@evil.example", "\xff", "", "x:99999999"):
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as conn:
            conn.sendall(b"GET /v1/files/4b9b8c36-7d6b-4a8f-9d35-6d9c0b3d4e1a HTTP/1.1\r\n"
                         b"Host: " + host.encode("latin-1") + b"\r\nConnection: close\r\n\r\n")
            head = conn.recv(4096).split(b"\r\n", 1)[0]
        assert head.startswith(b"HTTP/1.1 400"), (host, head)

    uuid, version = "4b9b8c36-7d6b-4a8f-9d35-6d9c0b3d4e1c", "2026-01-01T000000.000000Z"
    made = server.call("PUT", f"/files/{uuid}", USER, params={"version": version},
                       json={"source_url": f"file://{staging}/six.txt", "creator_uid": 0})
    assert made.status_code == 201, made.text
    blob = requests.get(f"{server.url}/v1/files/{uuid}", params={"replica": "aws"},
                        allow_redirects=False, timeout=30).headers["Location"]
    for wanted, status, body in (("bytes=-100", 206, b"sixsix"), ("bytes=-2", 206, b"ix"),
                                 ("bytes=4-100", 206, b"ix"), ("bytes=6-", 416, b"")):
        answer = requests.get(blob, headers={"Range": wanted}, timeout=30)
        assert (answer.status_code, answer.content) == (status, body), wanted

    for n, source in enumerate([f"file://{staging}/dir", f"file://{staging}/{'x' * 300}",
                                f"file://{staging}/{'y' * 300}/a", f"file://{staging}/a\u0000b"]):
        answer = server.call("PUT", f"/files/4b9b8c36-7d6b-4a8f-9d35-6d9c0b3d4e2{n}", USER,
                             params={"version": version},
                             json={"source_url": source, "creator_uid": 0})
        assert answer.status_code in (400, 404), (source, answer.text)


def test_a_drs_id_with_dot_segments_is_malformed():
    """``drs://host/../../x`` would make the server fetch a path outside the DRS API."""
    from hcafs.server.drs import DrsError, Resolver

    for uri in ("drs://host.example/../../admin", "drs://host.example/a/./b",
                "drs://host.example/%2e%2e/x", "drs://host.example/a/.."):
        with pytest.raises(DrsError) as refused:
            Resolver().object_url(uri)
        assert refused.value.kind == "malformed", uri
    assert Resolver().object_url("drs://host.example/a.b/c..d") == \
        "https://host.example/ga4gh/drs/v1/objects/a.b/c..d"
