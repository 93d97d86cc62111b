"""Scale benchmark: listing and event cost at 100,000 and 1,000,000 bundle versions.

One local store is seeded with ``bench/seed.py`` (the server's own write path, without
fsync) to the first count, measured, then seeded on to the second and measured again.  At
each size, with ``hcafs serve`` running on the store:

* one ``/bundles/all`` page of 500 from a random ``search_after``, server side: the time
  the server's access log records for the request (ms), and the same page built in-process
  by ``DSS.enumerate_bundles`` (no HTTP);
* one ``GET /events`` since the newest cursor (what a mount asks when nothing changed).

* a real ``hcafs mount`` of it (unless ``--no-mount``): ``hcafs mount`` until it returns
  with an empty cache, the time until the background listing is complete, ``ls -l
  MOUNT/bundles`` (warm) against ``ls -l`` of a local directory with as many entries, a
  refresh with nothing changed (``setxattr user.hcafs.refresh`` on the mount root, timed in
  this process, with the requests it made counted in the server's access log), a refresh
  after 1,000 new versions (added by the seeder while the server runs), the daemon's peak
  RSS (``VmHWM``), and ``hcafs mount`` with the warm cache;
* the same warm cache mounted with ``--kernel-entries 100000``: ``ls -l MOUNT/bundles`` and
  the daemon's peak RSS with the kernel's entries bounded.

Then the HTTP bundle PUT rate of a fresh server: 2,000 ``PUT /bundles`` of one file each,
from 8 threads.

    python bench/scale.py [--counts 100000 1000000] [--output docs/benchmarks.md]

runs it alone and writes its section into the report (``make bench`` runs it as one step).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid as _uuid
from concurrent.futures import ThreadPoolExecutor

import requests

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

import seed  # noqa: E402

from hcafs.cache.catalog import EVENTS_OVERLAP  # noqa: E402
from hcafs.server.copier import Copier  # noqa: E402
from hcafs.server.dss import DSS  # noqa: E402
from hcafs.server.store import LocalStore  # noqa: E402
from hcafs.versions import now_version  # noqa: E402

PAGES = 40
PUTS = 2000
THREADS = 8
GOAL_RATIO = 1.5
_ACCESS = re.compile(r"GET /v1/bundles/all\S* (\d{3}) ([0-9.]+)s")
_REQUEST = re.compile(r" (GET|HEAD|PUT|PATCH|DELETE|POST) /v1/\S* \d{3} [0-9.]+s")
ADDED = 1000  # versions added while mounted, for the refresh after changes
KERNEL_ENTRIES = 100_000  # the bound of the --kernel-entries runs
HEADING = "## Results, scale (a million bundle versions)"


class _Server:
    """``hcafs serve`` on 127.0.0.1 over ``data_dir``, stopped by its PID."""

    def __init__(self, data_dir: str, work: str, staging: str | None = None):
        self.token = secrets.token_hex(16)
        self.tokens = os.path.join(work, f"tokens-{os.path.basename(data_dir)}.json")
        with open(self.tokens, "w") as handle:
            json.dump({self.token: {"email": "bench@example.org", "groups": ["hca"],
                                    "admin": True}}, handle)
        ready = os.path.join(work, f"ready-{os.path.basename(data_dir)}.json")
        if os.path.exists(ready):
            os.unlink(ready)
        self.log = os.path.join(work, f"{os.path.basename(data_dir)}.log")
        command = [sys.executable, "-m", "hcafs", "serve", "--host", "127.0.0.1",
                   "--port", "0", "--data-dir", data_dir, "--tokens", self.tokens,
                   "--ready-file", ready]
        if staging:
            command += ["--staging-root", staging]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=log, cwd=work)
        deadline = time.monotonic() + 120
        while not os.path.exists(ready):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"hcafs serve did not start; see {self.log}")
            time.sleep(0.05)
        with open(ready) as handle:
            self.url = json.load(handle)["url"]
        self.http = requests.Session()

    def api(self, path: str) -> str:
        return f"{self.url}/v1{path}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _afters(count: int) -> list[str]:
    rng = random.Random(count)
    return [str(_uuid.UUID(int=rng.getrandbits(128))) for _ in range(PAGES)]


def _hcafs(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hcafs", *args], capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=3600,
                          stdin=subprocess.DEVNULL)


def _timed_ls(path: str) -> float:
    started = time.perf_counter()
    subprocess.run(["ls", "-l", path], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def _requests_logged(log: str, skip: int) -> tuple[int, int]:
    """(requests logged after line ``skip``, lines now)."""
    with open(log, errors="replace") as handle:
        lines = handle.readlines()
    return sum(1 for line in lines[skip:] if _REQUEST.search(line)), len(lines)


def _rss_mib(pid: int, field: str) -> float:
    with open(f"/proc/{pid}/status") as handle:
        line = next(line for line in handle if line.startswith(f"{field}:"))
    return int(line.split()[1]) / 1024


def mount_figures(server: _Server, data_dir: str, work: str, count: int) -> dict:
    """The mount's figures against ``server`` (``count`` versions; adds :data:`ADDED`)."""
    where = os.path.join(work, f"mount-{count}")
    mnt, cache = os.path.join(where, "mnt"), os.path.join(where, "cache")
    os.makedirs(mnt, exist_ok=True)
    env = {"XDG_RUNTIME_DIR": os.path.join(where, "run"),
           "XDG_CONFIG_HOME": os.path.join(where, "config")}
    command = ["mount", mnt, "--cache-dir", cache, "--dss-url", server.url]
    figures: dict = {}
    # Start past the catch-up overlap after the seeding: otherwise the listing's first
    # cursor is so close to the seeding's last journals that every refresh reads them again.
    time.sleep(EVENTS_OVERLAP + 1)

    def status() -> dict:
        return json.loads(_hcafs("status", "--json", mnt, env=env).stdout)

    started = time.perf_counter()
    result = _hcafs(*command, env=env)
    figures["mount_empty_s"] = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"hcafs mount failed: {result.stderr}")
    try:
        while status()["listing"]["state"] != "complete":
            time.sleep(0.05)
        figures["listing_s"] = time.perf_counter() - started
        pid = status()["pid"]
        figures["rss_listed_mib"] = _rss_mib(pid, "VmRSS")  # the listing alone, before ls
        figures["listed"] = len(os.listdir(os.path.join(mnt, "bundles")))
        _timed_ls(os.path.join(mnt, "bundles"))  # the kernel's caches warm
        figures["ls_mount_s"] = min(_timed_ls(os.path.join(mnt, "bundles"))
                                    for _ in range(3))
        native = os.path.join(where, "native")
        os.makedirs(native)
        for name in os.listdir(os.path.join(mnt, "bundles")):
            os.mkdir(os.path.join(native, name))
        _timed_ls(native)
        figures["ls_native_s"] = min(_timed_ls(native) for _ in range(3))
        shutil.rmtree(native)
        times, asked = [], []
        for _ in range(5):
            _, skip = _requests_logged(server.log, 0)
            begun = time.perf_counter()
            os.setxattr(mnt, "user.hcafs.refresh", b"1")
            times.append((time.perf_counter() - begun) * 1000)
            time.sleep(0.3)  # the access log line is written after the answer
            asked.append(_requests_logged(server.log, skip)[0])
        figures["refresh_idle_ms"] = statistics.median(times)
        figures["refresh_idle_requests"] = max(asked)
        seed.seed(os.path.join(data_dir, "store"), ADDED, workers=1, fast=True)
        begun = time.perf_counter()
        os.setxattr(mnt, "user.hcafs.refresh", b"1")
        figures["refresh_added_s"] = time.perf_counter() - begun
        figures["listed_after"] = status()["listing"]["versions"]
        figures["rss_peak_mib"] = _rss_mib(pid, "VmHWM")
    finally:
        _hcafs("umount", mnt, env=env)
    started = time.perf_counter()
    result = _hcafs(*command, env=env)
    figures["mount_warm_s"] = time.perf_counter() - started
    _hcafs("umount", mnt, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"hcafs mount (warm) failed: {result.stderr}")
    figures["bounded"] = _bounded(command, env, mnt)
    # Collections need a token: the warm cache again, mounted with one.
    result = _hcafs(*command, env={**env, "HCAFS_TOKEN": server.token})
    if result.returncode != 0:
        raise RuntimeError(f"hcafs mount (with a token) failed: {result.stderr}")
    try:
        made = []
        for n in range(5):
            begun = time.perf_counter()
            os.mkdir(os.path.join(mnt, "collections", f"scale-{n}"))
            os.rmdir(os.path.join(mnt, "collections", f"scale-{n}"))
            made.append((time.perf_counter() - begun) * 1000)
        figures["collection_ms"] = statistics.median(made)
    finally:
        _hcafs("umount", mnt, env=env)
    return figures


def _bounded(command: list[str], env: dict, mnt: str) -> dict:
    """``ls -l`` and the daemon's peak RSS on the warm cache with ``--kernel-entries``."""
    result = _hcafs(*command, "--kernel-entries", str(KERNEL_ENTRIES), env=env)
    if result.returncode != 0:
        raise RuntimeError(f"hcafs mount --kernel-entries failed: {result.stderr}")
    try:
        pid = json.loads(_hcafs("status", "--json", mnt, env=env).stdout)["pid"]
        bundles = os.path.join(mnt, "bundles")
        _timed_ls(bundles)
        ls_s = min(_timed_ls(bundles) for _ in range(3))
        kept = json.loads(os.getxattr(mnt, "user.hcafs.status"))["kernel_entries"]
        return {"limit": KERNEL_ENTRIES, "ls_mount_s": ls_s, "pruned": kept["pruned"],
                "rss_peak_mib": _rss_mib(pid, "VmHWM")}
    finally:
        _hcafs("umount", mnt, env=env)


def measure(data_dir: str, work: str, count: int, mount: bool = True) -> dict:
    """Page and event figures of the store at ``data_dir`` (``count`` versions)."""
    store = LocalStore(os.path.join(data_dir, "store"))
    dss = DSS(store, Copier(store, None, None, 1 << 30, workers=1))
    in_process = []
    try:
        for after in _afters(count):
            started = time.perf_counter()
            page = dss.enumerate_bundles(None, after, 500)
            in_process.append((time.perf_counter() - started) * 1000)
            assert len(page.items) == 500 or not page.more
    finally:
        dss.copier.close()
    server = _Server(data_dir, work)
    try:
        with open(server.log, errors="replace") as handle:
            skip = sum(1 for _ in handle)
        client = []
        for after in _afters(count):
            started = time.perf_counter()
            answer = server.http.get(server.api("/bundles/all"), params={
                "replica": "aws", "per_page": 500, "search_after": after}, timeout=60)
            client.append((time.perf_counter() - started) * 1000)
            if answer.status_code not in (200, 206):
                raise RuntimeError(f"/bundles/all answered {answer.status_code}")
        first = server.http.get(server.api("/bundles/all"), params={
            "replica": "aws", "per_page": 500}, timeout=60).json()
        newest = server.http.get(server.api("/events"), params={
            "replica": "aws", "since": now_version()}, timeout=60).json()["cursor"]
        events_ms = []
        for _ in range(10):
            started = time.perf_counter()
            answer = server.http.get(server.api("/events"), params={
                "replica": "aws", "since": newest}, timeout=60)
            events_ms.append((time.perf_counter() - started) * 1000)
            if answer.status_code != 200 or answer.json()["event_streams"]:
                raise RuntimeError("an idle store answered /events with events")
        mounted = mount_figures(server, data_dir, work, count) if mount else {}
    finally:
        server.stop()
    with open(server.log, errors="replace") as handle:
        logged = [float(m[2]) * 1000 for i, line in enumerate(handle)
                  if i >= skip and (m := _ACCESS.search(line))]
    return {"count": count, "page_server_ms": statistics.median(logged[:PAGES]),
            "page_in_process_ms": statistics.median(in_process),
            "page_client_ms": statistics.median(client),
            "first_page_items": len(first["bundles"]),
            "events_idle_ms": statistics.median(events_ms), "mount": mounted}


def put_rate(work: str) -> dict:
    """PUT /bundles through HTTP on a fresh server: ``PUTS`` bundles, ``THREADS`` threads."""
    staging = os.path.join(work, "put-staging")
    os.makedirs(staging, exist_ok=True)
    source = os.path.join(staging, "one.txt")
    with open(source, "wb") as handle:
        handle.write(b"one file for every bundle\n")
    server = _Server(os.path.join(work, "put"), work, staging)
    try:
        auth = {"Authorization": f"Bearer {server.token}"}
        uuid, version = str(_uuid.uuid4()), now_version()
        answer = server.http.put(server.api(f"/files/{uuid}"), params={"version": version},
                                 headers=auth, timeout=60,
                                 json={"source_url": f"file://{source}", "creator_uid": 0})
        answer.raise_for_status()
        files = [{"uuid": uuid, "version": version, "name": "one.txt", "indexed": False}]
        sessions = [requests.Session() for _ in range(THREADS)]

        def put(n: int) -> int:
            return sessions[n % THREADS].put(
                server.api(f"/bundles/{_uuid.uuid4()}"), headers=auth, timeout=60,
                params={"replica": "aws", "version": now_version()},
                json={"files": files, "creator_uid": 0}).status_code

        started = time.perf_counter()
        with ThreadPoolExecutor(THREADS) as pool:
            statuses = list(pool.map(put, range(PUTS)))
        seconds = time.perf_counter() - started
    finally:
        server.stop()
    if statuses.count(201) != PUTS:
        raise RuntimeError(f"bundle PUTs: {sorted(set(statuses))}")
    return {"puts": PUTS, "threads": THREADS, "seconds": round(seconds, 2),
            "rate": round(PUTS / seconds)}


def run(work: str, counts: tuple[int, ...] = (100_000, 1_000_000), mount: bool = True
        ) -> dict:
    os.makedirs(work, exist_ok=True)
    results: dict = {"load_at_start": os.getloadavg(), "put": put_rate(work), "sizes": []}
    data_dir = os.path.join(work, "scale")
    have = 0
    for count in counts:
        seeded = seed.seed(os.path.join(data_dir, "store"), count - have,
                           workers=os.cpu_count() or 2, fast=True)
        have = count
        figures = measure(data_dir, work, count, mount)
        figures["seed"] = seeded
        have += ADDED if mount else 0
        results["sizes"].append(figures)
    results["load_at_end"] = os.getloadavg()
    return results


def section(d: dict) -> list[str]:
    """The report's section (empty when the step did not run)."""
    if not d or not d.get("sizes"):
        return []
    sizes = d["sizes"]
    lines = [HEADING, "",
             "`python bench/scale.py` (or `python bench/run.py --only scale`; also a step of "
             "`make bench`): one local store seeded "
             "with `bench/seed.py --fast` (the server's own write path through "
             "`DSS.import_bundles`, no fsync, one worker process per core), measured with "
             "`hcafs serve` on it; page cache warm. A page is `GET /v1/bundles/all?"
             f"per_page=500&search_after=<random uuid>`, median of {PAGES}; *server* is the "
             "duration in the server's access log, *in-process* `DSS.enumerate_bundles` "
             "alone, *client* the loopback round trip.", "",
             "| bundle versions | seeding (added) | page of 500, server | in-process | client "
             "| `GET /events` since the newest cursor |", "|---|---|---|---|---|---|"]
    for s in sizes:
        seeded = s["seed"]
        lines.append(f"| {s['count']:,} | {seeded['count']:,} in {seeded['seconds']:.0f} s "
                     f"({seeded['rate']:,}/s) | {s['page_server_ms']:.1f} ms | "
                     f"{s['page_in_process_ms']:.1f} ms | {s['page_client_ms']:.1f} ms | "
                     f"{s['events_idle_ms']:.1f} ms |")
    if len(sizes) >= 2:
        low, high = sizes[0], sizes[-1]
        ratio = high["page_in_process_ms"] / low["page_in_process_ms"]
        server_ratio = high["page_server_ms"] / max(low["page_server_ms"], 0.001)
        verdict = "met" if ratio <= GOAL_RATIO else "not met"
        lines += ["", f"Page cost at {high['count']:,} / at {low['count']:,}: "
                  f"{ratio:.2f}× in-process, {server_ratio:.2f}× in the access log "
                  f"(goal ≤ {GOAL_RATIO}×: {verdict}; the access log counts whole "
                  "milliseconds)."]
    mounted = [s for s in sizes if s.get("mount")]
    if mounted:
        lines += ["", "**The mount** (`hcafs mount` of that server, no token, then again "
                  "on the warm cache with an admin token for the collections; goals in "
                  "brackets; `ls -l` is the best of 3 after one to warm the caches, the idle "
                  "refresh the median of 5 `setxattr user.hcafs.refresh` on the mount root "
                  "with the requests the server logged for it, `mkdir` + `rmdir` of "
                  "`collections/NAME` the median of 5). Other benchmark and test runs "
                  "shared the 2 cores while this ran.", "",
                  "| bundle versions | mount, empty cache (≤ 2 s) | listing complete "
                  "| mount, warm cache (≤ 1 s) | `ls -l bundles` warm / local dir (≤ 1.5×) "
                  "| refresh, nothing changed (≤ 50 ms, 1 request) "
                  f"| refresh after {ADDED:,} new (≤ 1 s) | `mkdir` + `rmdir` of a "
                  "collection (≤ 50 ms) | daemon RSS peak (≤ 150 MiB) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for s in mounted:
            m = s["mount"]
            ratio = m["ls_mount_s"] / max(m["ls_native_s"], 1e-6)
            listed = f" ({m['rss_listed_mib']:.0f} MiB listed, before any `ls`)" \
                if "rss_listed_mib" in m else ""
            lines.append(
                f"| {s['count']:,} | {m['mount_empty_s']:.2f} s | {m['listing_s']:.1f} s "
                f"({m['listed']:,} listed) | {m['mount_warm_s']:.2f} s | "
                f"{m['ls_mount_s']:.2f} s / {m['ls_native_s']:.2f} s = {ratio:.2f}× | "
                f"{m['refresh_idle_ms']:.1f} ms, {m['refresh_idle_requests']} "
                f"request{'s' if m['refresh_idle_requests'] != 1 else ''} | "
                f"{m['refresh_added_s']:.2f} s ({m['listed_after']:,} listed after) | "
                f"{m['collection_ms']:.1f} ms | {m['rss_peak_mib']:.0f} MiB{listed} |")
        lines += ["", "The daemon's RSS peaks after `ls -l`: libfuse keeps one node per name "
                  "the kernel holds (about 260 bytes each), freed when the kernel drops "
                  "the entries; the catalog itself is not in memory (docs/mount.md, "
                  "*Caches*)."]
        bounded = [s for s in mounted if s["mount"].get("bounded")]
        if bounded:
            lines += ["", f"**With `--kernel-entries {KERNEL_ENTRIES}`** (the same warm "
                      "cache, mounted again with the bound; `ls -l` best of 3 after one): "
                      "each time a listing has handed out more than that many entries, the "
                      "kernel drops the unused ones and libfuse frees their nodes, so each "
                      "`ls -l` of more entries makes the kernel's entries anew.", "",
                      "| bundle versions | `ls -l bundles` / local dir (≤ 1.5×) | prunes "
                      "| daemon RSS peak (≤ 150 MiB) |", "|---|---|---|---|"]
            for s in bounded:
                b, m = s["mount"]["bounded"], s["mount"]
                ratio = b["ls_mount_s"] / max(m["ls_native_s"], 1e-6)
                lines.append(f"| {s['count']:,} | {b['ls_mount_s']:.2f} s / "
                             f"{m['ls_native_s']:.2f} s = {ratio:.2f}× | {b['pruned']} | "
                             f"{b['rss_peak_mib']:.0f} MiB |")
    total = sum(s["seed"]["seconds"] for s in sizes)
    lines += ["", f"Seeding {sizes[-1]['count']:,} versions from an empty store took "
              f"{total:.0f} s in all."]
    if d.get("load_at_start"):
        lines += ["", "Load average (1, 5, 15 min) at the start: "
                  f"{' '.join(f'{x:.2f}' for x in d['load_at_start'])}; at the end: "
                  f"{' '.join(f'{x:.2f}' for x in d['load_at_end'])}."]
    put = d.get("put")
    if put:
        lines += ["", f"HTTP bundle PUT rate (fresh local store, durable): {put['puts']:,} "
                  f"`PUT /v1/bundles/{{uuid}}` of one file each from {put['threads']} "
                  f"threads in {put['seconds']:.1f} s: **{put['rate']:,} PUTs/s**."]
    return lines + [""]


def write_section(path: str, lines: list[str]) -> None:
    """Put the section into the report at ``path``, replacing an older one."""
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    block = "\n".join(lines)
    pattern = re.compile(rf"^{re.escape(HEADING)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: block + "\n", text)
    elif "\n## Machine" in text:
        text = text.replace("\n## Machine", f"\n{block}\n## Machine", 1)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    with open(path, "w") as handle:
        handle.write(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[100_000, 1_000_000],
                        help="store sizes, ascending (default 100000 1000000)")
    parser.add_argument("--output", default=os.path.join(REPO, "docs", "benchmarks.md"))
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    parser.add_argument("--no-mount", action="store_true", help="skip the mount figures")
    args = parser.parse_args(argv)
    if sorted(args.counts) != args.counts or args.counts[0] < 1:
        parser.error("--counts must be positive and ascending")
    base = os.environ.get("HCAFS_BENCH_DIR") or "/tmp"
    work = os.path.realpath(tempfile.mkdtemp(prefix="hcafs-scale-", dir=base))
    try:
        results = run(work, tuple(args.counts), not args.no_mount)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))
    write_section(args.output, section(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
