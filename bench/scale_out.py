"""Throughput of ``hcafs serve`` as it scales out: bundle PUTs/s and 1 MiB file ingests/s
through one process with one worker, one process with ``--workers 2``, and two processes
with one worker each on one data dir, side by side in one run.

Clients are 2 processes of 4 threads each, on the same machine (they take CPU from the
servers: the figures are a lower bound).  The server's CPU per request is read from
``/proc`` (the supervisor and its workers), which gives what more cores would yield if
CPU is the bound.

Run alone with ``python bench/scale_out.py`` (prints JSON), or from ``bench/run.py``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import tempfile
import time
import uuid as _uuid

import requests

from hcafs.readyfile import start_server, stop
from hcafs.versions import now_version

SECONDS = 8.0  # of load per figure
CLIENTS, THREADS = 2, 4
TOKEN = "bench-admin-token-0123456789"
CONFIGS = (("1 process, 1 worker", 1, 1), ("1 process, --workers 2", 1, 2),
           ("2 processes, 1 worker each", 2, 1))
TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` and its children (the workers), alive ones included."""
    total = 0.0
    pids = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            pids += [int(p) for p in handle.read().split()]
    except OSError:
        pass
    for each in pids:
        try:
            with open(f"/proc/{each}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICK
        except OSError:
            pass
    return total


def _client(urls: list[str], kind: str, staging: str, files: list[dict], until: float,
            out: multiprocessing.Queue) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def work(n: int) -> int:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {TOKEN}"
        done = 0
        while time.time() < until:
            url = urls[(n + done) % len(urls)]
            uuid, version = str(_uuid.uuid4()), now_version()
            if kind == "bundle":
                answer = session.put(f"{url}/v1/bundles/{uuid}",
                                     params={"version": version, "replica": "aws"},
                                     json={"creator_uid": 1, "files": files}, timeout=60)
            else:
                path = os.path.join(staging, f"{uuid}.bin")
                with open(path, "wb") as handle:
                    handle.write(os.urandom(1024 * 1024))
                answer = session.put(f"{url}/v1/files/{uuid}", params={"version": version},
                                     json={"source_url": f"file://{path}", "creator_uid": 1},
                                     timeout=60)
            if answer.status_code != 201:
                raise RuntimeError(f"{kind} PUT answered {answer.status_code}: "
                                   f"{answer.text[:200]}")
            done += 1
        return done

    with ThreadPoolExecutor(THREADS) as pool:
        out.put(sum(pool.map(work, range(THREADS))))


def _measure(urls: list[str], pids: list[int], kind: str, staging: str, files: list[dict]
             ) -> dict:
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    cpu = sum(_cpu_seconds(pid) for pid in pids)
    started = time.time()
    clients = [ctx.Process(target=_client, args=(urls, kind, staging, files,
                                                 started + SECONDS, out))
               for _ in range(CLIENTS)]
    for client in clients:
        client.start()
    count = sum(out.get(timeout=SECONDS + 120) for _ in clients)
    elapsed = time.time() - started
    for client in clients:
        client.join(timeout=30)
    cpu = sum(_cpu_seconds(pid) for pid in pids) - cpu
    return {"requests": count, "seconds": round(elapsed, 2),
            "per_second": round(count / elapsed, 1),
            "server_cpu_ms_per_request": round(1000 * cpu / max(count, 1), 2)}


def run(work: str) -> dict:
    os.makedirs(work, exist_ok=True)
    results: dict = {"cores": os.cpu_count(), "load_before": os.getloadavg()[0],
                     "clients": f"{CLIENTS} processes x {THREADS} threads", "configs": {}}
    for label, processes, workers in CONFIGS:
        base = tempfile.mkdtemp(dir=work)
        staging = os.path.join(base, "staging")
        os.makedirs(staging)
        tokens = os.path.join(base, "tokens.json")
        with open(tokens, "w") as handle:
            json.dump({TOKEN: {"email": "bench@example.org", "groups": ["hca"],
                               "admin": True}}, handle)
        os.chmod(tokens, 0o600)
        servers = []
        try:
            for n in range(processes):
                process, info = start_server(
                    ["--host", "127.0.0.1", "--port", "0", "--data-dir",
                     os.path.join(base, "data"), "--tokens", tokens, "--staging-root",
                     staging, "--workers", str(workers)],
                    os.path.join(base, f"ready-{n}.json"),
                    log_path=os.path.join(base, f"server-{n}.log"), timeout=60)
                servers.append((process, info["url"]))
            urls, pids = [u for _, u in servers], [p.pid for p, _ in servers]
            seed = os.path.join(staging, "seed.bin")
            with open(seed, "wb") as handle:
                handle.write(b"seed\n")
            uuid, version = str(_uuid.uuid4()), now_version()
            requests.put(f"{urls[0]}/v1/files/{uuid}", params={"version": version},
                         headers={"Authorization": f"Bearer {TOKEN}"},
                         json={"source_url": f"file://{seed}", "creator_uid": 1},
                         timeout=60).raise_for_status()
            files = [{"uuid": uuid, "version": version, "name": "seed.bin",
                      "indexed": False}]
            results["configs"][label] = {
                "bundle_puts": _measure(urls, pids, "bundle", staging, files),
                "file_ingests_1mib": _measure(urls, pids, "file", staging, files)}
        finally:
            for process, _ in servers:
                stop(process)
    one = results["configs"][CONFIGS[0][0]]
    for label, _, _ in CONFIGS[1:]:
        for kind in ("bundle_puts", "file_ingests_1mib"):
            figure = results["configs"][label][kind]
            figure["ratio_to_one_worker"] = round(figure["per_second"]
                                                  / max(one[kind]["per_second"], 0.1), 2)
    results["load_after"] = os.getloadavg()[0]
    return results


def render(results: dict) -> str:
    """The section of docs/benchmarks.md."""
    if not results:
        return ""
    lines = ["", "## Results, scale-out (`hcafs serve --workers`, several processes)", "",
             "`python bench/scale_out.py` (or `make bench`, `bench/run.py --only "
             f"scale-out`): {SECONDS:g} s of load per figure from {results['clients']} "
             "on loopback, local store, on this "
             f"{results['cores']}-core machine, loaded by other work at the same time "
             f"(load average {results['load_before']:.1f} before, "
             f"{results['load_after']:.1f} after). The clients share the cores.", "",
             "| servers | bundle PUTs/s | ratio | server CPU ms/PUT | 1 MiB ingests/s | "
             "ratio | server CPU ms/ingest |", "|---|---|---|---|---|---|---|"]
    for label, figures in results["configs"].items():
        b, f = figures["bundle_puts"], figures["file_ingests_1mib"]
        lines.append(f"| {label} | {b['per_second']} | {b.get('ratio_to_one_worker', 1.0)} "
                     f"| {b['server_cpu_ms_per_request']} | {f['per_second']} | "
                     f"{f.get('ratio_to_one_worker', 1.0)} | "
                     f"{f['server_cpu_ms_per_request']} |")
    one = results["configs"]["1 process, 1 worker"]
    projections = []
    for kind, name in (("bundle_puts", "bundle PUTs"), ("file_ingests_1mib", "ingests")):
        ms = one[kind]["server_cpu_ms_per_request"]
        if ms > 0:
            projections.append(f"{1000 / ms:.0f} {name}/s per core ({ms} ms of server CPU "
                               f"each), so about {8000 / ms:.0f}/s on 8 cores")
    lines += ["", "If CPU is the bound, throughput grows with the cores the workers get: "
              + "; ".join(projections) + ", with the clients elsewhere and a store that "
              "keeps up.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    figures = run(tempfile.mkdtemp(prefix="hcafs-scale-out-"))
    print(json.dumps(figures, indent=2))
    if "--markdown" in sys.argv:
        print(render(figures))
