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
import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit

from .. import __version__
from ..errors import Problem, RemoteError, not_found
from ..versions import is_uuid, parse_fqid, version_datetime
from .dss import DSS, blob_key
from .egress import JSON_CAP, REFUSED, Answer, Egress, EgressError, credential_headers
from .passports import DrsGuard
from .store import S3Store

log = logging.getLogger(__name__)

API_PATH = "/ga4gh/drs/v1"
ACCESS_ID = "https"
S3_ACCESS_ID = "s3"
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
    """The DSS's files and bundles as DRS objects.

    ``max_bulk`` is the ``maxBulkRequestLength`` announced and enforced; ``bulk`` False
    turns the bulk calls off (``POST /objects`` and ``POST /objects/access`` answer 404
    and service-info announces no length).  ``guard`` protects the objects
    (:class:`~.passports.DrsGuard`); a protected object's ``https`` method has an
    ``access_id`` only, and its access URL is signed and expires.  On an S3 store, blob
    objects also offer an ``s3`` method naming the blob's object in the bucket.
    """

    def __init__(self, dss: DSS, max_bulk: int = MAX_BULK, bulk: bool = True,
                 guard: DrsGuard | None = None):
        self.dss = dss
        self.max_bulk = max_bulk
        self.bulk_enabled = bulk
        self.guard = guard or DrsGuard()
        store = dss.store
        self._s3 = f"s3://{store.bucket}/{store.prefix}" if isinstance(store, S3Store) \
            else None

    @staticmethod
    def _parse(object_id: str) -> tuple[str, str | None]:
        uuid, dot, version = object_id.partition(".")
        parsed = parse_fqid(f"{uuid.lower()}{dot}{version}")
        if parsed:
            return parsed
        if is_uuid(object_id):
            return object_id.lower(), None
        raise not_found(f"no DRS object {object_id!r}")

    def _find(self, object_id: str) -> tuple[str, dict]:
        """``("file", metadata)`` or ``("bundle", manifest)``, else a 404 Problem."""
        uuid, version = self._parse(object_id)
        try:
            return "file", self.dss.file_metadata(uuid, version)
        except Problem as exc:
            if exc.status != 404:
                raise
        try:
            return "bundle", self.dss.manifest(uuid, version)
        except Problem as exc:
            if exc.status != 404:
                raise
        raise not_found(f"no DRS object {object_id!r}")

    def get(self, object_id: str, base: Base) -> dict:
        kind, found = self._find(object_id)
        uuid = self._parse(object_id)[0]
        if kind == "file":
            return self._file(uuid, found, base)
        return self._bundle(uuid, found, base)

    def _file(self, uuid: str, meta: dict, base: Base) -> dict:
        object_id = f"{uuid}.{meta['version']}"
        when = _time(meta["version"])
        https: dict = {"type": "https", "access_id": ACCESS_ID}
        if not self.guard.protected:
            https["access_url"] = {"url": f"{base.url}/{blob_key(meta)}"}
        methods = [https]
        if self._s3:
            methods.append({"type": "s3", "access_id": S3_ACCESS_ID,
                            "access_url": {"url": self._s3 + blob_key(meta)}})
        return {"id": object_id, "self_uri": base.uri(object_id), "size": meta["size"],
                "created_time": when, "updated_time": when, "version": meta["version"],
                "mime_type": meta["content-type"], "checksums": file_checksums(meta),
                "access_methods": methods, "description": f"DSS file {object_id}"}

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
        kind, meta = self._find(object_id)
        if kind == "file" and access_id == ACCESS_ID:
            key = blob_key(meta)
            if self.guard.protected:
                return {"url": f"{base.url}{API_PATH}/{key}?{self.guard.signer.query(key)}",
                        "headers": []}
            return {"url": f"{base.url}/{key}", "headers": []}
        if kind == "file" and access_id == S3_ACCESS_ID and self._s3:
            return {"url": self._s3 + blob_key(meta), "headers": []}
        raise not_found(f"no access method {access_id!r} for DRS object {object_id!r}")

    def _bulk_ids(self, ids: object, field: str) -> list:
        if not self.bulk_enabled:
            raise drs_error(404, "this DRS server offers no bulk requests")
        if not isinstance(ids, list) or not ids:
            raise drs_error(400, f"{field} must be a non-empty list")
        if len(ids) > self.max_bulk:
            raise drs_error(413, f"at most {self.max_bulk} ids per bulk request")
        return ids

    def bulk(self, ids: object, base: Base) -> dict:
        ids = self._bulk_ids(ids, "bulk_object_ids")
        if not all(isinstance(i, str) for i in ids):
            raise drs_error(400, "bulk_object_ids must be a list of ids")
        resolved, missing = [], []
        for object_id in ids:
            try:
                resolved.append(self.get(object_id, base))
            except Problem as exc:
                if exc.status != 404:
                    raise
                missing.append(object_id)
        return _bulk_answer(len(ids), missing, "resolved_drs_object", resolved)

    def bulk_access(self, wanted: object, base: Base) -> dict:
        """``POST /objects/access``: one access URL per (object id, access id)."""
        wanted = self._bulk_ids(wanted, "bulk_object_access_ids")
        pairs = []
        for entry in wanted:
            ids = entry.get("bulk_access_ids") if isinstance(entry, dict) else None
            if not isinstance(entry, dict) or not isinstance(entry.get("bulk_object_id"), str) \
                    or not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise drs_error(400, "every bulk_object_access_ids entry needs a "
                                "bulk_object_id and a list of bulk_access_ids")
            pairs += [(entry["bulk_object_id"], access_id) for access_id in ids]
        if len(pairs) > self.max_bulk:
            raise drs_error(413, f"at most {self.max_bulk} access ids per bulk request")
        resolved, missing = [], []
        for object_id, access_id in pairs:
            try:
                found = self.access(object_id, access_id, base)
            except Problem as exc:
                if exc.status != 404:
                    raise
                missing.append(object_id)
                continue
            resolved.append(dict(found, drs_object_id=object_id, drs_access_id=access_id))
        return _bulk_answer(len(pairs), missing, "resolved_drs_object_access_urls", resolved)

    def options(self, object_id: str) -> dict:
        """``OPTIONS /objects/{id}``: the authorization types the object takes."""
        self._find(object_id)
        return self.guard.authorizations(object_id)

    def bulk_options(self, ids: object) -> dict:
        ids = self._bulk_ids(ids, "bulk_object_ids")
        resolved, missing = [], []
        for object_id in ids:
            try:
                resolved.append(self.options(object_id) if isinstance(object_id, str)
                                else None)
            except Problem as exc:
                if exc.status != 404:
                    raise
                missing.append(object_id)
        if None in resolved:
            raise drs_error(400, "bulk_object_ids must be a list of ids")
        return _bulk_answer(len(ids), missing, "resolved_drs_object", resolved)

    def check_blob(self, key: str, expires: str | None, signature: str | None) -> None:
        """A signed blob URL of a protected server: valid and not expired, or 403."""
        if not self.guard.protected:
            raise not_found("this DRS server hands out plain blob URLs")
        self.guard.signer.check(f"blobs/{key}", expires, signature)

    def service_info(self, base: Base) -> dict:
        info = {"id": "org.hcafs.drs", "name": "hcafs DRS",
                "type": {"group": "org.ga4gh", "artifact": "drs", "version": "1.4.0"},
                "description": "The files and bundles of an hcafs DSS as DRS objects.",
                "organization": {"name": "hcafs", "url": base.url},
                "version": __version__}
        if self.bulk_enabled:
            info["maxBulkRequestLength"] = self.max_bulk
            info["drs"] = {"maxBulkRequestLength": self.max_bulk}
        return info


def _bulk_answer(requested: int, missing: list, field: str, resolved: list) -> dict:
    return {"summary": {"requested": requested, "resolved": len(resolved),
                        "unresolved": len(missing)},
            "unresolved_drs_objects": [{"error_code": 404, "object_ids": missing}]
            if missing else [],
            field: resolved}


# ==================================================================== reading


class DrsError(RemoteError):
    """A DRS object could not be read.  ``kind`` is one of ``malformed``, ``unresolvable``
    (unknown host or prefix), ``not_found``, ``denied``, ``refused`` (the egress policy),
    ``unavailable`` (connection, 5xx, bad answer), ``too_large``, ``unsupported`` (no usable
    access method or checksum), ``mismatch``."""

    def __init__(self, kind: str, message: str, status: int | None = None,
                 transient: bool = False):
        self.kind = kind
        self.status = status
        self._transient = transient  # no answer, a cut answer, a 5xx: worth another try
        super().__init__(message)

    @property
    def transient(self) -> bool:
        return self._transient


_HOSTNAME_URI = re.compile(
    r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)"
    r"(?::(?P<port>\d{1,5}))?/(?P<id>[^/].*)\Z")
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
            if any(part in (".", "..") for part in unquote(match["id"]).split("/")):
                # the id stays inside the objects path of the DRS API it names
                raise DrsError("malformed", f"{uri!r}: '.' and '..' are not parts of an id")
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


@dataclass(frozen=True)
class Auth:
    """What requests to one DRS host carry: ``kind`` ``None``, ``BearerAuth`` or
    ``PassportAuth`` (the DRS names), and the secrets that go with it.  The secrets are
    never shown (``repr`` hides them); :attr:`label` is what messages say."""

    kind: str = "None"
    bearer: str | None = field(default=None, repr=False)
    passports: tuple[str, ...] = field(default=(), repr=False)
    s3: dict | None = field(default=None, repr=False)
    note: str = ""  # why no credential was sent, when one exists for others

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.bearer}"} if self.kind == "BearerAuth" \
            else {}

    @property
    def label(self) -> str:
        if self.kind == "None":
            return "no credentials" + (f" ({self.note})" if self.note else "")
        return self.kind

    def hides(self, text: str) -> bool:
        """Whether ``text`` holds one of the secrets."""
        secrets = [self.bearer or "", *self.passports,
                   *((self.s3 or {}).get(k, "") for k in ("access_key_id",
                                                         "secret_access_key"))]
        return any(len(x) >= 4 and x in text for x in secrets)


NO_AUTH = Auth()
MSG_CAP = 200
ERROR_CAP = 16 * 1024


@dataclass(frozen=True)
class Access:
    """Where a blob's bytes are: ``kind`` ``https`` (``url`` and credential
    ``headers``) or ``s3`` (``url`` ``s3://bucket/key``)."""

    kind: str
    url: str
    headers: dict = field(default_factory=dict, repr=False)
    access_id: str | None = None


class DrsReader:
    """Reads DRS objects and their bytes, every fetch through one :class:`Egress`.

    A ``drs://host/id`` URI names an https URL; a peer whose https attempt fails at the
    TLS level (not on its certificate) is tried again over plain http when the egress
    policy lets plain http reach it, and remembered as plain.

    Per DRS server (the URL before ``/objects/``) it remembers its bulk length
    (service-info, read once) and the authorization types it announced (``OPTIONS``,
    asked once).  ``per_host`` bounds the requests in flight to one host.

    Threading: safe to share; the remembered facts are dicts written with single
    assignments, and the per-host gates are made under a lock.
    """

    def __init__(self, resolver: Resolver, egress: Egress, per_host: int = 16):
        self.resolver = resolver
        self.egress = egress
        self.per_host = per_host
        self._plain: dict[str, bool] = {}  # netloc → peer speaks plain http
        self._bulk: dict[str, int | None] = {}  # DRS base → maxBulkRequestLength
        self._types: dict[str, list[str] | None] = {}  # DRS base → supported auth types
        self._gates: dict[str, threading.BoundedSemaphore] = {}
        self._asking: dict[str, threading.Lock] = {}  # DRS base → its service-info read
        self._lock = threading.Lock()

    # ------------------------------------------------------------ transport

    def _gate(self, url: str) -> threading.BoundedSemaphore:
        netloc = urlsplit(url).netloc
        with self._lock:
            gate = self._gates.get(netloc)
            if gate is None:
                gate = self._gates[netloc] = threading.BoundedSemaphore(self.per_host)
            return gate

    def _send(self, url: str, what: str, headers: dict[str, str] | None = None,
              credentials: dict[str, str] | None = None, method: str = "GET",
              body: bytes | None = None) -> Answer:
        netloc = urlsplit(url).netloc
        if url[:8].lower() == "https://" and self._plain.get(netloc):
            url = "http://" + url[8:]
        try:
            try:
                return self.egress.request(method, url, headers, credentials, body)
            except EgressError as exc:
                if exc.kind != "tls" or not url[:8].lower() == "https://":
                    raise
                answer = self._fallback("http://" + url[8:], headers, credentials, exc,
                                        method, body)
                self._plain[netloc] = True
                return answer
        except EgressError as exc:
            raise _translate(exc, what) from exc

    def _fallback(self, url: str, headers, credentials, first: EgressError,
                  method: str = "GET", body: bytes | None = None) -> Answer:
        try:
            target = self.egress.policy.check(url)
        except EgressError:
            raise first from None
        if not self.egress.policy.http_allowed(target.addresses):
            raise first
        return self.egress.request(method, url, headers, credentials, body)

    @staticmethod
    def _status_error(status: int, what: str, auth: Auth = NO_AUTH,
                      msg: str | None = None) -> DrsError:
        """An answer other than 200.  Of the peer's own words only a denial's ``msg``
        is repeated (cut, and never when it holds a credential)."""
        if status == 404:
            return DrsError("not_found", f"{what} does not exist (404)", status)
        if status in (401, 403):
            said = f": {msg[:MSG_CAP]}" if msg and not auth.hides(msg) else ""
            return DrsError("denied", f"{what}: access denied ({status}), tried "
                            f"{auth.label}{said}", status)
        if status == 400:
            return DrsError("malformed", f"{what}: the DRS server refused the id (400)",
                            status)
        return DrsError("unavailable", f"{what}: the DRS server answered {status}", status,
                        transient=status >= 500 or status == 429)

    @staticmethod
    def _denial_msg(answer: Answer) -> str | None:
        if answer.status not in (401, 403):
            return None
        try:
            body = answer.json(ERROR_CAP)
        except EgressError:
            return None
        msg = body.get("msg") if isinstance(body, dict) else None
        if not isinstance(msg, str):
            return None
        return "".join(c if c.isprintable() else " " for c in msg[:MSG_CAP])

    def _json(self, url: str, what: str, auth: Auth = NO_AUTH, method: str = "GET",
              payload: dict | None = None) -> dict:
        body = None
        headers = {"Accept": "application/json", "Accept-Encoding": "gzip, deflate"}
        if payload is not None:
            body = json.dumps(payload).encode()
            headers["Content-Type"] = "application/json"
        # The bearer goes as credentials: the egress sends those to the URL's own origin
        # only, never on after a redirect to another host.
        for _ in range(MAX_ACCEPTED_RETRIES):
            with self._gate(url), self._send(url, what, headers, auth.headers or None,
                                             method, body) as answer:
                if answer.status == 202:
                    time.sleep(min(_seconds(answer.headers.get("Retry-After")), 10.0))
                    continue
                if answer.status != 200:
                    raise self._status_error(answer.status, what, auth,
                                             self._denial_msg(answer))
                try:
                    found = answer.json(JSON_CAP)
                except EgressError as exc:
                    raise _translate(exc, what) from exc
            if not isinstance(found, dict):
                raise DrsError("unavailable", f"{what}: the answer is not a JSON object")
            return found
        raise DrsError("unavailable", f"{what}: still not ready after "
                       f"{MAX_ACCEPTED_RETRIES} tries (202)")

    # ------------------------------------------------------------ DRS servers

    def locate(self, uri: str) -> str:
        return self.resolver.object_url(uri)

    @staticmethod
    def split(object_url: str) -> tuple[str, str]:
        """``(DRS base, object id)`` of an object URL (the base ends before
        ``/objects/``; the id is unquoted)."""
        base, _, quoted = object_url.rpartition("/objects/")
        return base, unquote(quoted)

    def max_bulk(self, base: str) -> int | None:
        """The server's ``maxBulkRequestLength`` (service-info, read once), or None when
        it offers no bulk calls."""
        if base in self._bulk:
            return self._bulk[base]
        with self._lock:
            asking = self._asking.setdefault(base, threading.Lock())
        with asking:  # one read per server, however many jobs ask at once
            if base not in self._bulk:
                self._bulk[base] = self._read_bulk(base)
        return self._bulk[base]

    def _read_bulk(self, base: str) -> int | None:
        length = None
        try:
            info = self._json(f"{base}/service-info", f"DRS service-info of {base}")
            found = info.get("maxBulkRequestLength")
            if found is None and isinstance(info.get("drs"), dict):
                found = info["drs"].get("maxBulkRequestLength")
            if isinstance(found, int) and not isinstance(found, bool) and found > 0:
                length = min(found, MAX_BULK)
        except DrsError as exc:
            log.info("DRS server %s: no service-info (%s); resolving one at a time",
                     base, exc.kind)
        return length

    def no_bulk(self, base: str) -> None:
        self._bulk[base] = None

    def auth_types(self, object_url: str) -> list[str] | None:
        """The authorization types the server announces (``OPTIONS`` on one of its
        objects, asked once per server), or None when it announces none."""
        base = self.split(object_url)[0]
        if base in self._types:
            return self._types[base]
        types = None
        try:
            with self._gate(object_url), self._send(
                    object_url, "DRS authorizations", {"Accept": "application/json"},
                    None, "OPTIONS") as answer:
                if answer.status == 200:
                    found = answer.json(ERROR_CAP)
                    listed = found.get("supported_types") if isinstance(found, dict) \
                        else None
                    if isinstance(listed, list) and all(isinstance(t, str) for t in listed):
                        types = listed or ["None"]
        except (DrsError, EgressError):
            types = None
        self._types[base] = types
        return types

    def auth_for(self, object_url: str, entry) -> Auth:
        """The :class:`Auth` a credentials entry gives for this server: the type it
        announced that the entry holds (passports, then bearer), else the entry's bearer
        token, else its passports; an entry with s3 credentials only sends nothing to
        the DRS server."""
        if entry is None:
            return NO_AUTH
        s3 = entry.s3
        if not (entry.bearer or entry.passports):
            return Auth(s3=s3)
        types = self.auth_types(object_url) or []
        if entry.passports and "PassportAuth" in types:
            return Auth("PassportAuth", passports=entry.passports, s3=s3)
        if entry.bearer and ("BearerAuth" in types or "BasicAuth" not in types):
            return Auth("BearerAuth", bearer=entry.bearer, s3=s3)
        if entry.passports:
            return Auth("PassportAuth", passports=entry.passports, s3=s3)
        return Auth(s3=s3)

    # ------------------------------------------------------------ objects

    def get_object(self, object_url: str, auth: Auth = NO_AUTH) -> dict:
        what = f"DRS object {_strip(object_url)}"
        if auth.kind == "PassportAuth":
            found = self._json(object_url, what, auth, "POST",
                               {"passports": list(auth.passports)})
        else:
            found = self._json(object_url, what, auth)
        return _checked(found, object_url)

    def bulk_objects(self, base: str, ids: list[str], auth: Auth = NO_AUTH
                     ) -> tuple[dict[str, dict], dict[str, int]]:
        """``POST /objects``: the objects found (by requested id) and the error code of
        each id the server left unresolved.  An object the server answers under another
        id than was asked (a bare uuid → its FQID) is matched by its ``self_uri`` or by
        the order of the answer."""
        payload: dict = {"bulk_object_ids": ids}
        if auth.kind == "PassportAuth":
            payload["passports"] = list(auth.passports)
        answer = self._json(f"{base}/objects", f"DRS bulk request to {base}", auth,
                            "POST", payload)
        unresolved: dict[str, int] = {}
        for group in answer.get("unresolved_drs_objects") or []:
            if isinstance(group, dict) and isinstance(group.get("object_ids"), list):
                code = group.get("error_code")
                for object_id in group["object_ids"]:
                    if isinstance(object_id, str):
                        unresolved[object_id] = code if isinstance(code, int) else 500
        found: dict[str, dict] = {}
        wanted = [i for i in ids if i not in unresolved]
        listed = [o for o in answer.get("resolved_drs_object") or [] if isinstance(o, dict)]
        by_id = {o.get("id"): o for o in listed}
        for position, object_id in enumerate(wanted):
            match = by_id.get(object_id)
            if match is None and len(listed) == len(wanted):
                match = listed[position]
            if match is None:
                unresolved[object_id] = 500
                continue
            try:
                found[object_id] = _checked(match, f"{base}/objects/{object_id}")
            except DrsError:
                unresolved[object_id] = 500
        return found, unresolved

    def bulk_access(self, base: str, pairs: list[tuple[str, str]], auth: Auth = NO_AUTH
                    ) -> dict[tuple[str, str], Access]:
        """``POST /objects/access``: an access URL per ``(object id, access id)``; the
        pairs the server did not resolve are missing from the answer."""
        grouped: dict[str, list[str]] = {}
        for object_id, access_id in pairs:
            grouped.setdefault(object_id, []).append(access_id)
        payload: dict = {"bulk_object_access_ids": [
            {"bulk_object_id": o, "bulk_access_ids": a} for o, a in grouped.items()]}
        if auth.kind == "PassportAuth":
            payload["passports"] = list(auth.passports)
        answer = self._json(f"{base}/objects/access", f"DRS bulk access request to {base}",
                            auth, "POST", payload)
        found = {}
        for entry in answer.get("resolved_drs_object_access_urls") or []:
            if isinstance(entry, dict) and isinstance(entry.get("url"), str) and \
                    isinstance(entry.get("drs_object_id"), str):
                key = (entry["drs_object_id"], str(entry.get("drs_access_id")))
                if key in set(pairs):
                    found[key] = Access("https", entry["url"],
                                        credential_headers(entry.get("headers")), key[1])
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

    # ------------------------------------------------------------ access

    @staticmethod
    def method(found: dict, auth: Auth = NO_AUTH) -> dict:
        """The access method to use: ``s3`` when the credentials hold s3 keys and the
        object offers it, else the first ``https`` (or ``http``) one."""
        methods = [m for m in found.get("access_methods") or [] if isinstance(m, dict)]
        kinds = {m_type: m for m in reversed(methods)
                 if (m_type := str(m.get("type", "")).lower())}
        if auth.s3 and "s3" in kinds:
            return kinds["s3"]
        for kind in ("https", "http"):
            if kind in kinds:
                return kinds[kind]
        offered = sorted({str(m.get("type"))[:40] for m in methods}) or ["none"]
        hint = " (s3 needs s3 credentials)" if "s3" in kinds else ""
        raise DrsError("unsupported", f"DRS object {found.get('id')!s:.200} has no usable "
                       f"access method (it offers {', '.join(offered)}){hint}")

    def access(self, found: dict, object_url: str, auth: Auth = NO_AUTH) -> Access:
        """Where to fetch a blob object's bytes from: the chosen method's ``access_url``,
        else its ``access_id`` resolved through ``/access/{access_id}``."""
        method = self.method(found, auth)
        kind = "s3" if str(method.get("type")).lower() == "s3" else "https"
        access_url = method.get("access_url")
        if isinstance(access_url, dict) and isinstance(access_url.get("url"), str):
            return Access(kind, access_url["url"],
                          credential_headers(access_url.get("headers")))
        if not isinstance(method.get("access_id"), str):
            raise DrsError("unsupported", f"DRS object {_strip(object_url)}: its access "
                           "method has neither access_url nor access_id")
        where = f"{object_url}/access/{quote(method['access_id'], safe='')}"
        if auth.kind == "PassportAuth":
            answer = self._json(where, f"access URL {_strip(where)}", auth, "POST",
                                {"passports": list(auth.passports)})
        else:
            answer = self._json(where, f"access URL {_strip(where)}", auth)
        if not isinstance(answer.get("url"), str):
            raise DrsError("unavailable", f"access URL {_strip(where)} gave no url")
        return Access(kind, answer["url"], credential_headers(answer.get("headers")),
                      method["access_id"])

    def stream(self, url: str, credentials: dict[str, str], cap: int, start: int = 0,
               end: int | None = None) -> Iterator[bytes]:
        """The bytes at an access URL, in chunks, at most ``cap`` of them; from ``start``
        (to ``end``, exclusive) with a Range request; failures become
        :class:`DrsError`.  A server that ignores the Range gives ``kind``
        ``no_range``."""
        what = "the access URL"
        headers = {"Accept-Encoding": "identity"}
        if start or end is not None:
            headers["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        with self._gate(url), self._send(url, what, headers, credentials) as answer:
            if start or end is not None:
                if answer.status == 200:
                    raise DrsError("no_range", f"{what}: the server ignores ranges")
                if answer.status == 206 and not _range_starts(answer, start):
                    raise DrsError("no_range", f"{what}: the server sent another range")
            if answer.status not in (200, 206):
                raise self._status_error(answer.status, what, NO_AUTH,
                                         self._denial_msg(answer))
            try:
                yield from answer.chunks(cap)
            except EgressError as exc:
                if exc.kind == "too_large":
                    raise DrsError("mismatch", f"more bytes than the {cap} the DRS object "
                                   "says") from exc
                raise _translate(exc, what) from exc


def _range_starts(answer: Answer, start: int) -> bool:
    match = re.match(r"^\s*bytes\s+(\d+)-", answer.headers.get("Content-Range") or "")
    return bool(match) and int(match.group(1)) == start


def _checked(found: dict, object_url: str) -> dict:
    if not isinstance(found.get("id"), str) or not isinstance(found.get("size"), int) \
            or isinstance(found["size"], bool) or found["size"] < 0:
        raise DrsError("unavailable", f"DRS object {_strip(object_url)} has no id or size")
    return found


def _translate(exc: EgressError, what: str) -> DrsError:
    """An egress failure in the words of the DRS reader (it names ``what``, never the
    address that was refused or failed)."""
    if exc.kind == "refused":
        return DrsError("refused", f"{what}: {REFUSED}")
    if exc.kind == "unavailable" and str(exc) == "no answer":
        return DrsError("unavailable", f"{what}: no answer", transient=True)
    return DrsError(_EGRESS_KINDS.get(exc.kind, exc.kind), f"{what}: {exc}",
                    transient=exc.kind == "unavailable")


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
