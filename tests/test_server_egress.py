"""The egress policy of ``hcafs serve``: what its DRS imports may fetch, and how.

Two tiers.  ``hcafs.server.egress`` in-process, where a resolver stub stands in for DNS and
every socket ``connect`` is recorded, so a refusal is shown to happen before any connection
(the stub's addresses are never dialled).  Then real ``hcafs serve`` importers whose DRS
peer is a hostile DRS server on loopback (``fixtures.hostile_drs.HostileDrs``, a fault injector
that answers what each test scripts), and whose "target" is a loopback listener that counts
the requests it gets (``Target``).
"""

from __future__ import annotations

import ast
import gzip
import json
import socket
import threading
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from fixtures import free_port
from fixtures.drs_repo import self_signed_cert
from fixtures.dss_server import DSSServer
from fixtures.hostile_drs import (
    HostileDrs,
    Target,
    only_error,
    redirect,
    run_import,
    start_importer,
    store_keys,
)

from hcafs.server import egress
from hcafs.server.egress import Egress, EgressError, EgressPolicy


@pytest.fixture
def target():
    listener = Target()
    yield listener
    listener.close()


@pytest.fixture
def hostile():
    server = HostileDrs()
    yield server
    server.close()


# ---------------------------------------------------------------- egress.py in-process


def test_egress_is_the_only_server_module_that_speaks_http_to_others():
    server = Path(egress.__file__).parent
    clients = {"requests", "urllib3", "http.client", "httpx", "aiohttp", "urllib.request"}
    for path in sorted(server.glob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
        used = {n for n in names if n in clients or n.split(".")[0] in clients - {"http",
                                                                                   "urllib"}}
        assert used == set() or path.name == "egress.py", (path.name, used)


@pytest.fixture
def connects(monkeypatch) -> list[tuple]:
    """Every address a socket of this process connects to, from now on."""
    seen: list[tuple] = []
    real = socket.socket.connect

    def connect(self, address):
        seen.append(address)
        return real(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return seen


def stub(table: dict[str, list[str]]) -> Callable[[str, int], list[str]]:
    def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise EgressError("unresolvable", f"unknown host {host}")
        return table[host]
    return resolve


def test_the_default_policy_refuses_every_address_that_is_not_public_before_connecting(
        connects):
    names = {"metadata.test": ["169.254.169.254"], "loop.test": ["127.0.0.1"],
             "private.test": ["10.1.2.3"], "v6-local.test": ["fe80::1"],
             "mixed.test": ["93.184.216.34", "192.168.1.1"], "mapped.test": ["::ffff:127.0.0.1"],
             "shared.test": ["100.100.100.200"], "multicast.test": ["224.0.0.1"],
             "zero.test": ["0.0.0.0"], "ula.test": ["fd00:ec2::254"]}
    fetch = Egress(EgressPolicy(resolve=stub(names), allow_http=True))
    for name in names:
        with pytest.raises(EgressError) as refused:
            fetch.get(f"https://{name}/latest/meta-data/")
        assert (refused.value.kind, str(refused.value)) == ("refused", egress.REFUSED), name
    for literal in ("169.254.169.254", "127.0.0.1", "[::1]", "172.16.0.1", "[fe80::1]"):
        with pytest.raises(EgressError, match="egress policy"):
            fetch.get(f"http://{literal}:8080/")
    assert connects == []  # refused before any socket was connected


def test_ipv6_forms_that_carry_an_ipv4_address_are_judged_by_it():
    """NAT64, 6to4, SIIT and IPv4-compatible addresses reach the IPv4 address inside them
    through a gateway; site-local and local-use NAT64 addresses are never public."""
    policy = EgressPolicy()
    for address in ("64:ff9b::a00:1", "64:ff9b::7f00:1", "64:ff9b:1::a00:1",
                    "2002:7f00:1::", "2002:a9fe:a9fe::", "2002:a00:1::1", "::7f00:1",
                    "::ffff:0:7f00:1", "::ffff:0:a9fe:a9fe", "fec0::1", "::ffff:127.0.0.1"):
        assert not policy.allowed("h.test", 443, address), address
    for address in ("64:ff9b::808:808", "2002:808:808::1", "::ffff:0:808:808",
                    "2606:4700::1111", "8.8.8.8"):
        assert policy.allowed("h.test", 443, address), address


def test_allow_options_open_exactly_what_they_name():
    names = {"drs.internal": ["10.0.0.7"], "other.internal": ["10.0.0.8"],
             "metadata.test": ["169.254.169.254"]}
    policy = EgressPolicy(allow_hosts=["drs.internal:8443", "127.0.0.1", "[::1]:9"],
                          allow_networks=["10.0.9.0/24", "169.254.0.0/16"],
                          resolve=stub(names))
    assert policy.check("https://drs.internal:8443/x").addresses == ("10.0.0.7",)
    assert policy.check("https://127.0.0.1:1/x").port == 1  # a host without port: any port
    assert policy.check("https://127.0.0.1:65000/x").host == "127.0.0.1"
    assert policy.check("https://[::1]:9/x").addresses == ("::1",)
    assert policy.check("https://10.0.9.200/x").addresses == ("10.0.9.200",)
    for refused in ("https://drs.internal:443/x", "https://other.internal:8443/x",
                    "https://[::1]:10/x", "https://10.0.8.1/x",
                    "https://metadata.test/x",  # inside an allowed network: still refused
                    "https://169.254.169.254/x"):
        with pytest.raises(EgressError, match="egress policy"):
            policy.check(refused)
    # the scheme rule does not open an address, and an allowed address keeps the scheme rule
    with pytest.raises(EgressError, match="egress policy"):
        EgressPolicy(allow_http=True).check("http://127.0.0.1:80/")
    with pytest.raises(EgressError, match="plain http"):
        policy.check("http://drs.internal:8443/x")


def test_the_connection_goes_to_the_checked_address_not_a_second_answer(monkeypatch):
    """DNS rebinding: ``rebind.test`` resolves to an allowed address for the check and to a
    refused one for any lookup after it; the request must reach the checked one."""
    good = HostileDrs("127.0.0.2")
    good.routes["/x"] = (200, {}, b"checked address\n")
    target = Target("127.0.0.1", good.port)
    real = socket.getaddrinfo
    lookups = []

    def rebinding(host, port, *args, **kwargs):
        if host != "rebind.test":
            return real(host, port, *args, **kwargs)
        lookups.append(host)
        address = "127.0.0.2" if len(lookups) == 1 else "127.0.0.1"
        return real(address, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    try:
        fetch = Egress(EgressPolicy(allow_networks=["127.0.0.2/32"], allow_http=True))
        with fetch.get(f"http://rebind.test:{good.port}/x") as answer:
            assert b"".join(answer.chunks(1024)) == b"checked address\n"
        assert lookups == ["rebind.test"]  # resolved once
        assert good.requests[0][1]["Host"] == f"rebind.test:{good.port}"  # the name is kept
        assert target.count() == 0
        # a second fetch resolves again, gets the refused address, and is refused
        with pytest.raises(EgressError, match="egress policy"):
            fetch.get(f"http://rebind.test:{good.port}/x")
        assert target.count() == 0
    finally:
        good.close()
        target.close()


def test_https_connects_to_the_checked_address_and_verifies_the_certificate_for_the_name(
        tmp_path, connects):
    cert, key = self_signed_cert(tmp_path)  # valid for the address 127.0.0.1 only
    peer = HostileDrs(tls=(cert, key))
    try:
        peer.routes["/x"] = (200, {}, b"over tls\n")
        names = stub({"drs.test": ["127.0.0.1"]})
        fetch = Egress(EgressPolicy(allow_hosts=[peer.host], resolve=names), ca_bundle=cert)
        with fetch.get(f"https://{peer.host}/x") as answer:
            assert b"".join(answer.chunks(100)) == b"over tls\n"
        # the same address under a name the certificate does not carry: refused by TLS
        fetch = Egress(EgressPolicy(allow_hosts=["drs.test"], resolve=names), ca_bundle=cert)
        with pytest.raises(EgressError) as wrong:
            fetch.get(f"https://drs.test:{peer.port}/x")
        assert wrong.value.kind == "certificate"
        assert {address for address in connects} == {("127.0.0.1", peer.port)}
        assert peer.count("/x") == 1
    finally:
        peer.close()


def test_an_allowed_target_that_fails_says_only_no_answer():
    closed = free_port()
    resetting = socket.create_server(("127.0.0.1", 0))
    silent = socket.create_server(("127.0.0.1", 0))

    def reset_all():
        while True:
            try:
                client, _ = resetting.accept()
            except OSError:
                return
            client.close()

    threading.Thread(target=reset_all, daemon=True).start()
    try:
        fetch = Egress(EgressPolicy(allow_hosts=["127.0.0.1"]), timeout=(2, 1))
        messages = set()
        for port in (closed, resetting.getsockname()[1], silent.getsockname()[1]):
            with pytest.raises(EgressError) as failed:
                fetch.get(f"http://127.0.0.1:{port}/")
            messages.add((failed.value.kind, str(failed.value)))
        assert messages == {("unavailable", "no answer")}
    finally:
        resetting.close()
        silent.close()


def test_redirects_are_checked_at_every_hop_and_capped(connects):
    peer = HostileDrs()
    try:
        peer.routes["/to-metadata"] = redirect("http://metadata.test/computeMetadata/v1/")
        peer.routes["/to-loopback"] = redirect("http://127.0.0.1:9/")
        hops = iter(range(100))
        peer.routes["/loop"] = lambda path: redirect(f"/loop?n={next(hops)}")
        fetch = Egress(EgressPolicy(allow_hosts=[peer.host], allow_http=True,
                                    resolve=stub({"metadata.test": ["169.254.169.254"]})))
        for path in ("/to-metadata", "/to-loopback"):
            with pytest.raises(EgressError, match="egress policy"):
                fetch.get(peer.url(path))
        assert {address[1] for address in connects} == {peer.port}  # never elsewhere
        with pytest.raises(EgressError) as capped:
            fetch.get(peer.url("/loop"))
        assert capped.value.kind == "redirects"
        assert peer.count("/loop") == egress.MAX_REDIRECTS + 1
    finally:
        peer.close()


def test_credentials_stay_with_their_origin_and_only_allowed_headers_pass():
    first, second = HostileDrs(), HostileDrs()
    try:
        first.routes["/blob"] = redirect(second.url("/blob"))
        second.routes["/blob"] = (200, {}, b"bytes")
        headers = egress.credential_headers(["Authorization: Bearer abc",
                                             "Metadata-Flavor: Google", "Host: evil",
                                             "X-Amz-Security-Token: t", "nonsense"])
        assert headers == {"Authorization": "Bearer abc", "X-Amz-Security-Token": "t"}
        fetch = Egress(EgressPolicy(allow_hosts=[first.host, second.host]))
        with fetch.get(first.url("/blob"), credentials=headers) as answer:
            assert b"".join(answer.chunks(100)) == b"bytes"
        assert first.requests[0][1].get("Authorization") == "Bearer abc"
        sent = {name.lower() for name in second.requests[0][1]}
        assert "authorization" not in sent and "x-amz-security-token" not in sent
    finally:
        first.close()
        second.close()


def test_a_gzip_bomb_is_refused_within_its_cap():
    peer = HostileDrs()
    try:
        bomb = gzip.compress(b" " * (64 * 1024 * 1024), 9)
        peer.routes["/bomb"] = (200, {"Content-Encoding": "gzip"}, bomb)
        fetch = Egress(EgressPolicy(allow_hosts=[peer.host]))
        with fetch.get(peer.url("/bomb")) as answer:
            seen = 0
            with pytest.raises(EgressError) as large:
                for chunk in answer.chunks(1024 * 1024):
                    assert len(chunk) <= egress.CHUNK
                    seen += len(chunk)
        assert large.value.kind == "too_large" and seen <= 1024 * 1024
    finally:
        peer.close()


# ---------------------------------------------------------------- real servers


def test_a_redirect_to_loopback_is_refused_and_nothing_reaches_the_target(
        tmp_path, hostile, target):
    """A DRS server (allowed) whose access URL redirects to a listener it may not reach,
    asking for a metadata server's header: refused, and the target never hears of it."""
    hostile.blob_object("obj", hostile.url("/blob"), headers=[
        "Metadata-Flavor: Google", "Authorization: Bearer for-the-drs-server"])
    hostile.routes["/blob"] = redirect(f"http://127.0.0.1:{target.port}/computeMetadata/v1/")
    hostile.blob_object("direct", f"http://127.0.0.1:{target.port}/computeMetadata/v1/")
    importer = start_importer(tmp_path, "importer", hostile.host)
    try:
        before = store_keys(importer)
        job = run_import(importer, [
            {"drs_uri": hostile.uri("obj"), "project": "user/ssrf"},
            {"drs_uri": hostile.uri("direct"), "project": "user/ssrf"},
            {"drs_uri": f"drs://127.0.0.1:{target.port}/anything", "project": "user/ssrf"}])
        assert [(e["error"]["status"], e["error"]["code"]) for e in job["result"]] == \
            [(403, 5107)] * 3, job
        assert target.count() == 0
        assert hostile.count("/blob") == 1
        sent = next(headers for path, headers in hostile.requests if path == "/blob")
        assert "Metadata-Flavor" not in sent and sent["Authorization"] == \
            "Bearer for-the-drs-server"
        blobs = {k for k in store_keys(importer) - before if k.startswith("blobs/")}
        assert blobs == set()
        for entry in job["result"][:2]:  # where the DRS server, not the caller, named it
            text = json.dumps(entry["error"])
            assert str(target.port) not in text and "sha" not in text
    finally:
        importer.stop()


def test_the_error_is_the_same_for_an_open_and_a_closed_port(tmp_path, hostile, target):
    closed = free_port()
    hostile.blob_object("open", f"http://127.0.0.1:{target.port}/")
    hostile.blob_object("closed", f"http://127.0.0.1:{closed}/")
    hostile.routes["/to-open"] = redirect(f"http://127.0.0.1:{target.port}/")
    hostile.routes["/to-closed"] = redirect(f"http://127.0.0.1:{closed}/")
    hostile.blob_object("via-open", hostile.url("/to-open"))
    hostile.blob_object("via-closed", hostile.url("/to-closed"))
    importer = start_importer(tmp_path, "importer", hostile.host)
    try:
        job = run_import(importer, [{"drs_uri": hostile.uri(n), "project": "user/scan"}
                                    for n in ("open", "closed", "via-open", "via-closed")])
        errors = [e["error"] for e in job["result"]]
        assert errors[0] == errors[1] == errors[2] == errors[3], errors
        assert target.count() == 0
    finally:
        importer.stop()


def test_a_redirect_loop_ends_at_the_cap(tmp_path, hostile):
    hops = iter(range(1000))
    hostile.routes["/blob"] = lambda path: redirect(f"/blob?hop={next(hops)}")
    hostile.blob_object("loop", hostile.url("/blob"))
    importer = start_importer(tmp_path, "importer", hostile.host)
    try:
        error = only_error(run_import(importer, [{"drs_uri": hostile.uri("loop"),
                                                  "project": "user/loop"}]))
        assert error["status"] == 502 and "redirects" in error["message"]
        assert hostile.count("/blob") == egress.MAX_REDIRECTS + 1
    finally:
        importer.stop()


def _peak_rss(server: DSSServer) -> int:
    """The largest peak resident size (VmHWM) of the server's processes (its supervisor
    and the workers that run the imports), in bytes."""
    peaks, todo = [], [server.process.pid]
    while todo:
        pid = todo.pop()
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peaks.append(int(line.split()[1]) * 1024)
        children = Path(f"/proc/{pid}/task/{pid}/children")
        todo += [int(child) for child in children.read_text().split()]
    assert len(peaks) >= 2, "no worker process under the server"
    return max(peaks)


def _gzip_of_spaces(prefix: bytes, size: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = [packer.compress(prefix)]
    block = b" " * (1024 * 1024)
    parts += [packer.compress(block) for _ in range(size // len(block))]
    return b"".join(parts) + packer.flush()


def test_gzip_bombs_are_refused_within_their_caps_and_the_server_stays_small(
        tmp_path, hostile):
    """~200 KB of gzip that decodes to 200 MiB, as a DRS object and as a blob's bytes."""
    document = _gzip_of_spaces(b'{"id": "bomb", "size": 1, "pad": "', 200 * 1024 * 1024)
    assert len(document) < 400_000
    hostile.routes["/ga4gh/drs/v1/objects/bomb"] = (
        200, {"Content-Type": "application/json", "Content-Encoding": "gzip"}, document)
    hostile.blob_object("blob-bomb", hostile.url("/blob"), data=b"tiny")
    hostile.routes["/blob"] = (200, {"Content-Encoding": "gzip"},
                               _gzip_of_spaces(b"", 200 * 1024 * 1024))
    importer = start_importer(tmp_path, "importer", hostile.host)
    try:
        job = run_import(importer, [
            {"drs_uri": hostile.uri("bomb"), "project": "user/bomb"},
            {"drs_uri": hostile.uri("blob-bomb"), "project": "user/bomb"}])
        errors = [(e["error"]["status"], e["error"]["code"]) for e in job["result"]]
        assert errors == [(422, 5108), (422, 5104)], job
        assert "larger than" in job["result"][0]["error"]["message"]
        peak = _peak_rss(importer)
        print(f"importer peak RSS {peak / 2**20:.0f} MiB")
        assert peak < 250 * 1024 * 1024, f"peak RSS {peak / 2**20:.0f} MiB"
    finally:
        importer.stop()


def test_a_credentials_bearer_is_not_sent_on_after_a_redirect_to_another_host(tmp_path):
    """The credentials file's bearer for one DRS host goes to that host only: an object
    endpoint that redirects to another (allowed) host gets the request there without it."""
    from test_drs_bulk import write_credentials

    first, second = HostileDrs(), HostileDrs()
    secret = "bearer-of-the-first-host-0123456789"
    first.routes["/ga4gh/drs/v1/objects/obj"] = redirect(
        second.url("/ga4gh/drs/v1/objects/obj"))
    second.blob_object("obj", second.url("/blob"))
    second.routes["/blob"] = (200, {}, Target.SECRET)
    credentials = write_credentials(tmp_path / "credentials.json", [
        {"match": first.host, "bearer": secret, "users": ["user@example.org"]}])
    importer = DSSServer(str(tmp_path / "importer"), loopback_peers=False, args=[
        "--drs-credentials", credentials, "--drs-allow-host", first.host,
        "--drs-allow-host", second.host]).start()
    try:
        run_import(importer, [{"drs_uri": first.uri("obj"), "project": "user/redirected"}])
        asked = [h for path, h in first.requests if path.startswith("/ga4gh/drs/v1/objects/")]
        assert asked and all(h.get("Authorization") == f"Bearer {secret}" for h in asked)
        assert second.requests, "the redirect was not followed"
        for _, headers in second.requests:
            assert secret not in json.dumps(headers), headers
            assert "authorization" not in {name.lower() for name in headers}
    finally:
        importer.stop()
        first.close()
        second.close()
