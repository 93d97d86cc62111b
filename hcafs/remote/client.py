"""A DSS API v1 client (requests), for the mount and for scripts.

* Retries what may succeed later: connection errors, timeouts, 429 and 5xx, with capped
  exponential backoff that honours ``Retry-After``.
* Follows the DSS's paging (``Link: <…>; rel='next'``) and its ``301 + Retry-After`` loops.
* Raises :class:`~hcafs.errors.ApiError` (the server's ``code`` and ``title``) for an error
  answer and :class:`~hcafs.errors.Unreachable` when no answer came; requests' exceptions
  are translated in :mod:`hcafs.remote.http`, the one HTTP path of the client side.

The bearer token is sent only on the restricted operations and never appears in a log line
or an error message.

Threading: a client may be shared by threads; requests' Session is used per call through a
connection pool that is safe for that.
"""

from __future__ import annotations

import http.client
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import requests

from ..errors import ApiError, NotFound, Unreachable
from ..retry import RetryPolicy
from .http import RETRY_STATUSES, HttpClient, _strip

__all__ = ["RETRY_STATUSES", "DSSClient", "FileInfo", "RetryPolicy"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileInfo:
    """What HEAD /files tells of a file version."""

    uuid: str
    version: str
    size: int
    content_type: str
    creator_uid: int
    sha256: str
    sha1: str
    crc32c: str
    s3_etag: str

    @classmethod
    def from_headers(cls, uuid: str, headers) -> FileInfo:
        return cls(uuid=uuid, version=headers["X-DSS-VERSION"],
                   size=int(headers["X-DSS-SIZE"]),
                   content_type=headers["X-DSS-CONTENT-TYPE"],
                   creator_uid=int(headers["X-DSS-CREATOR-UID"]),
                   sha256=headers["X-DSS-SHA256"], sha1=headers["X-DSS-SHA1"],
                   crc32c=headers["X-DSS-CRC32C"], s3_etag=headers["X-DSS-S3-ETAG"])

    @classmethod
    def from_answer(cls, uuid: str, version: str, body: object) -> FileInfo | None:
        """The file as a put-file answer describes it (an hcafs server's extension: the
        stored version's checksums), or None when the answer does not (any other DSS)."""
        if not isinstance(body, dict) or body.get("version") != version:
            return None
        sums = [body.get(name) for name in ("sha256", "sha1", "crc32c", "s3_etag",
                                            "content_type")]
        size, creator = body.get("size"), body.get("creator_uid")
        if not all(isinstance(value, str) and value for value in sums) or \
                type(size) is not int or type(creator) is not int:
            return None
        sha256, sha1, crc32c, s3_etag, content_type = sums
        return cls(uuid=uuid, version=version, size=size, content_type=content_type,
                   creator_uid=creator, sha256=sha256, sha1=sha1, crc32c=crc32c,
                   s3_etag=s3_etag)


class DSSClient(HttpClient):
    def __init__(self, base_url: str, token: str | None = None, replica: str = "aws",
                 retry: RetryPolicy | None = None, timeout: tuple[float, float] = (10, 60),
                 verify: bool | str = True, pool_size: int = 16):
        base_url = base_url.rstrip("/")
        super().__init__(base_url if base_url.endswith("/v1") else f"{base_url}/v1",
                         retry=retry, timeout=timeout, verify=verify, pool_size=pool_size)
        self._token = token
        self.replica = replica

    @property
    def api(self) -> str:
        return self.base

    @property
    def has_token(self) -> bool:
        return bool(self._token)

    def __repr__(self) -> str:  # no token in any repr
        return f"DSSClient({self.api!r}, replica={self.replica!r})"

    def _auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    def pages(self, url: str, params: dict, auth: bool = False) -> Iterator[dict]:
        """Each page body of a paginated listing, following ``Link: rel=next``."""
        response = self.request("GET", url, params=params, auth=auth)
        while True:
            yield response.json()
            following = response.links.get("next", {}).get("url")
            if response.status_code != 206 or not following:
                return
            response = self.request("GET", following, auth=auth)

    # ------------------------------------------------------------ files

    def head_file(self, uuid: str, version: str | None = None) -> FileInfo:
        params = {"replica": self.replica}
        if version:
            params["version"] = version
        response = self.request("HEAD", f"/files/{uuid}", params=params)
        return FileInfo.from_headers(uuid, response.headers)

    def put_file(self, uuid: str, version: str, source_url: str, creator_uid: int = 0
                 ) -> tuple[int, dict]:
        """Register a staged file; (status, body): 201 new, 200 repeat, 202 copying."""
        response = self.request("PUT", f"/files/{uuid}", params={"version": version},
                                json={"source_url": source_url, "creator_uid": creator_uid},
                                auth=True)
        return response.status_code, response.json()

    def wait_file(self, uuid: str, version: str, timeout: float = 3600.0,
                  interval: float = 0.5, longest: float = 2.0) -> FileInfo:
        """Poll HEAD until an asynchronous copy has finished (404 means not yet): first
        after ``interval`` seconds, then half as long again each time, up to ``longest``
        (a HEAD is cheap; a commit waits on this)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.head_file(uuid, version)
            except NotFound:
                if time.monotonic() > deadline:
                    raise
            time.sleep(interval)
            interval = min(interval * 1.5, longest)

    def file_url(self, uuid: str, version: str | None = None, max_wait: float = 3600) -> str:
        """The URL that serves a file's bytes (follows 301 + Retry-After until 302)."""
        params: dict | None = {"replica": self.replica}
        if version:
            params["version"] = version
        url = f"{self.api}/files/{uuid}"
        deadline = time.monotonic() + max_wait
        while True:
            response = self.request("GET", url, params=params)
            location = response.headers.get("Location")
            if response.status_code == 302 and location:
                return location
            if response.status_code == 301 and location and time.monotonic() < deadline:
                time.sleep(min(float(response.headers.get("Retry-After", "1")), 10.0))
                url, params = location, None
                continue
            raise ApiError(response.status_code, "unexpected_answer",
                           "GET /files gave no redirect to the bytes", "GET", _strip(url))

    def read_range(self, url: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of a blob URL, retried like any call."""
        if end <= start:
            return b""
        response = self.request("GET", url, headers={"Range": f"bytes={start}-{end - 1}"},
                                ok=(416,))
        if response.status_code == 416:  # the range starts at or past the end
            return b""
        data = response.content
        if response.status_code == 200:  # the server ignored Range
            data = data[start:end]
        return data

    def stream(self, url: str, start: int = 0, end: int | None = None,
               chunk: int = 1024 * 1024, reuse: bool = False) -> Iterator[bytes | memoryview]:
        """The bytes ``[start, end)`` of a blob URL (to the end when None), streamed in
        chunks of ``chunk`` bytes (the last may be shorter).

        The body is received straight into one buffer of ``chunk`` bytes, with no copy on
        the way: with ``reuse`` each chunk is a view of that buffer, overwritten by the
        next one (the caller is done with a chunk when it asks for the next); without it
        each chunk is a copy of its own.  A body that ends before its ``Content-Length``,
        or breaks off, raises :class:`~hcafs.errors.Unreachable` after the chunks received
        so far.
        """
        headers = {"Accept-Encoding": "identity"}  # the bytes as stored, nothing to decode
        if start or end is not None:
            last = "" if end is None else str(end - 1)
            headers["Range"] = f"bytes={start}-{last}"
        response = self.request("GET", url, headers=headers, stream=True)
        with response:
            chunks = _received_into(response, bytearray(chunk))
            try:
                for view in chunks:
                    yield view if reuse else bytes(view)
            except (OSError, http.client.HTTPException,
                    requests.exceptions.RequestException) as exc:
                raise Unreachable(f"GET {_strip(url)} broke off: {type(exc).__name__}") \
                    from exc
            finally:
                chunks.close()

    # ------------------------------------------------------------ bundles

    def get_bundle(self, uuid: str, version: str | None = None, per_page: int = 500) -> dict:
        """The whole bundle (every page of files merged)."""
        params: dict[str, Any] = {"replica": self.replica, "per_page": per_page}
        if version:
            params["version"] = version
        bundle: dict | None = None
        for page in self.pages(f"/bundles/{uuid}", params):
            if bundle is None:
                bundle = page["bundle"]
            else:
                bundle["files"].extend(page["bundle"]["files"])
        return bundle or {}

    def iter_bundles(self, prefix: str | None = None, per_page: int = 500
                     ) -> Iterator[tuple[str, str]]:
        """Every live (uuid, version), in key order."""
        params: dict[str, Any] = {"replica": self.replica, "per_page": per_page}
        if prefix:
            params["prefix"] = prefix
        for page in self.pages("/bundles/all", params):
            for item in page["bundles"]:
                yield item["uuid"], item["version"]

    def put_bundle(self, uuid: str, version: str, files: list[dict], creator_uid: int = 0
                   ) -> tuple[int, dict]:
        response = self.request("PUT", f"/bundles/{uuid}",
                                params={"version": version, "replica": self.replica},
                                json={"files": files, "creator_uid": creator_uid}, auth=True)
        return response.status_code, response.json()

    def patch_bundle(self, uuid: str, version: str, add_files: list[dict] | None = None,
                     remove_files: list[dict] | None = None) -> dict:
        body = {"add_files": add_files or [], "remove_files": remove_files or []}
        return self.request("PATCH", f"/bundles/{uuid}",
                            params={"version": version, "replica": self.replica},
                            json=body, auth=True).json()

    def delete_bundle(self, uuid: str, version: str | None, reason: str) -> dict:
        params = {"replica": self.replica}
        if version:
            params["version"] = version
        return self.request("DELETE", f"/bundles/{uuid}", params=params,
                            json={"reason": reason}, auth=True).json()

    # ------------------------------------------------------------ collections

    def list_collections(self, per_page: int = 500) -> list[dict]:
        items: list[dict] = []
        for page in self.pages("/collections", {"per_page": per_page}, auth=True):
            items.extend(page["collections"])
        return items

    def get_collection(self, uuid: str, version: str | None = None) -> dict:
        params = {"replica": self.replica}
        if version:
            params["version"] = version
        return self.request("GET", f"/collections/{uuid}", params=params, auth=True).json()

    def put_collection(self, uuid: str, version: str, name: str, contents: list[dict],
                       description: str = "", details: dict | None = None) -> dict:
        body = {"name": name, "description": description, "details": details or {},
                "contents": contents}
        return self.request("PUT", "/collections",
                            params={"replica": self.replica, "uuid": uuid, "version": version},
                            json=body, auth=True).json()

    def patch_collection(self, uuid: str, version: str, **changes: Any) -> dict:
        return self.request("PATCH", f"/collections/{uuid}",
                            params={"replica": self.replica, "version": version},
                            json=changes, auth=True).json()

    def delete_collection(self, uuid: str) -> dict:
        return self.request("DELETE", f"/collections/{uuid}",
                            params={"replica": self.replica}, auth=True).json()



def _received_into(response: requests.Response, buffer: bytearray) -> Iterator[memoryview]:
    """The body of a streamed answer, read into ``buffer`` a buffer's length at a time:
    views of it (the last may be shorter); IncompleteRead when it ends before its length.

    The bytes go from the socket straight into the buffer through the ``readinto`` of
    http.client's response under urllib3's (``raw._fp``: urllib3's own ``readinto`` reads
    into a fresh bytes object and copies), and the connection goes back to the pool once
    the body is whole.  A body with a content coding goes through requests' decoding.
    """
    view = memoryview(buffer)
    expected = response.headers.get("Content-Length")
    expected = int(expected) if expected and expected.isdigit() else None
    body = getattr(response.raw, "_fp", None)
    if response.headers.get("Content-Encoding", "identity") != "identity" or \
            not hasattr(body, "readinto"):
        for data in response.iter_content(len(buffer)):  # urllib3 checks the length
            yield memoryview(data)
        return
    got = 0
    while True:
        filled = 0
        while filled < len(view):
            count = body.readinto(view[filled:])
            if not count:
                break
            filled += count
        got += filled
        if filled:
            yield view[:filled]
        if filled < len(view):
            break
    if expected is not None and got < expected:
        raise http.client.IncompleteRead(b"", expected - got)
    response.raw.release_conn()  # read whole: the connection can serve the next call
