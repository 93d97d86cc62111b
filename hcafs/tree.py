"""The mounted tree, FUSE-free: paths in, attributes, listings and bytes out.

Layout::

    /bundles/<uuid>.<version>/...   every live bundle version; read-only
    /collections/<NAME>.<UUID>/      the caller's collections; items are symlinks to
                                     ../../bundles/<fqid> or ../../files/<fqid>
    /files/<uuid>.<version>          any file by FQID: lookup only, not listed

Names the server sends that cannot be shown safely (empty parts, ``.``, ``..``, NUL, an
absolute path, or a file that is also a directory) are left out with a warning, never
followed.

Errors are raised from the :mod:`hcafs.errors` tree; the FUSE adapter maps them to errno.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
from dataclasses import dataclass, field

from .blobcache import BlobCache
from .catalog import Catalog
from .errors import NotFound, ReadOnly, Unreachable, UsageError
from .versions import parse_fqid, version_datetime

log = logging.getLogger(__name__)

TOP = ("bundles", "collections", "files")


@dataclass(frozen=True)
class Attr:
    kind: str  # "dir", "file" or "link"
    size: int = 0
    mtime: float = 0.0
    writable: bool = False


@dataclass
class FileEntry:
    """A file in a bundle (or by FQID): enough to show it and to fetch its bytes."""

    name: str
    uuid: str
    version: str
    size: int
    sha256: str
    sha1: str
    crc32c: str
    s3_etag: str
    content_type: str
    indexed: bool
    mtime: float

    @property
    def attr(self) -> Attr:
        return Attr("file", self.size, self.mtime)

    def xattrs(self) -> dict[str, str]:
        return {"user.hca.uuid": self.uuid, "user.hca.version": self.version,
                "user.hca.sha256": self.sha256, "user.hca.sha1": self.sha1,
                "user.hca.crc32c": self.crc32c, "user.hca.s3_etag": self.s3_etag,
                "user.hca.content_type": self.content_type,
                "user.hca.indexed": "true" if self.indexed else "false"}


@dataclass
class DirNode:
    mtime: float
    children: dict[str, DirNode | FileEntry] = field(default_factory=dict)

    @property
    def attr(self) -> Attr:
        return Attr("dir", 0, self.mtime)


def safe_parts(name: object) -> list[str] | None:
    """The path parts of a manifest name, or None if showing it would be unsafe."""
    if not isinstance(name, str) or not name or name.startswith("/") or "\0" in name:
        return None
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return None
    return parts


def version_mtime(version: str) -> float:
    try:
        return version_datetime(version).timestamp()
    except ValueError:
        return 0.0


def build_tree(manifest: dict) -> DirNode:
    """A bundle's files as a directory tree (a ``/`` in a name is a subdirectory)."""
    mtime = version_mtime(manifest["version"])
    root = DirNode(mtime)
    for item in manifest["files"]:
        parts = safe_parts(item.get("name"))
        if parts is None:
            log.warning("bundle %s.%s: unsafe file name %r left out", manifest["uuid"],
                        manifest["version"], item.get("name"))
            continue
        node = root
        for part in parts[:-1]:
            child = node.children.setdefault(part, DirNode(mtime))
            if not isinstance(child, DirNode):
                node = None
                break
            node = child
        if node is None or parts[-1] in node.children:
            log.warning("bundle %s.%s: name %r clashes with another; left out",
                        manifest["uuid"], manifest["version"], item["name"])
            continue
        node.children[parts[-1]] = _entry(item, parts[-1])
    return root


def _entry(item: dict, name: str) -> FileEntry:
    return FileEntry(name=name, uuid=item["uuid"], version=item["version"],
                     size=int(item["size"]), sha256=item["sha256"], sha1=item["sha1"],
                     crc32c=item["crc32c"], s3_etag=item.get("s3_etag", item.get("s3-etag")),
                     content_type=item.get("content-type", item.get("content_type", "")),
                     indexed=bool(item.get("indexed", False)),
                     mtime=version_mtime(item["version"]))


@dataclass
class _Handle:
    entry: FileEntry
    blob: object
    next_offset: int = 0
    streak: int = 0


class Tree:
    """The model behind the mount."""

    def __init__(self, catalog: Catalog, blobs: BlobCache,
                 max_readahead: int = 64 * 1024 * 1024):
        self.catalog = catalog
        self.blobs = blobs
        self.max_readahead = max_readahead
        self.mounted_at = 0.0
        self._lock = threading.Lock()
        self._trees: dict[str, DirNode] = {}
        self._handles: dict[int, _Handle] = {}
        self._ids = itertools.count(1)
        self._urls: dict[str, str] = {}

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

    def resolve(self, path: str):
        """The node at ``path``: a DirNode, FileEntry, or a marker for the fixed dirs."""
        parts = [p for p in path.split("/") if p]
        if not parts:
            return "root"
        top, rest = parts[0], parts[1:]
        if top not in TOP:
            raise NotFound(path)
        if not rest:
            return top
        if top == "files":
            if len(rest) > 1:
                raise NotFound(path)
            return self._file_by_fqid(rest[0])
        if top == "collections":
            collection = self.catalog.collections().get(rest[0])
            if collection is None:
                raise NotFound(path)
            if len(rest) == 1:
                return ("collection", collection)
            if len(rest) == 2:
                link = self._collection_links(collection).get(rest[1])
                if link is not None:
                    return ("link", link)
            raise NotFound(path)
        node: DirNode | FileEntry = self._bundle_tree(rest[0])
        for part in rest[1:]:
            if not isinstance(node, DirNode) or part not in node.children:
                raise NotFound(path)
            node = node.children[part]
        return node

    def _collection_links(self, collection: dict) -> dict[str, str]:
        links = {}
        for item in collection["contents"]:
            fqid = f"{item.get('uuid')}.{item.get('version')}"
            if item.get("type") == "bundle" and parse_fqid(fqid):
                links[fqid] = f"../../bundles/{fqid}"
            elif item.get("type") == "file" and parse_fqid(fqid):
                links[fqid] = f"../../files/{fqid}"
        return links

    def _fixed_dir_attr(self) -> Attr:
        return Attr("dir", 0, self.catalog.refreshed_at or self.mounted_at)

    # ------------------------------------------------------------ metadata

    def getattr(self, path: str) -> Attr:
        node = self.resolve(path)
        if isinstance(node, str):
            return self._fixed_dir_attr()
        if isinstance(node, tuple):
            kind, value = node
            if kind == "collection":
                return Attr("dir", 0, version_mtime(value["version"]))
            return Attr("link", len(value), self.catalog.refreshed_at)
        return node.attr

    def listdir(self, path: str) -> list[tuple[str, Attr]]:
        node = self.resolve(path)
        if node == "root":
            fixed = self._fixed_dir_attr()
            return [(name, fixed) for name in TOP]
        if node == "bundles":
            return [(fqid, Attr("dir", 0, version_mtime(fqid.split(".", 1)[1])))
                    for fqid in self.catalog.bundles()]
        if node == "collections":
            return [(name, Attr("dir", 0, version_mtime(c["version"])))
                    for name, c in sorted(self.catalog.collections().items())]
        if node == "files":
            return []
        if isinstance(node, tuple) and node[0] == "collection":
            stamp = self.catalog.refreshed_at
            return [(name, Attr("link", len(target), stamp))
                    for name, target in sorted(self._collection_links(node[1]).items())]
        if isinstance(node, DirNode):
            return [(name, child.attr) for name, child in sorted(node.children.items())]
        raise UsageError(f"{path} is not a directory")

    def readlink(self, path: str) -> str:
        node = self.resolve(path)
        if isinstance(node, tuple) and node[0] == "link":
            return node[1]
        raise UsageError(f"{path} is not a symbolic link")

    def xattrs(self, path: str) -> dict[str, str]:
        node = self.resolve(path)
        if isinstance(node, FileEntry):
            return node.xattrs()
        parts = [p for p in path.split("/") if p]
        if isinstance(node, DirNode) and len(parts) == 2 and parts[0] == "bundles":
            manifest = self.catalog.manifest(parts[1])
            return {"user.hca.uuid": manifest["uuid"], "user.hca.version": manifest["version"],
                    "user.hca.creator_uid": str(manifest["creator_uid"])}
        if isinstance(node, tuple) and node[0] == "collection":
            return {"user.hca.uuid": node[1]["uuid"], "user.hca.version": node[1]["version"],
                    "user.hca.name": node[1]["name"]}
        if node == "root":
            return {"user.hcafs.status": json.dumps(self.status())}
        return {}

    def setxattr(self, path: str, name: str, value: bytes) -> None:
        if path == "/" and name == "user.hcafs.refresh":
            self.catalog.refresh()
            with self._lock:
                self._trees.clear()
            return
        self.resolve(path)
        raise ReadOnly(f"{path} is read-only")

    def status(self) -> dict:
        return {"online": self.catalog.health.online,
                "bundles": len(self.catalog.bundles()),
                "collections": len(self.catalog.collections()),
                "refreshed_at": self.catalog.refreshed_at,
                "cache_bytes": self.blobs.used, "cache_limit": self.blobs.max_bytes}

    # ------------------------------------------------------------ content

    def open(self, path: str, write: bool) -> int:
        node = self.resolve(path)
        if not isinstance(node, FileEntry):
            raise ReadOnly(f"{path} is not a regular file") if write else NotFound(path)
        if write:
            raise ReadOnly(f"{path} is read-only")
        blob = self.blobs.acquire(node.sha256, node.size)
        handle = next(self._ids)
        with self._lock:
            self._handles[handle] = _Handle(node, blob)
        return handle

    def cacheable(self, handle: int) -> bool:
        """True when the open file's bytes are verified, so page caching is safe."""
        return bool(self._handles[handle].blob.verified)

    def read(self, handle: int, size: int, offset: int) -> bytes:
        state = self._handles[handle]
        if offset != state.next_offset:
            state.streak = 0  # random access: fetch just what is asked
        # Read ahead as far as the reader has already read in sequence, up to the cap:
        # a long sequential read gets large windows, a short one costs little extra.
        readahead = min(state.streak, self.max_readahead)
        data = self.blobs.read(state.blob, offset, size, self._fetcher(state.entry),
                               readahead=readahead)
        state.next_offset = offset + len(data)
        state.streak += len(data)
        return data

    def _fetcher(self, entry: FileEntry):
        def fetch(start: int, end: int):
            client = self.catalog.client
            if client is None:
                raise NotFound("no server to fetch from")
            try:
                url = self._urls.get(entry.sha256)
                if url is None:
                    url = client.file_url(entry.uuid, entry.version)
                    self._urls[entry.sha256] = url
                yield from client.stream(url, start, end)
            except Unreachable as exc:
                self.catalog.health.failed(exc)
                raise
            self.catalog.health.ok()
        return fetch

    def release(self, handle: int) -> None:
        with self._lock:
            state = self._handles.pop(handle, None)
        if state is not None:
            self.blobs.release(state.blob)

    def statfs(self) -> os.statvfs_result:
        return os.statvfs(self.blobs.root)

    # ------------------------------------------------------------ changes

    def _refuse(self, path: str, *args) -> int:
        """Every change to a read-only place: ENOENT if the parent is missing, else EROFS."""
        self.resolve(os.path.dirname(path.rstrip("/")) or "/")
        raise ReadOnly(f"{path} is read-only")

    def mkdir(self, path: str) -> int:
        return self._refuse(path)

    def rmdir(self, path: str) -> int:
        return self._refuse(path)

    def create(self, path: str) -> int:
        return self._refuse(path)

    def unlink(self, path: str) -> int:
        return self._refuse(path)

    def symlink(self, target: str, path: str) -> int:
        return self._refuse(path)

    def rename(self, old: str, new: str) -> int:
        self.resolve(old)
        return self._refuse(new)

    def truncate(self, path: str, length: int) -> int:
        self.resolve(path)
        return self._refuse(path)

    def touch(self, path: str) -> int:
        self.resolve(path)
        return self._refuse(path)

    def write(self, handle: int, data: bytes, offset: int) -> int:
        raise ReadOnly("this file is read-only")
