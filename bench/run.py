"""``make bench``: hcafs side by side with its baselines, written to ``docs/benchmarks.md``.

One run starts ``hcafs serve`` on 127.0.0.1, fills it (a 512 MiB file and 10,000 bundle
versions), and measures listing and reading:

(a) ``ls -l MNT/bundles`` cold and warm, against a local directory as large;
(b) a cold sequential read through the mount, against a direct streaming GET;
(c) a warm re-read (bytes in the hcafs cache), against reading the cached blob file;
(d) the daemon's peak RSS.

Everything runs in a fresh work dir under /tmp (or ``$HCAFS_BENCH_DIR``); every mount is
unmounted and every process stopped by PID, also when a step fails (see ``harness.py``).
``python bench/run.py --help`` lists the knobs (smaller data for a quick try).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import secrets
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import traceback

import drs_imports
import http_load
import metadata_latency
import report
import requests
import scale
import scale_out
from harness import (
    PYTHON,
    BenchError,
    Cleanup,
    MiB,
    Mount,
    Runs,
    Server,
    can_drop_caches,
    child_env,
    dd_read,
    delta,
    drop_caches,
    hcafs_mount,
    hcafs_umount,
    is_mounted,
    start_server,
    stop_process,
    timed,
    unmount,
    wait_for,
)
from workload import Dataset, local_twin, populate, publish_one
from writeback import WriteBench

from hcafs.remote.client import DSSClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))


class Bench:
    def __init__(self, args: argparse.Namespace, work: str, cleanup: Cleanup):
        self.args = args
        self.work = work
        self.cleanup = cleanup
        self.env = cleanup.env
        self.repeats = args.repeats
        self.drop = can_drop_caches()
        self.runs: dict[str, Runs] = {}
        self.counts: dict[str, dict | str] = {}
        self.notes: list[str] = []
        self.errors: list[str] = []
        self.setup: dict[str, float] = {}
        self.mnt = os.path.join(work, "mnt")
        self.token_file = os.path.join(work, "token")
        self.server: Server | None = None
        self.data: Dataset | None = None
        self.read_cache: str | None = None  # the complete cache dir left by (b)
        self.writes: WriteBench | None = None  # the writing steps

    def run(self, name: str) -> Runs:
        return self.runs.setdefault(name, Runs(_UNITS[name]))

    def say(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    def drop_caches(self) -> None:
        if self.drop:
            drop_caches()

    # ------------------------------------------------------------ steps

    def token(self) -> str:
        """The bench's admin token (made on first use; every server accepts it)."""
        if not os.path.exists(self.token_file):
            with open(self.token_file, "w") as handle:
                handle.write("bench-" + secrets.token_urlsafe(16) + "\n")
        with open(self.token_file) as handle:
            return handle.read().strip()

    def prepare(self) -> None:
        token = self.token()
        started = time.perf_counter()
        self.server = start_server(self.work, token, self.cleanup)
        self.setup["start hcafs serve"] = time.perf_counter() - started
        self.say(f"server at {self.server.url}; populating")
        client = DSSClient(self.server.url, token=token)
        self.data = populate(client, os.path.join(self.work, "staging"), self.args.bundles,
                             self.args.big_mib * MiB)
        self.setup.update(self.data.seconds)
        started = time.perf_counter()
        self.local = local_twin(os.path.join(self.work, "local", "bundles"),
                                self.data.bundle_fqids)
        self.setup[f"mkdir x{self.args.bundles} (local baseline)"] = \
            time.perf_counter() - started

    def mount(self, cache_dir: str) -> Mount:
        mount = hcafs_mount(self.mnt, cache_dir, self.server.url, self.token_file,
                            self.cleanup)
        self.run("mount_seconds").add(mount.seconds)
        return mount

    def umount(self, mount: Mount) -> None:
        try:
            self.run("peak_rss").add(mount.peak_rss_mib())
        finally:
            hcafs_umount(mount, self.cleanup)

    def ls(self, path: str) -> float:
        return timed(["ls", "-l", path], self.env, self.args.ls_timeout)

    def listing(self) -> None:
        """(a) ``ls -l`` of the bundles: first mount, cold, warm; local baseline."""
        cache = os.path.join(self.work, "cache-ls")
        bundles = os.path.join(self.mnt, "bundles")
        mount = self.mount(cache)
        try:
            self.drop_caches()
            mark = self.server.log_lines()
            self.say("(a) first ls -l after a first mount (empty cache dir)")
            self.run("ls_first").add(self.ls(bundles))
            fetched = self.server.requests_since(mark, "GET /v1/bundles/")
            self.notes.append(f"The first `ls -l` (empty cache dir) made the daemon send "
                              f"{fetched:,} GET /v1/bundles/... requests to the server.")
        finally:
            self.umount(mount)
        for round_ in range(self.repeats):
            mount = self.mount(cache)
            try:
                self.drop_caches()
                mark = self.server.log_lines()
                self.run("ls_cold").add(self.ls(bundles))
                self.run("ls_warm").add(self.ls(bundles))
                self.run("ls_warm").add(self.ls(bundles))
                if round_ == 0:
                    fetched = self.server.requests_since(mark, "GET /v1/")
                    self.notes.append(f"Cold + 2 warm `ls -l` with the cache dir reused: "
                                      f"{fetched:,} API requests to the server.")
            finally:
                self.umount(mount)
            self.drop_caches()
            self.run("local_ls_cold").add(self.ls(self.local))
            self.run("local_ls_warm").add(self.ls(self.local))
            self.run("local_ls_warm").add(self.ls(self.local))
            self.say(f"(a) round {round_ + 1}: cold {self.runs['ls_cold'].values[-1]:.2f} s, "
                     f"warm {self.runs['ls_warm'].values[-1]:.2f} s")

    def direct_read(self, verify: bool = False) -> float:
        """Seconds for GET /files → 302 → stream the Location in 1 MiB chunks (hashing
        every chunk with sha256 and checking the digest when ``verify``)."""
        data = self.data
        hasher = hashlib.sha256() if verify else None
        with requests.Session() as session:
            started = time.perf_counter()
            answer = session.get(f"{self.server.url}/v1/files/{data.big_uuid}",
                                 params={"replica": "aws", "version": data.big_version},
                                 allow_redirects=False, timeout=60)
            if answer.status_code != 302:
                raise BenchError(f"GET /v1/files answered {answer.status_code}, not 302")
            got = 0
            with session.get(answer.headers["Location"], stream=True, timeout=60) as blob:
                blob.raise_for_status()
                for chunk in blob.iter_content(MiB):
                    got += len(chunk)
                    if hasher is not None:
                        hasher.update(chunk)
            if hasher is not None and hasher.hexdigest() != data.big_sha256:
                raise BenchError("direct GET: the bytes do not match their sha256")
            seconds = time.perf_counter() - started
        if got != data.big_size:
            raise BenchError(f"direct GET gave {got} bytes, not {data.big_size}")
        return seconds

    def reads(self) -> None:
        """(b) cold reads, mount vs direct; (c) warm re-reads, mount vs native."""
        data = self.data
        mib = data.big_size / MiB
        big = os.path.join(self.mnt, data.big_path_in_mount)
        mount = None
        try:
            for round_ in range(self.repeats):
                self.drop_caches()
                self.run("cold_read_direct").add(mib / self.direct_read())
                self.drop_caches()
                self.run("cold_read_direct_sha256").add(mib / self.direct_read(verify=True))
                cache = os.path.join(self.work, f"cache-read-{round_}")
                mount = self.mount(cache)
                self.drop_caches()
                idle = mount.rss_mib()
                self.run("cold_read_mount").add(mib / dd_read(big, self.env))
                self.run("cold_read_rss_growth").add(mount.peak_rss_mib() - idle)
                self.say(f"(b) round {round_ + 1}: direct "
                         f"{self.runs['cold_read_direct'].values[-1]:.0f} MiB/s, verifying "
                         f"direct {self.runs['cold_read_direct_sha256'].values[-1]:.0f} "
                         f"MiB/s, mount {self.runs['cold_read_mount'].values[-1]:.0f} MiB/s")
                if round_ + 1 < self.repeats:
                    self.umount(mount)
                    mount = None
                    shutil.rmtree(cache)
            self.read_cache = cache
            blob = os.path.join(cache, "blobs", data.big_sha256[:2], data.big_sha256)
            os.sync()  # the daemon fsyncs on release, after dd has already returned
            wait_for(lambda: os.path.exists(blob) and os.path.getsize(blob) == data.big_size,
                     30, "the cached blob file")
            for _ in range(self.repeats):
                self.drop_caches()
                self.run("warm_read_mount_dropped").add(mib / dd_read(big, self.env))
                self.drop_caches()
                self.run("warm_read_native_dropped").add(mib / dd_read(blob, self.env))
            dd_read(big, self.env)  # the drops above evicted the mount's pages: refill
            for _ in range(self.repeats):
                self.run("warm_read_mount_kept").add(mib / dd_read(big, self.env))
                self.run("warm_read_native_kept").add(mib / dd_read(blob, self.env))
            self.say(f"(c) mount {self.runs['warm_read_mount_dropped'].median:.0f} MiB/s vs "
                     f"native {self.runs['warm_read_native_dropped'].median:.0f} MiB/s "
                     "(page cache dropped)")
        finally:
            if mount is not None:
                self.umount(mount)

    def random_reads(self) -> None:
        """Random 1 MiB reads of a cold file through the mount, against the same reads as
        ranged GETs; and the bytes the mount fetched per byte read."""
        size = self.args.random_mib * MiB
        staging = os.path.join(self.work, "staging")
        client = DSSClient(self.server.url, token=self.token())
        uuid, version, sha256, fqid = publish_one(client, staging, "random.bin", size)
        path = os.path.join(self.mnt, "bundles", fqid, "random.bin")
        rng = random.Random(42)
        offsets = [rng.randrange(0, size - MiB) for _ in range(self.args.random_reads)]
        read_mib = len(offsets)
        with requests.Session() as session:
            answer = session.get(f"{self.server.url}/v1/files/{uuid}",
                                 params={"replica": "aws", "version": version},
                                 allow_redirects=False, timeout=60)
            location = answer.headers["Location"]
            for round_ in range(self.repeats):
                self.drop_caches()
                started = time.perf_counter()
                for offset in offsets:
                    got = session.get(location, timeout=60, headers={
                        "Range": f"bytes={offset}-{offset + MiB - 1}"}).content
                    if len(got) != MiB:
                        raise BenchError(f"ranged GET gave {len(got)} bytes")
                self.run("random_read_ranged_get").add(
                    read_mib / (time.perf_counter() - started))
                cache = os.path.join(self.work, f"cache-random-{round_}")
                mount = self.mount(cache)
                try:
                    self.drop_caches()
                    started = time.perf_counter()
                    fd = os.open(path, os.O_RDONLY)
                    try:
                        for offset in offsets:
                            if len(os.pread(fd, MiB, offset)) != MiB:
                                raise BenchError("short read through the mount")
                    finally:
                        os.close(fd)
                    self.run("random_read_mount").add(
                        read_mib / (time.perf_counter() - started))
                finally:
                    self.umount(mount)
                fetched = _cached_bytes(cache, sha256)
                self.run("random_read_fetched_per_read").add(fetched / (read_mib * MiB))
                shutil.rmtree(cache, ignore_errors=True)
        self.say(f"random 1 MiB reads: mount {self.runs['random_read_mount'].median:.0f} "
                 f"MiB/s, ranged GETs {self.runs['random_read_ranged_get'].median:.0f} "
                 f"MiB/s, {self.runs['random_read_fetched_per_read'].median:.2f} bytes "
                 "fetched per byte read")

    # ------------------------------------------------------------ callback counts

    def counted_mount(self, cache_dir: str, log_name: str, url: str | None = None,
                      args: tuple[str, ...] = (), env_extra: dict[str, str] | None = None
                      ) -> tuple[subprocess.Popen, str]:
        """The daemon under ``counted_mount.py``, reporting ready like ``hcafs mount``."""
        counts = os.path.join(self.work, f"counts-{log_name}.json")
        read_end, write_end = os.pipe()
        log_file = os.path.join(self.work, "logs", f"counted-{log_name}.log")
        self.cleanup.mounts.append(self.mnt)
        with open(log_file, "ab") as log:
            process = subprocess.Popen(
                [PYTHON, os.path.join(HERE, "counted_mount.py"), counts, "mount", self.mnt,
                 "--dss-url", url or self.server.url, "--token-file", self.token_file,
                 "--cache-dir", cache_dir, "--log-file", log_file, "--foreground",
                 "--ready-fd", str(write_end), *args],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(write_end,),
                env={**self.env, **(env_extra or {})}, start_new_session=True)
        os.close(write_end)
        self.cleanup.daemons.append(process)
        # Reap it as soon as it exits: `hcafs umount` waits for the PID to vanish, and an
        # unreaped child of ours would linger as a zombie.
        threading.Thread(target=process.wait, daemon=True).start()
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            ready, _, _ = select.select([pipe], [], [], 120)
            line = pipe.readline().decode(errors="replace") if ready else ""
        if not line.startswith("OK ") or not is_mounted(self.mnt):
            raise BenchError(f"counted mount failed: {line.strip() or 'no answer'}; "
                             f"see {log_file}")
        return process, counts

    def snapshot(self, counts_file: str) -> dict[str, int]:
        time.sleep(0.3)  # the counter file is rewritten every 0.1 s
        with open(counts_file) as handle:
            return json.load(handle)

    def stop_counted(self, process: subprocess.Popen) -> None:
        if not unmount(self.mnt, self.env):
            raise BenchError(f"could not unmount {self.mnt}")
        self.cleanup.mounts.remove(self.mnt)
        try:
            process.wait(timeout=30)
        finally:
            stop_process(process)
            self.cleanup.daemons.remove(process)

    def callback_counts(self) -> None:
        process, counts = self.counted_mount(os.path.join(self.work, "cache-ls"), "ls")
        try:
            self.drop_caches()
            before = self.snapshot(counts)
            self.ls(os.path.join(self.mnt, "bundles"))
            cold = self.snapshot(counts)
            self.ls(os.path.join(self.mnt, "bundles"))
            warm = self.snapshot(counts)
        finally:
            self.stop_counted(process)
        self.counts["cold `ls -l` (fresh mount, cache dir reused)"] = delta(before, cold)
        self.counts["warm `ls -l` right after"] = delta(cold, warm)
        if self.read_cache is None:
            return
        process, counts = self.counted_mount(self.read_cache, "read")
        try:
            self.drop_caches()
            before = self.snapshot(counts)
            dd_read(os.path.join(self.mnt, self.data.big_path_in_mount), self.env)
            after = self.snapshot(counts)
        finally:
            self.stop_counted(process)
        table = delta(before, after)
        reads = table.get("read", 0)
        if reads:
            table["read_bytes_requested"] = table.get("read_bytes_requested", 0)
            self.notes.append(f"Warm `dd bs=1M` through the mount: {reads:,} read callbacks, "
                              f"{table['read_bytes_requested'] / reads / 1024:.0f} KiB "
                              "asked per callback on average.")
        self.counts[f"warm re-read of the {self.args.big_mib} MiB file, page cache "
                    "dropped"] = table

    # ------------------------------------------------------------ all of it

    def step(self, name: str, func) -> None:
        """Run one benchmark; a failure is recorded and the next one still runs."""
        try:
            func()
        except Exception as exc:  # noqa: BLE001  (any failure must reach the report)
            self.errors.append(f"{name}: {type(exc).__name__}: {exc}")
            self.say(f"{name} FAILED: {exc}")
            traceback.print_exc()
            for problem in self.cleanup.unmount_and_stop_daemons():
                self.errors.append(f"cleanup after {name}: {problem}")

    def results(self, total: float) -> dict:
        a = self.args
        return {"params": {"bundles": a.bundles, "big_mib": a.big_mib,
                           "repeats": self.repeats, "drop_caches": self.drop,
                           "cp_mib": a.cp_mib, "tree_big_mib": a.tree_big_mib,
                           "tree_files": a.tree_files, "tree_repeats": a.tree_repeats,
                           "ingest_files": a.ingest_files, "baseline_ref": a.baseline_ref,
                           "only": a.only},
                "rss_traces": self.writes.rss_series() if self.writes else [],
                "machine": report.machine(REPO, self.work), "runs": self.runs,
                "counts": self.counts, "notes": self.notes, "errors": self.errors,
                "setup": self.setup, "total_seconds": total}


_UNITS = {
    "ls_first": "s", "ls_cold": "s", "ls_warm": "s", "local_ls_cold": "s",
    "local_ls_warm": "s", "mount_seconds": "s", "cold_read_direct": "MiB/s",
    "cold_read_mount": "MiB/s", "warm_read_mount_dropped": "MiB/s",
    "warm_read_native_dropped": "MiB/s", "warm_read_mount_kept": "MiB/s",
    "warm_read_native_kept": "MiB/s", "peak_rss": "MiB",
    "cold_read_direct_sha256": "MiB/s", "cold_read_rss_growth": "MiB",
    "random_read_mount": "MiB/s", "random_read_ranged_get": "MiB/s",
    "random_read_fetched_per_read": "x",
    # writing
    "cp_local": "MiB/s", "cp_mount": "MiB/s", "tree_hcafs": "s", "tree_hcafs_cp": "s",
    "tree_hcafs_commit": "s", "tree_hca": "s", "tree_rss_peak": "MiB",
    "tree_rss_start": "MiB", "tree_sync_failures": "count", "wb_peak_rss": "MiB",
    "wb_mount_seconds": "s",
}


def _cached_bytes(cache_dir: str, sha256: str) -> int:
    """Bytes of one blob that the mount's content cache holds (what it fetched)."""
    with sqlite3.connect(os.path.join(cache_dir, "hcafs.db")) as db:
        row = db.execute("select present from blobs where sha256 = ?", [sha256]).fetchone()
    return int(row[0]) if row else 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundles", type=int, default=10_000,
                        help="bundle versions in the listing (default 10000)")
    parser.add_argument("--big-mib", type=int, default=512,
                        help="size of the file read in (b) and (c), MiB (default 512)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure (default 3)")
    parser.add_argument("--random-mib", type=int, default=1024,
                        help="size of the file read at random offsets, MiB (default 1024)")
    parser.add_argument("--random-reads", type=int, default=64,
                        help="random 1 MiB reads per run (default 64)")
    parser.add_argument("--cp-mib", type=int, default=1024,
                        help="size of the file copied in writing (a), MiB (default 1024)")
    parser.add_argument("--tree-big-mib", type=int, default=512,
                        help="the big file of the writing (b) tree, MiB (default 512)")
    parser.add_argument("--tree-files", type=int, default=512,
                        help="1 MiB files in the writing (b) tree (default 512)")
    parser.add_argument("--tree-repeats", type=int, default=3,
                        help="runs of each side of writing (b) (default 3)")
    parser.add_argument("--ingest-files", type=int, default=256,
                        help="1 MiB files per ingest run (default 256)")
    parser.add_argument("--baseline-ref", default="main",
                        help="git revision whose hcafs the ingest figures compare with")
    parser.add_argument("--meta-versions", type=int, default=100_000,
                        help="bundle versions behind the metadata-callback figures (100000)")
    parser.add_argument("--only", choices=("all", "reads", "writes", "imports", "http",
                                           "metadata", "scale", "scale-out"),
                        default="all",
                        help="run only one part: reading and listing (reads), writing "
                        "(writes), DRS imports (imports), the HTTP front under load (http), "
                        "metadata callbacks (metadata), a million bundle versions (scale) or "
                        "several servers (scale-out)")
    parser.add_argument("--ls-timeout", type=float, default=300,
                        help="give up on one ls -l after this many seconds (default 300)")
    parser.add_argument("--output", default=os.path.join(REPO, "docs", "benchmarks.md"),
                        help="the report (default docs/benchmarks.md)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the whole work dir (data, caches) for inspection")
    return parser.parse_args(argv)


def _work_dir() -> str:
    base = os.environ.get("HCAFS_BENCH_DIR") or "/tmp"
    os.makedirs(base, exist_ok=True)
    work = os.path.realpath(tempfile.mkdtemp(prefix="hcafs-bench-", dir=base))
    if os.path.commonpath([work, REPO]) == REPO:
        os.rmdir(work)
        raise SystemExit(f"bench: refusing to work inside the repository ({work})")
    return work


def _raise_on_term(signum, frame):
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    args.output = os.path.abspath(args.output)
    started = time.perf_counter()
    work = _work_dir()
    # Children inherit this: `python -m hcafs` puts its cwd first on sys.path, and the
    # repository's cwd would shadow a PYTHONPATH pointing at another hcafs tree.
    os.chdir(work)
    signal.signal(signal.SIGTERM, _raise_on_term)
    cleanup = Cleanup(child_env(work))
    bench = Bench(args, work, cleanup)
    load_at_start = report.load_average()
    bench.say(f"work dir {work}")
    if not bench.drop:
        bench.say("cannot drop the page cache (not root): cold figures will be warm")
    writes = WriteBench(bench)
    bench.writes = writes
    drs: dict = {}
    scaled: dict = {}
    scaled_out: dict = {}
    http: dict = {}
    meta: dict = {}
    try:
        if args.only in ("all", "reads"):
            bench.prepare()
            bench.step("(a) listing", bench.listing)
            bench.step("(b)+(c) reads", bench.reads)
            bench.step("random 1 MiB reads", bench.random_reads)
            bench.step("FUSE callback counts", bench.callback_counts)
        if args.only in ("all", "writes"):
            bench.step("writing setup (SeaweedFS, server, data)", writes.prepare)
            if writes.server is not None:
                bench.step("writing (a) cp", writes.cp)
                bench.step("writing (b)+(c) tree to a bundle", writes.trees)
                bench.step("writing: FUSE callback counts", writes.callback_counts)
                bench.step("write path ingest (d)-(f), against the baseline tree",
                           writes.ingest)
        if args.only in ("all", "imports"):
            bench.step("DRS imports (1,000 .drs files)", lambda: drs.update(
                drs_imports.run(os.path.join(work, "drs"))))
        if args.only in ("all", "scale"):
            bench.step("scale (100,000 and 1,000,000 bundle versions)", lambda: scaled.update(
                scale.run(os.path.join(work, "scale"))))
        if args.only in ("all", "http"):
            bench.step("HTTP front under load", lambda: http.update(
                http_load.run(os.path.join(work, "http"))))
        if args.only in ("all", "scale-out"):
            bench.step("scale-out (--workers, several processes)", lambda: scaled_out.update(
                scale_out.run(os.path.join(work, "scale-out"))))
        if args.only in ("all", "metadata"):
            bench.step("metadata callbacks", lambda: meta.update(metadata_latency.run(
                work, args.meta_versions, cleanup=cleanup)))
    finally:
        for problem in cleanup.run():
            bench.errors.append(f"cleanup: {problem}")
        if not args.keep:
            for name in ("server", "staging", "local", "mnt", "server-wb",
                         "server-wb-staging", "src", "local-cp", "seaweed", "server-meta",
                         "mnt-meta", "scale"):
                shutil.rmtree(os.path.join(work, name), ignore_errors=True)
            for name in os.listdir(work):
                if name.startswith("cache-"):
                    shutil.rmtree(os.path.join(work, name), ignore_errors=True)
    results = bench.results(time.perf_counter() - started)
    results["load"] = (load_at_start, report.load_average())
    results["drs"] = drs
    results["scale"] = scaled
    results["scale_out"] = scaled_out
    results["http"] = http
    with open(os.path.join(work, "results.json"), "w") as handle:
        json.dump(results, handle, indent=2, default=lambda o: o.as_dict())
    with open(args.output, "w") as handle:
        handle.write(report.render(results) + metadata_latency.render(meta)
                     + scale_out.render(scaled_out))
    bench.say(f"wrote {args.output}; logs and results.json in {work}")
    return 1 if bench.errors else 0


if __name__ == "__main__":
    sys.exit(main())
