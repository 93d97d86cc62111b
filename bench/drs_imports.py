"""DRS imports benchmark: 1,000 ``.drs`` files through the mount, rate limit 500 per 10 s.

An external ``hcafs serve`` holds 1,000 small files.  A mount on the embedded server (started
with ``--import-rate-limit 500 --import-rate-window 10``, which the embedded server follows)
gets 1,000 ``.drs`` files written into one pending bundle at once.  Measured:

* wall time from the first write until every import has landed in the pending bundle, and
  the server's own span from the first admission to the last job's ``finished_on`` time;
* the minimum the limit allows: the last of the 1,000 items cannot be admitted before
  ``(ceil(1000 / 500) - 1) * 10`` s after the first;
* the largest call (items) and the number of rejected calls, from the server's audit record.

Run alone with ``python bench/drs_imports.py`` (prints JSON; ``--mount-only`` skips the
server's own figures, ``--items 5000`` writes 5,000 files), or from ``bench/run.py``.
``python bench/drs_imports.py --direct`` measures the server alone (:func:`run_direct`):
items submitted straight to the create call, so its figures do not depend on the mount.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import requests

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from hcafs import readyfile  # noqa: E402
from hcafs.remote.client import DSSClient  # noqa: E402
from hcafs.versions import now_version  # noqa: E402

ITEMS = 1000
LIMIT = 500
WINDOW = 10.0


def _hcafs(*args: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hcafs", *args], env=env, timeout=timeout,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)


def _start_external(work: str) -> tuple[subprocess.Popen, str, str]:
    data = os.path.join(work, "external")
    staging = os.path.join(work, "external-staging")
    os.makedirs(staging, exist_ok=True)
    ready = os.path.join(work, "external.json")
    process, info = readyfile.start_server(
        ["--host", "127.0.0.1", "--port", "0", "--data-dir", data, "--staging-root", staging],
        ready, log_path=os.path.join(work, "external.log"))
    with open(info["tokens_file"] if os.path.isabs(info["tokens_file"])
              else os.path.join(data, "tokens.json")) as handle:
        token = next(iter(json.load(handle)))
    return process, info["url"], token


def _publish(url: str, token: str, staging: str, count: int) -> list[str]:
    client = DSSClient(url, token=token)

    def one(number: int) -> str:
        path = os.path.join(staging, f"f{number:04d}")
        with open(path, "wb") as handle:
            handle.write(f"file {number}\n".encode() * 8)
        file_uuid, version = str(uuid.uuid4()), now_version()
        client.put_file(file_uuid, version, f"file://{path}")
        return f"{file_uuid}.{version}"

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(count)))


def run(work: str | None = None, items: int = ITEMS, limit: int = LIMIT,
        window: float = WINDOW, direct_too: bool = True) -> dict:
    """Through the mount; with ``direct_too``, also the server's own figures
    (:func:`run_direct`) under ``server_direct``."""
    work = work or tempfile.mkdtemp(prefix="hcafs-bench-drs-")
    env = {**os.environ, "XDG_DATA_HOME": os.path.join(work, "data"),
           "XDG_CACHE_HOME": os.path.join(work, "cache"),
           "XDG_RUNTIME_DIR": os.path.join(work, "run"),
           "XDG_CONFIG_HOME": os.path.join(work, "config"), "LC_ALL": "C"}
    mountpoint = os.path.join(work, "mnt")
    os.makedirs(mountpoint, exist_ok=True)
    external, url, token = _start_external(work)
    mounted = False
    try:
        fqids = _publish(url, token, os.path.join(work, "external-staging"), items)
        result = _hcafs("mount", mountpoint, "--import-rate-limit", str(limit),
                        "--import-rate-window", str(window), env=env)
        if result.returncode != 0:
            raise RuntimeError(f"mount failed: {result.stderr}")
        mounted = True
        pending = os.path.join(mountpoint, "bundles", "imports")
        os.mkdir(pending)
        host = url.split("://", 1)[1]
        daemon = _embedded_server(env)["pid"]
        server_pids = _descendants(daemon)
        cpu_before = _cpu_seconds(daemon), sum(map(_cpu_seconds, server_pids))
        started = time.time()
        for number, fqid in enumerate(fqids):
            with open(os.path.join(pending, f"f{number:04d}.drs"), "w") as handle:
                handle.write(f"drs://{host}/{fqid}\n")
        written = time.time()
        deadline = time.monotonic() + 20 * window + 300
        # The journal says when the last import has landed (a landed import is in the
        # mount's listing at once), so the wait does not list 1,000 names through the
        # mount ten times a second; the listing is checked once at the end.
        journal = sqlite3.connect(os.path.join(env["XDG_CACHE_HOME"], "hcafs", "embedded",
                                               "hcafs.db"), timeout=30)
        while journal.execute("select count(*) from drs_imports where state in "
                              "('queued', 'submitting', 'submitted')").fetchone()[0] or \
                journal.execute("select count(*) from drs_imports").fetchone()[0] < items:
            if time.monotonic() > deadline:
                raise RuntimeError("imports did not finish")
            time.sleep(0.05)
        landed = time.time()
        journal.close()
        names = os.listdir(pending)
        if any(n.endswith(".drs") for n in names) or len(names) != items:
            raise RuntimeError(f"imports did not land: {len(names)} names")
        cpu = (_cpu_seconds(daemon) - cpu_before[0],
               sum(map(_cpu_seconds, server_pids)) - cpu_before[1])
        load = os.getloadavg()[0]
        server = _embedded_server(env)
        audit = requests.get(f"{server['url']}/internal/imports/log", timeout=60,
                             headers={"Authorization": f"Bearer {server['token']}"}).json()
    finally:
        if mounted:
            _hcafs("umount", "--no-wait", mountpoint, env=env)
        external.terminate()
        try:
            external.wait(timeout=15)
        except subprocess.TimeoutExpired:
            external.kill()
    calls = [c for c in audit["calls"] if not c.get("replay")]
    accepted = [c for c in calls if c["accepted"]]
    admissions = sorted(a["time"] for a in audit["admissions"])
    finished = [j for j in audit["jobs"] if j["state"] == "FINISHED"]
    last_finish = max(h["time"] for j in finished for h in j["history"]
                      if h["state"] == "FINISHED")
    minimum = (math.ceil(items / limit) - 1) * window
    first_call = min(c["time"] for c in accepted)
    busiest = max(sum(1 for t in admissions if start <= t < start + window)
                  for start in admissions)
    # The server's budget is a fixed period by default: each opens with the first
    # admission after the one before ended, and holds at most the limit.
    periods: list[list[float]] = []
    for when in admissions:
        if periods and when < periods[-1][0] + window:
            periods[-1].append(when)
        else:
            periods.append([when])
    finishes = sorted(h["time"] for j in finished for h in j["history"]
                      if h["state"] == "FINISHED")
    return {
        "server_direct": run_direct(os.path.join(work, "direct"), items, 5 * items, limit,
                                    window) if direct_too else None,
        # seconds after the first write: each accepted call, the first and last admission
        # of each window's worth of files, each job's FINISHED, and the last import landed
        "timeline": {
            "calls": [round(c["time"] - started, 2) for c in sorted(
                accepted, key=lambda c: c["time"])],
            "admissions": [round(admissions[n] - started, 2) for n in sorted(
                {0, len(admissions) - 1, *range(limit - 1, len(admissions), limit),
                 *range(limit, len(admissions), limit)})],
            "finished": [round(t - started, 2) for t in finishes],
            # each job's first and last admission
            "jobs": sorted([round(min(ts) - started, 2), round(max(ts) - started, 2)]
                           for ts in _by_job(audit["admissions"]).values()),
            "landed": round(landed - started, 2)},
        "items": items, "limit": limit, "window": window,
        "write_seconds": written - started,
        "wall_seconds": landed - started,
        "server_seconds": last_finish - first_call,
        "minimum_seconds": minimum,
        "ratio": (landed - started) / minimum if minimum else None,
        "server_ratio": (last_finish - first_call) / minimum if minimum else None,
        "mount_cpu_seconds_per_item": round(cpu[0] / items, 5),
        "server_cpu_seconds_per_item": round(cpu[1] / items, 5),
        "load_average_1min": round(load, 2),
        "calls": len(accepted), "largest_call": max(c["items"] for c in accepted),
        "rejected_calls": len(calls) - len(accepted),
        "busiest_window": busiest, "admissions": len(admissions),
        "busiest_period": max(len(p) for p in periods), "periods": len(periods),
    }


# ---------------------------------------------------------------- the server, directly


def _by_job(admissions: list[dict]) -> dict[str, list[float]]:
    found: dict[str, list[float]] = {}
    for admission in admissions:
        found.setdefault(admission["job"], []).append(admission["time"])
    return found


def _serve(work: str, name: str, *args: str) -> tuple[subprocess.Popen, str, str, str]:
    """An ``hcafs serve`` of its own: (process, url, a token of its tokens file, log)."""
    data = os.path.join(work, name)
    ready = os.path.join(work, f"{name}.json")
    log_path = os.path.join(work, f"{name}.log")
    with open(log_path, "ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "hcafs", "serve", "--host",
                                    "127.0.0.1", "--port", "0", "--data-dir", data,
                                    "--ready-file", ready, *args], stdout=log, stderr=log,
                                   stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not os.path.exists(ready):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not start")
        time.sleep(0.05)
    with open(ready) as handle:
        info = json.load(handle)
    with open(info["tokens_file"]) as handle:
        token = next(iter(json.load(handle)))
    return process, info["url"], token, log_path


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _drs_calls(log_path: str, since: int) -> dict[str, int]:
    """The DRS calls a peer logged after byte ``since`` of its log, by kind."""
    counts: dict[str, int] = {}
    with open(log_path, errors="replace") as handle:
        handle.seek(since)
        for line in handle:
            if "hcafs.server.access:" not in line:
                continue
            method, path = line.split("access:", 1)[1].split()[:2]
            path = path.split("?")[0]
            if path.endswith("/service-info"):
                kind = "service-info"
            elif path == "/ga4gh/drs/v1/objects":
                kind = f"{method} /objects"
            elif path == "/ga4gh/drs/v1/objects/access":
                kind = "POST /objects/access"
            elif path.startswith("/ga4gh/drs/v1/objects/"):
                kind = f"{method} /objects/{{id}}" + ("/access" if "/access/" in path else "")
            elif path.startswith(("/blobs/", "/ga4gh/drs/v1/blobs/")):
                kind = "blob"
            else:
                continue
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def direct(work: str, peer_url: str, peer_log: str, fqids: list[str], limit: int | None,
           window: float) -> dict:
    """Submit ``fqids`` straight to a fresh importer's create call (100 items a call, all
    at once), and time it from the first call until every job is FINISHED."""
    name = f"importer-{len(fqids)}-{limit or 'nolimit'}"
    process, url, token, _ = _serve(
        work, name, "--drs-allow-network", "127.0.0.0/8",
        "--import-rate-limit", str(limit or 10_000_000), "--import-rate-window", str(window),
        "--import-request-limit", "10000000")
    headers = {"X-SBG-Auth-Token": token}
    host = peer_url.split("://", 1)[1]
    try:
        since = os.path.getsize(peer_log)
        workers = [process.pid, *_descendants(process.pid)]  # it forks its workers
        cpu_before = sum(map(_cpu_seconds, workers))
        session = requests.Session()
        started = time.time()

        def create(start: int) -> str:
            items = [{"drs_uri": f"drs://{host}/{fqid}", "project": "bench/direct",
                      "name": f"d{start + n:05d}"}
                     for n, fqid in enumerate(fqids[start:start + 100])]
            answer = requests.post(f"{url}/v2/bulk/drs/imports/create", headers=headers,
                                   json={"items": items}, timeout=60)
            answer.raise_for_status()
            return answer.json()["id"]

        with ThreadPoolExecutor(4) as pool:
            jobs = list(pool.map(create, range(0, len(fqids), 100)))
        submitted = time.time()
        waiting, failed = set(jobs), 0
        deadline = time.monotonic() + 20 * window + 600
        while waiting:
            for job_id in sorted(waiting):
                job = session.get(f"{url}/v2/bulk/drs/imports/{job_id}", headers=headers,
                                  timeout=60).json()
                if job["state"] == "FINISHED":
                    waiting.discard(job_id)
                    failed += sum(1 for r in job["result"] if "error" in r)
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(waiting)} jobs did not finish")
            time.sleep(0.25)  # a job's answer holds all its results: do not poll hard
        landed = time.time()
        cpu = sum(map(_cpu_seconds, workers)) - cpu_before
    finally:
        _stop(process)
    calls = _drs_calls(peer_log, since)
    items = len(fqids)
    minimum = (math.ceil(items / limit) - 1) * window if limit else None
    return {"items": items, "limit": limit, "window": window, "failed": failed,
            "submit_seconds": round(submitted - started, 2),
            "seconds": round(landed - started, 2),
            "minimum_seconds": minimum,
            "ratio": round((landed - started) / minimum, 3) if minimum else None,
            "items_per_second": round(items / (landed - started), 1),
            "server_cpu_seconds_per_item": round(cpu / items, 5),
            "drs_calls": calls,
            "drs_calls_per_item": round(sum(v for k, v in calls.items() if k != "blob")
                                        / items, 4)}


def run_direct(work: str | None = None, small: int = ITEMS, large: int = 5 * ITEMS,
               limit: int = LIMIT, window: float = WINDOW) -> dict:
    """The server's own figures, without a mount: the import rate with no limit, and
    ``small`` and ``large`` items at ``limit`` per ``window``."""
    work = work or tempfile.mkdtemp(prefix="hcafs-bench-drs-direct-")
    staging = os.path.join(work, "peer-staging")
    os.makedirs(staging, exist_ok=True)
    peer, peer_url, peer_token, peer_log = _serve(work, "peer", "--staging-root", staging)
    try:
        fqids = _publish(peer_url, peer_token, staging, large)
        found = {"no_limit": direct(work, peer_url, peer_log, fqids[:small], None, window),
                 "limited_small": direct(work, peer_url, peer_log, fqids[:small], limit,
                                         window),
                 "limited_large": direct(work, peer_url, peer_log, fqids, limit, window)}
    finally:
        _stop(peer)
    return found


def _embedded_server(env: dict) -> dict:
    """The URL and admin token of the embedded server the mount started."""
    data = os.path.join(env["XDG_DATA_HOME"], "hcafs", "server")
    with open(os.path.join(data, "tokens.json")) as handle:
        token = next(iter(json.load(handle)))
    records = os.path.join(env["XDG_RUNTIME_DIR"], "hcafs")
    record = next(f for f in os.listdir(records) if f.endswith(".json"))
    with open(os.path.join(records, record)) as handle:
        found = json.load(handle)
    return {"url": found["dss_url"], "token": token, "pid": found["pid"]}


def _descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (the mount daemon's: its embedded server and workers)."""
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as handle:
            for child in map(int, handle.read().split()):
                found += [child, *_descendants(child)]
    return found


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--direct", action="store_true",
                        help="the server alone (no mount): run_direct()")
    parser.add_argument("--mount-only", action="store_true",
                        help="through the mount, without the server's own figures")
    parser.add_argument("--items", type=int, default=ITEMS,
                        help=f".drs files written into the mount (default {ITEMS})")
    parser.add_argument("--work", metavar="DIR",
                        help="keep the run's servers, logs and journal in DIR (default: a "
                        "new temporary directory)")
    args = parser.parse_args()
    if args.direct:
        print(json.dumps(run_direct(), indent=2))
    else:
        print(json.dumps(run(work=args.work, items=args.items,
                             direct_too=not args.mount_only), indent=2))
