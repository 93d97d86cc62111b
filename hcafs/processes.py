"""Whether a process of this machine still runs.

Threading: pure functions; safe from any thread.
"""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs: it exists and is not a zombie (exited, waiting to be
    reaped, holding nothing).  A process of another user counts as running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    except OSError:
        return True  # cannot be told: assume it runs
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):  # gone between the two looks, or no /proc
        return os.path.exists(f"/proc/{pid}") or not os.path.isdir("/proc")
