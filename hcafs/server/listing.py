"""The bundle listing index: every live bundle version, in FQID order, sharded by uuid.

``GET /bundles/all`` pages through this index, never through the manifests: one page is one
:meth:`~.store.Store.scan` from ``search_after``, so it costs the same at ten thousand and at
a million versions, and deleted versions are not in it (a delete removes its entries), so no
page entry needs a tombstone lookup.  Store layout::

    bundle-index/{uuid[0:2]}/{uuid[2:4]}/{uuid}.{version}    empty (``Store.mark``)
    layout            {"bundle_index": 1} once an older store is indexed (0 while it is)

The shard folders are prefixes of the uuid, so key order is FQID order.  Writers keep the
index in step with the manifests (see :class:`~.dss.DSS`): a create writes the manifest, its
event, then its entry, and re-checks the bundle's tombstone last; a delete writes the
tombstone, its event, then removes the entries.  Whatever order two of them interleave in, a
deleted version ends without an entry.

A store written before the index existed (bundles, but neither events nor a finished
``layout`` key) is indexed on start: every live
manifest gets its entry and a create event, filed under cursors that sort before any event
recorded live (:data:`~.events.MIGRATED`) and are the same for every server doing it, so two
servers starting together on one store write each key once.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator

from .events import JOURNAL_EVENTS, MIGRATED, Journal
from .events import PREFIX as EVENTS
from .store import LocalStore, Store

log = logging.getLogger(__name__)

PREFIX = "bundle-index/"
LAYOUT_KEY = "layout"
LAYOUT = {"bundle_index": 1}


def _shard(text: str) -> str:
    """The index key for an FQID (or any start of one: a prefix, a ``search_after``)."""
    if len(text) <= 2:
        return PREFIX + text
    if len(text) <= 4:
        return f"{PREFIX}{text[:2]}/{text[2:]}"
    return f"{PREFIX}{text[:2]}/{text[2:4]}/{text}"


class BundleIndex:
    def __init__(self, store: Store):
        self.store = store

    def add(self, uuid: str, version: str) -> bool:
        """Index a version; False if it already was."""
        return self.store.mark(_shard(f"{uuid}.{version}"))

    def has(self, uuid: str, version: str) -> bool:
        return self.store.exists(_shard(f"{uuid}.{version}"))

    def remove(self, uuid: str, version: str) -> None:
        self.store.delete(_shard(f"{uuid}.{version}"))

    def versions(self, uuid: str) -> list[str]:
        """Indexed (live) versions of one bundle, oldest first."""
        return [key.rsplit("/", 1)[1][len(uuid) + 1:]
                for key in self.store.list(_shard(f"{uuid}."))]

    def entries(self, prefix: str, search_after: str | None) -> Iterator[tuple[str, str]]:
        """``(uuid, version)`` of live versions starting with ``prefix``, after the FQID
        ``search_after``, in FQID order."""
        after = _shard(search_after) if search_after else ""
        for key in self.store.scan(_shard(prefix), after):
            uuid, _, version = key.rsplit("/", 1)[1].partition(".")
            yield uuid, version


def migrate(store: Store, index: BundleIndex, journal: Journal) -> int:
    """Index a store written before the index existed; returns how many versions were
    indexed (0 when the store already has the current layout)."""
    raw = store.read(LAYOUT_KEY)
    if raw is not None:
        if json.loads(raw).get("bundle_index", 0) >= 1:
            return 0
    elif next(store.scan(EVENTS), None) is not None or next(store.list("bundles/"),
                                                             None) is None:
        return 0  # written by this release (it records events), or empty
    store.write(LAYOUT_KEY, json.dumps({"bundle_index": 0}).encode())  # under way
    dead = {key.split("/", 1)[1] for key in store.list("bundle-tombstones/")}
    batch: list[tuple[str, str | None]] = []
    count = 0
    for key in store.list("bundles/"):
        fqid = key.split("/", 1)[1]
        uuid, _, version = fqid.partition(".")
        if not version or uuid in dead or fqid in dead:
            continue
        batch.append((uuid, version))
        if len(batch) == JOURNAL_EVENTS:
            count += _migrate_batch(index, journal, batch)
            batch = []
    if batch:
        count += _migrate_batch(index, journal, batch)
    store.write(LAYOUT_KEY, json.dumps(LAYOUT).encode())
    if count:
        log.info("indexed %d bundle versions written before the listing index", count)
    return count


def _migrate_batch(index: BundleIndex, journal: Journal,
                   batch: list[tuple[str, str | None]]) -> int:
    digest = hashlib.sha256(" ".join(f"{u}.{v}" for u, v in batch).encode()).hexdigest()
    journal.record_many([("create", u, v) for u, v in batch], f"{MIGRATED}.{digest[:8]}")
    for uuid, version in batch:
        index.add(uuid, version)
    return len(batch)


# ---------------------------------------------------------------- file versions by uuid

FILE_PREFIX = "file-index/"
FILE_LAYOUT_KEY = "layout-files"  # {"file_index": 1} once a local store's files are indexed


def _file_key(fqid: str) -> str:
    return f"{FILE_PREFIX}{fqid[:2]}/{fqid[2:4]}/{fqid}"


class FileIndex:
    """The versions of each file, by uuid, for a lookup of the latest: in a local store a
    listing of ``files/`` reads the whole folder (a second at a million versions, and any
    caller may ask, with any uuid), so each version is also marked under
    ``file-index/{uuid[0:2]}/{uuid[2:4]}/{uuid}.{version}``, a folder of a few names.

    The mark is made before the file's document (and unsynced: the document's own fsync
    makes it durable too, on a journalled filesystem), so a document always has its mark;
    a mark whose document is missing (a create that failed after it) is skipped by readers.
    An S3 store lists by prefix already: there, nothing is marked."""

    def __init__(self, store: Store):
        self.store = store
        self.used = isinstance(store, LocalStore)

    def add(self, fqid: str) -> None:
        if self.used:
            self.store.mark(_file_key(fqid), sync=False)

    def versions(self, uuid: str) -> list[str]:
        """Versions of file ``uuid`` that may exist, oldest first (check each document)."""
        if self.used:
            keys = self.store.list(_file_key(f"{uuid}."))
        else:
            keys = self.store.list(f"files/{uuid}.")
        return [key.rsplit("/", 1)[1][len(uuid) + 1:] for key in keys]


def migrate_files(store: Store, index: FileIndex) -> int:
    """Mark the file versions of a local store written before :class:`FileIndex` (once:
    then ``layout-files`` says so); returns how many were marked."""
    if not index.used:
        return 0
    raw = store.read(FILE_LAYOUT_KEY)
    if raw is not None and json.loads(raw).get("file_index", 0) >= 1:
        return 0
    count = 0
    for key in store.list("files/"):
        index.add(key.split("/", 1)[1])
        count += 1
    store.write(FILE_LAYOUT_KEY, json.dumps({"file_index": 1}).encode())
    if count:
        log.info("indexed %d file versions written before the file index", count)
    return count
