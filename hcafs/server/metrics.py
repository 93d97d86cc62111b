"""Prometheus metrics of ``hcafs serve``, summed over its worker processes.

prometheus-client's multiprocess mode keeps each worker's samples in memory-mapped files in
one directory (``PROMETHEUS_MULTIPROC_DIR``), and the endpoint sums them at scrape time, so
a counter reads the same whichever worker answered.  The directory must be named before
prometheus-client is first imported, which is why nothing here imports it at module level:
:func:`serve_endpoint` (in the supervisor, before the workers fork) sets the directory up and
starts the endpoint, and :func:`enable` (in each worker) creates the metrics.  Until
:func:`enable` runs, the recording functions do nothing, so the engines and their tests run
without metrics.

Every name starts with ``hcafs_`` (docs/server.md#what-to-monitor).

Threading: the recording functions are safe from any thread (prometheus-client locks).
"""

from __future__ import annotations

import os
import shutil
from types import SimpleNamespace

ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

_m: SimpleNamespace | None = None


def prepare_dir(path: str) -> None:
    """Empty the samples directory and name it for this process and its children (call
    before anything imports prometheus-client)."""
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path, exist_ok=True)
    os.environ[ENV] = path


def serve_endpoint(host: str, port: int) -> int:
    """Start the endpoint on a thread of this process; returns its port."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    server, _ = start_http_server(port, addr=host, registry=registry)
    return server.server_address[1]


def worker_died(pid: int) -> None:
    """Drop the live gauges of a worker process that exited."""
    if os.environ.get(ENV):
        from prometheus_client.multiprocess import mark_process_dead

        mark_process_dead(pid)


def enable() -> None:
    """Create the metrics in this worker process (only when the endpoint is on)."""
    global _m
    if not os.environ.get(ENV) or _m is not None:
        return
    from prometheus_client import Counter, Gauge, Histogram

    _m = SimpleNamespace(
        requests=Counter("hcafs_requests", "HTTP requests answered, by route and status",
                         ["route", "method", "status"]),
        latency=Histogram("hcafs_request_seconds", "time to answer a request, by route",
                          ["route"], buckets=LATENCY_BUCKETS),
        copies=Gauge("hcafs_copies_in_flight", "asynchronous copies running",
                     multiprocess_mode="livesum"),
        imports=Gauge("hcafs_imports_in_flight", "import jobs being worked",
                      multiprocess_mode="livesum"),
        leases=Gauge("hcafs_leases_held", "leases on background work held",
                     multiprocess_mode="livesum"),
        budget_waits=Counter("hcafs_budget_waits", "admissions deferred or refused by a "
                             "budget, by budget", ["budget"]),
        budget_conflicts=Counter("hcafs_budget_conflicts", "budget writes that lost a "
                                 "compare-and-swap and were retried", ["budget"]),
        takeovers=Counter("hcafs_lease_takeovers", "expired leases taken over", ["kind"]),
    )


def request(route: str, method: str, status: int, seconds: float) -> None:
    if _m is not None:
        _m.requests.labels(route, method, str(status)).inc()
        _m.latency.labels(route).observe(seconds)


def copies_in_flight(delta: int) -> None:
    if _m is not None:
        _m.copies.inc(delta)


def imports_in_flight(delta: int) -> None:
    if _m is not None:
        _m.imports.inc(delta)


def leases_held(count: int) -> None:
    if _m is not None:
        _m.leases.set(count)


def budget_wait(budget: str) -> None:
    if _m is not None:
        _m.budget_waits.labels(budget).inc()


def budget_conflict(budget: str) -> None:
    if _m is not None:
        _m.budget_conflicts.labels(budget).inc()


def takeover(kind: str) -> None:
    if _m is not None:
        _m.takeovers.labels(kind).inc()
