"""What the DSS holds, as the mount last saw it: bundle list, manifests, files, collections.

Everything is cached in SQLite, so ``ls`` never waits for the network once the cache is
warm, and works with the server gone.

* The bundle list is the ``bundles`` table, read page by page (:meth:`Catalog.bundle_page`),
  never held in memory.  A first listing is written page by page with the next page's
  address, so a restart resumes it; it is marked complete with its last page.  After that a
  refresh (on a TTL in the background, and on demand) applies ``/v1/events`` since the last
  cursor; a server without events is listed whole again, into a temporary table swapped in
  at once.  A refresh that fails part-way changes nothing it had not committed with its
  cursor, because "unreachable" must never read as "deleted".
* Collections are listed again only when the server's collections mark changed.
* Manifests and file metadata are immutable per version: fetched once, kept.
* Collections are the caller's own; each appears as a directory named ``NAME`` (or
  ``NAME.UUID`` where names clash).
* A change this mount makes (a collection made, patched or deleted, a bundle version made
  or deleted) goes to the server first, then updates just the cached rows it touched: no
  listing is fetched again for it.
* A lookup the server answers 404 is remembered for ``negative_ttl`` seconds, so a bad
  FQID costs one request, not one per call.
* Names this mount gave collection items (``ln -s TARGET collections/C/NAME``) are kept
  here: the server stores only the item, so other mounts show it under its FQID.

Threading: FUSE threads read the bundle rows from SQLite and the collections snapshot from
memory; the refresher thread writes rows and swaps snapshots in under ``_lock``.  Each thread
uses its own SQLite connection.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import threading
import time
import urllib.parse
from collections import OrderedDict

from ..errors import ApiError, Busy, NotFound, PermissionDenied, RemoteError, Unreachable
from ..remote.client import DSSClient
from ..versions import VERSION_FORMAT, now_version, parse_fqid, version_datetime
from .cachedb import CacheDB, mtime_ns

log = logging.getLogger(__name__)

MANIFEST_MEMORY = 256
NEGATIVE_MEMORY = 10_000  # remembered 404s before the expired ones are swept
LISTING_PAGE = 500  # bundle versions per page of /bundles/all
EVENTS_OVERLAP = 10.0  # seconds of events asked for again at each catch-up (see _catch_up)


def _under_api(url: str) -> str:
    """A next-page link as a path under the API base: a listing resumed at the next mount
    goes to the server's address then (an embedded server gets a new port each time)."""
    parts = urllib.parse.urlsplit(url)
    path = parts.path[len("/v1"):] if parts.path.startswith("/v1/") else parts.path
    return f"{path}?{parts.query}" if parts.query else path


def _earlier(cursor: str, seconds: float) -> str:
    """The DSS_VERSION ``seconds`` before an event cursor (or a bare DSS_VERSION)."""
    moment = version_datetime(cursor[:25]) - _dt.timedelta(seconds=seconds)
    return moment.strftime(VERSION_FORMAT)


class Health:
    """Whether the server answers; each change is logged once, not per call."""

    def __init__(self) -> None:
        self.online = True
        self._lock = threading.Lock()

    def ok(self) -> None:
        with self._lock:
            if not self.online:
                log.warning("server reachable again")
            self.online = True

    def failed(self, exc: Exception) -> None:
        with self._lock:
            if self.online:
                log.warning("server unreachable (%s); serving what is cached", exc)
            self.online = False


def safe_collection_name(name: str) -> str:
    """A collection name as one safe path part (``/`` and NUL become ``_``)."""
    safe = "".join("_" if ch in "/\0" else ch for ch in (name or "").strip())
    return "collection" if safe in ("", ".", "..") else safe[:200]


def collection_dirnames(documents: list[dict]) -> dict[str, dict]:
    """Directory names: the plain name when no other collection has it, else ``NAME.UUID``
    for every collection sharing it, so no two directories ever collide."""
    counts: dict[str, int] = {}
    for doc in documents:
        safe = safe_collection_name(doc["name"])
        counts[safe] = counts.get(safe, 0) + 1
    named = {}
    for doc in documents:
        safe = safe_collection_name(doc["name"])
        clash = counts[safe] > 1 or safe.endswith(f".{doc['uuid']}")
        named[f"{safe}.{doc['uuid']}" if clash else safe] = doc
    return named


class Catalog:
    def __init__(self, db: CacheDB, client: DSSClient | None, ttl: float,
                 quick: DSSClient | None = None, negative_ttl: float = 30.0):
        self.db = db
        self._client = client
        self._quick = quick or client
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self._absent: dict[str, float] = {}  # "bundle|file FQID" -> when its 404 expires
        self.health = Health()
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        stamp = db.get_meta("bundles_refreshed_at")
        self.refreshed_at = float(stamp) if stamp else 0.0
        state = db.get_meta("listing_state")
        # A cache from before listing_state was kept holds only complete listings.
        self._complete = state == "complete" or (state is None and bool(stamp))
        self._cursor = db.get_meta("events_cursor") or ""
        self._events = True  # until the server answers 404 or 501 on /events
        self._seen: dict[str, str] = {}  # event id -> cursor, within the overlap
        self._mark = db.get_meta("collections_mark") or None
        self._mark_seen: str | None = None
        self._changed = False  # the rows changed in this refresh
        self.on_change = lambda: None  # the listing changed (the mount invalidates it)
        self._collections = self._load_collections()
        self._names = self._load_names()
        self._changes = 0  # collection changes this mount made (a refresh in flight keeps them)
        self._manifests: OrderedDict[str, dict] = OrderedDict()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def client(self) -> DSSClient | None:
        """The client to use now: patient while the server answers, quick while it does not
        (so that an offline mount answers EIO promptly instead of retrying for long)."""
        return self._client if self.health.online else self._quick

    @property
    def callback_client(self) -> DSSClient | None:
        """The client for a request a FUSE callback waits on: the quick one always, so the
        wait is bounded by its few attempts (docs/architecture.md)."""
        return self._quick

    # ------------------------------------------------------------ bundles

    def bundle_count(self) -> int:
        """How many bundle versions are listed (all of them once :attr:`complete`)."""
        return self.db.db().execute("select count(*) from bundles").fetchone()[0]

    def bundles(self) -> list[str]:
        """Every listed FQID (a small listing's whole; the mount reads pages instead)."""
        return [r[0] for r in self.db.db().execute("select fqid from bundles order by fqid")]

    def bundle_page(self, after: str | None = None, limit: int = 1000, skip: int = 0
                    ) -> list[str]:
        """Up to ``limit`` listed FQIDs in order: those after ``after``, or from the
        ``skip``-th on.  Read from SQLite each time, so no listing is held in memory."""
        db = self.db.db()
        if after is not None:
            rows = db.execute("select fqid from bundles where fqid > ? order by fqid "
                              "limit ?", [after, limit])
        else:
            rows = db.execute("select fqid from bundles order by fqid limit ? offset ?",
                              [limit, skip])
        return [r[0] for r in rows]

    def bundle_rows(self, after: str | None = None, limit: int = 1000, skip: int = 0
                    ) -> list[tuple[str, int]]:
        """:meth:`bundle_page` as ``(FQID, mtime in ns)`` rows (see :func:`mtime_ns`)."""
        db = self.db.db()
        if after is not None:
            rows = db.execute("select fqid, mtime_ns from bundles where fqid > ? "
                              "order by fqid limit ?", [after, limit])
        else:
            rows = db.execute("select fqid, mtime_ns from bundles order by fqid "
                              "limit ? offset ?", [limit, skip])
        return rows.fetchall()

    def listed(self, fqid: str) -> bool:
        """In the listing (no network)."""
        return self.db.db().execute("select 1 from bundles where fqid = ?",
                                    [fqid]).fetchone() is not None

    def has_bundle(self, fqid: str) -> bool:
        if self.listed(fqid):
            return True
        if parse_fqid(fqid) is None:
            return False
        try:
            self.manifest(fqid)
        except NotFound:
            return False
        return True

    def manifest(self, fqid: str) -> dict:
        """``{"uuid", "version", "creator_uid", "files": [...]}``; NotFound if none."""
        with self._lock:
            cached = self._manifests.get(fqid)
            if cached is not None:
                self._manifests.move_to_end(fqid)
                return cached
        row = self.db.db().execute("select creator_uid, files from manifests where fqid = ?",
                                   [fqid]).fetchone()
        if row is not None:
            manifest = self._manifest(fqid, row[0], json.loads(row[1]))
        else:
            manifest = self._fetch_manifest(fqid)
        with self._lock:
            self._manifests[fqid] = manifest
            while len(self._manifests) > MANIFEST_MEMORY:
                self._manifests.popitem(last=False)
        return manifest

    @staticmethod
    def _manifest(fqid: str, creator_uid: int, files: list) -> dict:
        uuid, version = parse_fqid(fqid) or ("", "")
        return {"uuid": uuid, "version": version, "creator_uid": creator_uid, "files": files}

    def _fetch_manifest(self, fqid: str) -> dict:
        bundle = self._fetch(f"bundle {fqid}", fqid,
                             lambda client, uuid, version: client.get_bundle(uuid, version))
        self.db.db()["manifests"].upsert({"fqid": fqid, "creator_uid": bundle["creator_uid"],
                                          "files": json.dumps(bundle["files"])}, pk="fqid")
        return self._manifest(fqid, bundle["creator_uid"], bundle["files"])

    def _fetch(self, what: str, fqid: str, call):
        """One read of an object named by FQID (a 404 comes out as NotFound, and is
        remembered for :attr:`negative_ttl`); whether the server answered is recorded in
        :attr:`health`."""
        parsed = parse_fqid(fqid)
        client = self.callback_client
        if parsed is None or client is None:
            raise NotFound(f"no {what}")
        with self._lock:
            expires = self._absent.get(what)
        if expires is not None and expires > time.monotonic():
            raise NotFound(f"no {what} (the server said so less than "
                           f"{self.negative_ttl:.0f}s ago)")
        try:
            answer = call(client, *parsed)
        except Unreachable as exc:
            self.health.failed(exc)
            raise
        except NotFound:
            self.health.ok()
            if not self._complete:
                raise  # not listed yet is no proof of absence: ask again next time
            with self._lock:
                if len(self._absent) > NEGATIVE_MEMORY:
                    now = time.monotonic()
                    self._absent = {k: v for k, v in self._absent.items() if v > now}
                self._absent[what] = time.monotonic() + self.negative_ttl
            raise
        self.health.ok()
        return answer

    def file_info(self, fqid: str) -> dict:
        """HEAD /files metadata of one file version (cached for good)."""
        row = self.db.db().execute("select info from files where fqid = ?", [fqid]).fetchone()
        if row is not None:
            return json.loads(row[0])
        info = self._fetch(f"file {fqid}", fqid,
                           lambda client, uuid, version: client.head_file(uuid, version).__dict__)
        self.db.db()["files"].upsert({"fqid": fqid, "info": json.dumps(info)}, pk="fqid")
        return info

    def latest_version(self, uuid: str) -> str | None:
        """The newest live version of a bundle on the server, or None if it has none."""
        client = self.callback_client
        try:
            answer = client.request("GET", f"/bundles/{uuid}", params={
                "replica": client.replica, "per_page": 10})
        except NotFound:
            return None
        return answer.json()["bundle"]["version"]

    def add_bundle(self, fqid: str) -> None:
        """A bundle version this mount just made: list it now, not at the next refresh."""
        uuid, version = parse_fqid(fqid)
        self.db.db().execute("insert or replace into bundles (fqid, uuid, version, mtime_ns) "
                             "values (?, ?, ?, ?)", [fqid, uuid, version, mtime_ns(version)])
        with self._lock:
            self._absent.pop(f"bundle {fqid}", None)
        self.on_change()

    def forget_bundle(self, fqid: str) -> None:
        """A bundle version this mount just deleted."""
        self.db.db().execute("delete from bundles where fqid = ?", [fqid])
        self.on_change()

    # ------------------------------------------------------------ collections

    def _load_collections(self) -> dict[str, dict]:
        rows = self.db.db().execute(
            "select dirname, uuid, version, name, contents from collections")
        return {r[0]: {"uuid": r[1], "version": r[2], "name": r[3],
                       "contents": json.loads(r[4])} for r in rows}

    def collections(self) -> dict[str, dict]:
        with self._lock:
            return self._collections

    def collection_saved(self, uuid: str, version: str, name: str, contents: list) -> None:
        """A collection this mount just made or changed: its row now, no listing."""
        with self._lock:
            documents = [c for c in self._collections.values() if c["uuid"] != uuid]
        documents.append({"uuid": uuid, "version": version, "name": name,
                          "contents": contents})
        self._replace_collections(documents)

    def collection_deleted(self, uuid: str) -> None:
        """A collection this mount just deleted: its row (and its item names) go now."""
        with self._lock:
            documents = [c for c in self._collections.values() if c["uuid"] != uuid]
        self._replace_collections(documents, gone=uuid)

    def _replace_collections(self, documents: list[dict], gone: str | None = None) -> None:
        """Write the rows whose directory name or version changed (a clash renames the
        collections sharing a name), in one transaction, then swap the snapshot."""
        named = collection_dirnames(sorted(documents, key=lambda c: c["uuid"]))
        before = {c["uuid"]: (d, c["version"]) for d, c in self.collections().items()}
        touched = [(d, c) for d, c in named.items()
                   if before.get(c["uuid"]) != (d, c["version"])]
        db = self.db.db()
        with self.db.atomic():
            for uuid in [c["uuid"] for _, c in touched] + ([gone] if gone else []):
                db.execute("delete from collections where uuid = ?", [uuid])
            if gone:
                db.execute("delete from collection_names where collection = ?", [gone])
            for dirname, c in touched:
                db["collections"].insert({"dirname": dirname, "uuid": c["uuid"],
                                          "version": c["version"], "name": c["name"],
                                          "contents": json.dumps(c["contents"])})
        with self._lock:
            self._collections = named
            self._changes += 1
            if gone:
                self._names.pop(gone, None)

    # ------------------------------------------------------------ item names

    def _load_names(self) -> dict[str, dict[tuple[str, str], str]]:
        names: dict[str, dict[tuple[str, str], str]] = {}
        for collection, kind, fqid, name in self.db.db().execute(
                "select collection, kind, fqid, name from collection_names"):
            names.setdefault(collection, {})[(kind, fqid)] = name
        return names

    def item_names(self, collection: str) -> dict[tuple[str, str], str]:
        """``{(kind, fqid): name}`` of the items this mount named in one collection."""
        with self._lock:
            return self._names.get(collection, {})

    def name_item(self, collection: str, kind: str, fqid: str, name: str | None) -> None:
        """Show item ``(kind, fqid)`` of a collection as ``name`` (None: as its FQID)."""
        db = self.db.db()
        with self.db.atomic():
            db.execute("delete from collection_names where collection = ? and kind = ? "
                       "and fqid = ?", [collection, kind, fqid])
            if name is not None:
                db["collection_names"].insert({"collection": collection, "kind": kind,
                                               "fqid": fqid, "name": name})
        with self._lock:
            names = dict(self._names.get(collection, {}))
            names.pop((kind, fqid), None)
            if name is not None:
                names[(kind, fqid)] = name
            self._names[collection] = names

    # ------------------------------------------------------------ refreshing

    @property
    def complete(self) -> bool:
        """Whether the listing is whole (False while a first listing is under way)."""
        return self._complete

    def refresh(self, client: DSSClient | None = None, pages: int | None = None) -> None:
        """Bring the listing and collections up to date; on failure keep what was cached.

        A listing not yet complete goes on page by page from where it stopped (``pages``
        bounds how many pages this call reads).  A complete one catches up through
        ``/events`` since its cursor; a server without events is listed whole again."""
        client = client or self.client
        if client is None:
            return
        with self._refresh_lock:
            with self._lock:
                changes = self._changes
            self._changed = False
            try:
                if not self._complete:
                    self._list_into(client, pages)
                elif not (self._events and self._cursor and self._catch_up(client)):
                    self._relist(client)
                collections = self._fetch_collections(client)
            except Unreachable as exc:
                self.health.failed(exc)
                raise
            self.health.ok()
            with self._lock:
                if self._changes != changes:  # this mount changed one while we listed:
                    collections = None  # keep its rows; the next refresh brings the rest
            db = self.db.db()
            count = self.bundle_count()
            with self.db.atomic():
                if collections is not None:
                    db.execute("delete from collections")
                    db["collections"].insert_all(
                        {"dirname": d, **{k: v for k, v in c.items() if k != "contents"},
                         "contents": json.dumps(c["contents"])}
                        for d, c in collections.items())
                    self.db.set_meta("collections_mark", self._mark_seen or "")
                stamp = time.time()
                if self._complete:
                    self.db.set_meta("bundles_refreshed_at", str(stamp))
            with self._lock:
                self._absent.clear()
                if collections is not None:
                    self._collections = collections
                    self._mark = self._mark_seen
                if self._complete:
                    self.refreshed_at = stamp
            if self._changed:
                self.on_change()
            log.info("listing %s: %d bundle versions, %d collections",
                     "refreshed" if self._complete else "in progress", count,
                     len(self._collections))

    def _rows(self, items) -> list[tuple[str, str, str, int]]:
        return [(f"{i['uuid']}.{i['version']}", i["uuid"], i["version"],
                 mtime_ns(i["version"])) for i in items]

    def _list_into(self, client: DSSClient, pages: int | None) -> None:
        """The first listing, written page by page into ``bundles`` with the next page's
        address beside it, so a restart resumes where the last committed page ended.  The
        listing is marked complete in the transaction that writes its last page."""
        db = self.db.db()
        following = self.db.get_meta("listing_next")
        fresh = self.db.get_meta("listing_state") != "listing" or not following
        if fresh:  # start over (nothing listed, or no page to resume at)
            response = client.request("GET", "/bundles/all", params={
                "replica": client.replica, "per_page": LISTING_PAGE})
        else:
            response = client.request("GET", following)
        read = 0
        while True:
            body = response.json()
            following = response.links.get("next", {}).get("url") \
                if response.status_code == 206 else None
            with self.db.atomic():
                if fresh:  # what was there goes with the first page, not before it
                    db.execute("delete from bundles")
                    self.db.set_meta("listing_state", "listing")
                    self.db.set_meta("listing_since", "")
                    fresh = False
                if not self.db.get_meta("listing_since"):
                    self.db.set_meta("listing_since", body.get("event_timestamp")
                                     or now_version())
                db.conn.executemany("insert or replace into bundles (fqid, uuid, version, "
                                    "mtime_ns) values (?, ?, ?, ?)",
                                    self._rows(body.get("bundles", [])))
                self.db.set_meta("listing_next", _under_api(following) if following else "")
                if not following:
                    since = self.db.get_meta("listing_since")
                    self.db.set_meta("events_cursor", since)
                    self.db.set_meta("listing_state", "complete")
            read += 1
            self._changed = True
            if not following:
                self._cursor, self._complete = since, True
                return
            if pages is not None and read >= pages:
                return
            response = client.request("GET", following)

    def _relist(self, client: DSSClient) -> None:
        """The whole listing again (a server without events): read into a temporary table
        first, then swapped in at once, so a listing that fails part-way changes nothing."""
        db = self.db.db()
        db.execute("create temp table if not exists relisting "
                   "(fqid text primary key, uuid text, version text, mtime_ns integer)")
        db.execute("delete from temp.relisting")
        first = None
        for page in client.pages("/bundles/all", {"replica": client.replica,
                                                  "per_page": LISTING_PAGE}):
            first = first or page.get("event_timestamp") or now_version()
            db.conn.executemany("insert or replace into temp.relisting values (?, ?, ?, ?)",
                           self._rows(page.get("bundles", [])))
        with self.db.atomic():
            db.execute("delete from bundles where fqid not in (select fqid from "
                       "temp.relisting)")
            db.execute("insert or ignore into bundles (fqid, uuid, version, mtime_ns) "
                       "select fqid, uuid, version, mtime_ns from temp.relisting")
            self.db.set_meta("events_cursor", first)
        db.execute("delete from temp.relisting")
        self._cursor, self._changed = first, True

    def _catch_up(self, client: DSSClient) -> bool:
        """Apply the events since the cursor (less :data:`EVENTS_OVERLAP`, skipping the
        event ids already applied); False if the server has no ``/events``."""
        since = _earlier(self._cursor, EVENTS_OVERLAP)
        try:
            response = client.request("GET", "/events", params={
                "replica": client.replica, "since": since, "per_page": 10})
        except ApiError as exc:
            if exc.status in (404, 501):
                log.info("the server has no /v1/events (%s): the listing is refreshed whole",
                         exc.status)
                self._events = False
                return False
            raise
        db = self.db.db()
        applied = 0
        while True:
            body = response.json()
            fresh = [e for stream in body.get("event_streams", [])
                     for e in stream.get("events", []) if e["event_id"] not in self._seen]
            cursor = body.get("cursor") or self._cursor
            with self.db.atomic():
                for event in fresh:
                    self._apply(db, event)
                self.db.set_meta("events_cursor", max(cursor, self._cursor))
            for event in fresh:
                self._seen[event["event_id"]] = event.get("cursor") or cursor
            applied += len(fresh)
            self._cursor = max(cursor, self._cursor)
            following = response.links.get("next", {}).get("url") \
                if response.status_code == 206 else None
            if not following:
                break
            response = client.request("GET", following)
        horizon = _earlier(self._cursor, EVENTS_OVERLAP)
        self._seen = {k: v for k, v in self._seen.items() if v >= horizon}
        if applied:
            self._changed = True
            log.info("applied %d events", applied)
        return True

    @staticmethod
    def _apply(db, event: dict) -> None:
        uuid, version = event.get("uuid"), event.get("version")
        if not uuid:
            return
        if event.get("type") == "create" and version:
            db.execute("insert or replace into bundles (fqid, uuid, version, mtime_ns) "
                       "values (?, ?, ?, ?)", [f"{uuid}.{version}", uuid, version,
                                               mtime_ns(version)])
        elif event.get("type") == "delete" and version:
            db.execute("delete from bundles where fqid = ?", [f"{uuid}.{version}"])
        elif event.get("type") == "delete":  # every version of the bundle
            db.execute("delete from bundles where fqid > ? and fqid < ?",
                       [f"{uuid}.", f"{uuid}/"])

    def refresh_within(self, timeout: float) -> None:
        """:meth:`refresh`, waited on for at most ``timeout`` seconds (for a FUSE callback);
        past that it goes on in the background and :class:`Busy` says so."""
        failure: list[BaseException] = []

        def run() -> None:
            try:
                self.refresh()
            except BaseException as exc:  # handed to the waiting caller
                failure.append(exc)

        worker = threading.Thread(target=run, name="refresh-now", daemon=True)
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            raise Busy(f"the listing refresh is still running after {timeout:.0f}s; it "
                       "completes in the background")
        if failure:
            raise failure[0]

    def _fetch_collections(self, client: DSSClient) -> dict[str, dict] | None:
        """The caller's collections (latest version of each), or None without a token (or
        when the collections mark says they did not change)."""
        if not client.has_token:
            return None
        try:
            response = client.request("GET", "/collections", params={"per_page": 500},
                                      auth=True)
        except PermissionDenied:
            return None
        mark = response.headers.get("X-HCAFS-Collections-Mark")
        self._mark_seen = mark
        if mark is not None and mark == self._mark:
            return None  # unchanged since the rows we hold
        listed = list(response.json()["collections"])
        following = response.links.get("next", {}).get("url") \
            if response.status_code == 206 else None
        if following:
            for page in client.pages(following, {}, auth=True):
                listed.extend(page["collections"])
        latest: dict[str, str] = {}
        for item in listed:
            if item["version"] > latest.get(item["uuid"], ""):
                latest[item["uuid"]] = item["version"]
        known = {c["uuid"]: c for c in self.collections().values()}
        documents = []
        for uuid, version in sorted(latest.items()):
            cached = known.get(uuid)
            if cached is not None and cached["version"] == version:
                document = cached
            else:
                try:
                    body = client.get_collection(uuid, version)
                except (PermissionDenied, NotFound):
                    continue
                document = {"uuid": uuid, "version": version, "name": body.get("name", ""),
                            "contents": body.get("contents", [])}
            documents.append(document)
        return collection_dirnames(documents)

    def start(self) -> None:
        """Refresh every ``ttl`` seconds in a background thread (after daemonizing)."""
        self._thread = threading.Thread(target=self._run, name="refresher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        wait = 0.0  # at once: a first listing to finish, or a warm cache to catch up
        while not self._stop.wait(wait):
            wait = max(1.0, self.refreshed_at + self.ttl - time.time())
            try:
                self.refresh()
            except RemoteError as exc:
                log.debug("background refresh failed: %s", exc)
                self._stop.wait(min(self.ttl, 30))
            except Exception:
                log.exception("background refresh crashed")
                self._stop.wait(self.ttl)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
