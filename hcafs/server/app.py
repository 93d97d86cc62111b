"""HTTP for the DSS: routing, parameters, paging headers, blobs and errors.

Handlers stay short: parse and validate the request, call :class:`~.dss.DSS` (or
:class:`~.drs.DrsObjects`, :class:`~.imports.Importer`), render.  Every error leaves through
:meth:`App._error`, in the dialect of the API it belongs to: DSS paths answer
``application/problem+json`` ``{status, code, title, stacktrace}``, ``/ga4gh/drs/v1`` paths
DRS ``{msg, status_code}``, and ``/v2`` (the Seven Bridges import API) ``{status, code,
message, more_info}``.  Every 5xx carries ``Retry-After``.  Repeated query parameters are
tolerated (the first one counts), because the ``hca`` CLI repeats them when it follows a
``Link``.

Two answers come from the HTTP layer itself, before any handler runs, and are
``application/problem+json`` on every path: **413** for a request body over its limit
(``--max-json-body`` for the methods that take JSON; a few ignored bytes for GET and HEAD,
since ``sevenbridges-python`` sends ``null`` with every GET), decided from
``Content-Length`` before reading and enforced while reading a chunked body; and **500** for
an unexpected exception, which carries an ``error_id`` and never a traceback (the traceback
goes to the log under that id).

Every ``/v2`` answer carries the caller's file budget (``X-RateLimit-*``); each ``/v2``
request counts against the caller's request budget first (429 past it).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from urllib.parse import urlencode

from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from ..config import DEFAULT_MAX_JSON_BODY
from ..errors import HcafsError, Problem, bad_request
from ..versions import now_version
from . import documents, metrics, spec
from .auth import Identity, Tokens, require_admin
from .drs import API_PATH as DRS_PATH
from .drs import Base, DrsObjects
from .dss import DSS, Page, blob_key, check_replica, check_uuid
from .events import events_body
from .imports import WAIT_MAX, Importer, sbg_body

log = logging.getLogger("hcafs.server")
access_log = logging.getLogger("hcafs.server.access")

_BLOB_RE = re.compile(r"^[0-9a-f]{64}\.[0-9a-f]{40}\.[0-9a-f]{32}(-\d+)?\.[0-9a-f]{8}\Z")
RETRY_AFTER = "10"
# Host names (labels of letters, digits, '-' and the '_' that container names use), IPv4
# addresses, or IPv6 ones in brackets; and a port.
_HOST_RE = re.compile(r"(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
                      r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?"
                      r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?\Z")
# Query parameters whose values grant access (a signed blob URL's signature, an S3
# presigned URL's, a token some clients send in the query): the access log writes the name
# only.
_SECRET_PARAMS = frozenset({"signature", "x-amz-signature", "x-amz-credential",
                            "x-amz-security-token", "access_token", "token_id", "passport"})
HEALTH_PROBE = "probes/health"  # a key never written: reading it proves the store answers
PROBE_TIMEOUT = 5.0  # seconds a readiness probe waits for the store
ROUTE = "hcafs.route"  # the environ key naming the matched route (a bounded metrics label)
_NO_BODY_METHODS = ("GET", "HEAD")  # OPTIONS takes JSON: DRS 1.4 bulk OPTIONS /objects
_IGNORED_BODY = 64  # bytes a GET may carry (and that nobody reads)
_READ_CHUNK = 64 * 1024


def _json_response(body: object, status: int = 200, headers: dict | None = None) -> Response:
    # Compact: the C encoder (an indented answer is encoded in Python, four times slower,
    # and a job of 100 results is polled often)
    return Response(json.dumps(body, separators=(",", ":")) + "\n", status=status,
                    headers=headers,
                    content_type="application/json")


def preferred_wait(header: str | None) -> float:
    """The ``wait`` preference (seconds) of a ``Prefer`` header (RFC 7240); 0 when there
    is none or it is not a small whole number."""
    for preference in (header or "")[:512].split(","):
        name, _, value = preference.partition(";")[0].partition("=")
        if name.strip().lower() == "wait":
            value = value.strip().strip('"')
            return float(value) if value.isascii() and value.isdigit() and \
                len(value) <= 6 else 0.0
    return 0.0


class App:
    """The WSGI application of ``hcafs serve``; extra routers may be mounted on it."""

    def __init__(self, dss: DSS, tokens: Tokens, imports: Importer | None = None,
                 drs: DrsObjects | None = None,
                 max_json_body: int = DEFAULT_MAX_JSON_BODY,
                 details: Callable[[], dict] | None = None):
        self.details = details
        self._prober = ThreadPoolExecutor(1, thread_name_prefix="health-probe")
        self._probe: Future | None = None
        self._probe_lock = threading.Lock()
        self.dss = dss
        self.tokens = tokens
        self.max_json_body = max_json_body
        self.drs = drs or DrsObjects(dss)
        self.imports = imports
        self.url_map = Map([
            Rule("/v1/swagger.json", endpoint="swagger"),
            Rule("/v1/files/<uuid>", endpoint="files", methods=["GET", "HEAD", "PUT"]),
            Rule("/v1/bundles/all", endpoint="bundles_all", methods=["GET"]),
            Rule("/v1/bundles/<uuid>", endpoint="bundles",
                 methods=["GET", "PUT", "PATCH", "DELETE"]),
            Rule("/v1/events", endpoint="events", methods=["GET"]),
            Rule("/v1/events/<uuid>", endpoint="event", methods=["GET"]),
            Rule("/v1/collections", endpoint="collections", methods=["GET", "PUT"]),
            Rule("/v1/collections/<uuid>", endpoint="collection",
                 methods=["GET", "PATCH", "DELETE"]),
            Rule("/blobs/<key>", endpoint="blob", methods=["GET"]),
            Rule("/version", endpoint="version"),
            Rule("/internal/health", endpoint="health"),
            Rule(f"{DRS_PATH}/service-info", endpoint="drs_service_info", methods=["GET"]),
            Rule(f"{DRS_PATH}/objects", endpoint="drs_bulk", methods=["POST", "OPTIONS"]),
            Rule(f"{DRS_PATH}/objects/access", endpoint="drs_bulk_access", methods=["POST"]),
            Rule(f"{DRS_PATH}/objects/<object_id>", endpoint="drs_object",
                 methods=["GET", "POST", "OPTIONS"]),
            Rule(f"{DRS_PATH}/objects/<object_id>/access/<access_id>", endpoint="drs_access",
                 methods=["GET", "POST"]),
            Rule(f"{DRS_PATH}/blobs/<key>", endpoint="drs_blob", methods=["GET"]),
            Rule("/v2/bulk/drs/imports/create", endpoint="import_create", methods=["POST"]),
            Rule("/v2/bulk/drs/imports/<job_id>", endpoint="import_get", methods=["GET"]),
            Rule("/v2/bulk/files/get", endpoint="import_files_get", methods=["POST"]),
            Rule("/v2/files", endpoint="import_files", methods=["GET"]),
            Rule("/v2/files/<file_id>", endpoint="import_file", methods=["GET"]),
            Rule("/internal/imports/log", endpoint="imports_log", methods=["GET"]),
        ], strict_slashes=False)

    # ------------------------------------------------------------ plumbing

    def __call__(self, environ, start_response):
        started = time.monotonic()
        request = Request(environ)
        try:
            _check_host(environ)
            _buffer_body(environ, _IGNORED_BODY if request.method in _NO_BODY_METHODS
                         else self.max_json_body)
            response = self.dispatch(request)
        except Problem as exc:
            response = self._problem(exc.status, exc.code, exc.title, headers=exc.headers)
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            response = _internal_error(request, exc)
        if response.status_code >= 500:
            response.headers.setdefault("Retry-After", RETRY_AFTER)
        elapsed = time.monotonic() - started
        access_log.info("%s %s %d %.3fs", _printable(request.method), _loggable(request),
                        response.status_code, elapsed)
        metrics.request(environ.get(ROUTE, "unmatched"), request.method,
                        response.status_code, elapsed)
        return response(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        try:
            endpoint, args = self.url_map.bind_to_environ(request.environ).match()
            request.environ[ROUTE] = endpoint
            if request.path.startswith("/v2/"):
                return self._import_api(request, endpoint, args)
            return getattr(self, f"on_{endpoint}")(request, **args)
        except Problem as exc:
            return self._error(request, exc)
        except HTTPException as exc:
            code = "not_found" if exc.code == 404 else "illegal_arguments"
            return self._error(request, Problem(exc.code or 500, code,
                                                exc.description or exc.name))
        except Exception as exc:  # the one place an unexpected error becomes a 500
            return _internal_error(request, exc)

    def _error(self, request: Request, exc: Problem) -> Response:
        """An error in the dialect of the API the path belongs to."""
        if request.path.startswith(f"{DRS_PATH}/"):
            return _json_response({"msg": exc.title, "status_code": exc.status}, exc.status,
                                  exc.headers)
        if request.path.startswith("/v2/"):
            response = _json_response(sbg_body(exc), exc.status, exc.headers)
            if self.imports is not None:
                for name, value in self.imports.headers(None).items():
                    response.headers.setdefault(name, value)
            return response
        return self._problem(exc.status, exc.code, exc.title, headers=exc.headers)

    @staticmethod
    def _problem(status: int, code: str, title: str, stacktrace: str = "",
                 headers: dict | None = None) -> Response:
        body = {"status": status, "code": code, "title": title, "stacktrace": stacktrace}
        return Response(json.dumps(body) + "\n", status=status, headers=headers,
                        content_type="application/problem+json")

    def identify(self, request: Request) -> Identity:
        return self.tokens.identify(request.headers.get("Authorization"))

    def sbg_identify(self, request: Request) -> Identity:
        """``X-SBG-Auth-Token``, or else ``Authorization: Bearer``."""
        token = request.headers.get("X-SBG-Auth-Token", "").strip()
        return self.tokens.lookup(token) if token else self.identify(request)

    @staticmethod
    def body(request: Request) -> dict:
        raw = request.get_data(cache=False)
        if not raw.strip():
            return {}
        try:
            body = documents.load(raw)
        except documents.BadDocument as exc:
            raise bad_request(f"the request body is refused: {exc}") from None
        if not isinstance(body, dict):
            raise bad_request("the request body must be a JSON object")
        return body

    @staticmethod
    def int_param(request: Request, name: str, default: int, low: int | None = None,
                  high: int | None = None) -> int:
        raw = request.args.get(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError as exc:
            raise bad_request(f"{name} must be an integer, not {raw!r}") from exc
        if (low is not None and value < low) or (high is not None and value > high):
            raise bad_request(f"{name} {value} is out of range ({low}-{high})")
        return value

    @staticmethod
    def paged(request: Request, body: dict, page: Page, key: str, next_args: list) -> Response:
        headers = {"X-OpenAPI-Pagination": "true" if page.more else "false",
                   "X-OpenAPI-Paginated-Content-Key": key}
        if not page.more:
            return _json_response(body, 200, headers)
        link = f"{request.base_url}?{urlencode(next_args)}"
        headers["Link"] = f"<{link}>; rel='next'"
        return _json_response(body, 206, headers)

    # ------------------------------------------------------------ misc

    def on_swagger(self, request: Request) -> Response:
        return _json_response(spec.document(request.host_url.rstrip("/")))

    def on_version(self, request: Request) -> Response:
        return _json_response({"version_info": {"version": now_version()}})

    def on_health(self, request: Request) -> Response:
        """For load balancers.  Readiness (the default): ``ok`` once this worker answers
        and reaches its store, 503 ``unavailable`` when the store is out of reach, so the
        traffic goes elsewhere.  Liveness (``?probe=live``): ``ok`` whenever this worker
        answers, store or not.  The details only for an admin token."""
        try:
            admin = self.identify(request).admin
        except Problem:
            admin = False
        if request.args.get("probe") != "live" and not self._store_ready():
            return _json_response({"health": "unavailable"}, 503)
        if not admin:
            return _json_response({"health": "ok"})
        return _json_response({"health": "ok", "store": self.dss.store.describe(),
                               "pid": os.getpid(), "threads": threading.active_count(),
                               "max_json_body": self.max_json_body,
                               **(self.details() if self.details else {})})

    def _store_ready(self) -> bool:
        """True if the store answered a read within :data:`PROBE_TIMEOUT` (one probe at a
        time: callers arriving while it runs wait for the same one)."""
        with self._probe_lock:
            if self._probe is None or self._probe.done():
                self._probe = self._prober.submit(self.dss.store.read, HEALTH_PROBE)
            probe = self._probe
        try:
            probe.result(timeout=PROBE_TIMEOUT)
        except (FutureTimeout, HcafsError):
            return False
        return True

    # ------------------------------------------------------------ files

    def on_files(self, request: Request, uuid: str) -> Response:
        version = request.args.get("version")
        if request.method == "PUT":
            who = self.identify(request)
            check_uuid(uuid)
            status, body = self.dss.put_file(uuid, version, self.body(request), who)
            return _json_response(body, status)
        check_uuid(uuid)
        check_replica(request.args.get("replica"))
        if request.method == "GET" and self.dss.copy_running(uuid, version):
            retry = f"{request.base_url}?{urlencode(_with(request, token=now_version()))}"
            return Response("", 301, {"Location": retry, "Retry-After": RETRY_AFTER},
                            content_type="text/plain")
        meta = self.dss.file_metadata(uuid, version)
        headers = {
            "X-DSS-CREATOR-UID": str(meta["creator_uid"]),
            "X-DSS-VERSION": meta["version"],
            "X-DSS-CONTENT-TYPE": meta["content-type"],
            "X-DSS-SIZE": str(meta["size"]),
            "X-DSS-CRC32C": meta["crc32c"],
            "X-DSS-S3-ETAG": meta["s3-etag"],
            "X-DSS-SHA1": meta["sha1"],
            "X-DSS-SHA256": meta["sha256"],
        }
        if request.method == "HEAD":
            return Response(b"", 200, headers, content_type=meta["content-type"])
        query = {}
        if request.args.get("content_disposition"):
            query["content_disposition"] = _disposition(request)
        location = f"{request.host_url}{blob_key(meta)}"
        if query:
            location += "?" + urlencode(query)
        headers["Location"] = location
        return Response("", 302, headers, content_type="text/plain")

    def on_blob(self, request: Request, key: str) -> Response:
        if not _BLOB_RE.match(key):
            raise Problem(404, "not_found", "no such blob")
        store = self.dss.store
        size = store.blob_size(f"blobs/{key}")
        if size is None:
            raise Problem(404, "not_found", "no such blob")
        headers = {"Accept-Ranges": "bytes", "ETag": f'"{key.split(".")[0]}"',
                   "Cache-Control": "public, max-age=31536000, immutable"}
        if request.args.get("content_disposition"):
            headers["Content-Disposition"] = _disposition(request)
        start, stop, status = 0, size, 200
        if request.range is not None and request.range.units == "bytes" and \
                len(request.range.ranges) == 1:
            span = _byte_span(request.range.ranges[0], size)
            if span is None:
                headers["Content-Range"] = f"bytes */{size}"
                return Response(b"", 416, headers, content_type="text/plain")
            start, stop = span
            status = 206
            headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
        headers["Content-Length"] = str(stop - start)
        body = [] if request.method == "HEAD" else store.read_blob(f"blobs/{key}", start, stop)
        return Response(body, status, headers, content_type="application/octet-stream",
                        direct_passthrough=True)

    # ------------------------------------------------------------ bundles

    def on_bundles(self, request: Request, uuid: str) -> Response:
        version = request.args.get("version")
        if request.method == "GET":
            return self._get_bundle(request, uuid, version)
        who = self.identify(request)
        check_replica(request.args.get("replica"))
        body = self.body(request)
        if request.method == "DELETE":
            return _json_response(self.dss.delete_bundle(uuid, version, body, who))
        if request.method == "PUT":
            status, answer = self.dss.put_bundle(uuid, version, body, who)
            return _json_response(answer, status)
        return _json_response(self.dss.patch_bundle(uuid, version, body, who))

    def _get_bundle(self, request: Request, uuid: str, version: str | None) -> Response:
        replica = check_replica(request.args.get("replica"))
        if request.args.get("directurls") and request.args.get("presignedurls"):
            raise bad_request("directurls and presignedurls exclude each other",
                              "only_one_urltype")
        per_page = self.int_param(request, "per_page", 500, 10, 500)
        start_at = self.int_param(request, "start_at", 0, 0)
        body, page = self.dss.get_bundle(uuid, version, start_at, per_page)
        next_args = [("replica", replica), ("version", body["bundle"]["version"]),
                     ("per_page", per_page), ("start_at", start_at + per_page)]
        return self.paged(request, body, page, "bundle.files", next_args)

    def on_bundles_all(self, request: Request) -> Response:
        replica = check_replica(request.args.get("replica"))
        per_page = self.int_param(request, "per_page", 100, 10, 500)
        prefix = request.args.get("prefix")
        search_after = request.args.get("search_after")
        page = self.dss.enumerate_bundles(prefix, search_after, per_page)
        body = {"dss_api": request.host_url.rstrip("/"), "object": "list",
                "per_page": per_page, "search_prefix": f"bundles/{(prefix or '').lower()}",
                "event_timestamp": now_version(), "bundles": page.items,
                "page_count": len(page.items), "has_more": page.more}
        next_args = [("replica", replica), ("per_page", per_page)]
        if prefix:
            next_args.append(("prefix", prefix))
        if page.more:
            last = page.items[-1]
            after = f"{last['uuid']}.{last['version']}"
            next_args += [("search_after", after), ("token", after)]
            body.update(token=after, search_after=after,
                        link=f"{request.base_url}?{urlencode(next_args)}")
        return self.paged(request, body, page, "bundles", next_args)

    def on_events(self, request: Request) -> Response:
        replica = check_replica(request.args.get("replica"))
        per_page = self.int_param(request, "per_page", 1, 1, 10)
        since = request.args.get("since") or request.args.get("token")
        journals, more = self.dss.events(since, request.args.get("from_date"),
                                         request.args.get("to_date"), per_page)
        body = events_body(journals, since or request.args.get("from_date") or "")
        next_args = [("replica", replica), ("per_page", per_page), ("since", body["cursor"]),
                     ("token", body["cursor"])]
        if request.args.get("to_date"):
            next_args.append(("to_date", request.args["to_date"]))
        return self.paged(request, body, Page(journals, more), "event_streams", next_args)

    def on_event(self, request: Request, uuid: str) -> Response:
        check_replica(request.args.get("replica"))
        return _json_response(self.dss.event_document(uuid, request.args.get("version")))

    # ------------------------------------------------------------ collections

    def on_collections(self, request: Request) -> Response:
        who = self.identify(request)
        if request.method == "PUT":
            check_replica(request.args.get("replica"))
            answer = self.dss.put_collection(request.args.get("uuid"),
                                             request.args.get("version"),
                                             self.body(request), who)
            return _json_response(answer, 201)
        per_page = self.int_param(request, "per_page", 500, 10, 500)
        start_at = self.int_param(request, "start_at", 0, 0)
        mark = self.dss.collections_mark(who)  # before the listing: a change after it shows
        page = self.dss.list_collections(who, start_at, per_page)
        next_args = [("per_page", per_page), ("start_at", start_at + per_page)]
        response = self.paged(request, {"collections": page.items}, page, "collections",
                              next_args)
        response.headers["X-HCAFS-Collections-Mark"] = mark
        return response

    def on_collection(self, request: Request, uuid: str) -> Response:
        who = self.identify(request)
        check_replica(request.args.get("replica"))
        version = request.args.get("version")
        if request.method == "GET":
            return _json_response(self.dss.get_collection(uuid, version, who))
        if request.method == "DELETE":
            return _json_response(self.dss.delete_collection(uuid, who))
        return _json_response(self.dss.patch_collection(uuid, version, self.body(request), who))


    # ------------------------------------------------------------ GA4GH DRS

    @staticmethod
    def _base(request: Request) -> Base:
        return Base(request.host_url.rstrip("/"), request.host)

    def on_drs_service_info(self, request: Request) -> Response:
        return _json_response(self.drs.service_info(self._base(request)))

    def _drs_guard(self, request: Request) -> dict:
        """The request's JSON body (POST), after the DRS guard let it through."""
        body = self.body(request) if request.method == "POST" else {}
        self.drs.guard.check(request.headers.get("Authorization"), body)
        return body

    def on_drs_object(self, request: Request, object_id: str) -> Response:
        if request.method == "OPTIONS":
            return _json_response(self.drs.options(object_id))
        self._drs_guard(request)
        return _json_response(self.drs.get(object_id, self._base(request)))

    def on_drs_access(self, request: Request, object_id: str, access_id: str) -> Response:
        self._drs_guard(request)
        return _json_response(self.drs.access(object_id, access_id, self._base(request)))

    def on_drs_bulk(self, request: Request) -> Response:
        if request.method == "OPTIONS":
            return _json_response(self.drs.bulk_options(
                self.body(request).get("bulk_object_ids")))
        ids = self._drs_guard(request).get("bulk_object_ids")
        return _json_response(self.drs.bulk(ids, self._base(request)))

    def on_drs_bulk_access(self, request: Request) -> Response:
        wanted = self._drs_guard(request).get("bulk_object_access_ids")
        return _json_response(self.drs.bulk_access(wanted, self._base(request)))

    def on_drs_blob(self, request: Request, key: str) -> Response:
        self.drs.check_blob(key, request.args.get("expires"), request.args.get("signature"))
        return self.on_blob(request, key)

    # ------------------------------------------------------------ bulk DRS import (/v2)

    def _import_api(self, request: Request, endpoint: str, args: dict) -> Response:
        """Identify, count the request, answer; errors and answers carry the budget."""
        if self.imports is None:
            raise Problem(404, "not_found", "this server has no import API")
        who = None
        try:
            who = self.sbg_identify(request)
            self.imports.count_request(who)
            response = getattr(self, f"on_{endpoint}")(request, who, **args)
        except Problem as exc:
            if endpoint == "import_create" and who is not None and exc.status == 429:
                # an unidentified caller is not recorded: it could fill the store
                self.imports.log_call(who.email, _json_or_none(request), False, exc.title)
            response = self._error(request, exc)
        if response.status_code != 429:  # a 429 shows the request budget instead
            response.headers.update(self.imports.headers(who))
        return response

    def on_import_create(self, request: Request, who: Identity) -> Response:
        base = request.host_url.rstrip("/")
        key = request.headers.get("Idempotency-Key")
        return _json_response(self.imports.create(_json_or_none(request), who, base, key))

    def on_import_get(self, request: Request, who: Identity, job_id: str) -> Response:
        """A job; 304 to an ``If-None-Match`` that names its current version, held until
        the job changes when the poll says ``Prefer: wait=N`` (RFC 7240; an hcafs
        addition, bounded by the importer)."""
        wait = preferred_wait(request.headers.get("Prefer"))
        view, etag, held = self.imports.job_when_changed(
            job_id, who, request.host_url.rstrip("/"), request.if_none_match.contains_weak,
            wait)
        headers = {"ETag": f'"{etag}"', "Cache-Control": "private, no-cache"}
        if held:
            headers["Preference-Applied"] = f"wait={min(wait, WAIT_MAX):g}"
        if view is None:
            return Response(status=304, headers=headers)
        return _json_response(view, headers=headers)

    def on_import_files_get(self, request: Request, who: Identity) -> Response:
        ids = self.body(request).get("file_ids")
        items = self.imports.files(ids, who, request.host_url.rstrip("/"))
        return _json_response({"items": items})

    def on_import_file(self, request: Request, who: Identity, file_id: str) -> Response:
        return _json_response(self.imports.file(file_id, who, request.host_url.rstrip("/")))

    def on_import_files(self, request: Request, who: Identity) -> Response:
        offset = self.int_param(request, "offset", 0, 0)
        limit = self.int_param(request, "limit", 50, 1, 100)
        body, total = self.imports.listing(request.args.get("project"),
                                           request.args.get("parent"),
                                           request.args.get("name"), offset, limit, who,
                                           request.host_url.rstrip("/"))
        return _json_response(body, headers={"X-Total-Matching-Query": str(total)})

    def on_imports_log(self, request: Request) -> Response:
        require_admin(self.identify(request))
        if self.imports is None:
            raise Problem(404, "not_found", "this server has no import API")
        return _json_response(self.imports.audit())


def _internal_error(request: Request, exc: Exception) -> Response:
    """A 500 that names an error id; the traceback goes to the log under that id only."""
    error_id = secrets.token_hex(6)
    log.error("error %s: unhandled %s in %s %s", error_id, type(exc).__name__,
              _printable(request.method), _printable(request.path), exc_info=exc)
    body = {"status": 500, "code": "unhandled_exception", "error_id": error_id,
            "title": f"internal error {error_id}; the server log has the details",
            "stacktrace": ""}
    return Response(json.dumps(body) + "\n", status=500,
                    content_type="application/problem+json")


def _too_large(limit: int) -> Problem:
    if limit == _IGNORED_BODY:
        return Problem(413, "payload_too_large", "this request takes no body")
    return Problem(413, "payload_too_large", f"the request body is over {limit} bytes")


def _loggable(request: Request) -> str:
    """The request's path and query for the access log, with the value of every
    :data:`_SECRET_PARAMS` parameter replaced by ``REDACTED``."""
    path = _printable(request.path)
    if not request.args:
        return path
    pairs = [(name, "REDACTED" if name.lower() in _SECRET_PARAMS else value)
             for name, value in request.args.items(multi=True)]
    return f"{path}?{urlencode(pairs)}"


def _check_host(environ: dict) -> None:
    """Refuse (400) a ``Host`` header that is no host: answers build URLs (``Location``,
    ``Link``, DRS access URLs) from it."""
    host = environ.get("HTTP_HOST")
    if host is not None and not _HOST_RE.match(host):
        raise bad_request("the Host header is not a host name or address (with a port)")


def _byte_span(wanted: tuple[int, int | None], size: int) -> tuple[int, int] | None:
    """The ``[start, stop)`` of ``size`` bytes that one parsed range asks for, or None if
    it asks for none of them (RFC 9110: a suffix longer than the blob is the whole blob,
    an end past it is the end)."""
    first, stop = wanted
    if first < 0:  # the last -first bytes
        first, stop = max(0, size + first), size
    else:
        stop = size if stop is None else min(stop, size)
    return (first, stop) if first < stop else None


def _printable(text: str) -> str:
    """``text`` for one log line: control characters (a decoded ``%0a`` could start a
    forged line) and backslashes written as escapes."""
    if text.isprintable() and "\\" not in text:
        return text
    return text.encode("unicode_escape").decode("ascii")


def _buffer_body(environ: dict, limit: int) -> None:
    """Read the request body (at most ``limit`` bytes) into memory, or raise a 413.

    The limit is decided from ``Content-Length`` before anything is read, and enforced
    while reading, so a chunked body is stopped one chunk past it.  The handlers then read
    the buffered copy, with ``Content-Length`` set to its size.
    """
    length = environ.get("CONTENT_LENGTH") or ""
    chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
    if length.strip():
        if not length.strip().isdigit():
            raise bad_request("Content-Length is not a byte count")
        if int(length) > limit:
            raise _too_large(limit)
        if int(length) == 0:
            return
    elif not chunked:
        return
    stream, parts, total = environ["wsgi.input"], [], 0
    while True:
        chunk = stream.read(min(_READ_CHUNK, limit + 1 - total))
        if not chunk:
            break
        total += len(chunk)
        if total > limit:
            raise _too_large(limit)
        parts.append(chunk)
    environ["wsgi.input"] = io.BytesIO(b"".join(parts))
    environ["CONTENT_LENGTH"] = str(total)
    environ.pop("HTTP_TRANSFER_ENCODING", None)
    environ["wsgi.input_terminated"] = True


def _json_or_none(request: Request) -> object:
    try:
        return documents.load(request.get_data(cache=True) or b"null")
    except documents.BadDocument:
        return None


def _disposition(request: Request) -> str:
    """The ``content_disposition`` parameter, refused if it could split a header."""
    value = request.args["content_disposition"]
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise bad_request("content_disposition holds control characters")
    return value


def _with(request: Request, **changes: str) -> list[tuple[str, str]]:
    """The request's query (first value of each name) with some values replaced."""
    args = {name: request.args.get(name) for name in request.args}
    args.update(changes)
    return list(args.items())
