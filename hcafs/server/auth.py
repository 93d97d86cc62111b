"""Who is calling: bearer tokens looked up in a tokens file.

The tokens file is JSON ``{"TOKEN": {"email": "...", "groups": ["hca"], "admin": false}}``.
It is re-read when its mtime changes, so tokens can be added without a restart.  A token
never leaves this module except as the identity it stands for: it is not logged and not put
in any error message.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
from dataclasses import dataclass

from ..errors import ConfigError, Problem

log = logging.getLogger(__name__)

LOCAL_EMAIL = "local@hcafs.invalid"


@dataclass(frozen=True)
class Identity:
    email: str
    groups: tuple[str, ...]
    admin: bool

    def in_group(self, group: str) -> bool:
        return group in self.groups


def create_tokens_file(path: str) -> str:
    """Write a tokens file with one random, all-powerful local token (mode 0600)."""
    token = secrets.token_urlsafe(32)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({token: {"email": LOCAL_EMAIL, "groups": ["hca"], "admin": True}}, handle,
                  indent=2)
        handle.write("\n")
    return token



class Tokens:
    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()
        self._mtime: float | None = None
        self._table: dict[str, Identity] = {}
        self._raw = b""  # the file as last loaded (keys are derived from it)
        self._load()

    def _load(self) -> None:
        try:
            mtime = os.stat(self.path).st_mtime
            if mtime == self._mtime:
                return
            with open(self.path, "rb") as handle:
                data = handle.read()
            raw = json.loads(data)
        except FileNotFoundError as exc:
            raise ConfigError(f"tokens file {self.path} does not exist") from exc
        except (OSError, ValueError) as exc:
            raise ConfigError(f"tokens file {self.path} is not valid JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"tokens file {self.path} must hold a JSON object")
        table = {}
        for token, entry in raw.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("email"), str):
                raise ConfigError(f"tokens file {self.path}: every entry needs an email")
            table[token] = Identity(entry["email"], tuple(entry.get("groups", [])),
                                    bool(entry.get("admin", False)))
        self._table, self._mtime, self._raw = table, mtime, data

    def _current(self) -> None:
        """Load the file again if it changed (under ``_lock``); a bad new file is logged
        and the one loaded before stays in force."""
        try:
            self._load()
        except ConfigError as exc:
            log.error("%s; keeping the tokens loaded before", exc)

    def user_names(self) -> frozenset[str]:
        """The user parts (before the ``@``, lower case) of every identity in the file as it
        is now."""
        with self._lock:
            self._current()
            return frozenset(identity.email.rpartition("@")[0].lower()
                             for identity in self._table.values())

    def derive(self, label: bytes) -> bytes:
        """A key for ``label`` derived from the tokens file as it is now: the same in every
        process that reads the file, different once it changes, and nothing a holder of
        any one token could compute."""
        with self._lock:
            self._current()
            return hmac.new(self._raw, label, hashlib.sha256).digest()

    def identify(self, authorization: str | None) -> Identity:
        """The identity behind an ``Authorization: Bearer`` header, or a 401 Problem."""
        if not authorization:
            raise Problem(401, "Unauthorized", "No authorization token provided")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Problem(401, "Unauthorized", "Failed to decode token.")
        return self.lookup(token.strip())

    def lookup(self, token: str) -> Identity:
        with self._lock:
            self._current()
            identity = self._table.get(token)
        if identity is None:
            raise Problem(401, "Unauthorized", "Authorization token is invalid")
        return identity


def require_group(identity: Identity, group: str = "hca") -> None:
    if not identity.in_group(group):
        raise Problem(403, "Forbidden", "User is not authorized to access this resource")


def require_admin(identity: Identity) -> None:
    if not identity.admin:
        raise Problem(403, "Forbidden", "User is not authorized to access this resource")
