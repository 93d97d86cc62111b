"""Metadata callbacks against a large server: no listing, and a 404 asked once.

With ``--versions`` bundle versions on the server (default 100,000), times through a real
mount, each with the server's requests counted from its access log:

* ``mkdir`` + ``rmdir`` of a collection (goal: no ``/bundles/all`` request);
* ``ln -s`` + ``rm`` of an item in a collection (goal: no ``/bundles/all`` request);
* ``stat`` of a missing file FQID, then again once the kernel's negative entry expired
  (``--negative-timeout 1``, waited 1.5 s): the second asks the server nothing.

The versions are seeded by writing the server's store the way it writes it (one manifest
document per ``bundles/{uuid}.{version}`` key of a local store), which takes seconds where
100,000 PUTs would take long.  The mount runs in the foreground (its first listing of
100,000 versions can outlast ``hcafs mount``'s ready wait) with ``--refresh-ttl 3600`` so
that no background refresh runs during the figures.

Run alone: ``python bench/metadata_latency.py [--versions N] [--repeats N]``; ``make bench``
runs it as one step and appends its section to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

from harness import (
    PYTHON,
    BenchError,
    Cleanup,
    child_env,
    is_mounted,
    start_server,
    wait_for,
)

from hcafs.versions import now_version

LISTING = "/v1/bundles/all"


def seed(store: str, count: int) -> list[str]:
    """``count`` bundle versions written straight into a local store (empty manifests)."""
    folder = os.path.join(store, "bundles")
    os.makedirs(folder, exist_ok=True)
    base = time.time() - count
    fqids = []
    for n in range(count):
        version = time.strftime("%Y-%m-%dT%H%M%S", time.gmtime(base + n)) + ".000000Z"
        fqid = f"{uuid.uuid4()}.{version}"
        document = {"format": "0.0.1", "version": version, "creator_uid": 0, "files": []}
        with open(os.path.join(folder, fqid), "w") as handle:
            json.dump(document, handle)
        fqids.append(fqid)
    return fqids


class Figures:
    def __init__(self) -> None:
        self.seconds: dict[str, list[float]] = {}
        self.requests: dict[str, list[int]] = {}
        self.listings: dict[str, list[int]] = {}

    def add(self, name: str, seconds: float, requests: int, listings: int) -> None:
        self.seconds.setdefault(name, []).append(seconds)
        self.requests.setdefault(name, []).append(requests)
        self.listings.setdefault(name, []).append(listings)

    def as_dict(self) -> dict:
        return {name: {"median_ms": round(statistics.median(values) * 1000, 1),
                       "max_ms": round(max(values) * 1000, 1),
                       "requests": self.requests[name], "listings": self.listings[name]}
                for name, values in self.seconds.items()}


def run(work: str, versions: int = 100_000, repeats: int = 5,
        cleanup: Cleanup | None = None) -> dict:
    own = cleanup is None
    cleanup = cleanup or Cleanup(child_env(work))
    try:
        return _run(work, versions, repeats, cleanup)
    finally:
        if own:
            cleanup.run()


def _run(work: str, versions: int, repeats: int, cleanup: Cleanup) -> dict:
    token = "bench-" + secrets.token_urlsafe(16)
    token_file = os.path.join(work, "meta-token")
    with open(token_file, "w") as handle:
        handle.write(token)
    setup: dict[str, float] = {}
    started = time.perf_counter()
    server = start_server(work, token, cleanup, name="server-meta")
    fqids = seed(os.path.join(work, "server-meta", "store"), versions)
    setup[f"seed {versions} versions in the store"] = time.perf_counter() - started

    mnt = os.path.join(work, "mnt-meta")
    os.makedirs(mnt, exist_ok=True)
    log_path = os.path.join(work, "logs", "mount-meta.log")
    started = time.perf_counter()
    cleanup.mounts.append(mnt)
    with open(log_path, "ab") as log:
        daemon = subprocess.Popen(
            [PYTHON, "-m", "hcafs", "mount", mnt, "--foreground", "--dss-url", server.url,
             "--token-file", token_file, "--cache-dir", os.path.join(work, "cache-meta"),
             "--refresh-ttl", "3600", "--negative-timeout", "1", "--entry-timeout", "30"],
            env=cleanup.env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    cleanup.daemons.append(daemon)
    wait_for(lambda: is_mounted(mnt), 900, "the mount (first listing)", daemon, log_path)
    wait_for(lambda: len(os.listdir(os.path.join(mnt, "bundles"))) >= versions, 300,
             "the listing", daemon, log_path)
    setup["mount and first listing"] = time.perf_counter() - started

    figures = Figures()

    def measure(name: str, action) -> None:
        line = server.log_lines()
        began = time.perf_counter()
        action()
        seconds = time.perf_counter() - began
        time.sleep(0.3)  # the access log line is written after the answer
        figures.add(name, seconds, server.requests_since(line, "/v1/"),
                    server.requests_since(line, LISTING))

    collections = os.path.join(mnt, "collections")
    target = fqids[len(fqids) // 2]
    for n in range(repeats):
        where = os.path.join(collections, f"bench-{n}")
        measure("mkdir + rmdir of a collection",
                lambda where=where: (os.mkdir(where), os.rmdir(where)))
    held = os.path.join(collections, "bench-links")
    os.mkdir(held)
    for n in range(repeats):
        link = os.path.join(held, f"reads-{n}")
        measure("ln -s + rm in a collection",
                lambda link=link: (os.symlink(f"../../bundles/{target}", link),
                                   os.unlink(link)))
    os.rmdir(held)
    for _ in range(repeats):
        missing = os.path.join(mnt, "files", f"{uuid.uuid4()}.{now_version()}")
        measure("stat of a missing FQID (first)", lambda missing=missing: _absent(missing))
        time.sleep(1.5)  # past --negative-timeout: the kernel asks the daemon again
        measure("stat of a missing FQID (again, kernel entry expired)",
                lambda missing=missing: _absent(missing))
    return {"versions": versions, "repeats": repeats, "setup": setup,
            "figures": figures.as_dict()}


def _absent(path: str) -> None:
    try:
        os.stat(path)
    except FileNotFoundError:
        return
    raise BenchError(f"{path} exists")


def render(results: dict) -> str:
    """The report's section (markdown)."""
    if not results:
        return ""
    if "error" in results:
        return f"\n## Metadata callbacks with many versions\n\nFAILED: {results['error']}\n"
    lines = ["", f"## Metadata callbacks with {results['versions']:,} bundle versions", "",
             "Through a real mount (`hcafs mount --foreground --refresh-ttl 3600 "
             "--negative-timeout 1`), each figure over "
             f"{results['repeats']} runs; requests are the server's own access-log lines "
             "during the operation (goal: at most 50 ms, no `/bundles/all` listing; the "
             "second stat of a missing FQID asks nothing). Command: "
             "`.venv/bin/python bench/metadata_latency.py` (or `make bench`).", "",
             "| operation | median | max | requests per run | of which /bundles/all |",
             "|---|---:|---:|---|---|"]
    for name, figure in results["figures"].items():
        lines.append(f"| {name} | {figure['median_ms']} ms | {figure['max_ms']} ms | "
                     f"{figure['requests']} | {figure['listings']} |")
    lines += ["", "Setup: " + "; ".join(f"{k} {v:.1f} s" for k, v in results["setup"].items())
              + ".", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--versions", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="hcafs-bench-meta-", dir=os.environ.get("HCAFS_BENCH_DIR"))
    os.chdir(work)
    results = run(work, args.versions, args.repeats)
    print(render(results))
    print(json.dumps(results, indent=2), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
