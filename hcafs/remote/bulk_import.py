"""The bulk DRS import API (the Seven Bridges contract): create a job, read a job.

Calls go through :class:`~hcafs.remote.http.HttpClient`, so they are retried like every
other remote call.  A job is created under an ``Idempotency-Key`` the caller chose and
recorded first, so a retry (here, or after a crash) makes no second job.  The server's
``X-RateLimit-*`` headers of every answer (polls included) are kept in
:attr:`BulkImportClient.limit`, with the time they were seen, for the caller's budget.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass

import requests

from ..retry import RetryPolicy
from .http import HttpClient

# Few tries per call: the import flusher has its own, longer hold after a refusal.
IMPORT_RETRY = RetryPolicy(attempts=3, base_delay=0.5, max_delay=10.0)
HELD_RETRY = RetryPolicy(attempts=1)  # a held poll that fails is simply polled again later
POOL = 12  # connections: the flusher's, and its pool's held polls


@dataclass(frozen=True)
class RateLimit:
    """The server's file budget as one answer stated it: ``remaining`` of ``limit`` files
    at ``seen`` (epoch), all of it back at ``reset`` (epoch)."""

    limit: int
    remaining: int
    reset: float
    seen: float


class BulkImportClient(HttpClient):
    def __init__(self, base_url: str, token: str | None, verify: bool | str = True,
                 retry: RetryPolicy | None = None):
        base_url = base_url.rstrip("/")
        super().__init__(base_url if base_url.endswith("/v2") else f"{base_url}/v2",
                         retry=retry or IMPORT_RETRY, verify=verify, pool_size=POOL)
        self._token = token
        self.limit: RateLimit | None = None
        self._limit_lock = threading.Lock()

    def __repr__(self) -> str:  # no token in any repr
        return f"BulkImportClient({self.base!r})"

    def _auth_headers(self) -> dict[str, str]:
        return {"X-SBG-Auth-Token": self._token} if self._token else {}

    def identity_digest(self) -> str:
        """A digest of the token, which tells identities apart and reveals nothing of it."""
        return hashlib.sha256((self._token or "").encode()).hexdigest()

    def _seen(self, response: requests.Response) -> None:
        """Keep the budget an answer states (polls may run in another thread than the
        caller's: the latest seen is kept)."""
        try:
            seen = RateLimit(int(response.headers["X-RateLimit-Limit"]),
                             int(response.headers["X-RateLimit-Remaining"]),
                             _epoch(float(response.headers["X-RateLimit-Reset"])),
                             time.time())
        except (KeyError, ValueError):
            return
        with self._limit_lock:
            if self.limit is None or seen.seen >= self.limit.seen:
                self.limit = seen

    def _describe(self, response: requests.Response) -> tuple[str, str]:
        try:
            body = response.json()
            message = body.get("message") or body.get("title") or response.reason
            return str(body.get("code", response.status_code)), str(message)
        except ValueError:
            return str(response.status_code), response.reason or ""

    def create(self, items: list[dict], conflict: str, tags: list[str], key: str) -> dict:
        body = {"items": items, "conflict_resolution": conflict, "tags": tags or None}
        return self.request("POST", "/bulk/drs/imports/create", json=body, auth=True,
                            headers={"Idempotency-Key": key}).json()

    def get(self, job_id: str) -> dict:
        return self.request("GET", f"/bulk/drs/imports/{job_id}", auth=True).json()

    def poll(self, job_id: str, etag: str | None = None, wait: int = 0
             ) -> tuple[dict | None, str | None, bool]:
        """The job, or None if ``etag`` (of an earlier answer) still names it: a server
        that tags its jobs (``hcafs serve`` does) answers such a poll 304, with no body.
        Also the answer's ``ETag`` (None from a server that sends none), and whether the
        server held the poll: with ``wait``, it is asked (``Prefer: wait``, RFC 7240) to
        answer only once the job changes or that many seconds have passed.  A held poll
        is tried once, with a read timeout of the wait and a little more; it counts as
        held only if the server says so and the answer took half the wait or more (a
        proxy may echo the header)."""
        headers = {"If-None-Match": etag} if etag else {}
        held = bool(etag) and wait > 0
        if held:
            headers["Prefer"] = f"wait={int(wait)}"
        started = time.monotonic()
        response = self.request("GET", f"/bulk/drs/imports/{job_id}", auth=True,
                                headers=headers or None,
                                retry=HELD_RETRY if held else None,
                                timeout=(self.timeout[0], wait + 10.0) if held else None)
        tag = response.headers.get("ETag")
        held = held and "wait" in response.headers.get("Preference-Applied", "") and \
            time.monotonic() - started >= wait / 2
        if response.status_code == 304:
            return None, tag or etag, held
        return response.json(), tag, held


def _epoch(reset: float) -> float:
    """``X-RateLimit-Reset`` in epoch seconds (some servers send milliseconds)."""
    return reset / 1000 if reset > 1e11 else reset
