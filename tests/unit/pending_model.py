"""The model of pending bundles and the mounted tree on a real SQLite cache, without FUSE,
driven as the FUSE adapter drives it (the ``model`` fixture of tests/unit/conftest.py)."""

from __future__ import annotations

from crashdb import CrashingCacheDB

from hcafs.cache.blobcache import BlobCache
from hcafs.cache.catalog import Catalog
from hcafs.cache.journal import Journal
from hcafs.model.pending import PendingBundles
from hcafs.model.tree import Tree


class Model:
    def __init__(self, root):
        self.db = CrashingCacheDB(str(root / "hcafs.db"))
        self.journal = Journal(self.db)
        self.catalog = Catalog(self.db, None, ttl=300)
        self.blobs = BlobCache(str(root / "blobs"), self.db, 64 * 1024 * 1024)
        self.tree = Tree(self.catalog, self.blobs)
        self.pending = PendingBundles(self.journal, str(root / "pending"), self.catalog,
                                      self.blobs, self.tree.fetcher)
        self.tree.pending = self.pending

    def write(self, path: str, data: bytes) -> int:
        handle = self.tree.create(path)
        assert self.tree.write(handle, data, 0) == len(data)
        self.tree.release(handle)
        return self.row(path).id

    def read(self, path: str) -> bytes:
        handle = self.tree.open(path, write=False)
        try:
            return self.tree.read(handle, 1 << 20, 0)
        finally:
            self.tree.release(handle)

    def row(self, path: str):
        _, _, name, inner = path.split("/", 3)
        return self.journal.file(name, inner)
