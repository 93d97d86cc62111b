"""``hcafs serve`` under load with its DEFAULT limits, while 200 silent connections are held.

64 clients, each with its own keep-alive session, run a fixed mix of reads (file metadata,
bundles, ranged blob reads), writes (PUT /files from ``file://`` sources, PUT /bundles) and
bulk DRS imports from a second ``hcafs serve`` on loopback.  Meanwhile a holder keeps 200
connections open that never send a byte (and reopens those the header timeout closes).
The real clients must see no error; their latencies are printed and recorded, not
asserted.  With ``HCAFS_LOAD_FIGURES=FILE`` the figures are also written to FILE as JSON:
``bench/http_load.py`` runs this test that way for docs/benchmarks.md.

Each client runs at least OPS_PER_CLIENT operations, and goes on until MIN_SECONDS have
passed (longer than the default header timeout, so the held connections are closed and
reopened under load), but never past MAX_OPS; imports stop at IMPORTS_PER_CLIENT each so
the default import rate limits are not what is measured.  Every request has a timeout;
127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import select
import socket
import statistics
import threading
import time
import uuid as _uuid
from pathlib import Path

import pytest
import requests
from fixtures.drs_repo import DrsRepo, start_repo
from fixtures.dss_server import USER, DSSServer

from hcafs.versions import now_version

CLIENTS = 64
OPS_PER_CLIENT = 24
MAX_OPS = 200
MIN_SECONDS = 15.0
IMPORTS_PER_CLIENT = 5
IDLE = 200
FILE_SIZE = 64 * 1024
KINDS = ("get_file", "get_bundle", "ranged_blob", "put_file", "put_bundle", "import_drs")


def peer_args(peer: DrsRepo) -> list[str]:
    """Options the importing server needs to fetch from the peer (plain http, loopback)."""
    return []


class IdleHolder:
    """Keeps ``count`` connections open, reopening any the server closes: half of them
    silent, half trickling a request head one header line a second (slowloris)."""

    def __init__(self, port: int, count: int):
        self.port = port
        self.socks = [self._open(slow=n % 2 == 0) for n in range(count)]
        self.reopened = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._hold, name="idle-holder", daemon=True)
        self._thread.start()

    def _open(self, slow: bool) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        if slow:
            sock.sendall(b"GET /v1/bundles/all HTTP/1.1\r\n")
        return sock

    def _hold(self) -> None:
        tick = 0
        while not self._stop.wait(0.2):
            tick += 1
            readable = select.select(self.socks, [], [], 0)[0]
            for sock in readable:  # readable before any answer: closed by the server
                self._reopen(sock)
            if tick % 5:
                continue
            for sock in self.socks[::2]:
                try:
                    sock.sendall(b"X-Slow: 1\r\n")
                except OSError:
                    self._reopen(sock)

    def _reopen(self, sock: socket.socket) -> None:
        sock.close()
        index = self.socks.index(sock)
        self.socks[index] = self._open(slow=index % 2 == 0)
        self.reopened += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for sock in self.socks:
            sock.close()


@pytest.fixture
def rig(tmp_path: Path):
    peer = start_repo(tmp_path / "peer")
    staging = tmp_path / "staging"
    staging.mkdir()
    server = DSSServer(str(tmp_path / "server"),
                       args=["--staging-root", str(staging), *peer_args(peer)])
    try:
        server.start()
        yield server, peer, staging
    finally:
        server.stop()
        peer.server.stop()


def _put_file(session: requests.Session, server: DSSServer, staging: Path) -> tuple[str, str]:
    uuid, version = str(_uuid.uuid4()), now_version()
    path = staging / uuid
    path.write_bytes(os.urandom(FILE_SIZE))
    answer = session.put(f"{server.api}/files/{uuid}", params={"version": version},
                         json={"source_url": f"file://{path}", "creator_uid": 0},
                         headers={"Authorization": f"Bearer {USER}"}, timeout=30)
    assert answer.status_code == 201, answer.text
    return uuid, version


def _put_bundle(session: requests.Session, server: DSSServer, files: list[tuple[str, str]]
                ) -> str:
    uuid, version = str(_uuid.uuid4()), now_version()
    answer = session.put(f"{server.api}/bundles/{uuid}",
                         params={"version": version, "replica": "aws"},
                         json={"creator_uid": 0, "files": [
                             {"uuid": f, "version": v, "name": f"f{n}", "indexed": False}
                             for n, (f, v) in enumerate(files)]},
                         headers={"Authorization": f"Bearer {USER}"}, timeout=30)
    assert answer.status_code == 201, answer.text
    return uuid


class Client(threading.Thread):
    def __init__(self, index: int, server: DSSServer, staging: Path, files: list,
                 bundle: str, blob: str, drs_uris: list[str]):
        super().__init__(name=f"client-{index}", daemon=True)
        self.index, self.server, self.staging = index, server, staging
        self.files, self.bundle, self.blob, self.drs_uris = files, bundle, blob, drs_uris
        self.latencies: dict[str, list[float]] = {kind: [] for kind in KINDS}
        self.errors: list[str] = []

    def run(self) -> None:
        session = requests.Session()
        begun, imports = time.monotonic(), 0
        for op in range(MAX_OPS):
            if op >= OPS_PER_CLIENT and time.monotonic() - begun >= MIN_SECONDS:
                break
            kind = KINDS[(self.index + op) % len(KINDS)]
            if kind == "import_drs":
                imports += 1
                if imports > IMPORTS_PER_CLIENT:
                    kind = "get_file"
            started = time.monotonic()
            try:
                getattr(self, kind)(session, op)
            except Exception as exc:  # noqa: BLE001 - every failure is counted
                self.errors.append(f"{kind}: {type(exc).__name__}: {exc}"[:300])
                continue
            self.latencies[kind].append(time.monotonic() - started)

    def get_file(self, session: requests.Session, op: int) -> None:
        uuid, version = self.files[op % len(self.files)]
        answer = session.get(f"{self.server.api}/files/{uuid}",
                             params={"replica": "aws", "version": version},
                             allow_redirects=False, timeout=30)
        assert answer.status_code == 302, answer.status_code

    def get_bundle(self, session: requests.Session, op: int) -> None:
        answer = session.get(f"{self.server.api}/bundles/{self.bundle}",
                             params={"replica": "aws"}, timeout=30)
        assert answer.status_code == 200 and answer.json()["bundle"]["files"], answer.text

    def ranged_blob(self, session: requests.Session, op: int) -> None:
        start = (op * 997) % (FILE_SIZE - 4096)
        answer = session.get(self.blob, headers={"Range": f"bytes={start}-{start + 4095}"},
                             timeout=30)
        assert answer.status_code == 206 and len(answer.content) == 4096, answer.status_code

    def put_file(self, session: requests.Session, op: int) -> None:
        _put_file(session, self.server, self.staging)

    def put_bundle(self, session: requests.Session, op: int) -> None:
        _put_bundle(session, self.server, self.files[:2])

    def import_drs(self, session: requests.Session, op: int) -> None:
        uri = self.drs_uris[(self.index + op) % len(self.drs_uris)]
        answer = session.post(f"{self.server.url}/v2/bulk/drs/imports/create",
                              json={"items": [{"drs_uri": uri, "project": "load/test",
                                               "name": f"c{self.index}-{op}"}]},
                              headers={"X-SBG-Auth-Token": USER}, timeout=30)
        assert answer.status_code == 200, answer.text


def _threads(pid: int) -> int:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        with open(f"/proc/{current}/task/{current}/children") as handle:
            todo += [int(child) for child in handle.read().split()]
    return sum(len(os.listdir(f"/proc/{p}/task")) for p in pids)


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def test_64_clients_beside_200_idle_connections_under_the_default_limits(rig,
                                                                         record_property):
    server, peer, staging = rig
    setup = requests.Session()
    files = [_put_file(setup, server, staging) for _ in range(4)]
    bundle = _put_bundle(setup, server, files)
    blob = setup.get(f"{server.api}/files/{files[0][0]}",
                     params={"replica": "aws", "version": files[0][1]},
                     allow_redirects=False, timeout=30).headers["Location"]
    drs_uris = [peer.uri(peer.put_file(os.urandom(4096), f"p{n}.bin")) for n in range(8)]

    holder = IdleHolder(server.port, IDLE)
    try:
        time.sleep(0.5)
        clients = [Client(n, server, staging, files, bundle, blob, drs_uris)
                   for n in range(CLIENTS)]
        started = time.monotonic()
        for client in clients:
            client.start()
        threads_seen = 0
        while any(client.is_alive() for client in clients):
            threads_seen = max(threads_seen, _threads(server.process.pid))
            assert time.monotonic() - started < 240, "the load did not finish in 4 minutes"
            time.sleep(0.2)
        elapsed = time.monotonic() - started
    finally:
        holder.close()

    errors = [error for client in clients for error in client.errors]
    latencies = {kind: [t for c in clients for t in c.latencies[kind]] for kind in KINDS}
    every = [t for times in latencies.values() for t in times]
    lines = [f"{len(every)} requests in {elapsed:.1f}s ({len(every) / elapsed:.0f}/s), "
             f"{len(errors)} errors, server threads at most {threads_seen}, "
             f"{holder.reopened} idle connections reopened after the header timeout"]
    for kind, times in [("all", every), *latencies.items()]:
        if times:
            lines.append(f"{kind:12} n={len(times):4} p50={statistics.median(times) * 1000:7.1f}ms"
                         f" p99={_percentile(times, 0.99) * 1000:7.1f}ms")
    print("\n".join(lines))
    record_property("load", " | ".join(lines))
    if os.environ.get("HCAFS_LOAD_FIGURES"):
        with open(os.environ["HCAFS_LOAD_FIGURES"], "w") as handle:
            json.dump({"clients": CLIENTS, "idle": IDLE, "requests": len(every),
                       "seconds": elapsed, "errors": len(errors), "threads": threads_seen,
                       "reopened": holder.reopened,
                       "latency_ms": {kind: {"n": len(times),
                                             "p50": statistics.median(times) * 1000,
                                             "p99": _percentile(times, 0.99) * 1000}
                                      for kind, times in [("all", every), *latencies.items()]
                                      if times}}, handle, indent=2)
    assert errors == [], errors[:5]
    assert len(every) >= CLIENTS * OPS_PER_CLIENT
    # the default request threads and the engines of each worker (default: one per core)
    assert threads_seen < (32 + 40) * (os.cpu_count() or 1)
