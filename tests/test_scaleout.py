"""Several ``hcafs serve`` processes on one SeaweedFS bucket, and one server with three
worker processes on a data dir, act as one DSS (docs/server.md#running-several-servers).

Every check runs on both topologies (the ``cluster`` fixture): writes visible through every
server, one winner per create race, background work taken over after ``kill -9`` and after
a ``SIGSTOP`` past the lease TTL (the stalled holder's publish refused), the file budget
and the request budget holding across processes, and ``/internal/health``.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
import uuid as _uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest
import requests
from fixtures.drs_repo import start_repo
from fixtures.dss_checks import new_ids
from fixtures.dss_server import ADMIN, OTHER, USER, DSSServer
from fixtures.faults import TcpGate
from fixtures.staging import stage

TTL, SCAN = 3.0, 1.0
LEASE_ARGS = ["--lease-ttl", str(TTL), "--lease-scan", str(SCAN)]
FILE_LIMIT, FILE_WINDOW = 50, 10.0
REQUEST_LIMIT = 20  # /v2 requests per identity per 300 s
COMMON_ARGS = ["--async-threshold", "1M", "--import-rate-limit", str(FILE_LIMIT),
               "--import-rate-window", str(FILE_WINDOW), "--import-request-limit",
               str(REQUEST_LIMIT), "--import-request-window", "300", *LEASE_ARGS]
ADMISSION_DELAY = 2.0  # d of docs/drs.md#budgets-across-servers, for a loaded machine
TAKEOVER_BOUND = TTL + SCAN + 20  # the documented bound, plus room for a loaded machine
CRASH_LOOP = 6.0  # a worker that dies within 5.5 s of its restart stops the server (granian)


@dataclass
class Cluster:
    """Three entry points onto one store: three servers, or one server with three
    workers (then the three entries are the same server).  ``gated`` reads its S3
    sources (and, for the three servers, its store) through ``gate``."""

    kind: str
    servers: list[DSSServer]
    gate: TcpGate
    seaweed: object
    bucket: str = ""
    staging: str = ""
    entries: list[DSSServer] = field(default_factory=list)

    @property
    def gated(self) -> DSSServer:
        return self.servers[0]

    def lease(self, name: str) -> dict | None:
        if self.kind == "servers":
            try:
                answer = self.seaweed.client().get_object(Bucket=self.bucket,
                                                          Key=f"dss/leases/{name}")
            except Exception:  # noqa: BLE001 - absent
                return None
            return json.loads(answer["Body"].read())
        try:
            with open(os.path.join(self.gated.data_dir, "store", "leases", name)) as handle:
                return json.load(handle)
        except (FileNotFoundError, ValueError):
            return None

    def stored(self, key: str) -> bytes | None:
        """A store document, read behind the servers' backs."""
        if self.kind == "servers":
            try:
                return self.seaweed.client().get_object(Bucket=self.bucket,
                                                        Key=f"dss/{key}")["Body"].read()
            except Exception:  # noqa: BLE001 - absent
                return None
        try:
            with open(os.path.join(self.gated.data_dir, "store", key), "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            return None

    def file_versions(self) -> dict[str, list[str]]:
        versions: dict[str, list[str]] = {}
        if self.kind == "servers":
            pages = self.seaweed.client().get_paginator("list_objects_v2")
            names = [item["Key"].rsplit("/", 1)[1]
                     for page in pages.paginate(Bucket=self.bucket, Prefix="dss/files/")
                     for item in page.get("Contents", [])]
        else:
            names = os.listdir(os.path.join(self.gated.data_dir, "store", "files"))
        for name in names:
            file_uuid, _, version = name.partition(".")
            versions.setdefault(file_uuid, []).append(version)
        return versions

    def holder_pid(self, name: str) -> int:
        return int(self.lease(name)["holder"].split(":")[1])

    def server_of(self, pid: int) -> DSSServer:
        """The server one of whose workers is ``pid``."""
        for server in self.servers:
            if pid in worker_pids(server, 4 if self.kind == "servers" else 30):
                return server
        raise AssertionError(f"no server runs worker {pid}")

    def log(self) -> str:
        return "".join(server.log() for server in self.servers)

    def kill_worker(self, pid: int) -> None:
        """``kill -9`` of one worker; returns once its replacement answers, and late
        enough that a later kill is not taken for a crash loop."""
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: len(worker_pids(self.gated)) == 3, 60,  # the dead one cannot answer
                 "the killed worker was never replaced")
        time.sleep(max(0.0, killed + CRASH_LOOP - time.monotonic()))


def worker_pids(server: DSSServer, tries: int = 30) -> set[int]:
    """The worker processes that answered ``tries`` fresh connections."""
    return {requests.get(f"{server.url}/internal/health", timeout=30,
                         headers={"Authorization": f"Bearer {ADMIN}"}).json()["pid"]
            for _ in range(tries)}


@pytest.fixture(scope="module", params=["servers", "workers"])
def cluster(request, tmp_path_factory, seaweed):
    """``servers``: three servers, one worker each, on one SeaweedFS bucket, the first
    reaching S3 through a gate that can stall.  ``workers``: one server with
    ``--workers 3`` on a local data dir, reading its S3 sources through the gate."""
    work = tmp_path_factory.mktemp(request.param)
    gate = TcpGate(seaweed.endpoint)
    made = Cluster(request.param, [], gate, seaweed, staging=seaweed.make_bucket())
    try:
        if request.param == "servers":
            made.bucket = seaweed.make_bucket()
            for n in range(3):
                endpoint = gate.endpoint if n == 0 else seaweed.endpoint
                made.servers.append(DSSServer(str(work / f"s{n}"), env=seaweed.env(), args=[
                    "--store", f"s3://{made.bucket}/dss", "--s3-endpoint", endpoint,
                    "--workers", "1", *COMMON_ARGS]).start())
            made.entries = list(made.servers)
        else:
            made.servers.append(DSSServer(str(work / "w3"), env=seaweed.env(), args=[
                "--s3-endpoint", gate.endpoint, "--workers", "3", *COMMON_ARGS]).start())
            made.entries = made.servers * 3
            deadline = time.monotonic() + 30
            while len(worker_pids(made.gated)) < 3:  # every worker answers
                assert time.monotonic() < deadline
        yield made
    finally:
        for server in made.servers:
            server.stop()
        gate.close()


def at(version: str) -> dict:
    return {"version": version, "replica": "aws"}


def put_file(server: DSSServer, uuid: str, version: str, url: str, creator_uid: int = 3):
    return server.call("PUT", f"/files/{uuid}", USER, params=at(version),
                       json={"source_url": url, "creator_uid": creator_uid})


def wait_published(server: DSSServer, uuid: str, version: str, timeout: float) -> float:
    started = time.monotonic()
    while server.call("HEAD", f"/files/{uuid}", params=at(version)).status_code != 200:
        assert time.monotonic() - started < timeout, f"{uuid}.{version} never published"
        time.sleep(0.1)
    return time.monotonic() - started


def wait_for(what, timeout: float, message: str):
    deadline = time.monotonic() + timeout
    while not (found := what()):
        assert time.monotonic() < deadline, message
        time.sleep(0.05)
    return found


def test_writes_through_any_server_read_through_every_server(cluster):
    """200 files and 50 bundles written round-robin (4 clients at once), then every one
    read through every entry, right after the writes."""
    s3 = cluster.seaweed.client()

    def write_file(n: int) -> tuple[str, str, str]:
        data = f"file {n}\n".encode() * (n + 1)
        uuid, version = new_ids()
        answer = put_file(cluster.entries[n % 3], uuid, version,
                          stage(s3, cluster.staging, data))
        assert answer.status_code == 201, answer.text
        return uuid, version, hashlib.sha256(data).hexdigest()

    def write_bundle(n: int) -> tuple[str, str]:
        uuid, version = str(_uuid.uuid4()), files[n * 4][1]
        members = [{"uuid": f[0], "version": f[1], "name": f"m{i}", "indexed": False}
                   for i, f in enumerate(files[n * 4:n * 4 + 4])]
        answer = cluster.entries[n % 3].call("PUT", f"/bundles/{uuid}", USER,
                                             params=at(version),
                                             json={"creator_uid": 3, "files": members})
        assert answer.status_code == 201, answer.text
        return uuid, version

    def read_all(server: DSSServer) -> None:
        for uuid, version, sha in files:
            head = server.call("HEAD", f"/files/{uuid}", params=at(version))
            assert head.status_code == 200 and head.headers["X-DSS-SHA256"] == sha
        for uuid, version in bundles:
            got = server.call("GET", f"/bundles/{uuid}", params=at(version))
            assert got.status_code == 200 and len(got.json()["bundle"]["files"]) == 4
        listed = server.call("GET", "/bundles/all", params={"replica": "aws",
                                                             "per_page": 500}).json()
        assert set(bundles) <= {(b["uuid"], b["version"]) for b in listed["bundles"]}

    with ThreadPoolExecutor(4) as pool:
        files = list(pool.map(write_file, range(200)))
        bundles = list(pool.map(write_bundle, range(50)))
        list(pool.map(read_all, cluster.entries))


def _put_at_once(barrier, statuses, server, uuid, version, url, creator) -> None:
    barrier.wait()
    statuses.append(put_file(server, uuid, version, url, creator_uid=creator).status_code)


def test_racing_creates_of_one_version_have_one_winner(cluster):
    """30 rounds: one ``uuid.version`` PUT at once through each entry, each with other
    content (its creator): exactly one 201, the others 409."""
    s3 = cluster.seaweed.client()
    urls = [stage(s3, cluster.staging, f"race {n}\n".encode()) for n in range(30)]
    for round_, url in enumerate(urls):
        uuid, version = new_ids()
        barrier = threading.Barrier(3)
        statuses: list[int] = []
        threads = [threading.Thread(target=_put_at_once, args=(
            barrier, statuses, server, uuid, version, url, 10 + n))
            for n, server in enumerate(cluster.entries)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert sorted(statuses) == [201, 409, 409], (round_, statuses)


def _stalled_copy(cluster, size: int) -> tuple[str, str, bytes]:
    """An asynchronous copy accepted by the gated server, stalled on its source."""
    data = os.urandom(size)
    url = stage(cluster.seaweed.client(), cluster.staging, data)
    uuid, version = new_ids()
    cluster.gate.close_gate()
    answer = put_file(cluster.gated, uuid, version, url)
    assert answer.status_code == 202, answer.text
    assert cluster.gate.stalled.wait(30), "the copy never started"
    # (The request's own look at the source, a GET whose body is not read, may be what
    # stalled first: the copy has started once it holds its lease.)
    wait_for(lambda: cluster.lease(f"copy-{uuid}.{version}") is not None, 30,
             "the copy never took its lease")
    return uuid, version, data


def _check_stored(cluster, uuid: str, version: str, data: bytes) -> None:
    for server in cluster.entries:
        if server.process is None:  # killed, not started again yet
            continue
        head = server.call("HEAD", f"/files/{uuid}", params=at(version))
        assert head.headers["X-DSS-SHA256"] == hashlib.sha256(data).hexdigest()
    location = cluster.entries[1].call("GET", f"/files/{uuid}", params=at(version)
                                       ).headers["Location"]
    assert requests.get(location, timeout=30).content == data
    assert cluster.file_versions()[uuid] == [version]


def test_kill_9_of_the_copy_holder_a_live_process_finishes_it(cluster):
    uuid, version, data = _stalled_copy(cluster, 3 * 1024 * 1024 + 5)
    name = f"copy-{uuid}.{version}"
    killed = time.monotonic()
    try:
        holder = cluster.holder_pid(name)
        assert cluster.lease(name)["token"] == 1
        if cluster.kind == "servers":
            cluster.gated.stop(signal.SIGKILL)  # the server, and its worker with it
        else:
            os.kill(holder, signal.SIGKILL)  # one worker; the others live on
            killed = time.monotonic()
    finally:
        cluster.gate.open_gate()
    try:
        elapsed = wait_published(cluster.entries[1], uuid, version, TAKEOVER_BOUND)
        print(f"{cluster.kind}: a copy taken over after kill -9 published in {elapsed:.1f}s")
        _check_stored(cluster, uuid, version, data)
        wait_for(lambda: cluster.lease(name) is None, 10, "the lease was never released")
    finally:
        if cluster.kind == "servers":
            cluster.gated.start()
        else:  # its replacement answers, late enough for a later kill not to be a loop
            wait_for(lambda: len(worker_pids(cluster.gated)) == 3, 60, "never replaced")
            time.sleep(max(0.0, killed + CRASH_LOOP - time.monotonic()))


def test_a_stopped_holder_wakes_up_to_a_refused_publish(cluster):
    uuid, version, data = _stalled_copy(cluster, 2 * 1024 * 1024 + 3)
    name = f"copy-{uuid}.{version}"
    stopped = cluster.holder_pid(name)
    os.kill(stopped, signal.SIGSTOP)
    def taken_over() -> bool:
        lease = cluster.lease(name)
        if lease is None:  # the new holder finished (and released) already
            return cluster.stored(f"files/{uuid}.{version}") is not None
        return lease["token"] > 1 and int(lease["holder"].split(":")[1]) != stopped

    try:
        wait_for(taken_over, TAKEOVER_BOUND, "nobody took the copy over")
        cluster.gate.open_gate()  # the new holder may read through the gate too
        wait_published(cluster.entries[1], uuid, version, TAKEOVER_BOUND)
    finally:
        cluster.gate.open_gate()
        # Its stalled read would otherwise wait out its read timeout (and retries) when
        # the upstream gave up on the held-back answer: seen on loaded machines as no
        # refusal within 240 s.  Cut, it fails at once and goes on to its fenced publish.
        cluster.gate.cut()
        os.kill(stopped, signal.SIGCONT)
    refusal = f"async copy of {uuid}.{version}: "
    # The woken holder may first have to come out of its stalled read of the source (a
    # retry with backoff); the CI run on 54d110a, on a loaded machine, saw no refusal
    # within 30 s, and a run on 2026-12-02 beside other test files none within 90 s (its
    # read of the source, idle while it was stopped, waits for its timeout first), while
    # the same code passes alone in about 20 s.
    # It may also have been stopped between its claim's write and its read back, or
    # before it read the copy's record: woken, it finds its lease taken, or the copy
    # done, and says so (seen on 2026-12-02: it said nothing then, and this test waited).
    # (Those two say their pid: another process's scan may claim the copy after the new
    # holder released it and say "finished" too; the line must be the stopped holder's.)
    said = ("taken over", "refused", f"finished by another process meanwhile (pid {stopped})")

    def refused() -> bool:
        return any(refusal in line and any(words in line for words in said)
                   for line in cluster.log().splitlines())

    try:
        wait_for(refused, 240, "the woken holder was not refused")
    finally:
        print("\n".join(line for line in cluster.log().splitlines() if uuid in line))
    _check_stored(cluster, uuid, version, data)
    document = json.loads(cluster.stored(f"files/{uuid}.{version}"))
    assert document["sha256"] == hashlib.sha256(data).hexdigest()
    assert document["creator_uid"] == 3


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    started = start_repo(tmp_path_factory.mktemp("repo"))
    yield started
    started.server.stop()


def create_job(server: DSSServer, items: list) -> str:
    answer = requests.post(f"{server.url}/v2/bulk/drs/imports/create",
                           json={"items": items}, headers={"X-SBG-Auth-Token": USER},
                           timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()["id"]


def audit(server: DSSServer) -> dict:
    """The import audit record (admin, not a /v2 call: it spends no request budget)."""
    return requests.get(f"{server.url}/internal/imports/log", timeout=60,
                        headers={"Authorization": f"Bearer {ADMIN}"}).json()


@pytest.mark.timeout(300)
def test_file_budget_across_processes_and_an_import_taken_over(cluster, repo):
    """50 files per 10 s, imports submitted through all three entries: no period holds
    more than 50 admissions over all processes, every period with work waiting all 50,
    opened within the re-admission delay; a kill -9 of the process running a job leaves
    it to the others, and every imported file is stored once, with its sha256."""
    data = {n: f"import {n} {cluster.kind}\n".encode() * 50 for n in range(4)}
    fqids = [repo.put_file(data[n]) for n in range(4)]
    jobs = []
    for n, server in enumerate(cluster.entries):
        items = [{"drs_uri": repo.uri(fqids[k % 4]), "project": f"tester/{cluster.kind}",
                  "name": f"j{n}-{k}"} for k in range(40)]
        jobs.append(create_job(server, items))
    ids = set(jobs)
    name = f"import-{jobs[1]}"
    wait_for(lambda: cluster.lease(name), 30, "the job was never claimed")
    victim_pid = cluster.holder_pid(name)
    victim = cluster.server_of(victim_pid) if cluster.kind == "servers" else None
    states = {job["id"]: job["state"] for job in audit(cluster.entries[2])["jobs"]}
    assert states[jobs[1]] != "FINISHED"  # 40 files cannot pass a budget of 50 shared by 120
    if victim is not None:
        victim.stop(signal.SIGKILL)
    else:
        cluster.kill_worker(victim_pid)
    live = [s for s in cluster.servers if s is not victim]
    try:
        wait_for(lambda: all(job["state"] == "FINISHED" for job in audit(live[0])["jobs"]
                             if job["id"] in ids), 200, "the jobs never finished")
        log = audit(live[0])
        mine = [a for a in log["admissions"] if a["job"] in ids]
        # The default fixed window, judged by the periods the budget admitted in (each
        # record names its period): no period holds more than the limit, and each opens
        # within the re-admission delay of the end of the one before, since work waited
        # all along.  Every period but the last is full, except that the one the kill fell
        # in may show fewer: what the victim was admitted and never recorded (its units
        # were admitted again by the process that took the job over) counted there too.
        starts = sorted({a["period"] for a in mine})
        counts = [sum(1 for a in mine if a["period"] == start) for start in starts]
        delays = [later - (earlier + FILE_WINDOW)
                  for earlier, later in zip(starts, starts[1:], strict=False)]
        print(f"{cluster.kind}: admissions {len(mine)}, periods {counts}, "
              f"re-admission delays {[round(d, 2) for d in delays]}")
        assert all(start <= a["time"] < start + FILE_WINDOW
                   for start in starts for a in mine if a["period"] == start)
        assert max(counts) <= FILE_LIMIT and len(counts) >= 3
        assert sum(1 for count in counts[:-1] if count != FILE_LIMIT) <= 1, counts
        assert all(0 <= delay < ADMISSION_DELAY for delay in delays)
        assert f"took over {name}" in "".join(s.log() for s in live)
        assert len({(a["job"], a["unit"]) for a in log["admissions"] if a["job"] in ids}) \
            == 120  # every unit admitted
        versions = cluster.file_versions()
        for job_id in jobs:
            job = requests.get(f"{live[-1].url}/v2/bulk/drs/imports/{job_id}", timeout=30,
                               headers={"X-SBG-Auth-Token": USER}).json()
            assert len(job["result"]) == 40
            for entry in job["result"]:
                dss = entry["resource"]["dss"]
                assert versions[dss["uuid"]] == [dss["version"]]  # stored once
                head = live[-1].call("HEAD", f"/files/{dss['uuid']}", params=at(dss["version"]))
                k = int(entry["resource"]["name"].rsplit("-", 1)[1])
                assert head.headers["X-DSS-SHA256"] == hashlib.sha256(data[k % 4]).hexdigest()
    finally:
        if victim is not None:
            victim.start()


def test_a_stopped_job_holder_wakes_up_refused_and_nothing_is_stored_twice(cluster, repo):
    """100 files against a budget of 50 per 10 s: once the job's holder stored a window's
    worth and waits for the next, SIGSTOP it past its TTL; another process takes the job over and
    finishes it.  Woken, the old holder is refused: every unit admitted and stored once.
    (Stopped while it waits: on the local store, a process paused inside a
    compare-and-swap, for the time of a rename, holds that one record up until it runs
    again; docs/server.md#leases-background-work-survives-its-process.)"""
    data = {n: f"stopped {n} {cluster.kind}\n".encode() * 20 for n in range(3)}
    fqids = [repo.put_file(data[n]) for n in range(3)]
    items = [{"drs_uri": repo.uri(fqids[k % 3]), "project": f"admin/{cluster.kind}",
              "name": f"s-{k}"} for k in range(100)]
    answer = requests.post(f"{cluster.entries[0].url}/v2/bulk/drs/imports/create",
                           json={"items": items}, headers={"X-SBG-Auth-Token": ADMIN},
                           timeout=60)
    assert answer.status_code == 200, answer.text
    job_id, name = answer.json()["id"], f"import-{answer.json()['id']}"

    def admissions() -> list[dict]:
        return [a for a in audit(cluster.entries[1])["admissions"] if a["job"] == job_id]

    def waiting() -> int | None:
        """The holder's pid once it stored a window's worth and waits for the next."""
        job = json.loads(cluster.stored(f"imports/{job_id}") or b"{}")
        lease = cluster.lease(name)
        if lease is None or len(job.get("results") or ()) != FILE_LIMIT:
            return None
        return int(lease["holder"].split(":")[1])

    stopped = wait_for(waiting, 60, "the job never waited for its window")
    os.kill(stopped, signal.SIGSTOP)
    try:
        wait_for(lambda: (cluster.lease(name) or {"token": 2})["token"] > 1, TAKEOVER_BOUND,
                 "nobody took the job over")
        wait_for(lambda: any(j["id"] == job_id and j["state"] == "FINISHED"
                             for j in audit(cluster.entries[1])["jobs"]), 60,
                 "the job was never finished")
    finally:
        os.kill(stopped, signal.SIGCONT)
    refusal = f"DRS import {job_id}: "
    wait_for(lambda: any(refusal in line and ("taken over" in line or "refused" in line)
                         for line in cluster.log().splitlines()), 30,
             "the woken holder was not refused")
    admitted = admissions()
    assert sorted(a["unit"] for a in admitted) == list(range(100))  # each unit once
    job = requests.get(f"{cluster.entries[2].url}/v2/bulk/drs/imports/{job_id}", timeout=30,
                       headers={"X-SBG-Auth-Token": ADMIN}).json()
    versions = cluster.file_versions()
    assert len(job["result"]) == 100
    for entry in job["result"]:
        dss = entry["resource"]["dss"]
        assert versions[dss["uuid"]] == [dss["version"]]  # stored once
    for entry in job["result"][45:55]:  # both sides of the takeover
        dss = entry["resource"]["dss"]
        head = cluster.entries[2].call("HEAD", f"/files/{dss['uuid']}", params=at(dss["version"]))
        k = int(entry["resource"]["name"].rsplit("-", 1)[1])
        assert head.headers["X-DSS-SHA256"] == hashlib.sha256(data[k % 3]).hexdigest()


def test_request_budget_across_processes(cluster):
    """R + k requests spread round-robin over the entries: at most R answers 2xx."""
    extra = 10
    statuses = [requests.get(f"{cluster.entries[n % 3].url}/v2/files", timeout=30,
                             params={"project": "tester/none"},
                             headers={"X-SBG-Auth-Token": OTHER}).status_code
                for n in range(REQUEST_LIMIT + extra)]
    assert sum(1 for s in statuses if s < 300) <= REQUEST_LIMIT
    assert statuses.count(429) >= extra
    assert statuses[:REQUEST_LIMIT] == [200] * REQUEST_LIMIT  # one client: no shortfall


def test_job_ids_are_unique_and_ordered_across_processes(cluster, repo):
    fqid = repo.put_file(b"ids\n")
    items = [{"drs_uri": repo.uri(fqid), "project": f"tester/{cluster.kind}-ids"}]
    made = []
    for server in cluster.entries:
        answer = requests.post(f"{server.url}/v2/bulk/drs/imports/create", timeout=60,
                               json={"items": items}, headers={"X-SBG-Auth-Token": ADMIN})
        assert answer.status_code == 200, answer.text
        made.append(answer.json()["id"])
    assert len(set(made)) == 3 and [int(i) for i in made] == sorted(int(i) for i in made)


def test_health_answers_every_caller_and_details_only_an_admin(cluster):
    for server in cluster.entries:
        plain = requests.get(f"{server.url}/internal/health", timeout=30)
        assert plain.status_code == 200 and plain.json() == {"health": "ok"}
        live = requests.get(f"{server.url}/internal/health", params={"probe": "live"},
                            timeout=30)
        assert live.status_code == 200 and live.json() == {"health": "ok"}
        admin = requests.get(f"{server.url}/internal/health", timeout=30,
                             headers={"Authorization": f"Bearer {ADMIN}"}).json()
        assert admin["workers"] == (1 if cluster.kind == "servers" else 3)
        assert "leases_held" in admin and "pid" in admin


def test_health_is_unready_without_the_store_and_live_all_the_same(tmp_path, seaweed):
    gate = TcpGate(seaweed.endpoint, stall_after=0)  # closed, it holds back every answer
    server = DSSServer(str(tmp_path / "h"), env=seaweed.env(), args=[
        "--store", f"s3://{seaweed.make_bucket()}/h", "--s3-endpoint", gate.endpoint,
        "--workers", "1"]).start()
    health = f"{server.url}/internal/health"
    try:
        assert requests.get(health, timeout=30).status_code == 200
        gate.close_gate()  # the store stops answering
        ready = requests.get(health, timeout=60)
        assert ready.status_code == 503 and ready.json() == {"health": "unavailable"}
        live = requests.get(health, params={"probe": "live"}, timeout=30)
        assert live.status_code == 200 and live.json() == {"health": "ok"}
        gate.open_gate()
        wait_for(lambda: requests.get(health, timeout=60).status_code == 200, 60,
                 "never ready again")
    finally:
        gate.open_gate()
        server.stop()
        gate.close()
