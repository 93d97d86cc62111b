"""Model tier: pending bundles and the mounted tree, without FUSE, on a real SQLite cache.

The model is driven as the FUSE adapter drives it (paths in, handles, bytes), and what it
leaves in the journal and in the cache dir is checked.  No server is needed: these bundles
are new, and nothing here reads remote bytes.
"""

from __future__ import annotations

import os
import time

import pytest
from crashdb import InjectedCrash

from hcafs.cache import journal as j
from hcafs.errors import (
    AlreadyExists,
    Busy,
    NotEmpty,
    NotFound,
    NotSupported,
    ReadOnly,
    UsageError,
)
from hcafs.remote.bulk_import import BulkImportClient
from hcafs.sync.drs_queue import DrsQueue


def test_create_write_read_and_list(model):
    file_id = model.write("/bundles/b/a.txt", b"hello")
    model.tree.mkdir("/bundles/b/sub")
    model.write("/bundles/b/sub/c.json", b"{}")
    assert model.read("/bundles/b/a.txt") == b"hello"
    assert [n for n, _ in model.tree.listdir("/bundles/b")] == ["a.txt", "sub"]
    attr = model.tree.getattr("/bundles/b/a.txt")
    assert (attr.kind, attr.size, attr.writable) == ("file", 5, True)
    row = model.journal.file_by_id(file_id)
    assert (row.state, row.size, row.kind) == (j.DIRTY, 5, j.LOCAL)
    assert open(model.pending.data_path(file_id), "rb").read() == b"hello"
    xattrs = model.tree.xattrs("/bundles/b/sub/c.json")
    assert xattrs == {"user.hcafs.state": "dirty", "user.hca.indexed": "true"}


def test_names_that_exist_or_do_not(model):
    model.write("/bundles/b/a.txt", b"x")
    with pytest.raises(AlreadyExists):
        model.tree.mkdir("/bundles/b")
    with pytest.raises(AlreadyExists):
        model.tree.mkdir("/bundles/b/a.txt")
    with pytest.raises(NotFound):
        model.tree.getattr("/bundles/b/missing")
    with pytest.raises(NotFound):
        model.tree.create("/bundles/b/no/such/dir.txt")
    with pytest.raises(NotEmpty):
        model.tree.rmdir("/bundles/b")
    with pytest.raises(ReadOnly):
        model.tree.unlink("/bundles/b")
    with pytest.raises(ReadOnly):
        model.tree.create("/files/x")


def test_rewrite_truncate_and_write_again_make_new_generations(model):
    file_id = model.write("/bundles/b/a.txt", b"first version")
    generation = model.journal.file_by_id(file_id).generation
    model.tree.truncate("/bundles/b/a.txt", 5)
    assert model.read("/bundles/b/a.txt") == b"first"
    row = model.journal.file_by_id(file_id)
    assert row.generation == generation + 1 and row.size == 5
    handle = model.tree.open("/bundles/b/a.txt", write=True, truncate=True)
    model.tree.write(handle, b"new", 0)
    model.tree.release(handle)
    assert model.read("/bundles/b/a.txt") == b"new"
    assert model.journal.file_by_id(file_id).generation > generation + 1


def test_rename_within_and_between_bundles(model):
    model.tree.mkdir("/bundles/other")
    model.tree.mkdir("/bundles/b/d")
    model.write("/bundles/b/d/one.txt", b"1")
    model.write("/bundles/b/a.txt", b"a")
    model.tree.rename("/bundles/b/d", "/bundles/b/e")
    assert model.read("/bundles/b/e/one.txt") == b"1"
    model.tree.rename("/bundles/b/a.txt", "/bundles/other/a.txt")
    assert model.read("/bundles/other/a.txt") == b"a"
    assert [n for n, _ in model.tree.listdir("/bundles/b")] == ["e"]
    with pytest.raises(UsageError):
        model.tree.rename("/bundles/b/e/one.txt", "/collections/x")


def test_rename_over_a_file_replaces_it_and_frees_its_bytes(model):
    source = model.write("/bundles/b/a.txt", b"source")
    target = model.write("/bundles/b/t.txt", b"target")
    model.tree.rename("/bundles/b/a.txt", "/bundles/b/t.txt")
    assert model.read("/bundles/b/t.txt") == b"source"
    assert model.row("/bundles/b/t.txt").id == source
    assert model.journal.file_by_id(target) is None
    assert not os.path.exists(model.pending.data_path(target))


def test_a_rename_that_fails_in_the_journal_keeps_the_target_whole(model):
    model.write("/bundles/b/a.txt", b"source")
    target = model.write("/bundles/b/t.txt", b"target")
    before = model.db.snapshot()
    for statement in (1, 2, 3):
        crash = _crash_inside(model, "rename", statement)
        with pytest.raises(InjectedCrash):
            model.pending.rename("b", "a.txt", "b", "t.txt")
        crash.disarm()
        assert model.db.snapshot() == before
        assert model.read("/bundles/b/t.txt") == b"target"
        assert os.path.exists(model.pending.data_path(target))


def test_unlink_removes_the_row_then_the_bytes_in_that_order(model):
    file_id = model.write("/bundles/b/a.txt", b"bytes")
    before = model.db.snapshot()
    crash = _crash_inside(model, "remove_file", 2)
    with pytest.raises(InjectedCrash):
        model.tree.unlink("/bundles/b/a.txt")
    crash.disarm()
    assert model.db.snapshot() == before and os.path.exists(model.pending.data_path(file_id))
    model.tree.unlink("/bundles/b/a.txt")
    assert model.journal.file_by_id(file_id) is None
    assert not os.path.exists(model.pending.data_path(file_id))


def test_a_closed_drs_file_is_queued_in_the_same_transaction_as_its_close(model, tmp_path):
    model.pending.drs_queue = DrsQueue(
        model.journal, BulkImportClient("http://127.0.0.1:9", None), None, limit=10,
        window=60, default_conflict="SKIP", resolver={})
    drs = model.write("/bundles/b/reads.fastq.drs", b"drs://example.org/abc\n")
    row = model.journal.file_by_id(drs)
    assert (row.state, row.size) == (j.QUEUED, 22)
    assert model.journal.imports_waiting("b") == 1
    assert model.tree.xattrs("/bundles/b/reads.fastq.drs")["user.hcafs.state"] == "queued"
    # The close and the enqueue are one transaction: a failure inside leaves neither.
    handle = model.tree.open("/bundles/b/reads.fastq.drs", write=True, truncate=True)
    model.tree.write(handle, b"drs://example.org/other\n", 0)
    before = model.db.snapshot()
    crash = _crash_inside(model, "drs_queued", 3)
    with pytest.raises(InjectedCrash):
        model.pending._closed(model.pending.handle(handle - (1 << 40)), 24)
    crash.disarm()
    assert model.db.snapshot() == before
    model.tree.release(handle)
    model.tree.unlink("/bundles/b/reads.fastq.drs")
    assert model.journal.imports_waiting("b") == 0


def test_an_invalid_drs_file_keeps_its_bytes_and_says_why(model):
    model.pending.drs_queue = None
    drs = model.write("/bundles/b/x.drs", b"drs://example.org/abc")
    assert "no DRS import API" in model.journal.file_by_id(drs).error
    model.pending.drs_queue = DrsQueue(
        model.journal, BulkImportClient("http://127.0.0.1:9", None), None, limit=10,
        window=60, default_conflict="SKIP", resolver={})
    drs = model.write("/bundles/b/y.drs", b"not a uri")
    row = model.journal.file_by_id(drs)
    assert row.state == j.ERROR and row.error.startswith("invalid .drs file")
    assert model.read("/bundles/b/y.drs") == b"not a uri"


def _imports(model) -> list[tuple[str, str]]:
    return model.journal.db.execute("select name, state from drs_imports order by id"
                                    ).fetchall()


def test_a_file_renamed_to_or_from_a_drs_name_is_judged_by_its_new_name(model):
    """rsync and editors write NAME.drs through a temporary name: the rename makes it an
    import request; a rename away from .drs makes it plain bytes again, and a rename
    while its import is under way is refused (EBUSY) rather than lose the result."""
    model.pending.drs_queue = DrsQueue(
        model.journal, BulkImportClient("http://127.0.0.1:9", None), None, limit=10,
        window=60, default_conflict="SKIP", resolver={})
    file_id = model.write("/bundles/b/.reads.fastq.drs.Xy12", b"drs://example.org/abc\n")
    before = model.journal.file_by_id(file_id)
    assert (before.kind, before.state, _imports(model)) == (j.LOCAL, j.DIRTY, [])

    model.tree.rename("/bundles/b/.reads.fastq.drs.Xy12", "/bundles/b/reads.fastq.drs")
    row = model.journal.file_by_id(file_id)
    assert (row.kind, row.state) == (j.DRS, j.QUEUED)
    assert row.generation > before.generation  # no sync step of the plain file lands
    assert _imports(model) == [("reads.fastq", j.QUEUED)]
    assert file_id not in {f.id for f in model.journal.due(time.time() + 3600, 0)}

    model.tree.rename("/bundles/b/reads.fastq.drs", "/bundles/b/reads.fq.drs")
    assert _imports(model) == [("reads.fq", j.QUEUED)]  # the import follows the name

    model.tree.rename("/bundles/b/reads.fq.drs", "/bundles/b/uri.txt")
    row = model.journal.file_by_id(file_id)
    assert (row.kind, row.state, _imports(model)) == (j.LOCAL, j.DIRTY, [])
    assert file_id in {f.id for f in model.journal.due(time.time() + 3600, 0)}
    assert model.read("/bundles/b/uri.txt") == b"drs://example.org/abc\n"

    model.tree.rename("/bundles/b/uri.txt", "/bundles/b/late.drs")
    model.journal.db.execute("update drs_imports set state = ?", [j.SUBMITTED])
    other = model.write("/bundles/b/plain.txt", b"x")
    for old, new in (("/bundles/b/late.drs", "/bundles/b/late.txt"),
                     ("/bundles/b/plain.txt", "/bundles/b/late.drs")):
        with pytest.raises(Busy, match="its import is under way"):
            model.tree.rename(old, new)
    assert model.journal.file_by_id(file_id).path == "late.drs"
    assert model.journal.file_by_id(other).path == "plain.txt"
    assert _imports(model) == [("late", j.SUBMITTED)]


def test_a_directory_renamed_takes_its_queued_imports_along(model):
    model.pending.drs_queue = DrsQueue(
        model.journal, BulkImportClient("http://127.0.0.1:9", None), None, limit=10,
        window=60, default_conflict="SKIP", resolver={})
    model.tree.mkdir("/bundles/b/sub")
    model.write("/bundles/b/sub/x.drs", b"drs://example.org/abc\n")
    assert _imports(model) == [("sub/x", j.QUEUED)]
    model.tree.rename("/bundles/b/sub", "/bundles/b/moved")
    assert _imports(model) == [("moved/x", j.QUEUED)]
    model.journal.db.execute("update drs_imports set state = ?", [j.SUBMITTED])
    with pytest.raises(Busy, match="its import is under way"):
        model.tree.rename("/bundles/b/moved", "/bundles/b/again")
    assert [entry for entry, _ in model.tree.listdir("/bundles/b")] == ["moved"]


def test_a_truncated_drs_file_stays_one_and_is_judged_again(model):
    """vim saves by truncating the file it opened and writing it again: the file stays an
    import request, judged at its close (or at once if no one has it open), and the import
    queued for its old content goes."""
    model.pending.drs_queue = DrsQueue(
        model.journal, BulkImportClient("http://127.0.0.1:9", None), None, limit=10,
        window=60, default_conflict="SKIP", resolver={})
    file_id = model.write("/bundles/b/x.drs", b"drs://example.org/old\n")

    def uris() -> list[tuple[str]]:
        return model.journal.db.execute("select drs_uri from drs_imports").fetchall()

    assert uris() == [("drs://example.org/old",)]
    handle = model.tree.open("/bundles/b/x.drs", write=True)
    model.tree.truncate("/bundles/b/x.drs", 0)
    model.tree.write(handle, b"drs://example.org/new\n", 0)
    model.tree.release(handle)
    row = model.journal.file_by_id(file_id)
    assert (row.kind, row.state, uris()) == (j.DRS, j.QUEUED, [("drs://example.org/new",)])
    model.tree.truncate("/bundles/b/x.drs", 0)  # `truncate -s 0`: nobody has it open
    row = model.journal.file_by_id(file_id)
    assert (row.kind, row.state, uris()) == (j.DRS, j.ERROR, [])
    assert "invalid .drs file" in row.error


def test_a_drs_file_renamed_while_open_is_judged_at_its_close(model):
    model.pending.drs_queue = DrsQueue(
        model.journal, BulkImportClient("http://127.0.0.1:9", None), None, limit=10,
        window=60, default_conflict="SKIP", resolver={})
    handle = model.tree.create("/bundles/b/.x.drs.tmp")
    model.tree.write(handle, b"drs://example.org/abc\n", 0)
    model.tree.rename("/bundles/b/.x.drs.tmp", "/bundles/b/x.drs")
    assert _imports(model) == []  # not while it is being written
    model.tree.release(handle)
    assert _imports(model) == [("x", j.QUEUED)]


def test_commit_request_and_remove_bundle(model):
    with pytest.raises(UsageError):
        model.tree.setxattr("/bundles/b", "user.hcafs.commit", b"1")  # nothing to commit
    model.write("/bundles/b/a.txt", b"a")
    model.tree.setxattr("/bundles/b", "user.hcafs.commit", b"1")
    assert model.journal.bundle("b").state == j.COMMIT
    model.tree.mkdir("/bundles/empty")
    model.tree.rmdir("/bundles/empty")
    assert model.journal.bundle("empty") is None


def test_attributes_a_written_file_does_not_keep_are_not_supported(model):
    """``cp --preserve=xattr`` and ``tar --xattrs`` of a committed file set its user.hca.*
    checksums, uuid and version, and ``cp -a`` an ACL: ENOTSUP (no such attribute kept
    here), which cp -a and tar pass over; hcafs's own names set in the wrong place are a
    usage error."""
    model.write("/bundles/b/a.txt", b"a")
    model.tree.mkdir("/bundles/b/d")
    for path in ("/bundles/b/a.txt", "/bundles/b/d", "/bundles/b"):
        for name in ("user.hca.sha256", "user.hca.uuid", "system.posix_acl_access",
                     "user.other"):
            with pytest.raises(NotSupported):
                model.tree.setxattr(path, name, b"x")
    with pytest.raises(UsageError, match="on the pending bundle's directory"):
        model.tree.setxattr("/bundles/b/a.txt", "user.hcafs.commit", b"1")
    with pytest.raises(UsageError, match="on a file of a pending bundle"):
        model.tree.setxattr("/bundles/b/d", "user.hca.indexed", b"true")
    model.tree.setxattr("/bundles/b/a.txt", "user.hca.indexed", b"true")


class _Crash:
    """Arm a crash at the ``statement``-th statement of one journal method's next call."""

    def __init__(self, model, method: str, statement: int):
        self.journal, self.method = model.journal, method
        original = getattr(model.journal, method)
        db = model.db

        def armed(*args, **kwargs):
            db.crash_at(statement)
            try:
                return original(*args, **kwargs)
            finally:
                db._crash_at = None

        setattr(self.journal, method, armed)

    def disarm(self) -> None:
        delattr(self.journal, self.method)


def _crash_inside(model, method: str, statement: int) -> _Crash:
    return _Crash(model, method, statement)


def test_a_sealed_bundle_takes_no_change_until_unsealed_and_reads_go_on(model):
    """While a commit is sent (sealed), every change to that bundle is refused with EBUSY
    and its reason, so the bundle holds what the commit lists; other bundles and reads
    are not held up, and nothing is sealed while a file of the bundle is open to write."""
    model.write("/bundles/b/a.txt", b"first")
    model.tree.mkdir("/bundles/b/sub")
    model.tree.mkdir("/bundles/other")
    model.write("/bundles/other/x", b"elsewhere")
    writer = model.tree.open("/bundles/b/a.txt", write=True)
    assert model.pending.seal("b") is False  # an open writer: its close comes first
    model.tree.release(writer)
    assert model.pending.seal("b") is True
    refused = [
        lambda: model.tree.create("/bundles/b/late.txt"),
        lambda: model.tree.open("/bundles/b/a.txt", write=True),
        lambda: model.tree.truncate("/bundles/b/a.txt", 0),
        lambda: model.tree.unlink("/bundles/b/a.txt"),
        lambda: model.tree.rename("/bundles/b/a.txt", "/bundles/b/moved.txt"),
        lambda: model.tree.rename("/bundles/b/a.txt", "/bundles/other/a.txt"),
        lambda: model.tree.rename("/bundles/other/x", "/bundles/b/x"),
        lambda: model.tree.mkdir("/bundles/b/new"),
        lambda: model.tree.rmdir("/bundles/b/sub"),
    ]
    for change in refused:
        with pytest.raises(Busy, match="being committed"):
            change()
    assert model.read("/bundles/b/a.txt") == b"first"
    assert sorted(row.path for row in model.journal.files("b")) == ["a.txt", "sub"]
    model.write("/bundles/other/y", b"not held up")  # another bundle is not held up
    model.pending.unseal("b")
    model.write("/bundles/b/late.txt", b"after")
    model.tree.rename("/bundles/b/a.txt", "/bundles/b/moved.txt")
    assert sorted(row.path for row in model.journal.files("b")) == \
        ["late.txt", "moved.txt", "sub"]


@pytest.mark.parametrize("bad", ["new\nline.txt", "tab\there.txt", "back\\slash.txt",
                                 "bad\udcffbyte.txt", "sub/esc\x1b.txt", "x" * 256,
                                 "sub/" + "\u00e9" * 128])
def test_a_name_no_bundle_can_hold_is_refused_when_made_and_says_why(model, bad):
    """Newlines, control characters, backslashes, undecodable bytes and names past 255
    bytes (FUSE passes up to 1024): refused at create, mkdir and rename (EINVAL with the
    reason), never taken and then retried forever."""
    model.tree.mkdir("/bundles/b/sub")
    model.write("/bundles/b/ok.txt", b"x")
    for make in (lambda: model.tree.create(f"/bundles/b/{bad}"),
                 lambda: model.tree.mkdir(f"/bundles/b/{bad}"),
                 lambda: model.tree.rename("/bundles/b/ok.txt", f"/bundles/b/{bad}")):
        with pytest.raises(UsageError, match="DSS|at most 255 bytes"):
            make()
    with pytest.raises(NotFound):
        model.tree.getattr(f"/bundles/b/{bad}")
    assert sorted(row.path for row in model.journal.files("b")) == ["ok.txt", "sub"]
