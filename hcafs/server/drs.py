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

* ``drs://host[:port]/id`` becomes ``https://host[:port]/ga4gh/drs/v1/objects/id``.  Every
  fetch (objects, access URLs, each redirect hop) goes through :class:`~.egress.Egress`,
  whose policy decides which addresses may be reached and where plain http may be used.
* Compact ids ``drs://prefix:accession`` (also ``drs://provider/prefix:accession``, and
  ``drs://prefix/accession`` when ``prefix`` is in the table) go through the resolver table
  ``{"prefix": "https://host:port"}`` (or a URL pattern holding ``{id}``).
* Every failure is a :class:`DrsError` whose ``kind`` says what went wrong; its message
  names what was being read, never what a refused or failed fetch returned.  A DRS JSON
  document is read up to :data:`~.egress.JSON_CAP` (decoded), a blob up to its declared
  size.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from .. import __version__
from ..errors import Problem, RemoteError, not_found
from ..versions import is_uuid, parse_fqid, version_datetime
from .dss import DSS, blob_key
from .egress import JSON_CAP, REFUSED, Answer, Egress, EgressError, credential_headers

log = logging.getLogger(__name__)

API_PATH = "/ga4gh/drs/v1"
ACCESS_ID = "https"
MAX_BULK = 1000
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
    (unknown host or prefix), ``not_found``, ``denied``, ``refused`` (the egress policy),
    ``unavailable`` (connection, 5xx, bad answer), ``too_large``, ``unsupported`` (no usable
    access method or checksum), ``mismatch``."""

    def __init__(self, kind: str, message: str):
        self.kind = kind
        super().__init__(message)


_HOSTNAME_URI = re.compile(
    r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)"
    r"(?::(?P<port>\d{1,5}))?/(?P<id>[^/].*)$")
_SAFE_ID = "/%:@-._~!$&'()*+,;="


class Resolver:
    """Turns ``drs://`` URIs into object URLs (where they are fetched from is
    :class:`~.egress.EgressPolicy`'s business)."""

    def __init__(self, table: dict[str, str] | None = None):
        self.table = {k.lower(): v for k, v in (table or {}).items()}

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


# EgressError kind → DrsError kind (the rest keep their name).
_EGRESS_KINDS = {"tls": "unavailable", "certificate": "unavailable",
                 "redirects": "unavailable"}


class DrsReader:
    """Reads DRS objects and their bytes, every fetch through one :class:`Egress`.

    A ``drs://host/id`` URI names an https URL; a peer whose https attempt fails at the
    TLS level (not on its certificate) is tried again over plain http when the egress
    policy lets plain http reach it, and remembered as plain.

    Threading: safe to share; the only shared state is the remembered scheme of plain
    http peers (a dict written with single assignments).
    """

    def __init__(self, resolver: Resolver, egress: Egress):
        self.resolver = resolver
        self.egress = egress
        self._plain: dict[str, bool] = {}  # netloc → peer speaks plain http

    # ------------------------------------------------------------ transport

    def _send(self, url: str, what: str, headers: dict[str, str] | None = None,
              credentials: dict[str, str] | None = None) -> Answer:
        netloc = urlsplit(url).netloc
        if url[:8].lower() == "https://" and self._plain.get(netloc):
            url = "http://" + url[8:]
        try:
            try:
                return self.egress.get(url, headers, credentials)
            except EgressError as exc:
                if exc.kind != "tls" or not url[:8].lower() == "https://":
                    raise
                answer = self._fallback("http://" + url[8:], headers, credentials, exc)
                self._plain[netloc] = True
                return answer
        except EgressError as exc:
            raise _translate(exc, what) from exc

    def _fallback(self, url: str, headers, credentials, first: EgressError) -> Answer:
        try:
            target = self.egress.policy.check(url)
        except EgressError:
            raise first from None
        if not self.egress.policy.http_allowed(target.addresses):
            raise first
        return self.egress.get(url, headers, credentials)

    @staticmethod
    def _status_error(status: int, what: str) -> DrsError:
        """An answer other than 200; the peer's own words are not repeated."""
        if status == 404:
            return DrsError("not_found", f"{what} does not exist (404)")
        if status in (401, 403):
            return DrsError("denied", f"{what}: access denied ({status})")
        if status == 400:
            return DrsError("malformed", f"{what}: the DRS server refused the id (400)")
        return DrsError("unavailable", f"{what}: the DRS server answered {status}")

    def _json(self, url: str, what: str) -> dict:
        for _ in range(MAX_ACCEPTED_RETRIES):
            with self._send(url, what, {"Accept": "application/json",
                                        "Accept-Encoding": "gzip, deflate"}) as answer:
                if answer.status == 202:
                    time.sleep(min(_seconds(answer.headers.get("Retry-After")), 10.0))
                    continue
                if answer.status != 200:
                    raise self._status_error(answer.status, what)
                try:
                    body = answer.json(JSON_CAP)
                except EgressError as exc:
                    raise _translate(exc, what) from exc
            if not isinstance(body, dict):
                raise DrsError("unavailable", f"{what}: the answer is not a JSON object")
            return body
        raise DrsError("unavailable", f"{what}: still not ready after "
                       f"{MAX_ACCEPTED_RETRIES} tries (202)")

    # ------------------------------------------------------------ DRS

    def locate(self, uri: str) -> str:
        return self.resolver.object_url(uri)

    def get_object(self, object_url: str) -> dict:
        found = self._json(object_url, f"DRS object {_strip(object_url)}")
        if not isinstance(found.get("id"), str) or not isinstance(found.get("size"), int) \
                or found["size"] < 0:
            raise DrsError("unavailable", f"DRS object {_strip(object_url)} has no id or size")
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
        """The URL (and credential headers) to fetch a blob object's bytes from."""
        methods = [m for m in found.get("access_methods") or [] if isinstance(m, dict)]
        usable = [m for m in methods if str(m.get("type", "")).lower() in ("https", "http")]
        for method in usable:
            access_url = method.get("access_url")
            if isinstance(access_url, dict) and isinstance(access_url.get("url"), str):
                return access_url["url"], credential_headers(access_url.get("headers"))
        for method in usable:
            if isinstance(method.get("access_id"), str):
                where = f"{object_url}/access/{quote(method['access_id'], safe='')}"
                answer = self._json(where, f"access URL {_strip(where)}")
                if not isinstance(answer.get("url"), str):
                    raise DrsError("unavailable", f"access URL {_strip(where)} gave no url")
                return answer["url"], credential_headers(answer.get("headers"))
        kinds = sorted({str(m.get("type"))[:40] for m in methods}) or ["none"]
        raise DrsError("unsupported", f"DRS object {_strip(object_url)} has no https access "
                       f"method (it offers {', '.join(kinds)})")

    def stream(self, url: str, credentials: dict[str, str], cap: int) -> Iterator[bytes]:
        """The bytes at an access URL, in chunks, at most ``cap`` of them; failures
        become :class:`DrsError`."""
        what = "the access URL"
        with self._send(url, what, {"Accept-Encoding": "identity"}, credentials) as answer:
            if answer.status != 200:
                raise self._status_error(answer.status, what)
            try:
                yield from answer.chunks(cap)
            except EgressError as exc:
                if exc.kind == "too_large":
                    raise DrsError("mismatch", f"more bytes than the {cap} the DRS object "
                                   "says") from exc
                raise _translate(exc, what) from exc


def _translate(exc: EgressError, what: str) -> DrsError:
    """An egress failure in the words of the DRS reader (it names ``what``, never the
    address that was refused or failed)."""
    if exc.kind == "refused":
        return DrsError("refused", f"{what}: {REFUSED}")
    if exc.kind == "unavailable" and str(exc) == "no answer":
        return DrsError("unavailable", f"{what}: no answer")
    return DrsError(_EGRESS_KINDS.get(exc.kind, exc.kind), f"{what}: {exc}")


# ------------------------------------------------------------ checksums

# The first one an object offers is the one verified: sha-256 (what the DSS keeps), then
# the other SHA-2 sums, then the weak ones, whose results say "verified by KIND only".
_PREFERENCE = ("sha-256", "sha-512", "sha-384", "trunc512", "sha-224", "sha-1", "md5",
               "crc32c", "etag")
STRONG = frozenset(("sha-256", "sha-512", "sha-384", "trunc512", "sha-224"))
_ALIASES = {"sha256": "sha-256", "sha512": "sha-512", "sha384": "sha-384",
            "sha224": "sha-224", "sha1": "sha-1"}
_HASHLIB = {"sha-256": "sha256", "sha-512": "sha512", "sha-384": "sha384",
            "sha-224": "sha224", "trunc512": "sha512", "sha-1": "sha1", "md5": "md5"}


class ChecksumCheck:
    """Verifies the strongest checksum a DRS object offers, fed chunk by chunk.

    ``crc32c`` and a multipart ``etag`` are compared with the DSS checksums of the bytes
    (:class:`~hcafs.checksums.Checksums`); a plain ``etag`` is an MD5.  :attr:`label` says
    what the bytes were checked against (``"verified by md5 only"`` for a weak sum).
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
        if got != self.expected:  # what the bytes hash to is not said: they are not ours
            raise DrsError("mismatch", f"the bytes do not match the {self.kind} the DRS "
                           "object gives")

    @property
    def label(self) -> str:
        return f"verified by {self.kind}" + ("" if self.kind in STRONG else " only")


def _seconds(value: str | None) -> float:
    try:
        return max(float(value or 1), 0.0)
    except ValueError:
        return 1.0


def _strip(url: str) -> str:
    """A URL without its query (signed URLs carry credentials there)."""
    return url.split("?", 1)[0]
