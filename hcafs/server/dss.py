"""The DSS itself: files, bundles and collections over a :class:`~.store.Store`.

This module knows nothing of HTTP: handlers in ``app.py`` parse requests, call these methods
and render what they return.  Every refusal is a :class:`~hcafs.errors.Problem` with the
DSS's own status and error code.

Store layout (all keys lower-case)::

    files/{uuid}.{version}              file metadata (format 0.0.4)
    blobs/{sha256}.{sha1}.{s3_etag}.{crc32c}   content, shared by every file with it
    copies/{uuid}.{version}             the claim on a version being copied (or a failed copy)
    bundles/{uuid}.{version}            bundle manifest (format 0.0.1)
    bundle-tombstones/{uuid}[.{version}]   a deleted bundle (version), with reason and email
    collections/{uuid}.{version}        collection document, with its owner
    collection-tombstones/{uuid}        a deleted collection
    collection-claims/{uuid}            the uuid's owner, fixed by its first PUT
    collection-owners/{owner}/{uuid}.{version}   the caller's list (owner = sha256(email))
    collection-marks/{owner}            changes with every change to the owner's collections
    bundle-index/…, layout              the listing of live bundle versions (``listing.py``)
    events/…                            the journal of bundle creates and deletes (``events.py``)

Threading: request threads call every public method concurrently; state lives only in the
store.  Asynchronous copies run on the :class:`~.copier.Copier`'s pool.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import Problem, bad_request, not_found
from ..versions import is_uuid, is_version, now_version
from .auth import Identity, require_admin, require_group
from .copier import Copier, file_document
from .events import Event, Journal, is_cursor
from .listing import BundleIndex, FileIndex, migrate, migrate_files
from .store import Store

log = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^(?!/)(?!~/)(?!.*\\)(?!.*\./)(?!.*/\.)(?!\.\.?\Z).+\Z")
_PREFIX_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9-]*\Z")
MAX_PATCH_ITEMS = 1000
MAX_METADATA_SIZE = 1024 * 1024
FILE_WAIT_SECONDS = 20.0


def dumps(document: dict) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def check_uuid(value: str, what: str = "uuid") -> str:
    if not is_uuid(value):
        raise bad_request(f"{what} {value!r} is not a UUID")
    return value.lower()


def check_version(value: str | None, what: str = "version") -> str:
    if value is None:
        raise bad_request(f"{what} is required")
    if not is_version(value):
        raise Problem(400, "illegal_version", f"{what} {value!r} is not a DSS_VERSION "
                      "(YYYY-MM-DDTHHMMSS.ffffffZ)")
    return value


def check_replica(value: str | None) -> str:
    if value not in ("aws", "gcp"):
        raise bad_request(f"replica must be aws or gcp, not {value!r}")
    return value


@dataclass(frozen=True)
class Page:
    """A slice of a longer list, and whether more follows."""

    items: list
    more: bool


class DSS:
    """Opening a DSS on a store written by an older release brings its layout up to date
    (see :func:`~.listing.migrate`) before anything is served."""

    def __init__(self, store: Store, copier: Copier):
        self.store = store
        self.copier = copier
        self.index = BundleIndex(store)
        self.files = FileIndex(store)
        self.journal = Journal(store)
        migrate(store, self.index, self.journal)
        migrate_files(store, self.files)

    # ---------------------------------------------------------------- files

    def file_metadata(self, uuid: str, version: str | None) -> dict:
        """The metadata of a file version (latest when None), or a 404/422 Problem."""
        uuid = check_uuid(uuid)
        raw = None
        if version is None:
            for version in reversed(self.files.versions(uuid)):  # the newest that exists
                raw = self.store.read(f"files/{uuid}.{version}")
                if raw is not None:
                    break
            if raw is None:
                raise not_found("Cannot find file!")
        elif not is_version(version):  # a GET's version is not validated: unknown is 404
            raise not_found("Cannot find file!")
        else:
            raw = self.store.read(f"files/{uuid}.{version}")
        if raw is None:
            self.copier.raise_if_failed(uuid, version)
            raise not_found("Cannot find file!")
        return json.loads(raw)

    def copy_running(self, uuid: str, version: str | None) -> bool:
        return is_version(version) and self.copier.running(uuid.lower(), version)

    def put_file(self, uuid: str, version: str | None, body: dict, who: Identity
                 ) -> tuple[int, dict]:
        require_group(who)
        uuid = check_uuid(uuid)
        version = check_version(version)
        source_url = body.get("source_url")
        creator_uid = body.get("creator_uid")
        if not isinstance(source_url, str) or not source_url:
            raise bad_request("source_url is required")
        if not isinstance(creator_uid, int) or isinstance(creator_uid, bool):
            raise bad_request("creator_uid is required and must be an integer")
        source = self.copier.inspect(source_url)
        document = file_document(source, creator_uid, version)
        status, task = self.copier.start(uuid, version, source, document)
        if task is not None:
            return status, {"version": version, "task_id": task}
        # 200/201: the version holds this very document.  Its checksums go with the answer
        # (an hcafs extension), so a client that checks them needs no HEAD after it.
        return status, {"version": version, "size": document["size"],
                        "content_type": document["content-type"],
                        "creator_uid": document["creator_uid"], "sha256": document["sha256"],
                        "sha1": document["sha1"], "crc32c": document["crc32c"],
                        "s3_etag": document["s3-etag"]}

    # ---------------------------------------------------------------- bundles

    def _bundle_dead(self, uuid: str, version: str) -> bool:
        return (self.store.exists(f"bundle-tombstones/{uuid}")
                or self.store.exists(f"bundle-tombstones/{uuid}.{version}"))

    def bundle_versions(self, uuid: str) -> list[str]:
        """Live versions of a bundle, oldest first."""
        uuid = check_uuid(uuid)
        if self.store.exists(f"bundle-tombstones/{uuid}"):
            return []  # its entries are being removed
        return self.index.versions(uuid)

    def manifest(self, uuid: str, version: str | None) -> dict:
        uuid = check_uuid(uuid)
        if version is None:
            versions = self.bundle_versions(uuid)
            if not versions:
                raise not_found("Cannot find bundle!")
            version = versions[-1]
        elif not is_version(version) or self._bundle_dead(uuid, version):
            raise not_found("Cannot find bundle!")
        raw = self.store.read(f"bundles/{uuid}.{version}")
        if raw is None:
            raise not_found("Cannot find bundle!")
        return json.loads(raw)

    def get_bundle(self, uuid: str, version: str | None, start_at: int, per_page: int
                   ) -> tuple[dict, Page]:
        manifest = self.manifest(uuid, version)
        files = [_file_version(entry) for entry in manifest["files"]]
        page = files[start_at:start_at + per_page]
        bundle = {"uuid": uuid.lower(), "version": manifest["version"], "files": page,
                  "creator_uid": manifest["creator_uid"]}
        return {"bundle": bundle}, Page(page, len(files) - start_at > per_page)

    def _bundle_entries(self, files: list, what: str) -> list[dict]:
        if not isinstance(files, list):
            raise bad_request(f"{what} must be a list of files")
        if len(files) > MAX_PATCH_ITEMS and what != "files":
            raise bad_request(f"{what} holds more than {MAX_PATCH_ITEMS} items")
        entries = []
        for item in files:
            if not isinstance(item, dict):
                raise bad_request(f"{what}: every item must be an object")
            for name in ("uuid", "version", "name", "indexed"):
                if name not in item:
                    raise bad_request(f"{what}: '{name}' is a required property")
            if not isinstance(item["indexed"], bool):
                raise bad_request(f"{what}: indexed must be true or false")
            name = item["name"]
            if not isinstance(name, str) or not _NAME_RE.match(name) or "\0" in name:
                raise bad_request(f"{what}: {name!r} is not a valid relative file name")
            entries.append({"uuid": check_uuid(item["uuid"], f"{what} uuid"),
                            "version": check_version(item["version"], f"{what} version"),
                            "name": name, "indexed": item["indexed"]})
        return entries

    def _resolve_entry(self, entry: dict, deadline: float) -> dict:
        """A manifest file entry; waits for an asynchronous copy of the file to finish."""
        uuid, version = entry["uuid"], entry["version"]
        while True:
            raw = self.store.read(f"files/{uuid}.{version}")
            if raw is not None:
                break
            if not self.copier.running(uuid, version) or time.monotonic() > deadline:
                raise Problem(400, "file_missing", f"Could not find file {uuid}/{version}.")
            time.sleep(0.5)
        meta = json.loads(raw)
        return {"name": entry["name"], "uuid": uuid, "version": version,
                "content-type": meta["content-type"], "size": meta["size"],
                "indexed": entry["indexed"], "crc32c": meta["crc32c"],
                "s3-etag": meta["s3-etag"], "sha1": meta["sha1"], "sha256": meta["sha256"]}

    @staticmethod
    def _no_duplicates(entries: list[dict]) -> None:
        seen: set[str] = set()
        for entry in entries:
            if entry["name"] in seen:
                raise Problem(400, "duplicate_filename",
                              f"Duplicate file name detected: {entry['name']}")
            seen.add(entry["name"])

    def put_bundle(self, uuid: str, version: str | None, body: dict, who: Identity
                   ) -> tuple[int, dict]:
        uuid = check_uuid(uuid)
        version = check_version(version)
        if "files" not in body:
            raise bad_request("'files' is a required property")
        creator_uid = body.get("creator_uid")
        if not isinstance(creator_uid, int) or isinstance(creator_uid, bool):
            raise bad_request("creator_uid is required and must be an integer")
        entries = self._bundle_entries(body["files"], "files")
        self._no_duplicates(entries)
        deadline = time.monotonic() + FILE_WAIT_SECONDS
        manifest = {"format": "0.0.1", "version": version, "creator_uid": creator_uid,
                    "files": [self._resolve_entry(e, deadline) for e in entries]}
        key = f"bundles/{uuid}.{version}"
        if not self.store.create(key, dumps(manifest)):
            if json.loads(self.store.read(key) or b"{}") != manifest:
                raise Problem(409, "bundle_already_exists",
                              f"bundle {uuid}.{version} already exists with other content")
            if not self.index.has(uuid, version):  # an earlier attempt stopped half-way
                self._publish(uuid, version)
            return 200, {"version": version, "manifest": manifest}
        self._publish(uuid, version)
        log.info("bundle %s.%s created by %s (%d files)", uuid, version, who.email,
                 len(entries))
        return 201, {"version": version, "manifest": manifest}

    def _publish(self, uuid: str, version: str) -> None:
        """Record a new version's event and list it, unless the bundle is deleted."""
        self.journal.record("create", uuid, version)
        self.index.add(uuid, version)
        if self._bundle_dead(uuid, version):  # a delete may have listed the index already
            self.index.remove(uuid, version)

    def patch_bundle(self, uuid: str, version: str | None, body: dict, who: Identity) -> dict:
        uuid = check_uuid(uuid)
        version = check_version(version)
        manifest = self.manifest(uuid, version)
        add = self._bundle_entries(body.get("add_files") or [], "add_files")
        remove = {(e["name"], e["uuid"], e["version"])
                  for e in self._bundle_entries(body.get("remove_files") or [], "remove_files")}
        kept = [e for e in manifest["files"] if (e["name"], e["uuid"], e["version"]) not in remove]
        deadline = time.monotonic() + FILE_WAIT_SECONDS
        files = kept + [self._resolve_entry(e, deadline) for e in add]
        self._no_duplicates(files)
        while True:  # a new version is created once; another PATCH may take the same one
            new_version = now_version()
            updated = dict(manifest, version=new_version, files=files)
            if self.store.create(f"bundles/{uuid}.{new_version}", dumps(updated)):
                break
        self._publish(uuid, new_version)
        log.info("bundle %s.%s patched into %s by %s", uuid, version, new_version, who.email)
        return {"uuid": uuid, "version": new_version}

    def delete_bundle(self, uuid: str, version: str | None, body: dict, who: Identity) -> dict:
        require_admin(who)
        uuid = check_uuid(uuid)
        reason = body.get("reason")
        if not isinstance(reason, str) or not reason:
            raise bad_request("'reason' is a required property")
        if version is not None:
            check_version(version)
            if self.store.read(f"bundles/{uuid}.{version}") is None:
                raise not_found("Cannot find bundle!")
            key, stone = f"bundle-tombstones/{uuid}.{version}", {"version": version}
        else:
            if not self.index.versions(uuid) and next(
                    self.store.list(f"bundle-tombstones/{uuid}"), None) is None:
                raise not_found("Cannot find bundle!")
            key, stone = f"bundle-tombstones/{uuid}", {}
        stone.update(email=who.email, reason=reason, admin_deleted=True)
        if not self.store.create(key, dumps(stone)):
            if json.loads(self.store.read(key) or b"{}") != stone:
                raise Problem(409, "bundle_tombstone_already_exists",
                              "the bundle was already deleted with another reason")
        self.journal.record("delete", uuid, version)
        for gone in [version] if version else self.index.versions(uuid):
            self.index.remove(uuid, gone)
        log.info("bundle %s%s deleted by %s: %s", uuid, f".{version}" if version else "",
                 who.email, reason)
        return {}

    def enumerate_bundles(self, prefix: str | None, search_after: str | None, per_page: int
                          ) -> Page:
        """Live bundle versions in FQID order, ``per_page`` at a time after ``search_after``
        (one scan of the listing index: the cost of a page does not grow with the store)."""
        if prefix is not None and not _PREFIX_RE.match(prefix):
            raise bad_request(f"prefix {prefix!r} is not a UUID prefix")
        items = []
        for uuid, version in self.index.entries((prefix or "").lower(), search_after):
            items.append({"uuid": uuid, "version": version})
            if len(items) == per_page:
                break
        return Page(items, len(items) == per_page)

    def import_bundles(self, manifests: list[tuple[str, dict]]) -> int:
        """The bulk path for filling a store (``bench/seed.py``): ``(uuid, manifest)``
        pairs whose files already exist, written as PUT writes them but with one journal
        record for the batch.  Returns how many versions were new."""
        events: list[tuple[str, str, str | None]] = []
        for uuid, manifest in manifests:
            if self.store.create(f"bundles/{uuid}.{manifest['version']}", dumps(manifest)):
                events.append(("create", uuid, manifest["version"]))
        if events:
            self.journal.record_many(events)
        for _, uuid, version in events:
            self.index.add(uuid, version)
        return len(events)

    # ---------------------------------------------------------------- events

    def events(self, since: str | None, from_date: str | None, to_date: str | None,
               per_page: int) -> tuple[list[list[Event]], bool]:
        """Journals of events after the cursor ``since`` (or from ``from_date``)."""
        for name, value in (("from_date", from_date), ("to_date", to_date)):
            if value is not None and not is_version(value):
                raise Problem(400, "illegal_arguments", f"{name} {value!r} is not a "
                              "DSS_VERSION (YYYY-MM-DDTHHMMSS.ffffffZ)")
        if since is not None and not is_cursor(since):
            raise Problem(400, "illegal_arguments", f"since {since!r} is not an event cursor")
        return self.journal.page(since or from_date or "", to_date, per_page)

    def event_document(self, uuid: str, version: str | None) -> dict:
        """``GET /events/{uuid}``: the bundle metadata document of a live version."""
        manifest = self.manifest(uuid, check_version(version))
        return {"uuid": uuid.lower(), "version": manifest["version"],
                "creator_uid": manifest["creator_uid"],
                "files": [_file_version(entry) for entry in manifest["files"]]}

    # ---------------------------------------------------------------- collections

    @staticmethod
    def _owner_key(email: str) -> str:
        return hashlib.sha256(email.encode()).hexdigest()[:32]

    def _collection(self, uuid: str, version: str | None) -> tuple[str, dict]:
        uuid = check_uuid(uuid)
        if self.store.exists(f"collection-tombstones/{uuid}"):
            raise not_found("Cannot find collection!")
        if version is None:
            keys = list(self.store.list(f"collections/{uuid}."))
            if not keys:
                raise not_found("Cannot find collection!")
            version = keys[-1].split("/", 1)[1][len(uuid) + 1:]
        elif not is_version(version):
            raise not_found("Cannot find collection!")
        raw = self.store.read(f"collections/{uuid}.{version}")
        if raw is None:
            raise not_found("Cannot find collection!")
        return version, json.loads(raw)

    @staticmethod
    def _owned(document: dict, who: Identity) -> None:
        if document.get("owner") != who.email:
            raise Problem(403, "forbidden", "Collection access denied")

    def _check_item(self, item: dict, who: Identity) -> dict:
        if not isinstance(item, dict):
            raise bad_request("contents: every item must be an object")
        for name in ("type", "uuid", "version"):
            if not isinstance(item.get(name), str):
                raise bad_request(f"contents: '{name}' is a required property")
        uuid = check_uuid(item["uuid"], "contents uuid")
        version = check_version(item["version"], "contents version")
        kind = item["type"]
        item = dict(item, uuid=uuid)
        if kind in ("file", "bundle", "collection"):
            key = f"{kind}s/{uuid}.{version}"
            raw = self.store.read(key)
            live = raw is not None and not (
                kind == "bundle" and self._bundle_dead(uuid, version)) and not (
                kind == "collection" and (self.store.exists(f"collection-tombstones/{uuid}")
                                          or json.loads(raw).get("owner") != who.email))
            if not live:  # another owner's collection reads exactly as a missing one
                raise Problem(422, "invalid_link", f"Could not find {kind} {uuid}.{version}")
            return item
        pointer = item.get("fragment")
        if not isinstance(pointer, str):
            raise Problem(422, "invalid_link", f"an item of type {kind!r} needs a 'fragment'")
        raw = self.store.read(f"files/{uuid}.{version}")
        if raw is None:
            raise Problem(422, "invalid_link", f"Could not find file {uuid}.{version}")
        meta = json.loads(raw)
        if meta["size"] > MAX_METADATA_SIZE:
            raise Problem(422, "invalid_link", "the referenced file is too large to verify")
        blob = b"".join(self.store.read_blob(_blob_key(meta)))
        try:
            _resolve_pointer(json.loads(blob), pointer)
        except (ValueError, KeyError, IndexError, TypeError, RecursionError) as exc:
            raise Problem(422, "invalid_link", f"cannot resolve fragment {pointer!r}") from exc
        return item

    def _contents(self, items: list, who: Identity) -> list[dict]:
        if not isinstance(items, list):
            raise bad_request("contents must be a list")
        if len(items) > MAX_PATCH_ITEMS:
            raise bad_request(f"more than {MAX_PATCH_ITEMS} items")
        return [self._check_item(item, who) for item in items]

    @staticmethod
    def _dedup(items: list[dict]) -> list[dict]:
        out: list[dict] = []
        for item in items:
            if item not in out:
                out.append(item)
        return out

    def _index_collection(self, uuid: str, version: str, document: dict) -> None:
        self.store.write(f"collection-owners/{self._owner_key(document['owner'])}/"
                         f"{uuid}.{version}", b"{}")
        self._touch_collections(document["owner"])

    def _touch_collections(self, email: str) -> None:
        """Change the owner's mark, after the change it stands for is stored."""
        self.store.write(f"collection-marks/{self._owner_key(email)}", secrets.token_hex(8)
                         .encode())

    def collections_mark(self, who: Identity) -> str:
        """A token that changes whenever the caller's collections change ("0" before the
        first change): read it before the listing, compare it next time."""
        require_group(who)
        raw = self.store.read(f"collection-marks/{self._owner_key(who.email)}")
        return raw.decode() if raw else "0"

    def put_collection(self, uuid: str | None, version: str | None, body: dict,
                       who: Identity) -> dict:
        require_group(who)
        if uuid is None:
            raise bad_request("uuid is required")
        uuid = check_uuid(uuid)
        version = check_version(version)
        for name, kind in (("name", str), ("description", str), ("details", dict),
                           ("contents", list)):
            if not isinstance(body.get(name), kind):
                raise bad_request(f"'{name}' is a required property of type "
                                  f"{kind.__name__.replace('str', 'string')}")
        if self.store.exists(f"collection-tombstones/{uuid}"):
            raise Problem(409, "collection_tombstone_already_exists",
                          "this collection was deleted")
        previous = next(self.store.list(f"collections/{uuid}."), None)
        if previous is not None:  # a store from before claims: its versions name the owner
            self._owned(json.loads(self.store.read(previous) or b"{}"), who)
        document = {"name": body["name"], "description": body["description"],
                    "details": body["details"],
                    "contents": self._dedup(self._contents(body["contents"], who)),
                    "owner": who.email}
        claim = f"collection-claims/{uuid}"
        if not self.store.create(claim, dumps({"owner": who.email})):
            self._owned(json.loads(self.store.read(claim) or b"{}"), who)
        key = f"collections/{uuid}.{version}"
        if not self.store.create(key, dumps(document)):
            if json.loads(self.store.read(key) or b"{}") != document:
                raise Problem(409, "collection_already_exists",
                              f"collection {uuid}.{version} already exists with other "
                              "contents")
        self._index_collection(uuid, version, document)
        return {"uuid": uuid, "version": version}

    def list_collections(self, who: Identity, start_at: int, per_page: int) -> Page:
        require_group(who)
        owner = self._owner_key(who.email)
        entries = []
        for key in self.store.list(f"collection-owners/{owner}/"):
            uuid, _, version = key.rsplit("/", 1)[1].partition(".")
            entries.append({"uuid": uuid, "version": version})
        return Page(entries[start_at:start_at + per_page],
                    len(entries) - start_at > per_page)

    def get_collection(self, uuid: str, version: str | None, who: Identity) -> dict:
        require_group(who)
        _, document = self._collection(uuid, version)
        self._owned(document, who)
        return document

    def patch_collection(self, uuid: str, version: str | None, body: dict, who: Identity
                         ) -> dict:
        require_group(who)
        uuid = check_uuid(uuid)
        version = check_version(version)
        _, document = self._collection(uuid, version)
        self._owned(document, who)
        updated = dict(document)
        for name, kind in (("name", str), ("description", str), ("details", dict)):
            if name in body:
                if not isinstance(body[name], kind):
                    raise bad_request(f"{name} has the wrong type")
                updated[name] = body[name]
        remove = body.get("remove_contents") or []
        if not isinstance(remove, list) or len(remove) > MAX_PATCH_ITEMS:
            raise bad_request("remove_contents must be a list of at most 1000 items")
        add = self._contents(body.get("add_contents") or [], who)
        kept = [item for item in document["contents"]
                if not any(_same_item(item, gone) for gone in remove)]
        updated["contents"] = self._dedup(kept + add)
        new_version = now_version()
        while not self.store.create(f"collections/{uuid}.{new_version}", dumps(updated)):
            new_version = now_version()  # another PATCH took this version
        self._index_collection(uuid, new_version, updated)
        return {"uuid": uuid, "version": new_version}

    def delete_collection(self, uuid: str, who: Identity) -> dict:
        require_group(who)
        uuid = check_uuid(uuid)
        _, document = self._collection(uuid, None)
        self._owned(document, who)
        self.store.create(f"collection-tombstones/{uuid}", dumps({"email": who.email}))
        owner = self._owner_key(who.email)
        for key in list(self.store.list(f"collection-owners/{owner}/{uuid}.")):
            self.store.delete(key)
        self._touch_collections(who.email)
        return {}

    # ---------------------------------------------------------------- blobs

    def blob_chunks(self, meta: dict, start: int, end: int) -> Iterator[bytes]:
        return self.store.read_blob(_blob_key(meta), start, end)


def _blob_key(meta: dict) -> str:
    return f"blobs/{meta['sha256']}.{meta['sha1']}.{meta['s3-etag']}.{meta['crc32c']}"


def blob_key(meta: dict) -> str:
    return _blob_key(meta)


def _file_version(entry: dict) -> dict:
    """A manifest entry as GET /bundles shows it (``s3_etag``, not ``s3-etag``)."""
    return {"name": entry["name"], "content-type": entry["content-type"],
            "size": entry["size"], "uuid": entry["uuid"], "version": entry["version"],
            "crc32c": entry["crc32c"], "s3_etag": entry["s3-etag"], "sha1": entry["sha1"],
            "sha256": entry["sha256"], "indexed": entry["indexed"]}


def _same_item(item: dict, gone: object) -> bool:
    if not isinstance(gone, dict):
        return False
    return all(item.get(k) == (gone.get(k).lower() if k == "uuid" and isinstance(
        gone.get(k), str) else gone.get(k)) for k in ("type", "uuid", "version"))


def _resolve_pointer(document, pointer: str):
    if pointer in ("", "/"):
        return document
    if not pointer.startswith("/"):
        raise ValueError("a JSON pointer starts with /")
    for part in pointer[1:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        document = document[int(part)] if isinstance(document, list) else document[part]
    return document
