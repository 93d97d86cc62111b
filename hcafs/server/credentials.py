"""Credentials for protected DRS sources (``hcafs serve --drs-credentials FILE``).

The file is JSON, mode 0600 (anything readable by group or others is refused), read once
at start::

    {"entries": [
      {"match": "drs.example.org:8443", "bearer": "TOKEN", "users": ["a@example.org"]},
      {"match": "dg.4503", "passports": ["JWT", "..."], "users": ["a@example.org"]},
      {"match": "drs://dg.ANV0", "s3": {"endpoint_url": "https://s3.example.org",
                                        "access_key_id": "...", "secret_access_key": "..."},
       "users": ["a@example.org", "b@example.org"]}
    ]}

``match`` is ``HOST[:PORT]`` (the host of the DRS object URL) or ``drs://PREFIX`` (the
start of the item's compact ``drs://`` URI).  Each entry holds one or more of ``bearer``,
``passports`` and ``s3``, and ``users``: the identities (token emails) that may import
through it.  An entry without ``users`` is refused at start: a credential shared by the
whole server never acts for every one of its users.

:meth:`Credentials.find` picks, among the entries that name the importing identity, the
most specific match: ``host:port``, then ``host``, then the longest ``drs://`` prefix.

A secret never leaves this module except in the request that needs it: the entries'
``repr`` hides them, and error messages name the file, the entry number and the field.

Threading: read-only after loading.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field

from ..errors import ConfigError
from .egress import parse_allow_host

S3_FIELDS = ("endpoint_url", "access_key_id", "secret_access_key")


@dataclass(frozen=True)
class Entry:
    """One credential entry; ``number`` is its place in the file (from 1)."""

    number: int
    match: str
    users: frozenset[str]
    bearer: str | None = field(default=None, repr=False)
    passports: tuple[str, ...] = field(default=(), repr=False)
    s3: dict | None = field(default=None, repr=False)

    @property
    def kinds(self) -> list[str]:
        return [k for k, v in (("bearer", self.bearer), ("passports", self.passports),
                               ("s3", self.s3)) if v]

    def secrets(self) -> list[str]:
        """Every secret string of the entry (to keep them out of what is shown)."""
        found = [self.bearer or "", *self.passports]
        if self.s3:
            found += [self.s3.get("access_key_id", ""), self.s3.get("secret_access_key", "")]
        return [s for s in found if s]


class Credentials:
    """The entries of a credentials file (none without a file)."""

    def __init__(self, entries: list[Entry] | None = None):
        self.entries = entries or []

    @classmethod
    def load(cls, path: str | None) -> Credentials:
        if not path:
            return cls()
        try:
            info = os.stat(path)
        except OSError as exc:
            raise ConfigError(f"--drs-credentials {path}: {exc.strerror}") from exc
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"--drs-credentials {path} is readable by others (mode "
                              f"{stat.S_IMODE(info.st_mode):04o}); make it 0600")
        try:
            with open(path) as handle:
                raw = json.load(handle)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--drs-credentials {path} is not valid JSON") from exc
        entries = raw.get("entries") if isinstance(raw, dict) else None
        if not isinstance(entries, list):
            raise ConfigError(f"--drs-credentials {path} must hold {{\"entries\": [...]}}")
        return cls([_entry(path, n, e) for n, e in enumerate(entries, 1)])

    def find(self, host: str, port: int | None, uri: str, user: str) -> Entry | None:
        """The most specific entry for a DRS object at ``host:port`` (named by ``uri``)
        that ``user`` may use."""
        host = host.lower().strip("[]").rstrip(".")
        best, rank = None, None
        for entry in self.entries:
            if user not in entry.users:
                continue
            here = _rank(entry.match, host, port, uri)
            if here is not None and (rank is None or here > rank):
                best, rank = entry, here
        return best

    def for_others(self, host: str, port: int | None, uri: str, user: str) -> bool:
        """Whether an entry matches but names other identities only."""
        return any(user not in e.users and _rank(e.match, host.lower(), port, uri)
                   is not None for e in self.entries)

    def secrets(self) -> list[str]:
        return [s for entry in self.entries for s in entry.secrets()]


def _rank(match: str, host: str, port: int | None, uri: str) -> tuple | None:
    if match.startswith("drs://"):
        # A prefix ends where a name does: drs://dg.4503 is for drs://dg.4503:… and
        # drs://dg.4503/…, never for drs://dg.45039:… or drs://dg.4503.elsewhere.org/….
        if not uri.lower().startswith(match.lower()):
            return None
        rest = uri[len(match):]
        if match.endswith((":", "/")) or not rest or rest[0] in ":/":
            return (0, len(match))
        return None
    name, wanted = parse_allow_host(match)
    if name.strip("[]") != host:
        return None
    if wanted is None:
        return (1, 0)
    return (2, 0) if wanted == port else None


def _entry(path: str, number: int, raw: object) -> Entry:
    where = f"--drs-credentials {path}, entry {number}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} is not an object")
    match = raw.get("match")
    if not isinstance(match, str) or not match.strip():
        raise ConfigError(f"{where}: match must be HOST[:PORT] or drs://PREFIX")
    match = match.strip()
    if not match.startswith("drs://"):
        try:
            parse_allow_host(match)
        except ValueError:
            raise ConfigError(f"{where}: match must be HOST[:PORT] or drs://PREFIX") from None
    elif len(match) <= 6:
        raise ConfigError(f"{where}: drs:// needs a prefix")
    users = raw.get("users")
    if not isinstance(users, list) or not users or \
            not all(isinstance(u, str) and u for u in users):
        raise ConfigError(f"{where}: users must name the identities (emails) that may use "
                          "it; an entry for every user is refused")
    bearer = raw.get("bearer")
    if bearer is not None and (not isinstance(bearer, str) or not bearer.strip()):
        raise ConfigError(f"{where}: bearer must be a non-empty string")
    passports = raw.get("passports")
    if passports is not None and (not isinstance(passports, list) or not passports or
                                  not all(isinstance(p, str) and p for p in passports)):
        raise ConfigError(f"{where}: passports must be a non-empty list of JWTs")
    s3 = raw.get("s3")
    if s3 is not None:
        if not isinstance(s3, dict) or not all(isinstance(s3.get(k), str) and s3.get(k)
                                               for k in S3_FIELDS):
            raise ConfigError(f"{where}: s3 needs {', '.join(S3_FIELDS)}")
        s3 = {k: s3[k] for k in (*S3_FIELDS, "region") if isinstance(s3.get(k), str)}
    if not (bearer or passports or s3):
        raise ConfigError(f"{where}: holds none of bearer, passports, s3")
    for secret in [bearer or "", *(passports or [])]:
        if any(ord(c) < 33 or ord(c) == 127 for c in secret):
            raise ConfigError(f"{where}: a credential holds spaces or control characters")
    return Entry(number, match, frozenset(users), bearer.strip() if bearer else None,
                 tuple(passports or ()), s3)
