"""DSS_VERSION strings and UUIDs: the identifiers every DSS object is named by.

A DSS_VERSION is a UTC timestamp written ``YYYY-MM-DDTHHMMSS.ffffffZ`` (no colons, exactly six
fractional digits).  A version is valid only if parsing and re-formatting it gives the same
string back, so ``2019-02-30T...`` and ``2019-08-02T202456.0255Z`` are both refused.
"""

from __future__ import annotations

import datetime as _dt
import re
import uuid as _uuid

VERSION_FORMAT = "%Y-%m-%dT%H%M%S.%fZ"
_VERSION_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{6}\.\d{6}Z\Z")
# The DSS's own pattern accepts mixed case; stored identifiers are lower-cased.
_UUID_RE = re.compile(
    r"^[A-Za-z0-9]{8}-[A-Za-z0-9]{4}-[A-Za-z0-9]{4}-[A-Za-z0-9]{4}-[A-Za-z0-9]{12}\Z"
)
_FQID_RE = re.compile(
    r"^(?P<uuid>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
    r"\.(?P<version>\d{4}-\d{2}-\d{2}T\d{6}\.\d{6}Z)\Z"
)


def now_version() -> str:
    """The DSS_VERSION of this instant."""
    return _dt.datetime.now(_dt.UTC).strftime(VERSION_FORMAT)


def is_version(text: str) -> bool:
    if not isinstance(text, str) or not _VERSION_RE.match(text):
        return False
    try:
        parsed = _dt.datetime.strptime(text, VERSION_FORMAT)
    except ValueError:
        return False
    return parsed.strftime(VERSION_FORMAT) == text


def version_datetime(version: str) -> _dt.datetime:
    """The moment a version names, as an aware UTC datetime."""
    return _dt.datetime.strptime(version, VERSION_FORMAT).replace(tzinfo=_dt.UTC)


def is_uuid(text: str) -> bool:
    return isinstance(text, str) and bool(_UUID_RE.match(text))


def new_uuid() -> str:
    return str(_uuid.uuid4())


def fqid(uuid: str, version: str) -> str:
    return f"{uuid}.{version}"


def parse_fqid(text: str) -> tuple[str, str] | None:
    """``(uuid, version)`` for ``uuid.version``, or None if ``text`` is not an FQID."""
    match = _FQID_RE.match(text)
    return (match["uuid"], match["version"]) if match else None
