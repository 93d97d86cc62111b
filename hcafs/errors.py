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
    ├── NotADirectory               ENOTDIR exit 1
    ├── ReadOnly                    EROFS   exit 1
    ├── PermissionDenied            EACCES  exit 4
    ├── NoSpace                     ENOSPC  exit 1
    ├── Busy                        EBUSY   exit 1
    ├── IntegrityError              EIO     exit 1   bytes that do not match their checksum
    │   └── VersionConflict                          a version the server holds with other bytes
    ├── RemoteError                 EIO     exit 5   anything the DSS (or S3) did wrong
    │   ├── Unreachable                              no answer at all (refused, reset, timeout)
    │   └── ApiError                                 the server answered with an error body
    │       ├── ApiNotFound (+NotFound)     ENOENT  exit 3   404
    │       └── ApiDenied (+PermissionDenied) EACCES exit 4  403
    │           └── ApiUnauthorized                          401 (the token itself)
    └── Problem                                      server side: becomes a problem+json answer

An HTTP answer becomes one of these in :func:`api_error`, the one map from status to error:
callers catch :class:`NotFound` or :class:`PermissionDenied`, never compare statuses.

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


class NotADirectory(HcafsError):
    errno = _errno.ENOTDIR


class ReadOnly(HcafsError):
    errno = _errno.EROFS


class PermissionDenied(HcafsError):
    errno = _errno.EACCES
    exit_code = 4


class NotPermitted(HcafsError):
    """An operation this filesystem never does (a hard link, a device or FIFO node)."""
    errno = _errno.EPERM


class NotSupported(HcafsError):
    """An operation this filesystem does not offer, for which callers have a fallback."""
    errno = _errno.EOPNOTSUPP


class NoSpace(HcafsError):
    errno = _errno.ENOSPC


class Busy(HcafsError):
    errno = _errno.EBUSY


class IntegrityError(HcafsError):
    """Bytes whose checksum does not match what the manifest promised."""


class VersionConflict(IntegrityError):
    """The server holds a file version with other bytes than the client wrote under it
    (its staged copy changed before the server took it in): that version can never hold
    the written bytes, so they need a version of their own."""


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
        self.retry_after: str | None = None
        where = f" ({method} {url})" if method else ""
        super().__init__(f"{status} {code}: {title}{where}")

    @property
    def transient(self) -> bool:
        return self.status == 429 or self.status >= 500


class ApiNotFound(ApiError, NotFound):
    errno = _errno.ENOENT
    exit_code = NotFound.exit_code


class ApiDenied(ApiError, PermissionDenied):
    errno = _errno.EACCES
    exit_code = PermissionDenied.exit_code


class ApiUnauthorized(ApiDenied):
    """401: the server does not accept the credentials at all."""


_BY_STATUS: dict[int, type[ApiError]] = {401: ApiUnauthorized, 403: ApiDenied,
                                         404: ApiNotFound}


def api_error(status: int, code: str, title: str, method: str = "", url: str = "",
              retry_after: str | None = None) -> ApiError:
    """The error for an HTTP error answer: the one place a status picks an error class."""
    error = _BY_STATUS.get(status, ApiError)(status, code, title, method, url)
    error.retry_after = retry_after
    return error


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
