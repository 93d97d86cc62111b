"""The HTTP front under load: ``tests/test_server_load.py``, with its figures kept.

The test starts ``hcafs serve`` with its default limits and a second one as the DRS peer,
runs 64 clients (reads, writes, imports) beside 200 silent and trickling connections, and
fails on any client error.  This runs it with ``HCAFS_LOAD_FIGURES`` set and returns the
figures (request count, time, p50 and p99 latency per kind of request).

Run alone with ``python bench/http_load.py`` (prints JSON), or from ``bench/run.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST = "tests/test_server_load.py"
COMMAND = f"python -m pytest -q {TEST}"


def run(work: str) -> dict:
    os.makedirs(work, exist_ok=True)
    figures = os.path.join(work, "http-load.json")
    env = {**os.environ, "HCAFS_LOAD_FIGURES": figures}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "--basetemp", os.path.join(work, "pytest"), TEST],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{COMMAND} failed:\n{done.stdout[-3000:]}{done.stderr[-2000:]}")
    with open(figures) as handle:
        result = json.load(handle)
    result["command"] = COMMAND
    return result


if __name__ == "__main__":
    print(json.dumps(run(tempfile.mkdtemp(prefix="hcafs-http-load-")), indent=2))
