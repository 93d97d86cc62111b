"""The write path's ingest figures, this tree side by side with a baseline tree (``main``).

(d) ``hcafs serve``'s ingest of 1 MiB files from ``s3://`` sources (tagged objects in
    SeaweedFS), 8 PUT /files at a time, against raw S3 PUTs of as many 1 MiB objects to the
    same SeaweedFS: files/s and the ratio;
(e) the same from ``file://`` sources in the server's staging root (what the embedded
    default does);
(f) the 1 GiB tree (``cp -r`` + ``hcafs commit``) on the embedded default (no --staging).

The baseline is the ``hcafs`` package of another git revision, extracted with
``git archive`` and put first on ``PYTHONPATH`` of the server (or the mount, whose embedded
server inherits it); everything else (SeaweedFS, data, machine) is shared, and the two
sides alternate.  Each server's ``/proc/PID/io`` (``read_bytes``/``write_bytes``: what it
read from and wrote to the disk) is sampled around each timed step.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid as _uuid
from concurrent.futures import ThreadPoolExecutor

from harness import (
    PYTHON,
    BenchError,
    Mount,
    Runs,
    hcafs_umount,
    is_mounted,
    record_pid,
    start_server,
    timed,
)

from hcafs.checksums import checksum_bytes
from hcafs.remote.client import DSSClient
from hcafs.versions import now_version

MiB = 1024 * 1024
WORKERS = 8
SOURCE_BUCKET = "hcafs-bench-ingest"


def proc_io(pid: int) -> dict[str, int]:
    """``/proc/PID/io`` of a process and its children (an embedded server), summed."""
    total: dict[str, int] = {}
    for one in [pid, *_children(pid)]:
        try:
            with open(f"/proc/{one}/io") as handle:
                for line in handle:
                    key, _, value = line.partition(":")
                    total[key] = total.get(key, 0) + int(value)
        except OSError:
            continue
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its children (threads included)."""
    total = 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    for one in [pid, *_children(pid)]:
        try:
            with open(f"/proc/{one}/stat") as handle:
                fields = handle.read().rpartition(")")[2].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def _children(pid: int) -> list[int]:
    found = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                found += [int(p) for p in handle.read().split()]
    except OSError:
        return found
    return found + [g for c in found for g in _children(c)]


def io_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in ("read_bytes", "write_bytes",
                                                           "rchar", "wchar")}


def baseline_tree(repo: str, ref: str, work: str) -> str:
    """``ref``'s ``hcafs`` package under ``work/baseline-REF``; returns that folder."""
    target = os.path.join(work, f"baseline-{ref}")
    shutil.rmtree(target, ignore_errors=True)
    os.makedirs(target)
    archive = subprocess.run(["git", "-C", repo, "archive", ref, "hcafs"],
                             capture_output=True, check=False)
    if archive.returncode != 0:
        raise BenchError(f"git archive {ref}: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", target], input=archive.stdout, check=True)
    return target


class IngestBench:
    def __init__(self, writes, ref: str, count: int):
        self.w = writes
        self.b = writes.b
        self.ref = ref
        self.count = count
        self.trees: dict[str, str | None] = {}

    def run(self, name: str, unit: str) -> Runs:
        return self.b.runs.setdefault(name, Runs(unit))

    def _env(self, side: str) -> dict[str, str]:
        env = dict(self.w.s3_env)
        if self.trees[side]:
            env["PYTHONPATH"] = self.trees[side]
        return env

    def prepare(self) -> None:
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self.trees = {"this": None, "base": baseline_tree(repo, self.ref, self.w.work)}
        self.w.seaweed.make_bucket(SOURCE_BUCKET)
        self.s3 = self.w.seaweed.client()
        self.data = [os.urandom(MiB) for _ in range(16)]  # contents cycle: distinct uuids

    def _content(self, n: int, salt: str) -> bytes:
        return self.data[n % len(self.data)][:-40] + f"{salt}:{n:08d}".encode().ljust(40)

    def servers(self, rounds: int) -> None:
        token = self.b.token()
        for round_ in range(rounds):
            for side in (("base", "this") if round_ % 2 == 0 else ("this", "base")):
                name = f"ingest-{side}-{round_}"
                server = start_server(self.w.work, token, self.w.cleanup, name=name,
                                      env_extra=self._env(side))
                try:
                    self._server_round(server, token, name, side)
                finally:
                    self.w.cleanup.processes.remove(server.process)
                    server.process.terminate()
                    server.process.wait(30)
                    shutil.rmtree(os.path.join(self.w.work, name), ignore_errors=True)
            self._raw_round(round_)
            self.b.say(f"(d/e) round {round_ + 1}: " + ", ".join(
                f"{k} {self.b.runs[k].values[-1]:.1f}" for k in (
                    "ingest_s3_base", "ingest_s3_this", "ingest_file_base",
                    "ingest_file_this", "ingest_raw_s3") if k in self.b.runs))

    def _server_round(self, server, token: str, name: str, side: str) -> None:
        client = DSSClient(server.url, token=token)
        staging = os.path.join(self.w.work, f"{name}-staging")
        s3_items, file_items = [], []
        for n in range(self.count):
            data = self._content(n, f"{name}-s3")
            key = f"{name}/{n:05d}/f.bin"
            tags = "&".join(f"{k}={v}" for k, v in checksum_bytes(data).tags().items())
            self.s3.put_object(Bucket=SOURCE_BUCKET, Key=key, Body=data, Tagging=tags)
            s3_items.append((str(_uuid.uuid4()), now_version(), f"s3://{SOURCE_BUCKET}/{key}"))
            path = os.path.join(staging, f"{n:05d}", "f.bin")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as handle:
                handle.write(self._content(n, f"{name}-file"))
            file_items.append((str(_uuid.uuid4()), now_version(), f"file://{path}"))
        os.sync()
        for kind, items in (("s3", s3_items), ("file", file_items)):
            before, cpu = proc_io(server.pid), cpu_seconds(server.pid)
            seconds = _put_all(client, items)
            io = io_delta(before, proc_io(server.pid))
            self.run(f"ingest_{kind}_{side}", "files/s").add(len(items) / seconds)
            self.run(f"ingest_{kind}_{side}_cpu_ms", "ms/file").add(
                1000 * (cpu_seconds(server.pid) - cpu) / len(items))
            ingested = len(items) * MiB
            self.run(f"ingest_{kind}_{side}_read", "B/B").add(io["read_bytes"] / ingested)
            self.run(f"ingest_{kind}_{side}_write", "B/B").add(io["write_bytes"] / ingested)
            self.run(f"ingest_{kind}_{side}_rchar", "B/B").add(io["rchar"] / ingested)

    def _raw_round(self, round_: int) -> None:
        keys = [f"raw-{round_}/{n:05d}.bin" for n in range(self.count)]

        def put(item):
            n, key = item
            self.s3.put_object(Bucket=SOURCE_BUCKET, Key=key, Body=self._content(n, key))

        started = time.perf_counter()
        with ThreadPoolExecutor(WORKERS) as pool:
            list(pool.map(put, enumerate(keys)))
        self.run("ingest_raw_s3", "files/s").add(self.count / (time.perf_counter() - started))

    def embedded_trees(self, rounds: int) -> None:
        """The tree through a mount on the embedded default, both sides alternating."""
        b, w = self.b, self.w
        for round_ in range(rounds):
            for side in (("base", "this") if round_ % 2 == 0 else ("this", "base")):
                cache = os.path.join(w.work, f"cache-embedded-{side}-{round_}")
                mount = self._mount_embedded(cache, side)
                pending = os.path.join(w.mnt, "bundles", f"embedded-{round_}")
                try:
                    w.fresh()
                    before = proc_io(mount.pid)
                    started = time.perf_counter()
                    os.mkdir(pending)
                    timed(["cp", "-r", w.tree + "/.", pending], b.env, 600)
                    result = subprocess.run(
                        [PYTHON, "-m", "hcafs", "commit", pending, "--timeout", "900"],
                        env={**b.env, **self._env(side)}, capture_output=True, text=True,
                        timeout=960)
                    total = time.perf_counter() - started
                    io = io_delta(before, proc_io(mount.pid))
                    if result.returncode != 0:
                        raise BenchError(f"hcafs commit ({side}) exited {result.returncode}: "
                                         f"{result.stderr.strip()[-500:]}")
                    self.run(f"embedded_tree_{side}", "s").add(total)
                    self.run(f"embedded_files_{side}", "files/s").add(w.tree_files / total)
                    self.run(f"embedded_{side}_write", "B/B").add(
                        io["write_bytes"] / w.tree_bytes)
                    self.run(f"embedded_{side}_read", "B/B").add(io["read_bytes"] / w.tree_bytes)
                finally:
                    hcafs_umount(mount, w.cleanup)
                    shutil.rmtree(cache, ignore_errors=True)
            b.say(f"(f) round {round_ + 1}: embedded tree base "
                  f"{b.runs['embedded_tree_base'].values[-1]:.1f} s, this "
                  f"{b.runs['embedded_tree_this'].values[-1]:.1f} s")

    def _mount_embedded(self, cache: str, side: str) -> Mount:
        """A mount with no --dss-url: it starts its own server (the embedded default)."""
        w = self.w
        os.makedirs(w.mnt, exist_ok=True)
        w.cleanup.mounts.append(w.mnt)
        started = time.perf_counter()
        result = subprocess.run(
            [PYTHON, "-m", "hcafs", "mount", w.mnt, "--cache-dir", cache, "--log-file",
             w.log_file(f"embedded-{side}")], env={**w.cleanup.env, **self._env(side)},
            capture_output=True, text=True, timeout=120)
        if result.returncode != 0 or not is_mounted(w.mnt):
            raise BenchError(f"hcafs mount exited {result.returncode}: {result.stderr.strip()}")
        pid = record_pid(w.cleanup.env)
        w.cleanup.pids.append(pid)
        return Mount(w.mnt, cache, pid, time.perf_counter() - started)


def _put_all(client: DSSClient, items: list[tuple[str, str, str]]) -> float:
    def one(item):
        uuid, version, source = item
        status, _ = client.put_file(uuid, version, source)
        if status == 202:
            client.wait_file(uuid, version)

    started = time.perf_counter()
    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(one, items))
    return time.perf_counter() - started
