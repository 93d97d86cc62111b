"""Runtime records: how ``umount``, ``refresh``, ``status`` and ``commit`` find a running mount.

A running mount leaves ``RUNTIME_DIR/<hash of mountpoint>.json`` (pid, cache dir, log file,
server URL); the daemon writes it once mounted and removes it when unmounted.  The folder
is private (0700, checked when the mount starts, see :func:`~hcafs.config.private_dir`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
from dataclasses import dataclass

from ..config import ensure_runtime_dir, runtime_dir
from ..errors import NotFound


@dataclass(frozen=True)
class MountRecord:
    mountpoint: str
    pid: int
    cache_dir: str
    log_file: str
    dss_url: str

    @staticmethod
    def path_for(mountpoint: str) -> str:
        digest = hashlib.sha256(os.path.abspath(mountpoint).encode()).hexdigest()[:16]
        return os.path.join(runtime_dir(), f"{digest}.json")

    def save(self) -> None:
        """Write the record to a new file of an unguessable name (``O_EXCL|O_NOFOLLOW``,
        mode 0600), then rename it into place: a file or symlink planted at either name
        is never written through."""
        ensure_runtime_dir()
        path = self.path_for(self.mountpoint)
        temporary = f"{path}.{secrets.token_hex(8)}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(self.__dict__, handle)
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    @classmethod
    def load(cls, mountpoint: str) -> MountRecord:
        try:
            with open(cls.path_for(mountpoint)) as handle:
                return cls(**json.load(handle))
        except FileNotFoundError as exc:
            raise NotFound(f"no hcafs mount at {os.path.abspath(mountpoint)}") from exc

    def remove(self) -> None:
        try:
            os.unlink(self.path_for(self.mountpoint))
        except FileNotFoundError:
            pass
