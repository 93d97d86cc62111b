"""Every outbound HTTP request of the server, and the policy that decides where one may go.

The server fetches what its callers name (DRS objects, their access URLs), so a fetch is
an attacker's tool unless each one is checked.  This module is the only part of the server
that speaks HTTP to other hosts; ``requests``/``urllib3`` are imported here and nowhere else
in :mod:`hcafs.server`.

The policy (:class:`EgressPolicy`, see docs/drs.md#egress-policy):

* A URL's host is resolved once; *every* address it resolves to must be allowed, and the
  connection then goes to the checked address (the Host header, the TLS SNI and the
  certificate check keep the name).  A name that resolves differently a moment later
  cannot move the connection elsewhere.
* Refused unless named by the operator: loopback, link-local (169.254.0.0/16, fe80::/10),
  private and shared ranges, multicast, unspecified, reserved, and the cloud metadata
  addresses — every address that is not globally routable.  ``allow_hosts`` entries
  ``HOST`` (every port) or ``HOST:PORT`` (that port) open a name or an address literal;
  ``allow_networks`` open CIDR ranges.  A metadata address is opened only by naming it in
  ``allow_hosts``.
* Plain http is for loopback targets only, unless ``allow_http``; the scheme rule never
  opens an address.
* Redirects are followed here, at most :data:`MAX_REDIRECTS`, each hop checked again.  The
  caller's credentials (headers a DRS server handed out) go only to the origin they came
  with, never to another host after a redirect.
* A refusal happens before any connection and reads the same whatever the target; a
  connection failure of an allowed target is reported without its cause, so the messages
  do not tell an open port from a closed one.
* A body is read with a running count of the *decoded* bytes (gzip and deflate are
  decoded here, a bounded piece at a time) and refused past its cap.

Errors are :class:`EgressError`; urllib3's exceptions are translated here only.

Threading: :class:`Egress` is safe to share; every fetch opens its own connection.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import certifi
import urllib3
from urllib3.exceptions import HTTPError, SSLError

from .. import __version__
from ..errors import HcafsError
from . import documents

MAX_REDIRECTS = 5
CHUNK = 64 * 1024
JSON_CAP = 1024 * 1024
JSON_DEADLINE = 60.0
REDIRECTS = (301, 302, 303, 307, 308)
USER_AGENT = f"hcafs/{__version__}"

# Cloud instance metadata services: refused even inside an allowed network.
METADATA = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "169.254.169.253", "100.100.100.200",
    "fd00:ec2::254", "fd00:ec2::23"))

# The headers a DRS access_url may ask for (credentials, as the DRS spec describes them).
CREDENTIAL_HEADERS = frozenset(("authorization", "x-amz-security-token", "x-api-key",
                                "x-goog-user-project"))

REFUSED = "refused by this server's egress policy"
_PLAIN = "plain http is refused (only to loopback, or with --drs-allow-http)"


class EgressError(HcafsError):
    """A fetch that did not happen or did not finish.  ``kind``: ``refused`` (the policy),
    ``unsupported`` (scheme, encoding), ``unresolvable`` (unknown name), ``tls`` (the
    handshake failed, not the certificate), ``certificate``, ``unavailable`` (no answer),
    ``too_large`` (past the cap), ``redirects`` (too many)."""

    def __init__(self, kind: str, message: str):
        self.kind = kind
        super().__init__(message)


def parse_allow_host(entry: str) -> tuple[str, int | None]:
    """``HOST``, ``HOST:PORT``, ``[V6]`` or ``[V6]:PORT`` → ``(host, port or None)``."""
    entry = entry.strip()
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else (None if not rest else "x")
    elif entry.count(":") == 1:
        host, port = entry.split(":")
    else:
        host, port = entry, None
    if not host or (port is not None and not (port.isdigit() and 0 < int(port) < 65536)):
        raise ValueError(f"{entry!r} is not HOST or HOST:PORT")
    return host.lower().rstrip("."), int(port) if port is not None else None


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def _plain(addr):
    """An IPv4-mapped IPv6 address as the IPv4 address it is."""
    return addr.ipv4_mapped if isinstance(addr, ipaddress.IPv6Address) and \
        addr.ipv4_mapped else addr


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # the well-known prefix: IPv4 in the low 32 bits
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")  # local-use NAT64: where it maps varies
_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")  # SIIT IPv4-translated addresses
_COMPATIBLE = ipaddress.IPv6Network("::/96")  # deprecated IPv4-compatible addresses


def _embedded(addr: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries (NAT64, 6to4, Teredo, SIIT and
    IPv4-compatible forms): a gateway on the path may deliver it there."""
    low = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    found = [low] if addr in _NAT64 or addr in _TRANSLATED or addr in _COMPATIBLE else []
    if addr.sixtofour is not None:
        found.append(addr.sixtofour)
    if addr.teredo is not None:
        found.extend(addr.teredo)
    return found


def _public(addr) -> bool:
    if not addr.is_global or addr.is_multicast or addr in METADATA:
        return False
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.is_site_local or addr in _NAT64_LOCAL:
            return False
        return all(_public(inner) for inner in _embedded(addr))
    return True


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect (``addresses``, in resolver order) and as whom."""

    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple[str, ...]

    @property
    def origin(self) -> tuple[str, str, int]:
        return self.scheme, self.host, self.port

    @property
    def path(self) -> str:
        parts = urlsplit(self.url)
        return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


Resolve = Callable[[str, int], Sequence[str]]


def system_resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (``socket.getaddrinfo``, TCP)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise EgressError("unresolvable", f"unknown host {host}") from exc
    found: list[str] = []
    for info in infos:
        address = str(info[4][0]).split("%", 1)[0]
        if address not in found:
            found.append(address)
    if not found:
        raise EgressError("unresolvable", f"unknown host {host}")
    return found


class EgressPolicy:
    """Where the server may fetch from (see the module docstring)."""

    def __init__(self, allow_hosts: Sequence[str] = (), allow_networks: Sequence[str] = (),
                 allow_http: bool = False, resolve: Resolve = system_resolve):
        self.allow_hosts = tuple(parse_allow_host(h) for h in allow_hosts)
        self.allow_networks = tuple(ipaddress.ip_network(n.strip(), strict=False)
                                    for n in allow_networks)
        self.allow_http = allow_http
        self.resolve = resolve

    def _named(self, host: str, port: int, addr) -> bool:
        for name, allowed_port in self.allow_hosts:
            if allowed_port not in (None, port):
                continue
            literal = _address(name)
            if (literal is not None and _plain(literal) == addr) or name == host:
                return True
        return False

    def allowed(self, host: str, port: int, address: str) -> bool:
        addr = _address(address)
        if addr is None:
            return False
        addr = _plain(addr)
        if self._named(host, port, addr):
            return True
        if addr in METADATA:
            return False
        return _public(addr) or any(addr in net for net in self.allow_networks)

    def check(self, url: str) -> Target:
        """The checked target of ``url``, or :class:`EgressError` before any connection."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise EgressError("unsupported", f"cannot fetch {scheme or 'scheme-less'} URLs")
        try:
            host, port = parts.hostname, parts.port
        except ValueError as exc:
            raise EgressError("unsupported", "the URL has no valid port") from exc
        if not host:
            raise EgressError("unsupported", "the URL names no host")
        host = host.lower().rstrip(".")
        port = port or (443 if scheme == "https" else 80)
        literal = _address(host)
        if scheme == "http" and not self.allow_http and literal is None and \
                host != "localhost":
            raise EgressError("unsupported", _PLAIN)
        addresses = (str(literal),) if literal else tuple(self.resolve(host, port))
        if not addresses or not all(self.allowed(host, port, a) for a in addresses):
            raise EgressError("refused", REFUSED)
        if scheme == "http" and not self.http_allowed(addresses):
            raise EgressError("unsupported", _PLAIN)
        return Target(url, scheme, host, port, addresses)

    def http_allowed(self, addresses: Sequence[str]) -> bool:
        return self.allow_http or all(
            (a := _address(x)) is not None and _plain(a).is_loopback for x in addresses)


class Answer:
    """An HTTP answer whose body has not been read yet; read it with :meth:`chunks` or
    :meth:`json`, and close it (it is a context manager)."""

    def __init__(self, response: urllib3.BaseHTTPResponse, pool, url: str):
        self._response = response
        self._pool = pool
        self.url = url
        self.status = response.status
        self.headers = response.headers

    def __enter__(self) -> Answer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._response.close()
        self._pool.close()

    def _decoder(self):
        encoding = (self.headers.get("Content-Encoding") or "identity").strip().lower()
        if encoding in ("identity", ""):
            return None
        if encoding in ("gzip", "x-gzip"):
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        if encoding == "deflate":
            return zlib.decompressobj()
        raise EgressError("unsupported", f"content encoding {encoding!r} is not supported")

    def chunks(self, cap: int, deadline: float | None = None) -> Iterator[bytes]:
        """The decoded body, at most :data:`CHUNK` bytes a piece; ``too_large`` as soon
        as more than ``cap`` bytes came, ``unavailable`` past ``deadline`` (monotonic)."""
        decoder = self._decoder()
        received = 0

        def count(data: bytes) -> bytes:
            nonlocal received
            received += len(data)
            if received > cap:
                raise EgressError("too_large", f"the answer is larger than {cap} bytes")
            if deadline is not None and time.monotonic() > deadline:
                raise EgressError("unavailable", "the answer took too long")
            return data

        try:
            for raw in self._response.stream(CHUNK, decode_content=False):
                if decoder is None:
                    yield count(raw)
                    continue
                data = decoder.decompress(raw, CHUNK)
                while True:
                    if data:
                        yield count(data)
                    if not decoder.unconsumed_tail and len(data) < CHUNK:
                        break
                    data = decoder.decompress(decoder.unconsumed_tail, CHUNK)
            if decoder is not None and (tail := decoder.flush()):
                yield count(tail)
        except zlib.error as exc:
            raise EgressError("unavailable", "the answer's encoding is corrupt") from exc
        except HTTPError as exc:
            raise EgressError("unavailable", "the answer was cut short") from exc

    def json(self, cap: int = JSON_CAP) -> object:
        body = b"".join(self.chunks(cap, time.monotonic() + JSON_DEADLINE))
        try:
            return documents.load(body)
        except documents.BadDocument as exc:
            raise EgressError("unavailable", f"the answer is refused: {exc}") from None


class Egress:
    """Fetches under an :class:`EgressPolicy`, following redirects itself."""

    def __init__(self, policy: EgressPolicy, timeout: tuple[float, float] = (10, 60),
                 ca_bundle: str | None = None):
        self.policy = policy
        self.timeout = urllib3.Timeout(connect=timeout[0], read=timeout[1])
        self.ca_bundle = ca_bundle or os.environ.get("REQUESTS_CA_BUNDLE") or certifi.where()

    def get(self, url: str, headers: dict[str, str] | None = None,
            credentials: dict[str, str] | None = None) -> Answer:
        """GET ``url``; ``credentials`` go to ``url``'s own origin only."""
        return self.request("GET", url, headers, credentials)

    def request(self, method: str, url: str, headers: dict[str, str] | None = None,
                credentials: dict[str, str] | None = None, body: bytes | None = None
                ) -> Answer:
        """``method`` ``url`` (GET, POST, OPTIONS); ``credentials`` go to ``url``'s own
        origin only.  A POST follows only 307 and 308 (which keep the method and body),
        and never sends its body to another origin."""
        origin = None
        for _ in range(MAX_REDIRECTS + 1):
            target = self.policy.check(url)
            origin = origin or target.origin
            send = {"User-Agent": USER_AGENT, **(headers or {})}
            if credentials and target.origin == origin:
                send.update(credentials)
            else:
                credentials = None  # once the chain leaves the origin, never again
            if body is not None and target.origin != origin:
                raise EgressError("redirects", "a request body is not sent to another host")
            answer = self._request(target, send, method, body)
            location = answer.headers.get("Location")
            if answer.status not in REDIRECTS or not location or \
                    (method != "GET" and answer.status not in (307, 308)):
                return answer
            answer.close()
            url = urljoin(url, location.strip())
        raise EgressError("redirects", f"more than {MAX_REDIRECTS} redirects")

    def _request(self, target: Target, headers: dict[str, str], method: str = "GET",
                 body: bytes | None = None) -> Answer:
        last: EgressError | None = None
        for address in target.addresses:
            pool = self._pool(target, address)
            try:
                response = pool.urlopen(method, target.path, body=body, headers={
                    **headers, "Host": target.netloc}, retries=False, redirect=False,
                    preload_content=False, decode_content=False, assert_same_host=False)
            except SSLError as exc:
                pool.close()
                if "CERTIFICATE_VERIFY_FAILED" in str(exc) or "hostname" in str(exc).lower():
                    raise EgressError("certificate", "the TLS certificate is not valid "
                                      "for the host") from exc
                raise EgressError("tls", "the TLS handshake failed") from exc
            except (HTTPError, OSError) as exc:
                pool.close()
                last = EgressError("unavailable", "no answer")
                last.__cause__ = exc
                continue
            return Answer(response, pool, target.url)
        raise last or EgressError("unavailable", "no answer")

    def _pool(self, target: Target, address: str):
        if target.scheme == "https":
            literal = _address(target.host) is not None
            return urllib3.HTTPSConnectionPool(
                address, target.port, timeout=self.timeout, maxsize=1, retries=False,
                cert_reqs="CERT_REQUIRED", ca_certs=self.ca_bundle,
                server_hostname=None if literal else target.host,
                assert_hostname=target.host)
        return urllib3.HTTPConnectionPool(address, target.port, timeout=self.timeout,
                                          maxsize=1, retries=False)


def credential_headers(raw: object) -> dict[str, str]:
    """The credential headers of a DRS ``access_url`` (``["Name: value", …]``); others
    are dropped (they would let a DRS server choose what the server sends)."""
    headers = {}
    for line in raw if isinstance(raw, list) else []:
        if isinstance(line, str) and ":" in line:
            name, _, value = line.partition(":")
            name, value = name.strip(), value.strip()
            if name.lower() in CREDENTIAL_HEADERS and \
                    not any(ord(c) < 32 or ord(c) == 127 for c in value):
                headers[name] = value
    return headers
