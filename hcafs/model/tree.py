"""The mounted tree, FUSE-free: paths in, attributes, listings and bytes out.

Layout::

    /bundles/<uuid>.<version>/...   every live bundle version; read-only
    /bundles/<NAME>/...             a pending bundle (writable); after commit, a symlink
                                    to the committed <uuid>.<version>
    /collections/<NAME>/            the caller's collections (NAME.UUID where names clash);
                                    items are symlinks to ../../bundles/<fqid> or
                                    ../../files/<fqid>, named by their FQID or by the
                                    name this mount gave them (see Catalog.item_names)
    /files/<uuid>.<version>         any file by FQID: lookup only, not listed

Changes map onto the DSS: ``mkdir``/``rmdir`` of a collection are put/delete-collection,
``ln -s``/``rm`` inside one are patch-collection, ``rmdir bundles/<fqid>`` is delete-bundle.
Pending bundles are handled by :mod:`hcafs.model.pending` and synced by
:mod:`hcafs.sync.syncer`.

Errors are raised from the :mod:`hcafs.errors` tree; the FUSE adapter maps them to errno.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
from dataclasses import dataclass

from ..cache.blobcache import BlobCache
from ..cache.catalog import Catalog
from ..cache.journal import COMMITTED, DIRTY, DRS, ERROR, LOCAL, SYNCED, FileRow
from ..errors import (
    AlreadyExists,
    NotADirectory,
    NotEmpty,
    NotFound,
    NotPermitted,
    NotSupported,
    PermissionDenied,
    ReadOnly,
    Unreachable,
    UsageError,
)
from ..versions import new_uuid, now_version, parse_fqid
from .entries import Attr, DirNode, FileEntry, build_tree, version_mtime
from .pending import PendingBundles

log = logging.getLogger(__name__)

TOP = ("bundles", "collections", "files")
PENDING_HANDLES = 1 << 40  # handle numbers at or above this belong to pending files
SEQUENTIAL_SLACK = 4 * 1024 * 1024
REFRESH_WAIT = 120.0  # the longest `hcafs refresh` (setxattr) waits on the listing
# The attributes that may be set, each where: set anywhere else, it is a usage error.
SETTABLE = {"user.hcafs.commit": "set it on the pending bundle's directory",
            "user.hcafs.refresh": "set it on the mount's root",
            "user.hca.indexed": "set it on a file of a pending bundle"}


@dataclass(frozen=True)
class Node:
    """What a path names: ``kind`` and what that kind needs."""

    kind: str  # root, top, bundle, remote, collection, item, pending, committed, pdir, pfile
    name: str = ""
    value: object = None
    path: str = ""  # inside a pending bundle


@dataclass
class _Handle:
    entry: FileEntry
    blob: object
    next_offset: int = 0
    streak: int = 0


class Tree:
    """The model behind the mount."""

    def __init__(self, catalog: Catalog, blobs: BlobCache, pending: PendingBundles | None = None,
                 max_readahead: int = 64 * 1024 * 1024, delete_reason: str = "deleted with hcafs"):
        self.catalog = catalog
        self.blobs = blobs
        self.pending = pending
        self.max_readahead = max_readahead
        self.delete_reason = delete_reason
        self.mounted_at = 0.0
        self.invalidate = lambda path: None  # set by the FUSE adapter once mounted
        self.forget_name = lambda path: None  # likewise: the kernel asks for the name again
        self.adapter_status = lambda: {}  # the FUSE adapter's own figures, for status
        self._lock = threading.Lock()
        self._trees: dict[str, DirNode] = {}
        self._handles: dict[int, _Handle] = {}
        self._ids = itertools.count(1)
        self._urls: dict[str, str] = {}
        catalog.on_change = lambda: self.invalidate("/bundles")

    # ------------------------------------------------------------ resolving

    def _bundle_tree(self, fqid: str) -> DirNode:
        with self._lock:
            tree = self._trees.get(fqid)
        if tree is None:
            if not self.catalog.has_bundle(fqid):
                raise NotFound(f"no bundle {fqid}")
            tree = build_tree(self.catalog.manifest(fqid))
            with self._lock:
                if len(self._trees) > 512:
                    self._trees.clear()
                self._trees[fqid] = tree
        return tree

    def _file_by_fqid(self, fqid: str) -> FileEntry:
        if parse_fqid(fqid) is None:
            raise NotFound(f"{fqid} is not a file FQID")
        info = self.catalog.file_info(fqid)
        return FileEntry(name=fqid, uuid=info["uuid"], version=info["version"],
                         size=info["size"], sha256=info["sha256"], sha1=info["sha1"],
                         crc32c=info["crc32c"], s3_etag=info["s3_etag"],
                         content_type=info["content_type"], indexed=False,
                         mtime=version_mtime(info["version"]))

    def _pending_bundle(self, name: str):
        if self.pending is None or parse_fqid(name):
            return None
        return self.pending.bundle(name)

    def resolve(self, path: str) -> Node:
        parts = [p for p in path.split("/") if p]
        if not parts:
            return Node("root")
        top, rest = parts[0], parts[1:]
        if top not in TOP:
            raise NotFound(path)
        if not rest:
            return Node("top", top)
        if top == "files":
            if len(rest) > 1:
                raise NotFound(path)
            return Node("remote", rest[0], self._file_by_fqid(rest[0]))
        if top == "collections":
            return self._resolve_collection(path, rest)
        bundle = self._pending_bundle(rest[0])
        if bundle is not None:
            if bundle.state == COMMITTED:
                if len(rest) > 1:
                    raise NotFound(path)
                return Node("committed", rest[0], bundle.fqid)
            inner = "/".join(rest[1:])
            if not inner:
                return Node("pending", rest[0], bundle)
            found = self.pending.lookup(rest[0], inner)
            if found == "dir":
                return Node("pdir", rest[0], bundle, inner)
            return Node("pfile", rest[0], found, inner)
        if len(rest) == 1 and self.catalog.listed(rest[0]):
            # A listed bundle version: its attributes need no manifest (``ls -l bundles``
            # must not fetch 10,000 manifests); the tree is loaded when it is entered.
            uuid_version = rest[0].split(".", 1)
            return Node("bundle", rest[0], DirNode(version_mtime(uuid_version[1])), "",)
        node: DirNode | FileEntry = self._bundle_tree(rest[0])
        for part in rest[1:]:
            if not isinstance(node, DirNode) or part not in node.children:
                raise NotFound(path)
            node = node.children[part]
        if isinstance(node, FileEntry):
            return Node("remote", rest[0], node)
        return Node("bundle", rest[0], node, "/".join(rest[1:]))

    def _resolve_collection(self, path: str, rest: list[str]) -> Node:
        collection = self.catalog.collections().get(rest[0])
        if collection is None:
            raise NotFound(path)
        if len(rest) == 1:
            return Node("collection", rest[0], collection)
        if len(rest) == 2:
            link = self._collection_links(collection).get(rest[1])
            if link is not None:
                return Node("item", rest[0], collection, rest[1])
        raise NotFound(path)

    def _collection_links(self, collection: dict) -> dict[str, tuple[str, dict]]:
        """``{name: (target, item)}`` of a collection's items: each under the name this
        mount gave it (``ln -s TARGET collections/C/NAME``), else under its FQID."""
        names = self.catalog.item_names(collection["uuid"])
        links = {}
        for item in collection["contents"]:
            kind, fqid = item.get("type"), f"{item.get('uuid')}.{item.get('version')}"
            if kind in ("bundle", "file") and parse_fqid(fqid):
                links[names.get((kind, fqid), fqid)] = (f"../../{kind}s/{fqid}", item)
        return links

    def _fixed_dir_attr(self, writable: bool = False) -> Attr:
        return Attr("dir", 0, self.catalog.refreshed_at or self.mounted_at, writable)

    # ------------------------------------------------------------ metadata

    def _pfile_attr(self, row: FileRow) -> Attr:
        return Attr("file", self.pending.size(row), row.mtime or 0.0, writable=True)

    def getattr(self, path: str) -> Attr:
        node = self.resolve(path)
        kind = node.kind
        if kind in ("root", "top"):
            return self._fixed_dir_attr(writable=node.name in ("bundles", "collections"))
        if kind == "collection":
            return Attr("dir", 0, version_mtime(node.value["version"]), writable=True)
        if kind == "item":
            return Attr("link", len(self._collection_links(node.value)[node.path][0]),
                        self.catalog.refreshed_at)
        if kind == "committed":
            return Attr("link", len(node.value), self.catalog.refreshed_at)
        if kind in ("pending", "pdir"):
            return Attr("dir", 0, node.value.changed or 0.0, writable=True)
        if kind == "pfile":
            return self._pfile_attr(node.value)
        if kind == "remote":
            return node.value.attr
        return node.value.attr  # a directory of a committed bundle

    def listdir(self, path: str) -> list[tuple[str, Attr]]:
        node = self.resolve(path)
        if node.kind == "root":
            return [(name, self._fixed_dir_attr(name != "files")) for name in TOP]
        if node.kind == "top" and node.name == "bundles":
            listing, after = self.pending_entries(), None
            while page := self.bundle_entries(after):
                listing.extend(page)
                after = page[-1][0]
            return listing
        if node.kind == "top" and node.name == "collections":
            return [(name, Attr("dir", 0, version_mtime(c["version"]), True))
                    for name, c in sorted(self.catalog.collections().items())]
        if node.kind == "top":
            return []
        if node.kind == "collection":
            stamp = self.catalog.refreshed_at
            return [(name, Attr("link", len(target), stamp))
                    for name, (target, _) in sorted(self._collection_links(node.value).items())]
        if node.kind in ("pending", "pdir"):
            out = []
            for name, child in self.pending.listdir(node.name, node.path):
                out.append((name, Attr("dir", 0, node.value.changed or 0.0, True)
                            if child == "dir" else self._pfile_attr(child)))
            return out
        if node.kind == "bundle":
            tree = self._bundle_tree(node.name) if not node.path else node.value
            return [(name, child.attr) for name, child in sorted(tree.children.items())]
        raise NotADirectory(f"{path} is not a directory")

    def pending_entries(self) -> list[tuple[str, Attr]]:
        """The pending (and just committed) bundles of ``bundles/``."""
        listing = []
        if self.pending is not None:
            for name, row in self.pending.bundles().items():
                attr = Attr("link", len(row.fqid), row.changed or 0.0) \
                    if row.state == COMMITTED else Attr("dir", 0, row.changed or 0.0, True)
                listing.append((name, attr))
        return listing

    def bundle_entries(self, after: str | None = None, limit: int = 1000, skip: int = 0
                       ) -> list[tuple[str, Attr]]:
        """Listed bundle versions in order, after ``after`` (or from the ``skip``-th)."""
        return [(fqid, Attr("dir", 0, version_mtime(fqid.split(".", 1)[1])))
                for fqid in self.catalog.bundle_page(after, limit, skip)]

    def bundle_times(self, after: str | None = None, limit: int = 1000, skip: int = 0
                     ) -> list[tuple[str, int]]:
        """:meth:`bundle_entries` as ``(FQID, mtime in ns)``: listed versions are read-only
        directories, so their time is all that differs (what readdir of a million needs)."""
        return self.catalog.bundle_rows(after, limit, skip)

    def readlink(self, path: str) -> str:
        node = self.resolve(path)
        if node.kind == "item":
            return self._collection_links(node.value)[node.path][0]
        if node.kind == "committed":
            return node.value
        raise UsageError(f"{path} is not a symbolic link")

    def getxattr(self, path: str, name: str) -> str | None:
        """One extended attribute (None if there is none); only hcafs's own names are
        looked up, so the ACL and security probes of ``ls -l`` cost nothing."""
        if not name.startswith(("user.hca.", "user.hcafs.")):
            return None
        return self.xattrs(path).get(name)

    def xattrs(self, path: str) -> dict[str, str]:
        node = self.resolve(path)
        if node.kind == "remote":
            return node.value.xattrs()
        if node.kind == "bundle" and not node.path:
            manifest = self.catalog.manifest(node.name)
            return {"user.hca.uuid": manifest["uuid"], "user.hca.version": manifest["version"],
                    "user.hca.creator_uid": str(manifest["creator_uid"])}
        if node.kind == "collection":
            return {"user.hca.uuid": node.value["uuid"], "user.hca.version": node.value["version"],
                    "user.hca.name": node.value["name"]}
        if node.kind == "pending":
            summary = self.pending.journal.bundle_summary(node.name)
            summary["open_for_writing"] = self.pending.open_for_writing(node.name)
            values = {"user.hca.uuid": node.value.uuid, "user.hcafs.state": node.value.state,
                      "user.hcafs.status": json.dumps(summary)}
            if node.value.error:
                values["user.hcafs.error"] = node.value.error
            return values
        if node.kind == "committed":
            return {"user.hcafs.state": COMMITTED, "user.hcafs.fqid": node.value}
        if node.kind == "pfile":
            return _pending_file_xattrs(node.value)
        if node.kind == "root":
            return {"user.hcafs.status": json.dumps(self.status())}
        return {}

    def setxattr(self, path: str, name: str, value: bytes) -> None:
        if path == "/" and name == "user.hcafs.refresh":
            self.catalog.refresh_within(REFRESH_WAIT)
            with self._lock:
                self._trees.clear()
            return
        node = self.resolve(path)
        if node.kind == "pending" and name == "user.hcafs.commit":
            self.pending.request_commit(node.name)
            return
        if node.kind == "pfile" and name == "user.hca.indexed":
            self.pending.set_indexed(node.name, node.path, value)
            return
        if node.kind in ("pending", "pdir", "pfile"):
            if name in SETTABLE:
                raise UsageError(f"{name} cannot be set on {path}: {SETTABLE[name]}")
            # ENOTSUP, the answer of a filesystem that keeps no such attribute: `cp -a` and
            # `tar --xattrs` then copy the file without it, and say nothing.  Explained once
            # per attribute name, not per file: a `cp -a` of a tree would flood the log.
            refused = NotSupported(
                f"{name} cannot be set on {path}: written files and directories keep no "
                "attributes but a file's user.hca.indexed (a file's user.hca.* checksums, "
                "uuid and version are the ones made when it is uploaded); said once, for "
                f"the first path {name} was set on")
            refused.refusal_key = f"setxattr {name}"
            raise refused
        raise ReadOnly(f"{path} is read-only")

    def status(self) -> dict:
        status = {"online": self.catalog.health.online,
                  "bundles": self.catalog.bundle_count(),
                  "listing": "complete" if self.catalog.complete else "in progress",
                  "collections": len(self.catalog.collections()),
                  "refreshed_at": self.catalog.refreshed_at,
                  "cache_bytes": self.blobs.used, "cache_limit": self.blobs.max_bytes}
        if self.pending is not None:
            status.update(self.pending.journal.summary())
        status.update(self.adapter_status())
        return status

    # ------------------------------------------------------------ content

    def open(self, path: str, write: bool, truncate: bool = False) -> int:
        node = self.resolve(path)
        if node.kind == "pfile":
            return PENDING_HANDLES + self.pending.open(node.value, write, truncate)
        if node.kind != "remote":
            raise ReadOnly(f"{path} is not a regular file") if write else NotFound(path)
        if write or truncate:
            raise ReadOnly(f"{path} is read-only")
        blob = self.blobs.acquire(node.value.sha256, node.value.size)
        handle = next(self._ids)
        with self._lock:
            self._handles[handle] = _Handle(node.value, blob)
        return handle

    def cacheable(self, handle: int) -> bool:
        """True when the open file's bytes are verified, so page caching is safe."""
        if handle >= PENDING_HANDLES:
            return False
        return bool(self._handles[handle].blob.verified)

    def read(self, handle: int, size: int, offset: int) -> bytes:
        fd, start, length = self.read_span(handle, size, offset)
        return os.pread(fd, length, start) if length else b""

    def read_span(self, handle: int, size: int, offset: int) -> tuple[int, int, int]:
        """``(fd, offset, length)`` of a local file holding the bytes asked for, once they
        are there and checked (see :meth:`BlobCache.span`): the adapter hands the kernel
        the file descriptor, so the bytes never pass through Python."""
        if handle >= PENDING_HANDLES:
            return self.pending.read_span(handle - PENDING_HANDLES, size, offset)
        state = self._handles[handle]
        if abs(offset - state.next_offset) > SEQUENTIAL_SLACK:
            # Random access: fetch just what is asked.  (The kernel's read-ahead sends
            # sequential reads out of order across threads, hence the slack.)
            state.streak = 0
        # Read ahead as far as the reader has already read in sequence, up to the cap:
        # a long sequential read gets large windows, a short one costs little extra.
        readahead = min(state.streak, self.max_readahead)
        span = self.blobs.span(state.blob, offset, size, self.fetcher(state.entry),
                               readahead=readahead)
        state.next_offset = max(state.next_offset, offset + span[2])
        state.streak += span[2]
        return span

    def fetcher(self, entry: FileEntry):
        """``fetch(start, end)`` for one remote file: its bytes from the server."""
        def fetch(start: int, end: int):
            client = self.catalog.client
            if client is None:
                raise NotFound("no server to fetch from")
            try:
                url = self._urls.get(entry.sha256)
                if url is None:
                    url = client.file_url(entry.uuid, entry.version)
                    self._urls[entry.sha256] = url
                yield from client.stream(url, start, end, reuse=True)
            except Unreachable as exc:
                self.catalog.health.failed(exc)
                raise
            self.catalog.health.ok()
        return fetch

    def write(self, handle: int, data: bytes, offset: int) -> int:
        if handle < PENDING_HANDLES:
            raise ReadOnly("this file is read-only")
        return self.pending.write(handle - PENDING_HANDLES, data, offset)

    def fsync(self, handle: int) -> None:
        if handle >= PENDING_HANDLES:
            self.pending.fsync(handle - PENDING_HANDLES)

    def release(self, handle: int) -> None:
        if handle >= PENDING_HANDLES:
            self.pending.release(handle - PENDING_HANDLES)
            return
        with self._lock:
            state = self._handles.pop(handle, None)
        if state is not None:
            self.blobs.release(state.blob)

    def statfs(self) -> os.statvfs_result:
        return os.statvfs(self.blobs.root)

    # ------------------------------------------------------------ changes

    def _parent(self, path: str) -> tuple[Node, str]:
        parent, _, leaf = path.rstrip("/").rpartition("/")
        return self.resolve(parent or "/"), leaf

    def _in_pending(self, node: Node, leaf: str) -> tuple[str, str] | None:
        """(bundle name, path inside it) when ``leaf`` would go into a pending bundle."""
        if node.kind in ("pending", "pdir"):
            return node.name, f"{node.path}/{leaf}" if node.path else leaf
        return None

    def refuse_node(self, path: str, what: str) -> None:
        """A hard link, FIFO, socket or device node at ``path``: never made here.  Inside a
        pending bundle or a collection that is EPERM (neither holds such a thing); anywhere
        else, EROFS, as for every other change to the read-only tree."""
        parent, leaf = self._parent(path)
        if parent.kind == "collection":
            raise NotPermitted(f"{path}: {what} cannot be made in a collection, which holds "
                               "symbolic links to ../../bundles/<fqid> and ../../files/<fqid>")
        if self._in_pending(parent, leaf) is None:
            raise ReadOnly(f"{path}: {what} cannot be made here: this part of the mount is "
                           "read-only")
        advice = "; copy the file instead" if what == "a hard link" else ""
        raise NotPermitted(f"{path}: {what} cannot be made in a bundle, which holds files "
                           f"and directories only{advice}")

    def mkdir(self, path: str) -> int:
        parent, leaf = self._parent(path)
        where = self._in_pending(parent, leaf)
        if where:
            self.pending.mkdir(*where)
        elif parent.kind == "top" and parent.name == "bundles":
            if self.pending is None:
                raise ReadOnly(f"{path}: this mount cannot write bundles: it was mounted "
                               "without a staging target; mount again with --staging "
                               "s3://BUCKET/PREFIX (a bucket the DSS can read)")
            self.pending.create_bundle(leaf)
        elif parent.kind == "top" and parent.name == "collections":
            self._create_collection(leaf)
        else:
            raise ReadOnly(f"{path} is read-only")
        return 0

    def rmdir(self, path: str) -> int:
        node = self.resolve(path)
        if node.kind == "pdir":
            self.pending.rmdir(node.name, node.path)
        elif node.kind == "pending":
            self.pending.remove_bundle(node.name)
        elif node.kind == "bundle" and not node.path:
            self._delete_bundle(node.name)
        elif node.kind == "collection":
            if node.value["contents"]:
                raise NotEmpty(f"{path} is not empty: remove its links first (rm -r does)")
            self._remote(lambda c: c.delete_collection(node.value["uuid"]))
            self.catalog.collection_deleted(node.value["uuid"])
        else:
            raise ReadOnly(f"{path} is read-only")
        return 0

    def create(self, path: str) -> int:
        parent, leaf = self._parent(path)
        where = self._in_pending(parent, leaf)
        if not where:
            raise ReadOnly(f"{path} is read-only")
        return PENDING_HANDLES + self.pending.create(*where)

    def unlink(self, path: str) -> int:
        node = self.resolve(path)
        if node.kind == "pfile":
            self.pending.unlink(node.name, node.path)
        elif node.kind == "committed":
            self.pending.remove_bundle(node.name)
        elif node.kind == "item":
            _, item = self._collection_links(node.value)[node.path]
            self._change_collection(node.value, remove=[item])
            self.catalog.name_item(node.value["uuid"], item["type"],
                                   f"{item['uuid']}.{item['version']}", None)
        else:
            raise ReadOnly(f"{path} is read-only")
        return 0

    def symlink(self, target: str, path: str) -> int:
        """``ln -s ../../bundles/<fqid> collections/C/NAME``: add the item on the server;
        NAME is kept on this mount (other mounts show the item under its FQID)."""
        parent, leaf = self._parent(path)
        if parent.kind != "collection":
            if self._in_pending(parent, leaf):
                raise NotPermitted(f"{path}: a bundle holds files and directories only, not "
                                   "symbolic links; copy the file instead (links can be made "
                                   "inside a collection, collections/NAME/)")
            raise ReadOnly(f"{path}: links can be made only inside a collection "
                           "(collections/NAME/)")
        kind, fqid = _link_target(target)
        collection = parent.value
        links = self._collection_links(collection)
        if leaf in links:
            raise AlreadyExists(f"{path} exists")
        for name, (_, item) in links.items():
            if (item.get("type"), f"{item.get('uuid')}.{item.get('version')}") == (kind, fqid):
                raise AlreadyExists(f"{path}: {kind} {fqid} is in this collection already, "
                                    f"as {name!r}")
        if leaf != fqid and parse_fqid(leaf):
            raise UsageError(f"{path}: a link named like an FQID must be named after its "
                             f"own target ({fqid}); any other name will do")
        uuid, version = parse_fqid(fqid)
        self._change_collection(collection, add=[{"type": kind, "uuid": uuid,
                                                  "version": version}])
        self.catalog.name_item(collection["uuid"], kind, fqid, None if leaf == fqid else leaf)
        return 0

    def rename(self, old: str, new: str) -> int:
        source = self.resolve(old)
        parent, leaf = self._parent(new)
        where = self._in_pending(parent, leaf)
        if source.kind in ("pfile", "pdir") and where:
            self.pending.rename(source.name, source.path, *where)
            return 0
        if source.kind in ("pfile", "pdir"):
            raise UsageError("files can be moved only between pending bundles")
        raise ReadOnly(f"{old} is read-only")

    def truncate(self, path: str, length: int) -> int:
        node = self.resolve(path)
        if node.kind != "pfile":
            raise ReadOnly(f"{path} is read-only")
        self.pending.truncate(node.name, node.path, length)
        return 0

    def touch(self, path: str, mtime: float | None = None) -> int:
        """chmod, chown and utimens: accepted in pending bundles (mtime is kept)."""
        node = self.resolve(path)
        if node.kind == "pfile" and mtime is not None:
            self.pending.set_times(node.value.id, mtime)
        elif node.kind not in ("pending", "pdir", "pfile"):
            raise ReadOnly(f"{path} is read-only")
        return 0

    # ------------------------------------------------------------ remote changes

    def _remote(self, call):
        """One change on the server, waited on by a FUSE callback: through the quick
        client, so the wait is bounded (docs/architecture.md)."""
        client = self.catalog.callback_client
        if client is None:
            raise ReadOnly("no server")
        try:
            return call(client)
        except PermissionDenied as exc:
            log.warning("the server refused: %s", exc)
            raise

    def _delete_bundle(self, fqid: str) -> None:
        uuid, version = parse_fqid(fqid) or (None, None)
        if uuid is None:
            raise ReadOnly(f"bundles/{fqid} is not a bundle version")
        self._remote(lambda c: c.delete_bundle(uuid, version, self.delete_reason))
        self.catalog.forget_bundle(fqid)
        log.info("deleted bundle %s (%s)", fqid, self.delete_reason)

    def _create_collection(self, name: str) -> None:
        if name in self.catalog.collections():
            raise AlreadyExists(f"collections/{name} exists")
        uuid, version = new_uuid(), now_version()
        self._remote(lambda c: c.put_collection(uuid, version, name, []))
        self.catalog.collection_saved(uuid, version, name, [])
        if name not in self.catalog.collections():
            raise AlreadyExists(f"another collection is named {name!r}; this one is "
                                f"collections/{name}.{uuid}")

    def _change_collection(self, collection: dict, add: list | None = None,
                           remove: list | None = None) -> None:
        """PATCH the collection, then update its cached row as the server did: the kept
        items, then the added ones, each item once."""
        changes = {}
        if add:
            changes["add_contents"] = add
        if remove:
            changes["remove_contents"] = remove
        answer = self._remote(lambda c: c.patch_collection(collection["uuid"],
                                                           collection["version"], **changes))
        gone = {_item_key(item) for item in remove or []}
        contents, seen = [], set()
        for item in [*collection["contents"], *(add or [])]:
            key = _item_key(item)
            if key not in gone and key not in seen:
                seen.add(key)
                contents.append(item)
        self.catalog.collection_saved(collection["uuid"], answer["version"],
                                      collection["name"], contents)


def streamed(path: str) -> bool:
    """True for ``bundles/``: its listed versions are read page by page
    (:meth:`Tree.bundle_entries`) after :meth:`Tree.pending_entries`, never held whole."""
    return path.strip("/") == "bundles"


def _item_key(item: dict) -> tuple:
    return item.get("type"), item.get("uuid"), item.get("version")


def _link_target(target: str) -> tuple[str, str]:
    """``("bundle"|"file", fqid)`` for a link to ../../bundles/<fqid> or ../../files/<fqid>."""
    parts = [p for p in target.split("/") if p and p != ".."]
    if len(parts) == 2 and parts[0] in ("bundles", "files") and parse_fqid(parts[1]):
        return ("bundle" if parts[0] == "bundles" else "file"), parts[1]
    raise UsageError(f"a collection item links to ../../bundles/<fqid> or ../../files/<fqid>,"
                     f" not {target!r}")


def _pending_file_xattrs(row: FileRow) -> dict[str, str]:
    synced = row.state == SYNCED and row.synced_generation == row.generation
    state = row.state if row.kind in (LOCAL, DRS) else SYNCED
    if row.kind == LOCAL and row.state == SYNCED and not synced:
        state = DIRTY
    values = {"user.hcafs.state": state,
              "user.hca.indexed": "true" if row.is_indexed else "false"}
    if row.state == ERROR and row.error:
        values["user.hcafs.error"] = row.error
    if synced:
        values.update({"user.hca.uuid": row.file_uuid, "user.hca.version": row.file_version,
                       "user.hca.sha256": row.sha256, "user.hca.sha1": row.sha1,
                       "user.hca.crc32c": row.crc32c, "user.hca.s3_etag": row.s3_etag,
                       "user.hca.content_type": row.content_type or ""})
    return values
