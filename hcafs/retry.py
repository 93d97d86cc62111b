"""The one retry policy: capped exponential backoff, honouring ``Retry-After``.

Every remote call (the DSS client, the bulk-import client) and every schedule of work that
is tried again later (a file's sync, a bundle's commit, a DRS import item, the import
flusher's hold after a refusal) takes its delays from a :class:`RetryPolicy`.  Calls use a
bounded number of attempts with jitter; background schedules (:data:`BACKGROUND`) retry
until they succeed, at a deterministic, capped pace that ``hcafs status`` can show.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6  # tries in all; 0 means no limit
    base_delay: float = 0.5
    max_delay: float = 30.0
    jitter: bool = True

    def backoff(self, attempt: int) -> float:
        """The pause after failed attempt number ``attempt`` (0-based), capped."""
        delay = min(self.base_delay * 2 ** min(attempt, 32), self.max_delay)
        return delay * (0.5 + random.random() / 2) if self.jitter else delay

    def delay(self, attempt: int, retry_after: str | float | None = None) -> float:
        """:meth:`backoff`, unless the server said when to come back (capped likewise)."""
        if retry_after is not None and retry_after != "":
            try:
                return max(0.0, min(float(retry_after), self.max_delay))
            except ValueError:
                pass
        return self.backoff(attempt)

    def exhausted(self, attempt: int) -> bool:
        """True once attempt number ``attempt`` (0-based) was the last one allowed."""
        return bool(self.attempts) and attempt + 1 >= self.attempts


# Work that must reach the server eventually: 2 s, 4 s, 8 s ... at most 5 minutes apart.
BACKGROUND = RetryPolicy(attempts=0, base_delay=1.0, max_delay=300.0, jitter=False)
