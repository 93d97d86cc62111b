"""Adapter tier: the FUSE Operations over a model that fails, checking each errno.

The model here is a fake whose every method raises the error under test (a fault injector:
nothing else of the model is imitated).  The Operations methods are called directly, as
libfuse would call them, so no ``/dev/fuse`` is needed.
"""

from __future__ import annotations

import errno
import logging
import os
from types import SimpleNamespace

import pytest

from hcafs import errors
from hcafs.model.entries import Attr

fuse_ops = pytest.importorskip("hcafs.mount.fuse_ops", reason="needs libfuse3")
FuseOSError = fuse_ops.fuse.FuseOSError

LEAVES = {
    errors.HcafsError("x"): errno.EIO,
    errors.ConfigError("x"): errno.EINVAL,
    errors.UsageError("x"): errno.EINVAL,
    errors.NotFound("x"): errno.ENOENT,
    errors.AlreadyExists("x"): errno.EEXIST,
    errors.NotEmpty("x"): errno.ENOTEMPTY,
    errors.NotADirectory("x"): errno.ENOTDIR,
    errors.ReadOnly("x"): errno.EROFS,
    errors.PermissionDenied("x"): errno.EACCES,
    errors.NoSpace("x"): errno.ENOSPC,
    errors.Busy("x"): errno.EBUSY,
    errors.IntegrityError("x"): errno.EIO,
    errors.RemoteError("x"): errno.EIO,
    errors.Unreachable("x"): errno.EIO,
    errors.api_error(500, "boom", "server error"): errno.EIO,
    errors.api_error(409, "conflict", "exists"): errno.EIO,
    errors.api_error(404, "not_found", "gone"): errno.ENOENT,
    errors.api_error(403, "forbidden", "no"): errno.EACCES,
    errors.api_error(401, "unauthorized", "who"): errno.EACCES,
    OSError(errno.ENOSPC, "disk full"): errno.ENOSPC,
    OSError(errno.EDQUOT, "quota"): errno.EDQUOT,
    OSError(errno.EBADF, "bad fd"): errno.EIO,
    RuntimeError("a bug"): errno.EIO,  # never fusepy's default EINVAL
    KeyError("handle"): errno.EIO,
}


class FailingModel:
    """Every model call raises ``error``."""

    def __init__(self, error: BaseException):
        self.error = error
        self.calls: list[str] = []

    def __getattr__(self, name):
        def fail(*args, **kwargs):
            self.calls.append(name)
            raise self.error
        return fail


def _fi(fh: int = 7, flags: int = os.O_RDONLY):
    return SimpleNamespace(fh=fh, flags=flags, keep_cache=0)


# (callback, arguments, the model method it must reach)
CALLBACKS = [
    ("getattr", ("/p",), "getattr"),
    ("opendir", ("/p",), "listdir"),
    ("readlink", ("/p",), "readlink"),
    ("getxattr", ("/p", "user.hca.uuid"), "getxattr"),
    ("listxattr", ("/p",), "xattrs"),
    ("setxattr", ("/p", "user.hcafs.commit", b"1", 0), "setxattr"),
    ("statfs", ("/p",), "statfs"),
    ("open", ("/p", _fi()), "open"),
    ("read", ("/p", 4096, 0, _fi()), "read"),
    ("read_buf", ("/p", None, 4096, 0, _fi()), "read_span"),
    ("write", ("/p", b"data", 0, _fi()), "write"),
    ("fsync", ("/p", 0, _fi()), "fsync"),
    ("release", ("/p", _fi()), "release"),
    ("mkdir", ("/p", 0o755), "mkdir"),
    ("rmdir", ("/p",), "rmdir"),
    ("create", ("/p", 0o644, _fi()), "create"),
    ("access", ("/p", os.R_OK), "getattr"),
    ("truncate", ("/p", 3), "truncate"),
    ("unlink", ("/p",), "unlink"),
    ("rename", ("/p", "/q"), "rename"),
    ("symlink", ("/link", "../../bundles/x"), "symlink"),
    ("chmod", ("/p", 0o644), "touch"),
    ("chown", ("/p", 0, 0), "touch"),
    ("utimens", ("/p", (0, 10**9)), "touch"),
]


def _operations(model) -> fuse_ops.Operations:
    return fuse_ops.Operations(model, (1.0, 1.0, 1.0), lambda: None, lambda: None)


@pytest.mark.parametrize("error", list(LEAVES), ids=lambda e: type(e).__name__ +
                         (f"-{e.status}" if hasattr(e, "status") else "") +
                         (f"-{errno.errorcode[e.errno]}" if type(e) is OSError else ""))
@pytest.mark.parametrize("callback, args, method", CALLBACKS, ids=[c[0] for c in CALLBACKS])
def test_each_error_becomes_its_errno(error, callback, args, method):
    model = FailingModel(error)
    with pytest.raises(FuseOSError) as raised:
        getattr(_operations(model), callback)(*args)
    assert raised.value.errno == LEAVES[error]
    assert model.calls and model.calls[0] == method


def test_unexpected_errors_are_logged_with_a_traceback(caplog):
    with caplog.at_level(logging.DEBUG, logger="hcafs.mount.fuse_ops"):
        with pytest.raises(FuseOSError):
            _operations(FailingModel(RuntimeError("a bug"))).getattr("/p")
    record = next(r for r in caplog.records if "crashed" in r.getMessage())
    assert record.levelno == logging.ERROR and record.exc_info is not None


def test_expected_errors_are_not_logged_as_errors(caplog):
    with caplog.at_level(logging.DEBUG, logger="hcafs.mount.fuse_ops"):
        with pytest.raises(FuseOSError):
            _operations(FailingModel(errors.NotFound("nope"))).getattr("/p")
    assert all(r.levelno < logging.WARNING for r in caplog.records)


def test_xattrs_outside_user_are_not_supported_and_missing_ones_are_enoattr():
    class Model:
        def getxattr(self, path, name):
            return None

    operations = _operations(Model())
    with pytest.raises(FuseOSError) as raised:
        operations.getxattr("/p", "security.selinux")
    assert raised.value.errno == errno.ENOTSUP
    with pytest.raises(FuseOSError) as raised:
        operations.getxattr("/p", "user.hca.nothing")
    assert raised.value.errno == errno.ENODATA


def test_stat_of_each_kind():
    operations = _operations(FailingModel(RuntimeError()))
    directory = operations.stat(Attr("dir", 0, 1.5, writable=True))
    assert directory["st_mode"] == 0o040755 and directory["st_mtime"] == 1_500_000_000
    assert operations.stat(Attr("file", 1025))["st_blocks"] == 3
    assert operations.stat(Attr("file", 1, writable=False))["st_mode"] == 0o100444
    assert operations.stat(Attr("link", 10))["st_mode"] == 0o120777


def test_open_passes_the_access_mode_and_truncation():
    seen = {}

    class Model:
        def open(self, path, write, truncate=False):
            seen.update(path=path, write=write, truncate=truncate)
            return 42

        def cacheable(self, handle):
            return handle == 42

    fi = _fi(flags=os.O_WRONLY | os.O_TRUNC)
    assert _operations(Model()).open("/p", fi) == 0
    assert seen == {"path": "/p", "write": True, "truncate": True}
    assert (fi.fh, fi.keep_cache) == (42, 1)


class SpanModel:
    """A model whose read_span names a real local file (the adapter's happy path)."""

    def __init__(self, fd: int):
        self.fd = fd

    def read_span(self, handle: int, size: int, offset: int) -> tuple[int, int, int]:
        return self.fd, offset, size


def test_read_buf_hands_libfuse_a_malloced_fd_vector(tmp_path):
    import ctypes

    from hcafs.mount.bufvec import FUSE_BUF_FD_SEEK, FUSE_BUF_IS_FD, FuseBufvec, free_bufvec

    path = tmp_path / "blob"
    path.write_bytes(b"x" * 10000)
    fd = os.open(path, os.O_RDONLY)
    try:
        ops = fuse_ops.Operations(SpanModel(fd), (1.0, 1.0, 1.0), lambda: None, lambda: None)
        slot = (ctypes.POINTER(fuse_ops.fuse.fuse_bufvec) * 1)()
        assert ops.read_buf("/p", slot, 4096, 1234, _fi()) == 0
        address = ctypes.cast(slot[0], ctypes.c_void_p).value
        vec = FuseBufvec.from_address(address)
        buf = vec.buf[0]
        assert (vec.count, vec.idx, vec.off) == (1, 0, 0)
        assert (buf.fd, buf.pos, buf.size) == (fd, 1234, 4096)
        assert buf.flags & FUSE_BUF_IS_FD and buf.flags & FUSE_BUF_FD_SEEK
        assert not buf.mem
        free_bufvec(address)  # what libfuse does with it after replying
    finally:
        os.close(fd)
