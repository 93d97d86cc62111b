"""Writing through the mount, side by side with its baselines.

(a) ``cp`` of one 1 GiB file into a pending bundle, against ``cp`` of the same file to the
    local disk (the filesystem the cache dir is on);
(b) wall time from the start of the copy to a committed bundle for a 1 GiB tree (one
    512 MiB file and 512 files of 1 MiB): ``cp -r`` into a pending bundle and
    ``hcafs commit``, against ``hca dss upload`` (the official 7.0.1 CLI) of the same tree to
    the same server through the same S3 store;
(c) the mount daemon's RSS, sampled every 0.2 s during (b).

The S3 store is a SeaweedFS started here exactly as the tests start it (the fixture module
``tests/fixtures/seaweed.py`` is imported, as is ``tests/fixtures/hca_cli.py`` for the CLI's
config), and a second ``hcafs serve`` gets its ``AWS_*`` variables so it can read staged
objects. Everything is registered with the run's :class:`~harness.Cleanup`.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness import (
    PYTHON,
    BenchError,
    Mount,
    Runs,
    delta,
    hcafs_mount,
    hcafs_umount,
    start_server,
    timed,
)
from ingest import IngestBench, cpu_seconds, io_delta, proc_io
from workload import _write_random

from hcafs.remote.client import DSSClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))
from fixtures.hca_cli import HCA_BIN, HcaCli  # noqa: E402  (tests/ is put on sys.path)
from fixtures.seaweed import start_seaweed  # noqa: E402

MiB = 1024 * 1024
RSS_INTERVAL = 0.2
HCAFS_BUCKET = "hcafs-bench-staging"
HCA_BUCKET = "hca-bench-staging"


@dataclass
class RssTrace:
    """VmRSS of one process, sampled every ``RSS_INTERVAL`` s by a background thread."""

    pid: int
    samples: list[tuple[float, float]] = field(default_factory=list)  # (seconds, MiB)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _read(self) -> float | None:
        try:
            with open(f"/proc/{self.pid}/status") as handle:
                for line in handle:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def _sample(self) -> None:
        started = time.perf_counter()
        while True:
            value = self._read()
            if value is not None:
                self.samples.append((time.perf_counter() - started, value))
            if self._stop.wait(RSS_INTERVAL):
                return

    def __enter__(self) -> RssTrace:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        value = self._read()
        if value is not None and self.samples:
            self.samples.append((self.samples[-1][0] + RSS_INTERVAL, value))

    @property
    def values(self) -> list[float]:
        return [v for _, v in self.samples]


def _write_tree(root: str, big: int, count: int, each: int) -> int:
    """One ``big``-byte file and ``count`` files of ``each`` bytes; returns the file count."""
    os.makedirs(os.path.join(root, "small"), exist_ok=True)
    _write_random(os.path.join(root, "big.bin"), big)
    for index in range(count):
        with open(os.path.join(root, "small", f"f{index:04d}.bin"), "wb") as handle:
            handle.write(os.urandom(each))
    return count + 1


def _pre_read(root: str) -> int:
    """Read every file under ``root`` once (into the page cache); returns the bytes read."""
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb", buffering=0) as handle:
                while chunk := handle.read(4 * MiB):
                    total += len(chunk)
    return total


class WriteBench:
    """The writing steps; ``bench`` is the run's :class:`run.Bench` (figures, cleanup)."""

    def __init__(self, bench):
        self.b = bench
        self.args = bench.args
        self.work = bench.work
        self.cleanup = bench.cleanup
        self.mnt = os.path.join(self.work, "mnt")
        self.src = os.path.join(self.work, "src")
        self.big_file = os.path.join(self.src, "one.bin")
        self.tree = os.path.join(self.src, "tree")
        self.tree_files = 0
        self.tree_bytes = 0
        self.seaweed = None
        self.server = None
        self.s3_env: dict[str, str] = {}
        self.hca: HcaCli | None = None
        self.traces: list[RssTrace] = []

    # ------------------------------------------------------------ setup

    def prepare(self) -> None:
        if not HCA_BIN.exists():
            raise BenchError(f"{HCA_BIN} is missing: run `make hca-venv`")
        b = self.b
        started = time.perf_counter()
        self.seaweed = start_seaweed(Path(self.work) / "seaweed")
        self.cleanup.stoppers.append(self.seaweed.stop)
        self.seaweed.make_bucket(HCAFS_BUCKET)
        self.seaweed.make_bucket(HCA_BUCKET)
        b.setup["start SeaweedFS (S3 on loopback)"] = time.perf_counter() - started
        aws_none = os.path.join(self.work, "aws-none")
        # The store's variables; no ~/.aws config or credentials can leak in.
        self.s3_env = {**self.seaweed.env(), "AWS_CONFIG_FILE": aws_none,
                       "AWS_SHARED_CREDENTIALS_FILE": aws_none}
        started = time.perf_counter()
        token = b.token()
        self.server = start_server(self.work, token, self.cleanup, name="server-wb",
                                   env_extra=self.s3_env)
        b.setup["start the write benchmarks' hcafs serve (SeaweedFS env)"] = \
            time.perf_counter() - started
        self.client = DSSClient(self.server.url, token=token)
        self.hca = HcaCli(self.server.url, token, Path(self.work) / "hca-cli",
                          env_extra=self.s3_env)
        started = time.perf_counter()
        os.makedirs(self.src, exist_ok=True)
        _write_random(self.big_file, self.args.cp_mib * MiB)
        self.tree_files = _write_tree(self.tree, self.args.tree_big_mib * MiB,
                                      self.args.tree_files, MiB)
        self.tree_bytes = (self.args.tree_big_mib + self.args.tree_files) * MiB
        os.sync()
        b.setup["write the 1 GiB file and the 1 GiB tree locally"] = \
            time.perf_counter() - started

    def log_file(self, prefix: str) -> str:
        return os.path.join(self.work, "logs", f"mount-{prefix}.log")

    def mount(self, cache: str, prefix: str, extra: tuple[str, ...] = ()) -> Mount:
        """A mount staging to ``s3://BUCKET/prefix``, logging to ``logs/mount-prefix.log``."""
        mount = hcafs_mount(self.mnt, cache, self.server.url, self.b.token_file, self.cleanup,
                            args=("--staging", f"s3://{HCAFS_BUCKET}/{prefix}",
                                  "--log-file", self.log_file(prefix), *extra),
                            env_extra=self.s3_env)
        self.b.run("wb_mount_seconds").add(mount.seconds)
        return mount

    def umount(self, mount: Mount) -> None:
        try:
            self.b.run("wb_peak_rss").add(mount.peak_rss_mib())
        finally:
            hcafs_umount(mount, self.cleanup)

    def fresh(self) -> None:
        """Drop the page cache, then read the source back in: both sides start alike."""
        self.b.drop_caches()
        _pre_read(self.src)

    # ------------------------------------------------------------ (a) cp of 1 GiB

    def cp(self) -> None:
        b = self.b
        cache = os.path.join(self.work, "cache-cp")
        local_dir = os.path.join(self.work, "local-cp")
        os.makedirs(local_dir, exist_ok=True)
        os.makedirs(cache, mode=0o700, exist_ok=True)  # the mount refuses a shared cache
        if os.stat(local_dir).st_dev != os.stat(cache).st_dev:
            raise BenchError("the local copy and the cache dir are on different filesystems")
        mib = self.args.cp_mib
        # A long write-back delay: the sync of one run's file (1 GiB to S3 and the server)
        # must not overlap the next run's cp; the cp itself does not depend on it.
        mount = self.mount(cache, "cp", ("--write-back-delay", "3600"))
        pending = os.path.join(self.mnt, "bundles", "bench-cp")
        try:
            os.mkdir(pending)
            for round_ in range(self.args.repeats):
                target = os.path.join(local_dir, "one.bin")
                self.fresh()
                b.run("cp_local").add(mib / timed(["cp", self.big_file, target], b.env, 300))
                os.unlink(target)
                target = os.path.join(pending, f"one-{round_}.bin")
                self.fresh()
                b.run("cp_mount").add(mib / timed(["cp", self.big_file, target], b.env, 300))
                if os.path.getsize(target) != mib * MiB:
                    raise BenchError(f"{target} has {os.path.getsize(target)} bytes")
                # Overwrite pairs: cp onto the file just written, on each side.
                local = os.path.join(local_dir, "one.bin")
                shutil.copyfile(self.big_file, local)
                self.fresh()
                self._run("cp_local_over", "MiB/s").add(
                    mib / timed(["cp", self.big_file, local], b.env, 300))
                os.unlink(local)
                self.fresh()
                self._run("cp_mount_over", "MiB/s").add(
                    mib / timed(["cp", self.big_file, target], b.env, 300))
                os.unlink(target)
                b.say(f"(4a) round {round_ + 1}: local {b.runs['cp_local'].values[-1]:.0f} "
                      f"MiB/s, mount {b.runs['cp_mount'].values[-1]:.0f} MiB/s")
            os.rmdir(pending)
        finally:
            self.umount(mount)
            shutil.rmtree(cache, ignore_errors=True)

    def _run(self, name: str, unit: str) -> Runs:
        return self.b.runs.setdefault(name, Runs(unit))

    # ------------------------------------------------------------ (b)+(c) tree to a bundle

    def _check_bundle(self, fqid: str, who: str) -> None:
        uuid, _, version = fqid.partition(".")
        bundle = self.client.get_bundle(uuid, version)
        files = bundle["files"]
        size = sum(int(f["size"]) for f in files)
        if len(files) != self.tree_files or size != self.tree_bytes:
            raise BenchError(f"{who}: bundle {fqid} has {len(files)} files, {size} bytes; "
                             f"expected {self.tree_files}, {self.tree_bytes}")

    def tree_hcafs(self, round_: int) -> None:
        b = self.b
        cache = os.path.join(self.work, f"cache-tree-{round_}")
        mount = self.mount(cache, f"tree-{round_}")
        pending = os.path.join(self.mnt, "bundles", f"tree-{round_}")
        try:
            self.fresh()
            io_before = proc_io(mount.pid), proc_io(self.server.pid)
            cpu_before = self._cpu(mount.pid)
            with RssTrace(mount.pid) as trace:
                started = time.perf_counter()
                os.mkdir(pending)
                copy = timed(["cp", "-r", self.tree + "/.", pending], b.env, 600)
                result = subprocess.run(
                    [PYTHON, "-m", "hcafs", "commit", pending, "--timeout", "900"],
                    env=b.env, capture_output=True, text=True, timeout=960)
                total = time.perf_counter() - started
            self._add_cpu("tree_hcafs", cpu_before, self._cpu(mount.pid))
            daemon_io = io_delta(io_before[0], proc_io(mount.pid))
            server_io = io_delta(io_before[1], proc_io(self.server.pid))
            for who, io in (("daemon", daemon_io), ("server", server_io)):
                for what in ("read_bytes", "write_bytes"):
                    self._run(f"tree_{who}_{what}", "B/B").add(io[what] / self.tree_bytes)
            if result.returncode != 0:
                raise BenchError(f"hcafs commit exited {result.returncode}: "
                                 f"{result.stderr.strip()[-500:]}")
            self.traces.append(trace)
            fqid = result.stdout.strip().splitlines()[-1]
            self._check_bundle(fqid, "hcafs")
            b.run("tree_hcafs").add(total)
            b.run("tree_hcafs_cp").add(copy)
            b.run("tree_hcafs_commit").add(total - copy)
            b.run("tree_rss_peak").add(max(trace.values))
            b.run("tree_rss_start").add(trace.values[0])
        finally:
            self.umount(mount)
            shutil.rmtree(cache, ignore_errors=True)
        with open(self.log_file(f"tree-{round_}"), errors="replace") as handle:
            lines = handle.readlines()
        failed = [line for line in lines if "hcafs.sync.syncer: sync of " in line]
        stats = [line for line in lines if "sync stats: " in line]
        if stats:
            b.notes.append(f"(b) round {round_ + 1}, the daemon's per-stage sums (seconds "
                           "summed over files/attempts): `" +
                           stats[-1].split("sync stats: ", 1)[1].strip() + "`")
        b.run("tree_sync_failures").add(len(failed))
        if failed and not any("failed attempts" in n for n in b.notes):
            b.notes.append(
                "(b) failed attempts of the sync engine, per hcafs run: see the raw runs; "
                "the first one in the daemon log read: `" +
                failed[0].split("hcafs.sync.syncer: ", 1)[1].strip()[:300] + "`")

    def tree_hca(self) -> None:
        b = self.b
        self.fresh()
        cpu_before = self._cpu(None)
        started = time.perf_counter()
        result = self.hca.run("dss", "upload", "--src-dir", self.tree, "--replica", "aws",
                              "--staging-bucket", HCA_BUCKET, "--no-progress", timeout=1200)
        total = time.perf_counter() - started
        self._add_cpu("tree_hca", cpu_before, self._cpu(None))
        answer = json.loads(result.stdout)
        self._check_bundle(f"{answer['bundle_uuid']}.{answer['version']}", "hca dss upload")
        b.run("tree_hca").add(total)
        # The CLI leaves its staged objects behind; clear them (untimed) between runs.
        s3 = self.seaweed.client()
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=HCA_BUCKET):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                s3.delete_objects(Bucket=HCA_BUCKET, Delete={"Objects": keys})

    def _cpu(self, daemon: int | None) -> dict[str, float]:
        """CPU seconds so far of each process a tree run uses: the bench's children (cp,
        ``hcafs commit``, the hca CLI), the mount daemon, the server, SeaweedFS."""
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return {"client": children.ru_utime + children.ru_stime,
                "daemon": cpu_seconds(daemon) if daemon else 0.0,
                "server": cpu_seconds(self.server.pid),
                "s3": cpu_seconds(self.seaweed.process.pid)}

    def _add_cpu(self, side: str, before: dict[str, float], after: dict[str, float]) -> None:
        spent = {k: after[k] - before[k] for k in after}
        for who, seconds in spent.items():
            self._run(f"{side}_cpu_{who}", "s").add(seconds)
        self._run(f"{side}_cpu", "s").add(sum(spent.values()))

    def warm_up(self) -> None:
        """Untimed: push the tree's worth of objects through each bucket and delete them.

        A fresh SeaweedFS grows volumes for a bucket as it fills; without this the first
        timed run (whichever side goes first) pays for that and comes out ~30 % slower.
        """
        s3 = self.seaweed.client()
        for bucket in (HCAFS_BUCKET, HCA_BUCKET):
            keys = []
            for folder, _, files in os.walk(self.tree):
                for name in files:
                    key = f"warm-up/{os.path.relpath(os.path.join(folder, name), self.tree)}"
                    s3.upload_file(os.path.join(folder, name), bucket, key)
                    keys.append({"Key": key})
            for start in range(0, len(keys), 1000):
                s3.delete_objects(Bucket=bucket, Delete={"Objects": keys[start:start + 1000]})

    def trees(self) -> None:
        b = self.b
        started = time.perf_counter()
        self.warm_up()
        b.setup["warm up SeaweedFS (the tree through each bucket, untimed)"] = \
            time.perf_counter() - started
        for round_ in range(self.args.tree_repeats):
            # Alternate which side goes first, so neither always runs right after the other.
            if round_ % 2:
                self.tree_hca()
                self.tree_hcafs(round_)
            else:
                self.tree_hcafs(round_)
                self.tree_hca()
            b.say(f"(4b) round {round_ + 1}: hcafs {b.runs['tree_hcafs'].values[-1]:.1f} s "
                  f"(cp {b.runs['tree_hcafs_cp'].values[-1]:.1f} s), hca dss upload "
                  f"{b.runs['tree_hca'].values[-1]:.1f} s; daemon RSS peak "
                  f"{b.runs['tree_rss_peak'].values[-1]:.0f} MiB")

    # ------------------------------------------------------------ callback counts

    def callback_counts(self) -> None:
        """FUSE callbacks of the (a) cp and of the (b) ``cp -r``, on an untimed mount."""
        b = self.b
        cache = os.path.join(self.work, "cache-counted-wb")
        process, counts = b.counted_mount(
            cache, "writes", url=self.server.url, env_extra=self.s3_env,
            args=("--staging", f"s3://{HCAFS_BUCKET}/counted", "--write-back-delay", "3600"))
        pending = os.path.join(self.mnt, "bundles", "bench-counted")
        try:
            os.mkdir(pending)
            before = b.snapshot(counts)
            target = os.path.join(pending, "one.bin")
            subprocess.run(["cp", self.big_file, target], env=b.env, check=True, timeout=300)
            after_cp = b.snapshot(counts)
            os.unlink(target)
            mid = b.snapshot(counts)
            subprocess.run(["cp", "-r", self.tree + "/.", pending], env=b.env, check=True,
                           timeout=600)
            after_tree = b.snapshot(counts)
            shutil.rmtree(pending)
        finally:
            b.stop_counted(process)
            shutil.rmtree(cache, ignore_errors=True)
        cp_counts = delta(before, after_cp)
        b.counts[f"`cp` of the {self.args.cp_mib} MiB file into a pending bundle"] = cp_counts
        tree_counts = delta(mid, after_tree)
        b.counts[f"`cp -r` of the tree ({self.tree_files} files) into a pending bundle"] = \
            tree_counts
        if cp_counts.get("write"):
            b.notes.append(f"`cp` into a pending bundle: {cp_counts['write']:,} write "
                           f"callbacks, {cp_counts['write_bytes'] / cp_counts['write'] / 1024:.0f}"
                           " KiB per callback on average (cp writes in st_blksize pieces).")
        calls = sum(v for k, v in tree_counts.items() if k != "write_bytes")
        b.notes.append(f"`cp -r` of the tree: {calls:,} FUSE callbacks for "
                       f"{self.tree_files} files ({calls / self.tree_files:.1f} per file).")

    def ingest(self) -> None:
        """(d)-(f): ingest figures, this tree against ``--baseline-ref`` (see ingest.py)."""
        bench = IngestBench(self, self.args.baseline_ref, self.args.ingest_files)
        bench.prepare()
        bench.servers(self.args.tree_repeats)
        bench.embedded_trees(max(1, self.args.tree_repeats - 1))

    def rss_series(self) -> list[list[tuple[float, float]]]:
        return [t.samples for t in self.traces]

