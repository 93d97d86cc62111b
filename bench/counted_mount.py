"""``hcafs mount --foreground`` with every FUSE callback counted (a benchmark helper).

Usage: ``python bench/counted_mount.py COUNTS.json hcafs-argv...``

Every libfuse callback passes through ``mfusepy.FUSE._wrapper``; this wraps it to count
calls by name (plus the bytes asked of ``read``, the bytes given to ``write`` and the
names asked of ``getxattr``), and a thread rewrites COUNTS.json every 0.1 s.  It changes
nothing else, so the counts are those of the real daemon.  The benchmark times nothing
through this mount; it only reads counts.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import threading
import time

import mfusepy

from hcafs.cli import main

COUNTS: collections.Counter[str] = collections.Counter()
_lock = threading.Lock()
_original = mfusepy.FUSE._wrapper


def _counting_wrapper(self, func, *args, **kwargs):
    name = func.__name__.removesuffix("_fuse_3")
    with _lock:
        COUNTS[name] += 1
        if name == "read":
            COUNTS["read_bytes_requested"] += args[2]
        elif name == "write":
            COUNTS["write_bytes"] += args[2]
        elif name == "getxattr":
            COUNTS["getxattr " + args[1].decode(errors="replace")] += 1
    return _original(self, func, *args, **kwargs)


def _dump_forever(path: str) -> None:
    while True:
        with _lock:
            snapshot = dict(COUNTS)
        with open(path + ".tmp", "w") as handle:
            json.dump(snapshot, handle)
        os.replace(path + ".tmp", path)
        time.sleep(0.1)


if __name__ == "__main__":
    counts_file, argv = sys.argv[1], sys.argv[2:]
    mfusepy.FUSE._wrapper = _counting_wrapper
    threading.Thread(target=_dump_forever, args=(counts_file,), daemon=True).start()
    sys.exit(main(argv))
