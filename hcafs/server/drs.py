"""GA4GH DRS v1 (1.4 shapes): this server's files and bundles as DRS objects, and reading
DRS objects from other servers (what the bulk import in ``imports.py`` needs).

Serving (:class:`DrsObjects`, no HTTP in here: ``app.py`` renders):

* Object ids are DSS identifiers.  A file's FQID ``uuid.version`` is a blob object; a bare
  file uuid is its latest version.  A bundle's FQID (or bare uuid, latest version) is a
  bundle object whose ``contents`` name its files (``name`` = the file's name in the bundle,
  ``id`` = the file's FQID, ``drs_uri``).  A uuid is looked up as a file first.
* Blob objects carry ``sha-256``, ``sha-1``, ``crc32c``, ``etag`` (the S3 ETag) and, when
  that ETag is a plain MD5, ``md5``; one access method of type ``https`` whose
  ``access_url`` is the server's own blob URL (``/blobs/…``, plain http on a plain http
  server) and whose ``access_id`` is ``https``.
* ``self_uri`` and ``drs_uri`` use the hostname form ``drs://HOST:PORT/ID`` with the host
  the caller reached.  Errors are :class:`~hcafs.errors.Problem`; ``app.py`` renders them
  as DRS ``{msg, status_code}``.

Reading (:class:`Resolver`, :class:`DrsReader`):

* ``drs://host[:port]/id`` becomes ``https://host[:port]/ga4gh/drs/v1/objects/id``.  Plain
  http is tried (after https fails at the TLS level) only for loopback hosts (127.0.0.0/8,
  ::1, localhost) unless ``allow_http`` is set; the same rule holds for access URLs.
* Compact ids ``drs://prefix:accession`` (also ``drs://provider/prefix:accession``, and
  ``drs://prefix/accession`` when ``prefix`` is in the table) go through the resolver table
  ``{"prefix": "https://host:port"}`` (or a URL pattern holding ``{id}``).
* Every failure is a :class:`DrsError` whose ``kind`` says what went wrong; requests'
  exceptions are translated here and nowhere else.  Certificates are verified against
  requests' CA bundle, or ``REQUESTS_CA_BUNDLE`` when set.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import requests
import urllib3

from .. import __version__
from ..errors import Problem, RemoteError, not_found
from ..versions import is_uuid, parse_fqid, version_datetime
from .dss import DSS, blob_key

log = logging.getLogger(__name__)

API_PATH = "/ga4gh/drs/v1"
ACCESS_ID = "https"
MAX_BULK = 1000
READ_CHUNK = 1024 * 1024
MAX_ACCEPTED_RETRIES = 5


# ==================================================================== serving


@dataclass(frozen=True)
class Base:
    """Where the caller reached this server: ``url`` (``http://h:p``) and ``host`` (``h:p``)."""

    url: str
    host: str

    def uri(self, object_id: str) -> str:
        return f"drs://{self.host}/{object_id}"


def _time(version: str) -> str:
    return version_datetime(version).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def file_checksums(meta: dict) -> list[dict]:
    sums = [{"type": "sha-256", "checksum": meta["sha256"]},
            {"type": "sha-1", "checksum": meta["sha1"]},
            {"type": "crc32c", "checksum": meta["crc32c"]},
            {"type": "etag", "checksum": meta["s3-etag"]}]
    if "-" not in meta["s3-etag"]:
        sums.append({"type": "md5", "checksum": meta["s3-etag"]})
    return sums


def drs_error(status: int, message: str) -> Problem:
    return Problem(status, "drs_error", message)


class DrsObjects:
    """The DSS's files and bundles as DRS objects."""

    def __init__(self, dss: DSS):
        self.dss = dss

    @staticmethod
    def _parse(object_id: str) -> tuple[str, str | None]:
        uuid, dot, version = object_id.partition(".")
        parsed = parse_fqid(f"{uuid.lower()}{dot}{version}")
        if parsed:
            return parsed
        if is_uuid(object_id):
            return object_id.lower(), None
        raise not_found(f"no DRS object {object_id!r}")

    def get(self, object_id: str, base: Base) -> dict:
        uuid, version = self._parse(object_id)
        try:
            return self._file(uuid, self.dss.file_metadata(uuid, version), base)
        except Problem as exc:
            if exc.status != 404:
                raise
        try:
            return self._bundle(uuid, self.dss.manifest(uuid, version), base)
        except Problem as exc:
            if exc.status != 404:
                raise
        raise not_found(f"no DRS object {object_id!r}")

    @staticmethod
    def _file(uuid: str, meta: dict, base: Base) -> dict:
        object_id = f"{uuid}.{meta['version']}"
        when = _time(meta["version"])
        return {"id": object_id, "self_uri": base.uri(object_id), "size": meta["size"],
                "created_time": when, "updated_time": when, "version": meta["version"],
                "mime_type": meta["content-type"], "checksums": file_checksums(meta),
                "access_methods": [{"type": "https", "access_id": ACCESS_ID,
                                    "access_url": {"url": f"{base.url}/{blob_key(meta)}"}}],
                "description": f"DSS file {object_id}"}

    @staticmethod
    def _bundle(uuid: str, manifest: dict, base: Base) -> dict:
        object_id = f"{uuid}.{manifest['version']}"
        when = _time(manifest["version"])
        files = manifest["files"]
        digest = hashlib.sha256("".join(sorted(f["sha256"] for f in files)).encode())
        contents = [{"name": f["name"], "id": f"{f['uuid']}.{f['version']}",
                     "drs_uri": [base.uri(f"{f['uuid']}.{f['version']}")]} for f in files]
        return {"id": object_id, "self_uri": base.uri(object_id),
                "size": sum(f["size"] for f in files), "created_time": when,
                "updated_time": when, "version": manifest["version"],
                "checksums": [{"type": "sha-256", "checksum": digest.hexdigest()}],
                "contents": contents, "description": f"DSS bundle {object_id}"}

    def access(self, object_id: str, access_id: str, base: Base) -> dict:
        found = self.get(object_id, base)
        for method in found.get("access_methods", []):
            if method.get("access_id") == access_id:
                return {"url": method["access_url"]["url"], "headers": []}
        raise not_found(f"no access method {access_id!r} for DRS object {object_id!r}")

    def bulk(self, ids: object, base: Base) -> dict:
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
            raise drs_error(400, "bulk_object_ids must be a non-empty list of ids")
        if len(ids) > MAX_BULK:
            raise drs_error(413, f"at most {MAX_BULK} ids per bulk request")
        resolved, missing = [], []
        for object_id in ids:
            try:
                resolved.append(self.get(object_id, base))
            except Problem as exc:
                if exc.status != 404:
                    raise
                missing.append(object_id)
        return {"summary": {"requested": len(ids), "resolved": len(resolved),
                            "unresolved": len(missing)},
                "unresolved_drs_objects": [{"error_code": 404, "object_ids": missing}]
                if missing else [],
                "resolved_drs_object": resolved}

    @staticmethod
    def service_info(base: Base) -> dict:
        return {"id": "org.hcafs.drs", "name": "hcafs DRS",
                "type": {"group": "org.ga4gh", "artifact": "drs", "version": "1.4.0"},
                "description": "The files and bundles of an hcafs DSS as DRS objects.",
                "organization": {"name": "hcafs", "url": base.url},
                "version": __version__, "maxBulkRequestLength": MAX_BULK,
                "drs": {"maxBulkRequestLength": MAX_BULK}}


# ==================================================================== reading


class DrsError(RemoteError):
    """A DRS object could not be read.  ``kind`` is one of ``malformed``, ``unresolvable``
    (unknown host or prefix), ``not_found``, ``denied``, ``unavailable`` (connection, 5xx,
    bad answer), ``unsupported`` (no usable access method or checksum), ``mismatch``."""

    def __init__(self, kind: str, message: str):
        self.kind = kind
        super().__init__(message)


_HOSTNAME_URI = re.compile(
    r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)"
    r"(?::(?P<port>\d{1,5}))?/(?P<id>[^/].*)$")
_SAFE_ID = "/%:@-._~!$&'()*+,;="


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Resolver:
    """Turns ``drs://`` URIs into object URLs; decides where plain http is allowed."""

    def __init__(self, table: dict[str, str] | None = None, allow_http: bool = False):
        self.table = {k.lower(): v for k, v in (table or {}).items()}
        self.allow_http = allow_http

    def http_allowed(self, url: str) -> bool:
        return self.allow_http or is_loopback(urlsplit(url).hostname or "")

    def object_url(self, uri: str) -> str:
        if not isinstance(uri, str) or not uri[:6].lower() == "drs://":
            raise DrsError("malformed", f"{uri!r} is not a drs:// URI")
        rest = uri[6:]
        if not rest or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in rest):
            raise DrsError("malformed", f"{uri!r} is not a valid drs:// URI")
        match = _HOSTNAME_URI.match(rest)
        if match and not (match["port"] is None and match["host"].lower() in self.table):
            if match["port"] and not 0 < int(match["port"]) < 65536:
                raise DrsError("malformed", f"{uri!r} has no valid port")
            netloc = match["host"] + (f":{match['port']}" if match["port"] else "")
            return f"https://{netloc}{API_PATH}/objects/{quote(match['id'], safe=_SAFE_ID)}"
        if match:
            prefix, accession = match["host"], match["id"]
        elif ":" in rest:
            prefix, _, accession = rest.partition(":")
        else:
            raise DrsError("malformed", f"{uri!r} is neither drs://host/id nor "
                           "drs://prefix:accession")
        if not prefix or not accession:
            raise DrsError("malformed", f"{uri!r} has an empty prefix or accession")
        base = self.table.get(prefix.lower()) or self.table.get(
            prefix.rpartition("/")[2].lower())
        if base is None:
            raise DrsError("unresolvable", f"no resolver for the DRS prefix {prefix!r}")
        encoded = quote(accession, safe="")
        if "{id}" in base:
            return base.replace("{id}", encoded)
        return f"{base.rstrip('/')}{API_PATH}/objects/{encoded}"


def _http_fallback_allowed(exc: requests.exceptions.RequestException) -> bool:
    """An https attempt that failed at the TLS level (not on the certificate): the peer may
    speak plain http."""
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text or isinstance(exc, requests.exceptions.Timeout):
        return False
    return isinstance(exc, requests.exceptions.SSLError | requests.exceptions.ConnectionError) \
        and not _name_unknown(exc)


def _name_unknown(exc: BaseException) -> bool:
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, urllib3.exceptions.NameResolutionError) or \
        "Name or service not known" in str(exc) or "Failed to resolve" in str(exc)


class DrsReader:
    """Reads DRS objects and their bytes over http(s).

    Threading: safe to share; the only shared state is requests' connection pool and the
    remembered scheme of loopback peers (a dict written with single assignments).
    """

    def __init__(self, resolver: Resolver, timeout: tuple[float, float] = (10, 60)):
        self.resolver = resolver
        self.timeout = timeout
        self.session = requests.Session()
        self._plain: dict[str, bool] = {}  # netloc → peer speaks plain http

    # ------------------------------------------------------------ transport

    def _send(self, url: str, headers: dict | None = None, stream: bool = False
              ) -> requests.Response:
        parts = urlsplit(url)
        if parts.scheme == "http" and not self.resolver.http_allowed(url):
            raise DrsError("unsupported", f"plain http is refused for {parts.netloc} "
                           "(only loopback, or --drs-allow-http)")
        if parts.scheme not in ("http", "https"):
            raise DrsError("unsupported", f"cannot fetch {parts.scheme}:// URLs")
        if parts.scheme == "https" and self._plain.get(parts.netloc):
            url = "http" + url[5:]
        try:
            return self._get(url, headers, stream)
        except requests.exceptions.RequestException as exc:
            if parts.scheme == "https" and not self._plain.get(parts.netloc) and \
                    self.resolver.http_allowed(url) and _http_fallback_allowed(exc):
                try:
                    answer = self._get("http" + url[5:], headers, stream)
                except requests.exceptions.RequestException:
                    raise self._translate(url, exc) from exc
                self._plain[parts.netloc] = True
                return answer
            raise self._translate(url, exc) from exc

    def _get(self, url: str, headers: dict | None, stream: bool) -> requests.Response:
        return self.session.get(url, headers=headers, timeout=self.timeout, stream=stream)

    @staticmethod
    def _translate(url: str, exc: requests.exceptions.RequestException) -> DrsError:
        where = urlsplit(url).netloc
        if _name_unknown(exc):
            return DrsError("unresolvable", f"unknown host {urlsplit(url).hostname}")
        if isinstance(exc, requests.exceptions.SSLError):
            return DrsError("unavailable", f"TLS failure talking to {where}")
        return DrsError("unavailable", f"no answer from {where}: {type(exc).__name__}")

    @staticmethod
    def _status_error(response: requests.Response, what: str) -> DrsError:
        try:
            detail = response.json().get("msg") or ""
        except (ValueError, AttributeError):
            detail = ""
        detail = f": {detail}" if detail else ""
        status = response.status_code
        if status == 404:
            return DrsError("not_found", f"{what} does not exist (404{detail})")
        if status in (401, 403):
            return DrsError("denied", f"{what}: access denied ({status}{detail})")
        if status == 400:
            return DrsError("malformed", f"{what}: the DRS server refused the id (400{detail})")
        return DrsError("unavailable", f"{what}: the DRS server answered {status}{detail}")

    def _json(self, url: str, what: str) -> dict:
        for _ in range(MAX_ACCEPTED_RETRIES):
            response = self._send(url)
            with response:
                if response.status_code == 202:
                    time.sleep(min(_seconds(response.headers.get("Retry-After")), 10.0))
                    continue
                if response.status_code != 200:
                    raise self._status_error(response, what)
                try:
                    body = response.json()
                except ValueError as exc:
                    raise DrsError("unavailable", f"{what}: the answer is not JSON") from exc
            if not isinstance(body, dict):
                raise DrsError("unavailable", f"{what}: the answer is not a JSON object")
            return body
        raise DrsError("unavailable", f"{what}: still not ready after "
                       f"{MAX_ACCEPTED_RETRIES} tries (202)")

    # ------------------------------------------------------------ DRS

    def locate(self, uri: str) -> str:
        return self.resolver.object_url(uri)

    def get_object(self, object_url: str) -> dict:
        found = self._json(object_url, f"DRS object {object_url}")
        if not isinstance(found.get("id"), str) or not isinstance(found.get("size"), int):
            raise DrsError("unavailable", f"DRS object {object_url} has no id or size")
        return found

    def member_url(self, bundle_url: str, member: dict) -> str:
        """A bundle member's object URL: its first ``drs_uri``, else its id on the same
        server as the bundle."""
        uris = member.get("drs_uri")
        if isinstance(uris, str):
            uris = [uris]
        if isinstance(uris, list) and uris and isinstance(uris[0], str):
            return self.locate(uris[0])
        if not isinstance(member.get("id"), str):
            raise DrsError("malformed", f"a member of bundle {bundle_url} has no id")
        base = bundle_url.rsplit("/objects/", 1)[0]
        return f"{base}/objects/{quote(member['id'], safe='')}"

    def access(self, found: dict, object_url: str) -> tuple[str, dict[str, str]]:
        """The URL (and headers) to fetch a blob object's bytes from."""
        methods = [m for m in found.get("access_methods") or [] if isinstance(m, dict)]
        usable = [m for m in methods if str(m.get("type", "")).lower() in ("https", "http")]
        for method in usable:
            access_url = method.get("access_url")
            if isinstance(access_url, dict) and isinstance(access_url.get("url"), str):
                return access_url["url"], _headers(access_url.get("headers"))
        for method in usable:
            if isinstance(method.get("access_id"), str):
                where = f"{object_url}/access/{quote(method['access_id'], safe='')}"
                answer = self._json(where, f"access URL {where}")
                if not isinstance(answer.get("url"), str):
                    raise DrsError("unavailable", f"access URL {where} gave no url")
                return answer["url"], _headers(answer.get("headers"))
        kinds = sorted({str(m.get("type")) for m in methods}) or ["none"]
        raise DrsError("unsupported", f"DRS object {object_url} has no https access method "
                       f"(it offers {', '.join(kinds)})")

    def stream(self, url: str, headers: dict[str, str]) -> Iterator[bytes]:
        """The bytes at an access URL, in chunks; failures become :class:`DrsError`."""
        response = self._send(url, headers, stream=True)
        with response:
            if response.status_code != 200:
                raise self._status_error(response, f"access URL {_strip(url)}")
            try:
                yield from response.iter_content(READ_CHUNK)
            except requests.exceptions.RequestException as exc:
                raise DrsError("unavailable", f"reading {_strip(url)} failed: "
                               f"{type(exc).__name__}") from exc


# ------------------------------------------------------------ checksums

# Strongest first; the first one an object offers is the one verified.
_PREFERENCE = ("sha-256", "sha-512", "sha-384", "sha-224", "trunc512", "sha-1", "md5",
               "crc32c", "etag")
_ALIASES = {"sha256": "sha-256", "sha512": "sha-512", "sha384": "sha-384",
            "sha224": "sha-224", "sha1": "sha-1"}
_HASHLIB = {"sha-256": "sha256", "sha-512": "sha512", "sha-384": "sha384",
            "sha-224": "sha224", "trunc512": "sha512", "sha-1": "sha1", "md5": "md5"}


class ChecksumCheck:
    """Verifies the strongest checksum a DRS object offers, fed chunk by chunk.

    ``crc32c`` and a multipart ``etag`` are compared with the DSS checksums of the bytes
    (:class:`~hcafs.checksums.Checksums`); a plain ``etag`` is an MD5.
    """

    def __init__(self, checksums: object):
        offered = {}
        for entry in checksums if isinstance(checksums, list) else []:
            if isinstance(entry, dict) and isinstance(entry.get("checksum"), str) and \
                    isinstance(entry.get("type"), str):
                kind = entry["type"].strip().lower()
                offered.setdefault(_ALIASES.get(kind, kind), entry["checksum"].strip().lower())
        kind = next((k for k in _PREFERENCE if k in offered), None)
        if kind is None:
            names = ", ".join(sorted(offered)) or "none"
            raise DrsError("unsupported", f"no checksum this server can verify ({names})")
        self.kind, self.expected = kind, offered[kind]
        if kind == "etag" and "-" not in self.expected:
            kind = "md5"
        self._hash = hashlib.new(_HASHLIB[kind]) if kind in _HASHLIB else None

    def update(self, chunk: bytes) -> None:
        if self._hash is not None:
            self._hash.update(chunk)

    def verify(self, sums) -> None:
        """Raise :class:`DrsError` ``mismatch`` unless the bytes match the claim."""
        if self._hash is not None:
            got = self._hash.hexdigest()
            if self.kind == "trunc512":
                got = self._hash.digest()[:24].hex()
        else:
            got = sums.crc32c if self.kind == "crc32c" else sums.s3_etag
        if got != self.expected:
            raise DrsError("mismatch", f"{self.kind} of the bytes is {got}, the DRS object "
                           f"says {self.expected}")


def _headers(raw: object) -> dict[str, str]:
    """DRS headers are a list of ``"Name: value"`` strings."""
    headers = {}
    for line in raw if isinstance(raw, list) else []:
        if isinstance(line, str) and ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip()] = value.strip()
    return headers


def _seconds(value: str | None) -> float:
    try:
        return max(float(value or 1), 0.0)
    except ValueError:
        return 1.0


def _strip(url: str) -> str:
    """A URL without its query (signed URLs carry credentials there)."""
    return url.split("?", 1)[0]
