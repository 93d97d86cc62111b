"""What the mount shows of remote objects: attributes, file entries, bundle trees.

Plain values, no I/O: a manifest goes in, a directory tree of :class:`FileEntry` comes out.
Names that cannot be shown safely are left out here, with a warning.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field

from ..versions import version_datetime

log = logging.getLogger(__name__)


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


@functools.lru_cache(maxsize=65536)
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
