"""Adapter tier: a refusal (an errno returned on purpose) is logged once per reason and path,
with its reason, and kept in the cache database for ``hcafs status``."""

from __future__ import annotations

import errno
import logging

import pytest

from hcafs import errors
from hcafs.cache.cachedb import REFUSALS_KEPT, CacheDB
from hcafs.mount.refusals import Refusals

fuse_ops = pytest.importorskip("hcafs.mount.fuse_ops", reason="needs libfuse3")
FuseOSError = fuse_ops.fuse.FuseOSError

REFUSED = [
    (errors.UsageError("a collection item links to ../../bundles/<fqid>"), errno.EINVAL),
    (errors.ReadOnly("this mount cannot write bundles: use --staging"), errno.EROFS),
    (errors.PermissionDenied("the server refused"), errno.EACCES),
    (errors.NotADirectory("bundles/b/f is not a directory"), errno.ENOTDIR),
    (errors.AlreadyExists("collections/c exists"), errno.EEXIST),
    (errors.NotEmpty("bundles/b is not empty"), errno.ENOTEMPTY),
    (errors.NoSpace("the cache disk is full"), errno.ENOSPC),
]


class Refusing:
    def __init__(self, error):
        self.error = error

    def getattr(self, path):
        raise self.error

    def mkdir(self, path):
        raise self.error


def _operations(error, db):
    return fuse_ops.Operations(Refusing(error), (1.0, 1.0, 1.0), lambda: None, lambda: None,
                               Refusals(db))


@pytest.mark.parametrize("error, code", REFUSED, ids=[errno.errorcode[c] for _, c in REFUSED])
def test_each_refusal_is_logged_once_with_its_reason_and_kept(error, code, tmp_path, caplog):
    db = CacheDB(str(tmp_path / "hcafs.db"))
    operations = _operations(error, db)
    with caplog.at_level(logging.DEBUG, logger="hcafs"):
        for _ in range(50):  # a loop of stats
            with pytest.raises(FuseOSError) as raised:
                operations.getattr("/bundles/x")
            assert raised.value.errno == code
        with pytest.raises(FuseOSError):
            operations.getattr("/bundles/y")  # another path: explained again
    lines = [r for r in caplog.records if r.name == "hcafs.refusals"]
    assert [r.levelno for r in lines] == [logging.WARNING, logging.WARNING]
    assert str(error) in lines[0].getMessage() and "/bundles/x" in lines[0].getMessage()
    assert errno.errorcode[code] in lines[0].getMessage()
    kept = db.refusals(10)
    assert [(k["path"], k["errno"], k["reason"], k["operation"]) for k in kept] == [
        ("/bundles/x", errno.errorcode[code], str(error), "getattr"),
        ("/bundles/y", errno.errorcode[code], str(error), "getattr")]


def test_a_full_disk_from_the_os_is_a_refusal_too(tmp_path, caplog):
    db = CacheDB(str(tmp_path / "hcafs.db"))
    with pytest.raises(FuseOSError) as raised:
        _operations(OSError(errno.ENOSPC, "No space left on device"), db).mkdir("/b/x", 0o755)
    assert raised.value.errno == errno.ENOSPC
    assert db.refusals()[0]["errno"] == "ENOSPC"


def test_answers_that_are_not_refusals_are_not_kept(tmp_path):
    db = CacheDB(str(tmp_path / "hcafs.db"))
    with pytest.raises(FuseOSError):
        _operations(errors.NotFound("no such bundle"), db).getattr("/bundles/x")
    assert db.refusals() == []


def test_only_the_latest_refusals_are_kept(tmp_path):
    db = CacheDB(str(tmp_path / "hcafs.db"))
    refusals = Refusals(db)
    for n in range(REFUSALS_KEPT + 10):
        refusals.record("mkdir", f"/files/{n}", errno.EROFS, "files/ is read-only")
    kept = db.refusals(REFUSALS_KEPT + 100)
    assert len(kept) == REFUSALS_KEPT and kept[-1]["path"] == f"/files/{REFUSALS_KEPT + 9}"
    assert [k["path"] for k in db.refusals(2)] == [f"/files/{REFUSALS_KEPT + 8}",
                                                   f"/files/{REFUSALS_KEPT + 9}"]
