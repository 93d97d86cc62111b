"""The one error tree of hcafs.

Every error hcafs raises on purpose derives from :class:`HcafsError`.  Each class carries
the errno a filesystem call turns it into and the exit code a command turns it into, so the
FUSE adapter and the CLI each map errors in exactly one place::

    HcafsError                      EIO     exit 1
    ├── ConfigError                 EINVAL  exit 2   bad option, config file or environment
    ├── UsageError                  EINVAL  exit 2   a command was asked something impossible
    ├── NotFound                    ENOENT  exit 3
    ├── AlreadyExists               EEXIST  exit 1
    ├── NotEmpty                    ENOTEMPTY exit 1
    ├── ReadOnly                    EROFS   exit 1
    ├── PermissionDenied            EACCES  exit 4
    ├── NoSpace                     ENOSPC  exit 1
    ├── Busy                        EBUSY   exit 1
    ├── IntegrityError              EIO     exit 1   bytes that do not match their checksum
    ├── RemoteError                 EIO     exit 5   anything the DSS (or S3) did wrong
    │   ├── Unreachable                              no answer at all (refused, reset, timeout)
    │   └── ApiError                                 the server answered with an error body
    └── Problem                                      server side: becomes a problem+json answer

``Problem`` is the server's half: a handler raises it with the HTTP status and the DSS error
``code``; the server turns it into ``{status, code, title, stacktrace}`` in one place.
"""

from __future__ import annotations

import errno as _errno


class HcafsError(Exception):
    """Root of every error hcafs raises on purpose."""

    errno: int = _errno.EIO
    exit_code: int = 1


class ConfigError(HcafsError):
    errno = _errno.EINVAL
    exit_code = 2


class UsageError(HcafsError):
    errno = _errno.EINVAL
    exit_code = 2


class NotFound(HcafsError):
    errno = _errno.ENOENT
    exit_code = 3


class AlreadyExists(HcafsError):
    errno = _errno.EEXIST


class NotEmpty(HcafsError):
    errno = _errno.ENOTEMPTY


class ReadOnly(HcafsError):
    errno = _errno.EROFS


class PermissionDenied(HcafsError):
    errno = _errno.EACCES
    exit_code = 4


class NoSpace(HcafsError):
    errno = _errno.ENOSPC


class Busy(HcafsError):
    errno = _errno.EBUSY


class IntegrityError(HcafsError):
    """Bytes whose checksum does not match what the manifest promised."""


class RemoteError(HcafsError):
    """The DSS, or the S3 store behind it, did not do what was asked."""

    exit_code = 5

    @property
    def transient(self) -> bool:
        """True when trying again later may succeed."""
        return True


class Unreachable(RemoteError):
    """No HTTP answer at all: connection refused or reset, DNS failure, timeout."""


class ApiError(RemoteError):
    """The server answered with an error status; ``code`` and ``title`` are its own words."""

    def __init__(self, status: int, code: str, title: str, method: str = "", url: str = ""):
        self.status = status
        self.code = code
        self.title = title
        self.method = method
        self.url = url
        where = f" ({method} {url})" if method else ""
        super().__init__(f"{status} {code}: {title}{where}")

    @property
    def transient(self) -> bool:
        return self.status == 429 or self.status >= 500

    @property
    def errno(self) -> int:  # type: ignore[override]
        if self.status == 404:
            return _errno.ENOENT
        if self.status in (401, 403):
            return _errno.EACCES
        return _errno.EIO

    @property
    def exit_code(self) -> int:  # type: ignore[override]
        if self.status == 404:
            return NotFound.exit_code
        if self.status in (401, 403):
            return PermissionDenied.exit_code
        return RemoteError.exit_code


class Problem(HcafsError):
    """A server-side error answer: HTTP ``status``, DSS ``code`` and a human ``title``."""

    def __init__(self, status: int, code: str, title: str, headers: dict | None = None):
        self.status = status
        self.code = code
        self.title = title
        self.headers = headers or {}
        super().__init__(f"{status} {code}: {title}")


def bad_request(title: str, code: str = "illegal_arguments") -> Problem:
    return Problem(400, code, title)


def not_found(title: str = "Cannot find the requested object") -> Problem:
    return Problem(404, "not_found", title)
