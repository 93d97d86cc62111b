"""``hcafs serve --metrics-port``: Prometheus metrics summed over the worker processes; the
scale-out options refused, with a clear message, when out of range."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time

import pytest
import requests
from fixtures.dss_server import ADMIN, DSSServer


def metrics_url(server: DSSServer) -> str:
    deadline = time.monotonic() + 10
    while not (found := re.search(r"metrics on (http://\S+)", server.log())):
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.05)
    return found[1]


def samples(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        shown = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
        if all(shown.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_request_counters_sum_over_the_workers(tmp_path):
    server = DSSServer(str(tmp_path / "m"), args=["--workers", "2", "--metrics-port", "0"])
    server.start()
    try:
        url = metrics_url(server)
        assert url.startswith("http://127.0.0.1:")  # loopback unless --metrics-host
        pids, health = set(), 0
        deadline = time.monotonic() + 30
        while len(pids) < 2:  # until both workers answered (the second may start later)
            assert time.monotonic() < deadline, pids
            pids.add(requests.get(f"{server.url}/internal/health", timeout=30,
                                  headers={"Authorization": f"Bearer {ADMIN}"}).json()["pid"])
            health += 1
        for _ in range(37):
            assert requests.get(f"{server.url}/version", timeout=30).status_code == 200
        for _ in range(5):
            assert requests.get(f"{server.url}/no/such/route", timeout=30).status_code == 404
        text = requests.get(url, timeout=30).text
        assert samples(text, "hcafs_requests_total", route="version", status="200") == 37
        assert samples(text, "hcafs_requests_total", route="health") == health
        assert samples(text, "hcafs_requests_total", route="unmatched", status="404") == 5
        assert samples(text, "hcafs_request_seconds_count", route="version") == 37
        assert "hcafs_leases_held" in text and "hcafs_copies_in_flight" in text
    finally:
        server.stop()


def test_no_metrics_endpoint_unless_asked(tmp_path):
    server = DSSServer(str(tmp_path / "n")).start()
    try:
        assert "metrics on" not in server.log()
    finally:
        server.stop()


def test_a_metrics_port_in_use_is_a_clear_start_error(tmp_path):
    taken = socket.create_server(("127.0.0.1", 0))
    try:
        server = DSSServer(str(tmp_path / "p"), args=[
            "--metrics-port", str(taken.getsockname()[1])])
        with pytest.raises(RuntimeError, match="cannot serve metrics on 127.0.0.1:"):
            server.start(timeout=20)
    finally:
        taken.close()


@pytest.mark.parametrize(("option", "message"), [
    (["--workers", "0"], "--workers must be between 1 and 256"),
    (["--lease-ttl", "0.1"], "--lease-ttl must be between"),
    (["--lease-ttl", "5", "--lease-scan", "6"], "--lease-scan must be between"),
    (["--metrics-port", "70000"], "--metrics-port 70000 is not a TCP port"),
    (["--listen-fd", "987"], "--listen-fd 987: not an open socket"),
])
def test_bad_scale_out_options_are_refused_before_listening(tmp_path, option, message):
    result = subprocess.run([sys.executable, "-m", "hcafs", "serve", "--port", "0",
                             "--data-dir", str(tmp_path / "d"), *option],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and message in result.stderr, result.stderr
    assert "listening on" not in result.stderr
