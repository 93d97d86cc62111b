"""The one HTTP path of the client side: a requests session, retries, typed errors.

:class:`HttpClient` sends every call of the DSS client and of the bulk-import client:

* requests' exceptions become :class:`~hcafs.errors.Unreachable` in :meth:`_send` and
  nowhere else;
* connection errors, timeouts, 429 and 5xx are retried under the client's
  :class:`~hcafs.retry.RetryPolicy` (capped exponential backoff, ``Retry-After`` honoured);
* an error answer becomes the error :func:`~hcafs.errors.api_error` picks for its status.

Credentials go in headers built per call and never appear in a log line, a repr or an error.

Threading: a client may be shared by threads; the session's connection pool is safe for it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import requests
import requests.adapters

from ..errors import ApiError, Unreachable, api_error
from ..retry import RetryPolicy

log = logging.getLogger(__name__)

RETRY_STATUSES = {429, 500, 502, 503, 504}


class HttpClient:
    def __init__(self, base: str, retry: RetryPolicy | None = None,
                 timeout: tuple[float, float] = (10, 60), verify: bool | str = True,
                 pool_size: int = 16):
        self.base = base
        self.retry = retry or RetryPolicy()
        self.timeout = timeout
        self.session = requests.Session()
        self.session.verify = verify
        adapter = requests.adapters.HTTPAdapter(pool_connections=pool_size,
                                                pool_maxsize=pool_size)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def _send(self, method: str, url: str, timeout: tuple[float, float] | None = None,
              **kwargs) -> requests.Response:
        try:
            # verify= per request: a session-level value loses to $REQUESTS_CA_BUNDLE.
            return self.session.request(method, url, timeout=timeout or self.timeout,
                                        verify=self.session.verify, **kwargs)
        except requests.exceptions.RequestException as exc:
            raise Unreachable(f"{method} {_strip(url)}: {type(exc).__name__}") from exc

    def _auth_headers(self) -> dict[str, str]:
        """The credentials of a restricted call (none by default)."""
        return {}

    def _seen(self, response: requests.Response) -> None:
        """Every answer passes here (a hook for headers such as rate limits)."""

    def request(self, method: str, url: str, *, params: Any = None, json: Any = None,
                auth: bool = False, allow_redirects: bool = False, stream: bool = False,
                headers: dict | None = None, ok: tuple[int, ...] = (),
                retry: RetryPolicy | None = None,
                timeout: tuple[float, float] | None = None) -> requests.Response:
        """One API call with retries; returns the answer or raises a typed error.

        Statuses in ``ok`` are returned as they are even when they are errors; ``retry``
        and ``timeout`` replace the client's own for this call.
        """
        retry = retry or self.retry
        if not url.startswith("http"):
            url = self.base + url
        send_headers = dict(headers or {})
        if auth:
            send_headers.update(self._auth_headers())
        attempt = 0
        while True:
            try:
                response = self._send(method, url, params=params, json=json,
                                      headers=send_headers, allow_redirects=allow_redirects,
                                      stream=stream, timeout=timeout)
            except Unreachable:
                if retry.exhausted(attempt):
                    raise
                delay = retry.delay(attempt)
                log.debug("%s %s unreachable; retry in %.1fs", method, _strip(url), delay)
            else:
                self._seen(response)
                if response.status_code in ok or response.status_code < 400:
                    return response
                if response.status_code not in RETRY_STATUSES or retry.exhausted(attempt):
                    raise self._error(method, url, response)
                delay = retry.delay(attempt, response.headers.get("Retry-After"))
                log.debug("%s %s answered %d; retry in %.1fs", method, _strip(url),
                          response.status_code, delay)
                response.close()
            attempt += 1
            time.sleep(delay)

    def _describe(self, response: requests.Response) -> tuple[str, str]:
        """(code, title) of an error answer, from its body when it has one."""
        code, title = "", response.reason or ""
        try:
            body = response.json()
            code = str(body.get("code", "")) or code
            title = str(body.get("title") or body.get("message") or title)
        except ValueError:
            pass
        return code or f"http_{response.status_code}", title

    def _error(self, method: str, url: str, response: requests.Response) -> ApiError:
        code, title = self._describe(response)
        return api_error(response.status_code, code, title, method, _strip(url),
                         retry_after=response.headers.get("Retry-After"))


def _strip(url: str) -> str:
    """A URL without its query string, for messages."""
    return url.split("?", 1)[0]
