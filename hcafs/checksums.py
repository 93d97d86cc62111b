"""The four checksums the DSS names every blob by, computed in one pass.

The DSS identifies content by ``sha256``, ``sha1``, ``crc32c`` (big-endian hex, 8 digits)
and ``s3_etag``: the ETag S3 gives an object uploaded with the DSS part size, which is the
plain MD5 for one part and ``md5(part digests)-N`` for N > 1 parts.

A :class:`Checksums` may be *partial*: only ``crc32c`` and the size, the other three empty.
That is what a client computes when the server it stages for computes all four itself in
its one verifying pass (a ``file://`` source); the client then checks the server's
``crc32c`` and size against its own (:meth:`Checksums.mismatches`).

Part size rule (the DSS and the ``hca`` CLI share it): 64 MiB, unless the object would need
more than 10,000 parts; then ``ceil(size / 10000)`` rounded up to a whole MiB.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import Executor
from dataclasses import asdict, dataclass

import crc32c as _crc32c

MiB = 1024 * 1024
MIN_PART_SIZE = 64 * MiB
MAX_PARTS = 10_000
SPREAD_MIN = 1 * MiB  # chunks that Checksummer.update may spread over a pool's threads

# The keys the DSS reads from a staged object's tags (or metadata).
TAG_KEYS = {
    "sha256": "hca-dss-sha256",
    "sha1": "hca-dss-sha1",
    "crc32c": "hca-dss-crc32c",
    "s3_etag": "hca-dss-s3_etag",
}


def part_size(size: int) -> int:
    """The multipart part size the DSS expects for an object of ``size`` bytes."""
    if size <= MAX_PARTS * MIN_PART_SIZE:
        return MIN_PART_SIZE
    parts = -(-size // MAX_PARTS)
    return -(-parts // MiB) * MiB


@dataclass(frozen=True)
class Checksums:
    sha256: str
    sha1: str
    crc32c: str
    s3_etag: str
    size: int

    @property
    def complete(self) -> bool:
        """All four are known (not a partial set of crc32c and size only)."""
        return bool(self.sha256 and self.sha1 and self.crc32c and self.s3_etag)

    def partial(self) -> Checksums:
        """Only what a partial set holds: crc32c and the size."""
        return Checksums(sha256="", sha1="", crc32c=self.crc32c, s3_etag="", size=self.size)

    def mismatches(self, other) -> list[str]:
        """The names (``size`` among them) where ``other`` (anything with these
        attributes, e.g. a HEAD's answer) differs from what these checksums know."""
        names = [name for name in TAG_KEYS if getattr(self, name)
                 and getattr(self, name) != getattr(other, name)]
        return names + (["size"] if self.size != other.size else [])

    def tags(self) -> dict[str, str]:
        """The object tags a staged copy must carry for the DSS to accept it."""
        return {TAG_KEYS[name]: getattr(self, name) for name in TAG_KEYS}

    def blob_key(self) -> str:
        return f"{self.sha256}.{self.sha1}.{self.s3_etag}.{self.crc32c}"

    def as_dict(self) -> dict:
        return asdict(self)


class Checksummer:
    """Feed bytes in order with :meth:`update`; :meth:`result` gives the four checksums.

    ``size_hint`` fixes the S3 part size; it must be the object's final size.  With
    ``complete=False`` only crc32c and the size are computed (a partial result, see the
    module's docstring): about a tenth of the cost of all four.
    """

    def __init__(self, size_hint: int, complete: bool = True):
        self._complete = complete
        self._part_size = part_size(size_hint)
        self._sha256 = hashlib.sha256()
        self._sha1 = hashlib.sha1()
        self._crc = 0
        self._part = hashlib.md5()
        self._part_filled = 0
        self._part_digests: list[bytes] = []
        self._size = 0

    def update(self, data: bytes | memoryview, pool: Executor | None = None) -> None:
        """Add the next bytes.  With ``pool`` (a chunk of at least :data:`SPREAD_MIN`
        bytes), sha256 and sha1 run on its threads beside this one's md5 and crc32c (each
        releases the GIL), and the call returns once all four have taken the chunk."""
        view = memoryview(data)
        spread = pool is not None and self._complete and len(view) >= SPREAD_MIN
        others = [pool.submit(self._sha256.update, view),
                  pool.submit(self._sha1.update, view)] if spread else []
        try:
            self._crc = _crc32c.crc32c(view, self._crc)
            self._size += len(view)
            if not self._complete:
                return
            if not spread:
                self._sha256.update(view)
                self._sha1.update(view)
            self._parts(view)
        finally:  # the chunk's buffer may be reused once this returns
            for other in others:
                other.result()

    def _parts(self, view: memoryview) -> None:
        while view:
            room = self._part_size - self._part_filled
            chunk, view = view[:room], view[room:]
            self._part.update(chunk)
            self._part_filled += len(chunk)
            if self._part_filled == self._part_size:
                self._part_digests.append(self._part.digest())
                self._part = hashlib.md5()
                self._part_filled = 0

    def result(self) -> Checksums:
        if not self._complete:
            return Checksums(sha256="", sha1="", crc32c=f"{self._crc:08x}", s3_etag="",
                             size=self._size)
        digests = list(self._part_digests)
        if self._part_filled or not digests:
            digests.append(self._part.digest())
        if len(digests) == 1:
            etag = digests[0].hex()
        else:
            etag = f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"
        return Checksums(
            sha256=self._sha256.hexdigest(),
            sha1=self._sha1.hexdigest(),
            crc32c=f"{self._crc:08x}",
            s3_etag=etag,
            size=self._size,
        )


def checksum_bytes(data: bytes) -> Checksums:
    summer = Checksummer(len(data))
    summer.update(data)
    return summer.result()
