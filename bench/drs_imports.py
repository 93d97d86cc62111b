"""Issue 5 benchmark: 1,000 ``.drs`` files through the mount, rate limit 500 per 10 s.

An external ``hcafs serve`` holds 1,000 small files.  A mount on the embedded server (started
with ``--import-rate-limit 500 --import-rate-window 10``, which the embedded server follows)
gets 1,000 ``.drs`` files written into one pending bundle at once.  Measured:

* wall time from the first write until every import has landed in the pending bundle, and
  the server's own span from the first admission to the last job's ``finished_on`` time;
* the minimum the limit allows: the last of the 1,000 items cannot be admitted before
  ``(ceil(1000 / 500) - 1) * 10`` s after the first;
* the largest call (items) and the number of rejected calls, from the server's audit record.

Run alone with ``python bench/drs_imports.py`` (prints JSON), or from ``bench/run.py``.
"""

from __future__ import annotations

import json
import math
import os
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
        window: float = WINDOW) -> dict:
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
        started = time.time()
        for number, fqid in enumerate(fqids):
            with open(os.path.join(pending, f"f{number:04d}.drs"), "w") as handle:
                handle.write(f"drs://{host}/{fqid}\n")
        written = time.time()
        deadline = time.monotonic() + 20 * window + 300
        while True:
            names = os.listdir(pending)
            if not any(n.endswith(".drs") for n in names) and len(names) == items:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"imports did not finish: {len(names)} names")
            time.sleep(0.1)
        landed = time.time()
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
    return {
        "items": items, "limit": limit, "window": window,
        "write_seconds": written - started,
        "wall_seconds": landed - started,
        "server_seconds": last_finish - first_call,
        "minimum_seconds": minimum,
        "ratio": (landed - started) / minimum if minimum else None,
        "server_ratio": (last_finish - first_call) / minimum if minimum else None,
        "calls": len(accepted), "largest_call": max(c["items"] for c in accepted),
        "rejected_calls": len(calls) - len(accepted),
        "busiest_window": busiest, "admissions": len(admissions),
    }


def _embedded_server(env: dict) -> dict:
    """The URL and admin token of the embedded server the mount started."""
    data = os.path.join(env["XDG_DATA_HOME"], "hcafs", "server")
    with open(os.path.join(data, "tokens.json")) as handle:
        token = next(iter(json.load(handle)))
    records = os.path.join(env["XDG_RUNTIME_DIR"], "hcafs")
    record = next(f for f in os.listdir(records) if f.endswith(".json"))
    with open(os.path.join(records, record)) as handle:
        return {"url": json.load(handle)["dss_url"], "token": token}


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
