"""Fill a local ``hcafs serve`` store with N bundle versions, fast, for the scale benchmark.

It writes through the server's own code: one real file (its blob and metadata, as a PUT
/files writes them), then bundles holding it through :meth:`hcafs.server.dss.DSS.
import_bundles`, which writes each manifest with ``Store.create``, one event-journal record
per batch of 1,000, and the listing-index entries: the same keys a PUT /bundles writes,
so what the server lists and journals afterwards is its own index, not a fake.

``--fast`` opens the store with ``durable=False`` (no fsync: a crash during seeding leaves a
store to throw away, which is all a benchmark store is).  Worker processes split the
count; each uuid is random (every index shard gets its share) and each version distinct.

    python bench/seed.py --store /tmp/x/server/store --count 1000000 --workers 2 --fast

prints ``{"count", "seconds", "rate"}`` as JSON.  Run it while no server uses the store
(or with one: every write is create-once, so it is safe, just slower).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import time
import uuid as _uuid
from multiprocessing import Pool

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from hcafs.checksums import checksum_bytes  # noqa: E402
from hcafs.server.copier import Copier  # noqa: E402
from hcafs.server.dss import DSS, dumps  # noqa: E402
from hcafs.server.store import LocalStore  # noqa: E402
from hcafs.versions import VERSION_FORMAT, now_version  # noqa: E402

BATCH = 1000
CONTENT = b"a seeded bundle's only file\n"


def _open(root: str, fast: bool) -> DSS:
    store = LocalStore(root, durable=not fast)
    return DSS(store, Copier(store, None, None, 1 << 30, workers=1))


def seed_file(dss: DSS) -> dict:
    """One file, stored as PUT /files stores it; returns its manifest entry."""
    sums = checksum_bytes(CONTENT)
    dss.store.write_blob(f"blobs/{sums.blob_key()}", [CONTENT])
    uuid, version = str(_uuid.uuid4()), now_version()
    meta = {"format": "0.0.4", "creator_uid": 0, "version": version,
            "content-type": "text/plain", "size": len(CONTENT), "crc32c": sums.crc32c,
            "s3-etag": sums.s3_etag, "sha1": sums.sha1, "sha256": sums.sha256}
    dss.store.create(f"files/{uuid}.{version}", dumps(meta))
    return {"name": "seed.txt", "uuid": uuid, "version": version,
            "content-type": "text/plain", "size": len(CONTENT), "indexed": False,
            "crc32c": sums.crc32c, "s3-etag": sums.s3_etag, "sha1": sums.sha1,
            "sha256": sums.sha256}


def _work(job: tuple[str, bool, dict, int, int, str]) -> int:
    root, fast, entry, first, count, base = job
    dss = _open(root, fast)
    start = _dt.datetime.strptime(base, VERSION_FORMAT)
    made = 0
    try:
        for offset in range(0, count, BATCH):
            batch = []
            for n in range(first + offset, first + min(offset + BATCH, count)):
                version = (start + _dt.timedelta(microseconds=n)).strftime(VERSION_FORMAT)
                batch.append((str(_uuid.uuid4()), {"format": "0.0.1", "version": version,
                                                   "creator_uid": 0, "files": [entry]}))
            made += dss.import_bundles(batch)
    finally:
        dss.copier.close()
    return made


def seed(root: str, count: int, workers: int = 2, fast: bool = True) -> dict:
    """Add ``count`` bundle versions to the store at ``root``; returns count and timing."""
    started = time.perf_counter()
    dss = _open(root, fast)
    try:
        entry = seed_file(dss)
    finally:
        dss.copier.close()
    base = now_version()
    share = -(-count // workers)
    jobs = [(root, fast, entry, w * share, min(share, count - w * share), base)
            for w in range(workers) if count - w * share > 0]
    with Pool(len(jobs)) as pool:
        made = sum(pool.map(_work, jobs))
    seconds = time.perf_counter() - started
    return {"count": made, "seconds": round(seconds, 2), "rate": round(made / seconds)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", required=True,
                        help="the store directory (a server's DATA_DIR/store)")
    parser.add_argument("--count", type=int, required=True, help="bundle versions to add")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2,
                        help="worker processes (default: one per core)")
    parser.add_argument("--fast", action="store_true", help="skip fsync (benchmark stores)")
    args = parser.parse_args(argv)
    if args.count < 1 or args.workers < 1:
        parser.error("--count and --workers must be at least 1")
    print(json.dumps(seed(os.path.abspath(args.store), args.count, args.workers,
                          args.fast)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
