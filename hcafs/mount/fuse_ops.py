"""The FUSE adapter: translates mfusepy callbacks into calls on :class:`~hcafs.model.tree.Tree`.

A protocol adapter only: what the mount looks like is decided in ``model/tree.py``.  Each callback
resolves a path, calls the model, and turns the answer into a stat dict or bytes.  Errors
become errno in one place, :func:`_errno`: an :class:`~hcafs.errors.HcafsError` carries
its own errno, anything unexpected is logged with its traceback and becomes EIO (never
mfusepy's default EINVAL).

``readdir`` hands full attributes to libfuse3 with ``FUSE_FILL_DIR_PLUS`` and non-zero
offsets, so the kernel takes READDIRPLUS attributes and ``ls -l`` of a large directory needs
no per-entry getattr (on libfuse 3.14, zero offsets would make libfuse drop them).

Threading: libfuse's multi-threaded loop calls in on several threads at once; the adapter
keeps only the open-directory snapshots, under a lock.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import itertools
import logging
import os
import stat
import threading
from collections.abc import Callable

os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")
import mfusepy as fuse  # noqa: E402  (the library name must be chosen before import)

from ..errors import (  # noqa: E402
    AlreadyExists,
    HcafsError,
    NotFound,
    NotSupported,
    UsageError,
)
from ..model.tree import Attr, Tree, streamed  # noqa: E402
from .bufvec import fd_bufvec  # noqa: E402
from .kernel_names import KernelNames  # noqa: E402
from .refusals import EXPLAINED, Refusals  # noqa: E402

log = logging.getLogger(__name__)

FUSE_FILL_DIR_PLUS = 1 << 1
RENAME_NOREPLACE = 1  # renameat2 flags (linux/fs.h)
FUSE_CAP_READDIRPLUS_AUTO = 1 << 14  # fuse_common.h
ENOATTR = errno.ENODATA
_NODE_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket",
               stat.S_IFCHR: "a device node", stat.S_IFBLK: "a device node"}


def _errno(func: Callable) -> Callable:
    """Run a callback; turn every error into the right errno.

    An errno returned on purpose (:data:`~hcafs.mount.refusals.EXPLAINED`) goes to
    :class:`~hcafs.mount.refusals.Refusals` with its reason, logged once per reason and path.
    """

    @functools.wraps(func)
    def wrapper(self, *args):
        try:
            return func(self, *args)
        except HcafsError as exc:
            if exc.errno == errno.EIO:
                log.error("%s %s: %s", func.__name__, args[0] if args else "", exc)
            elif exc.errno in EXPLAINED:
                self.refusals.record(func.__name__, args[0] if args else "", exc.errno,
                                     str(exc), getattr(exc, "refusal_key", None))
            else:
                log.debug("%s %s: %s", func.__name__, args[0] if args else "", exc)
            raise fuse.FuseOSError(exc.errno) from exc
        except fuse.FuseOSError:
            raise
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                self.refusals.record(func.__name__, args[0] if args else "", exc.errno,
                                     f"the cache disk is full ({exc.strerror})")
                raise fuse.FuseOSError(exc.errno) from exc
            if exc.errno == errno.EFBIG:
                self.refusals.record(func.__name__, args[0] if args else "", exc.errno,
                                     "larger than a file on the cache disk can be")
                raise fuse.FuseOSError(exc.errno) from exc
            log.exception("%s %s failed", func.__name__, args[0] if args else "")
            raise fuse.FuseOSError(errno.EIO) from exc
        except Exception as exc:
            log.exception("%s %s crashed", func.__name__, args[0] if args else "")
            raise fuse.FuseOSError(errno.EIO) from exc

    return wrapper


def _lowlevel(name: str, restype, *argtypes):
    function = getattr(fuse._libfuse, name)
    function.restype, function.argtypes = restype, list(argtypes)
    return function


# struct fuse_session *fuse_get_session(struct fuse *f)
_get_session = _lowlevel("fuse_get_session", ctypes.c_void_p, ctypes.c_void_p)
# int fuse_lowlevel_notify_inval_entry(struct fuse_session *, fuse_ino_t parent,
#                                      const char *name, size_t namelen)
_notify_inval_entry = _lowlevel("fuse_lowlevel_notify_inval_entry", ctypes.c_int,
                                ctypes.c_void_p, ctypes.c_uint64, ctypes.c_char_p,
                                ctypes.c_size_t)


# int fuse_session_exited(struct fuse_session *se)
_session_exited = _lowlevel("fuse_session_exited", ctypes.c_int, ctypes.c_void_p)
FUSE_ROOT_ID = 1
_malloc_trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # glibc only
if _malloc_trim is not None:
    _malloc_trim.restype, _malloc_trim.argtypes = ctypes.c_int, [ctypes.c_size_t]


def _trim() -> None:
    if _malloc_trim is not None:
        _malloc_trim(0)


LISTED_PAGE = 1000  # bundles/ rows read from SQLite at a time for readdir


class _Listing:
    """One open directory: its first entries (``.``, ``..`` and, for bundles/, the pending
    bundles) and, for bundles/, the page of listed rows the kernel is reading through."""

    def __init__(self, path: str, head: list[tuple[str, dict]], streamed: bool):
        self.path = path
        self.head = head
        self.streamed = streamed
        self.page: list[tuple[str, int]] = []  # listed rows: (FQID, mtime in ns)
        self.page_at = 0  # the offset of page[0]


class Operations(fuse.Operations):
    use_ns = True
    # No ioctl callback: libfuse answers ENOSYS itself, and the isatty() that Python's
    # open() makes on every file costs no round trip through Python.
    ioctl = None

    def __init__(self, tree: Tree, timeouts: tuple[float, float, float],
                 on_init: Callable[[], None], on_destroy: Callable[[], None],
                 refusals: Refusals | None = None, mountpoint: str | None = None,
                 kernel_entries: int = 0):
        self.tree = tree
        self.mountpoint = mountpoint
        self.kernel_names = KernelNames(kernel_entries if mountpoint else 0, self.prune_entries)
        self.refusals = refusals or Refusals()
        self.entry_timeout, self.attr_timeout, self.negative_timeout = timeouts
        self._on_init = on_init
        self._on_destroy = on_destroy
        self._uid, self._gid = os.getuid(), os.getgid()
        self._fuse = None  # libfuse's struct fuse *, for invalidations
        self._dirs: dict[int, _Listing] = {}
        self._dir_ids = itertools.count(1)
        self._lock = threading.Lock()

    def stat(self, attr: Attr) -> dict:
        mtime = int(attr.mtime * 1e9)
        if attr.kind == "dir":
            mode = stat.S_IFDIR | (0o755 if attr.writable else 0o555)
        elif attr.kind == "link":
            mode = stat.S_IFLNK | 0o777
        else:
            mode = stat.S_IFREG | (0o644 if attr.writable else 0o444)
        return {"st_mode": mode, "st_nlink": 2 if attr.kind == "dir" else 1,
                "st_size": attr.size, "st_blocks": -(-attr.size // 512), "st_blksize": 1048576,
                "st_uid": self._uid, "st_gid": self._gid,
                "st_mtime": mtime, "st_ctime": mtime, "st_atime": mtime}

    # ------------------------------------------------------------ lifecycle

    def init_with_config(self, conn, config) -> None:
        if config is not None:
            config.entry_timeout = self.entry_timeout
            config.attr_timeout = self.attr_timeout
            config.negative_timeout = self.negative_timeout
        if conn is not None:
            conn.max_readahead = 1024 * 1024
            # READDIRPLUS always, not only for the first buffer of a listing: every entry
            # of ``ls -l bundles`` then comes with its attributes, and needs no LOOKUP.
            conn.want &= ~FUSE_CAP_READDIRPLUS_AUTO
        self._fuse = ctypes.c_void_p(fuse._libfuse.fuse_get_context().contents.fuse)
        self.kernel_names.start()
        self._on_init()

    def invalidate(self, path: str) -> None:
        """Make the kernel forget what it cached of ``path`` (e.g. a directory that became
        a symlink); safe to call from any thread once mounted."""
        if self._fuse is None:
            return
        result = fuse._libfuse.fuse_invalidate_path(self._fuse, path.encode())
        if result not in (0, -errno.ENOENT):
            log.debug("invalidating %s: %s", path, os.strerror(-result))

    def forget_name(self, path: str) -> None:
        """Make the kernel drop its entry for ``path`` (and the unused ones under it), so
        that the next lookup asks again.  For a name whose type changed: a committed
        bundle's directory becomes a symlink, and invalidating only its inode would leave
        the kernel a directory inode whose attributes now say symlink (EIO on the next
        use).  Safe from any thread but a FUSE callback's."""
        parent, _, leaf = path.rstrip("/").rpartition("/")
        try:
            # Without use_ino, the st_ino libfuse reports is its node id.
            parent_id = os.stat(self.mountpoint + parent).st_ino if parent else FUSE_ROOT_ID
            self._inval_entry(parent_id, leaf)
        except OSError as exc:
            log.debug("forgetting %s: %s", path, exc)

    def _inval_entry(self, parent_id: int, leaf: str) -> bool:
        """``fuse_lowlevel_notify_inval_entry`` of ``leaf`` in node ``parent_id``: False
        if the kernel held no such entry (or nothing is mounted); OSError if it refused,
        or if the mount is going away (the device may be closed already)."""
        if self._fuse is None or not self.mountpoint:
            return False
        session = ctypes.c_void_p(_get_session(self._fuse))
        if _session_exited(session):
            raise OSError(errno.ENOTCONN, "the mount is going away")
        raw = leaf.encode("utf-8", "surrogateescape")
        result = _notify_inval_entry(session, parent_id, raw, len(raw))
        if result not in (0, -errno.ENOENT):  # ENOENT: the kernel had dropped it already
            raise OSError(-result, os.strerror(-result))
        return result == 0

    def adapter_status(self) -> dict:
        return {"kernel_entries": self.kernel_names.status()}

    def prune_entries(self, directory: str) -> bool:
        """Ask the kernel to drop its unused entries under ``directory`` (see
        :mod:`~hcafs.mount.kernel_names`); False if it held none.  Never call it from a FUSE
        callback: the kernel takes the parent directory's lock for it."""
        if self._fuse is None or not self.mountpoint:
            return False
        # Streamed listings (bundles/) are children of the root, whose libfuse node id is
        # always 1.
        parent, _, leaf = directory.rstrip("/").rpartition("/")
        if parent:
            raise ValueError(f"{directory} is not a child of the mount's root")
        _trim()  # what the last prune's FORGETs freed goes back to the system
        pruned = self._inval_entry(FUSE_ROOT_ID, leaf)
        # The directory's own dentry was unhashed too: look it up again before the reply
        # goes, so that a process whose working directory it is keeps a path (getcwd).
        with contextlib.suppress(OSError):
            os.stat(os.path.join(self.mountpoint, leaf))
        return pruned

    def destroy(self, path: str) -> None:
        self.kernel_names.stop()
        self._on_destroy()

    # ------------------------------------------------------------ metadata

    @_errno
    def getattr(self, path: str, fh=None) -> dict:
        return self.stat(self.tree.getattr(path))

    @_errno
    def opendir(self, path: str) -> int:
        listed = streamed(path)
        entries = self.tree.pending_entries() if listed else self.tree.listdir(path)
        here = self.stat(self.tree.getattr(path))
        listing = [(".", here), ("..", here)] + [(n, self.stat(a)) for n, a in entries]
        with self._lock:
            handle = next(self._dir_ids)
            self._dirs[handle] = _Listing(path, listing, listed)
        return handle

    def directory(self, fh: int) -> _Listing | None:
        """The open directory ``fh`` (None once released)."""
        with self._lock:
            return self._dirs.get(fh)

    def readdir_plus(self, path: str, offset: int, fh: int):
        """``(name, stat, next_offset)`` from ``offset`` on, for the PLUS filler."""
        listing = self.directory(fh)
        if listing is None:
            return
        head = listing.head
        for index in range(offset, len(head)):
            name, attrs = head[index]
            yield name, attrs, index + 1
        if listing.streamed:
            template = self.stat(Attr("dir"))
            for name, mtime, following in self.listed_rows(listing, offset):
                yield name, {**template, "st_mtime": mtime, "st_ctime": mtime,
                             "st_atime": mtime}, following

    def listed_rows(self, listing: _Listing, offset: int):
        """``(FQID, mtime in ns, next_offset)`` of bundles/'s listed rows from ``offset``
        on (all of them are read-only directories, so that is all their attributes).

        The rows come from SQLite a page at a time and the page is kept: the kernel reads
        on from the offset after the last entry its buffer took, which is usually inside
        the page, or just past its end (then the next page is read by key).  Any other
        offset is counted from the first row."""
        offset = max(offset, len(listing.head))
        while True:
            index = offset - listing.page_at
            if not 0 <= index <= len(listing.page):
                listing.page, listing.page_at = [], offset
                after, skip, index = None, offset - len(listing.head), 0
            elif index == len(listing.page):
                after = listing.page[-1][0] if listing.page else None
                skip = offset - len(listing.head)
                listing.page, listing.page_at, index = [], offset, 0
            if not listing.page:
                listing.page = self.tree.bundle_times(after, LISTED_PAGE,
                                                      0 if after else skip)
                if not listing.page:
                    return
            for name, mtime in listing.page[index:]:
                offset += 1
                yield name, mtime, offset

    def readdir(self, path: str, fh: int):  # used only if the PLUS path is unavailable
        return [name for name, _, _ in self.readdir_plus(path, 0, fh)]

    def releasedir(self, path: str, fh: int) -> int:
        with self._lock:
            listing = self._dirs.pop(fh, None)
        if listing is not None:
            self.kernel_names.closed(listing)
        return 0

    @_errno
    def readlink(self, path: str) -> str:
        return self.tree.readlink(path)

    @_errno
    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        if not name.startswith("user."):
            # No ACLs, no security labels: ENOTSUP tells `ls -l` and friends to stop asking.
            raise fuse.FuseOSError(errno.ENOTSUP)
        value = self.tree.getxattr(path, name)
        if value is None:
            raise fuse.FuseOSError(ENOATTR)
        return value.encode()

    @_errno
    def listxattr(self, path: str) -> list[str]:
        return sorted(self.tree.xattrs(path))

    @_errno
    def setxattr(self, path: str, name: str, value: bytes, options: int, position: int = 0
                 ) -> int:
        self.tree.setxattr(path, name, value)
        return 0

    @_errno
    def removexattr(self, path: str, name: str) -> int:
        raise NotSupported(f"{path}: attributes cannot be removed on this filesystem "
                           f"({name}); set a new value instead where one may be set")

    @_errno
    def statfs(self, path: str) -> dict:
        vfs = self.tree.statfs()
        return {"f_bsize": vfs.f_bsize, "f_frsize": vfs.f_frsize, "f_blocks": vfs.f_blocks,
                "f_bfree": vfs.f_bfree, "f_bavail": vfs.f_bavail, "f_files": vfs.f_files,
                "f_ffree": vfs.f_ffree, "f_favail": vfs.f_favail, "f_namemax": 255}

    # ------------------------------------------------------------ content

    @_errno
    def open(self, path: str, fi) -> int:
        flags = fi.flags
        fi.fh = self.tree.open(path, write=(flags & os.O_ACCMODE) != os.O_RDONLY,
                               truncate=bool(flags & os.O_TRUNC))
        # Verified content never changes: let the kernel keep its pages across opens.
        # Unverified content is re-read on the next open, so bad bytes never linger.
        fi.keep_cache = int(self.tree.cacheable(fi.fh))
        return 0

    @_errno
    def read(self, path: str, size: int, offset: int, fi) -> bytes:
        return self.tree.read(fi.fh, size, offset)

    @_errno
    def read_buf(self, path: str, bufpp, size: int, offset: int, fi) -> int:
        # libfuse prefers this to read(): it moves the bytes from the file itself.
        fd, start, length = self.tree.read_span(fi.fh, size, offset)
        bufpp[0] = ctypes.cast(fd_bufvec(fd, start, length), type(bufpp[0]))
        return 0

    @_errno
    def fsync(self, path: str, datasync: int, fi) -> int:
        self.tree.fsync(fi.fh)
        return 0

    @_errno
    def flush(self, path: str, fi) -> int:
        return 0

    @_errno
    def release(self, path: str, fi) -> int:
        self.tree.release(fi.fh)
        return 0

    # ------------------------------------------------------------ changes

    @_errno
    def mkdir(self, path: str, mode: int) -> int:
        return self.tree.mkdir(path)

    @_errno
    def rmdir(self, path: str) -> int:
        return self.tree.rmdir(path)

    @_errno
    def create(self, path: str, mode: int, fi) -> int:
        fi.fh = self.tree.create(path)
        return 0

    @_errno
    def access(self, path: str, amode: int) -> int:
        self.tree.getattr(path)
        return 0

    @_errno
    def write(self, path: str, data: bytes, offset: int, fi) -> int:
        return self.tree.write(fi.fh, data, offset)

    @_errno
    def truncate(self, path: str, length: int, fh=None) -> int:
        return self.tree.truncate(path, length)

    @_errno
    def unlink(self, path: str) -> int:
        return self.tree.unlink(path)

    @_errno
    def rename(self, old: str, new: str, flags: int = 0) -> int:
        if flags & ~RENAME_NOREPLACE:  # RENAME_EXCHANGE, RENAME_WHITEOUT: not a plain move
            raise UsageError(f"rename of {old} with flags {flags:#x} (an exchange of two "
                             "names) is not supported; only plain renames are")
        if flags & RENAME_NOREPLACE:
            try:
                self.tree.getattr(new)
            except NotFound:
                pass
            else:
                raise AlreadyExists(f"{new} exists (rename without replacing)")
        return self.tree.rename(old, new)

    @_errno
    def symlink(self, link: str, points_to: str) -> int:
        # fusepy's order: the new link's path first, then what it points to
        return self.tree.symlink(points_to, link)

    # Not left to mfusepy's defaults, which answer without a word in the log.
    @_errno
    def link(self, target: str, source: str) -> int:
        self.tree.refuse_node(target, "a hard link")
        return 0

    @_errno
    def mknod(self, path: str, mode: int, dev: int) -> int:
        self.tree.refuse_node(path, _NODE_KINDS.get(stat.S_IFMT(mode), "a special file"))
        return 0

    @_errno
    def fallocate(self, path: str, mode: int, offset: int, size: int, fh) -> int:
        raise NotSupported(f"{path}: space cannot be reserved ahead here (fallocate); "
                           "write the bytes instead")

    @_errno
    def chmod(self, path: str, mode: int) -> int:
        return self.tree.touch(path)

    @_errno
    def chown(self, path: str, uid: int, gid: int) -> int:
        return self.tree.touch(path)

    @_errno
    def utimens(self, path: str, times=None) -> int:
        mtime = times[1] / 1e9 if times else None
        return self.tree.touch(path, mtime)


_TIMES_AT = fuse.c_stat.st_atimespec.offset
# atime, mtime and ctime side by side (Linux): one slice assignment fills all three.
_TIMES_TOGETHER = (fuse.c_stat.st_mtimespec.offset == _TIMES_AT + ctypes.sizeof(fuse.c_timespec)
                   and fuse.c_stat.st_ctimespec.offset
                   == _TIMES_AT + 2 * ctypes.sizeof(fuse.c_timespec)
                   and ctypes.sizeof(fuse.c_timespec) == 16)


class _Times:
    """The three timespecs of a ``c_stat``, set at once with ``times[:] = (s, ns) * 3``."""

    def __init__(self, st):
        self._moments = (st.st_atimespec, st.st_mtimespec, st.st_ctimespec)

    def __setitem__(self, _, values) -> None:
        for moment in self._moments:
            moment.tv_sec, moment.tv_nsec = values[0], values[1]


def _times_of(st):
    if _TIMES_TOGETHER:
        return (ctypes.c_int64 * 6).from_buffer(st, _TIMES_AT)
    return _Times(st)


class FUSE(fuse.FUSE):
    """mfusepy's FUSE with a readdir that fills READDIRPLUS attributes at real offsets."""

    def __init__(self, operations, mountpoint: str, **options):
        super().__init__(operations, mountpoint, raw_fi=True, **options)

    def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
        # mfusepy drops renameat2's flags: a swap (RENAME_EXCHANGE) became a plain rename
        # that replaced the other name's file.
        return self.operations.rename(old.decode(self.encoding, self.errors),
                                      new.decode(self.encoding, self.errors), flags)

    def readdir_fuse_3(self, path, buf, filler, offset, fip, flags) -> int:
        try:
            operations = self.operations
            listing = operations.directory(fip.contents.fh)
            if listing is None:
                return 0
            st = fuse.c_stat()
            for index in range(offset, len(listing.head)):
                name, attrs = listing.head[index]
                ctypes.memset(ctypes.byref(st), 0, ctypes.sizeof(st))
                fuse.set_st_attrs(st, attrs, use_ns=True)
                if filler(buf, name.encode(self.encoding, self.errors), st, index + 1,
                          FUSE_FILL_DIR_PLUS) != 0:
                    return 0
            if not listing.streamed:
                return 0
            # Listed bundle versions differ only in their times: the rest is filled once
            # (a million rows cost a million fillers, and little else).
            ctypes.memset(ctypes.byref(st), 0, ctypes.sizeof(st))
            fuse.set_st_attrs(st, operations.stat(Attr("dir")), use_ns=True)
            times = _times_of(st)
            encoding, errors = self.encoding, self.errors
            # After a prune, one entry: this request went out before the prune, and the
            # kernel takes the attributes of inodes made from its reply as stale.
            room = 1 if operations.kernel_names.before_reply(listing, listing.path) else -1
            handed = 0  # entries this buffer took, for the kernel-entries bound
            for name, mtime, following in operations.listed_rows(listing, offset):
                seconds, nanoseconds = divmod(mtime, 1_000_000_000)
                times[:] = (seconds, nanoseconds) * 3
                if filler(buf, name.encode(encoding, errors), st, following,
                          FUSE_FILL_DIR_PLUS) != 0:
                    break
                handed += 1
                if handed == room:
                    break
            operations.kernel_names.listed(listing, handed)
            return 0
        except Exception:
            log.exception("readdir crashed")
            return -errno.EIO
