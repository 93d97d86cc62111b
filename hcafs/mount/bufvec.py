"""fd-backed ``fuse_bufvec`` replies for ``read_buf``: cached bytes go from the cache file to
the kernel inside libfuse, without being copied into Python.

libfuse's ``struct fuse_bufvec`` ends in an inline array (``struct fuse_buf buf[1]``), which
mfusepy declares as a pointer; the structures here follow the C layout.  libfuse releases the
vector that ``read_buf`` hands back with ``free()``, so it is allocated with libc's
``malloc``; the file descriptor in it is borrowed (libfuse never closes it) and must stay
open until the callback returns, which the caller's open handle guarantees.
"""

from __future__ import annotations

import ctypes
import ctypes.util

FUSE_BUF_IS_FD = 1 << 1
FUSE_BUF_FD_SEEK = 1 << 2
FUSE_BUF_FD_RETRY = 1 << 3

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.malloc.restype = ctypes.c_void_p
_libc.malloc.argtypes = [ctypes.c_size_t]
_libc.free.restype = None
_libc.free.argtypes = [ctypes.c_void_p]


class FuseBuf(ctypes.Structure):
    """``struct fuse_buf`` (fuse_common.h)."""

    _fields_ = [
        ("size", ctypes.c_size_t),
        ("flags", ctypes.c_int),
        ("mem", ctypes.c_void_p),
        ("fd", ctypes.c_int),
        ("pos", ctypes.c_int64),  # off_t with _FILE_OFFSET_BITS=64, as libfuse3 is built
    ]


class FuseBufvec(ctypes.Structure):
    """``struct fuse_bufvec`` with its one inline ``fuse_buf``."""

    _fields_ = [
        ("count", ctypes.c_size_t),
        ("idx", ctypes.c_size_t),
        ("off", ctypes.c_size_t),
        ("buf", FuseBuf * 1),
    ]


def fd_bufvec(fd: int, offset: int, length: int) -> int:
    """A malloc'd one-buffer vector naming ``length`` bytes of ``fd`` at ``offset``; returns
    its address.  libfuse reads (or splices) the bytes itself, retrying short reads."""
    address = _libc.malloc(ctypes.sizeof(FuseBufvec))
    if not address:
        raise MemoryError("malloc of a fuse_bufvec failed")
    vec = FuseBufvec.from_address(address)
    vec.count, vec.idx, vec.off = 1, 0, 0
    buf = vec.buf[0]
    buf.size = length
    buf.flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK | FUSE_BUF_FD_RETRY
    buf.mem = None
    buf.fd = fd
    buf.pos = offset
    return address


def free_bufvec(address: int) -> None:
    """Free a vector that was never handed to libfuse (an error after it was made)."""
    _libc.free(address)
