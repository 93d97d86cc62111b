"""Runtime records: how ``umount``, ``refresh``, ``status`` and ``commit`` find a running mount.

A running mount leaves ``RUNTIME_DIR/<hash of mountpoint>.json`` (pid, cache dir, log file,
server URL); the daemon writes it once mounted and removes it when unmounted.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

from ..config import runtime_dir
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
        path = self.path_for(self.mountpoint)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        with open(path + ".tmp", "w") as handle:
            json.dump(self.__dict__, handle)
        os.replace(path + ".tmp", path)

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


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

