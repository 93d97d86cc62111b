"""``hcafs serve``'s ingest (PUT /files) killed with -9 in the middle, then restarted.

Many files are put at once, from ``file://`` sources in the staging root (moved into the
store by rename) or from ``s3://`` objects (copied, verified in the same pass), and the
server is killed while they run.  Its store must then be consistent on disk: every file
document parses and names a blob of its size, and every file acknowledged (200/201) before
the kill is still there.  After a restart each file is put again, as a client does whose
answer was lost (restaging it if its staged copy was moved away), and every file ends up
ingested exactly once: one document, one blob per content, no claim left running.

A kill -9 keeps the page cache, so this checks what the server's order of writes leaves
behind, not what reaches the disk before a power cut; docs/writing.md says what is flushed
when.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid as _uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from fixtures.dss_server import USER, DSSServer

from hcafs.checksums import checksum_bytes
from hcafs.versions import now_version

COUNT = 48
SIZE = 256 * 1024
KILL_AFTER = 12  # answers before the kill


def _put(server: DSSServer, uuid: str, version: str, url: str) -> int:
    try:
        return server.call("PUT", f"/files/{uuid}", USER, params={"version": version},
                           json={"source_url": url, "creator_uid": 3}).status_code
    except requests.RequestException:
        return 0  # the server died under this request


def _check_store(store: Path, acknowledged: set[str]) -> dict[str, dict]:
    documents = {}
    for path in (store / "files").iterdir():
        documents[path.name] = json.loads(path.read_bytes())  # none torn
    for name, document in documents.items():
        blob = store / "blobs" / ".".join(document[k] for k in
                                          ("sha256", "sha1", "s3-etag", "crc32c"))
        assert blob.stat().st_size == document["size"], name
    assert acknowledged <= set(documents)  # nothing acknowledged was lost
    return documents


@pytest.mark.parametrize("kind", ["moved", "copied"])
def test_kill_9_during_ingests_then_restart_ingests_each_file_once(kind, tmp_path, seaweed):
    staging = tmp_path / "staging"
    staging.mkdir()
    server = DSSServer(str(tmp_path / "server"), env=seaweed.env(), args=[
        "--staging-root", str(staging), "--async-threshold", "64M",
        "--s3-endpoint", seaweed.endpoint]).start()
    bucket = seaweed.make_bucket()
    s3 = seaweed.client()
    files = {(str(_uuid.uuid4()), now_version()): os.urandom(SIZE) for _ in range(COUNT)}

    def stage(ids: tuple[str, str], data: bytes) -> str:
        if kind == "moved":
            path = staging / f"{ids[0]}.{ids[1]}" / "data.bin"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(data)
            return f"file://{path}"
        key = f"{ids[0]}.{ids[1]}/data.bin"
        tags = "&".join(f"{k}={v}" for k, v in checksum_bytes(data).tags().items())
        s3.put_object(Bucket=bucket, Key=key, Body=data, Tagging=tags)
        return f"s3://{bucket}/{key}"

    urls = {ids: stage(ids, data) for ids, data in files.items()}
    acknowledged: set[str] = set()
    answered = threading.Semaphore(0)
    try:
        def one(ids):
            status = _put(server, *ids, urls[ids])
            if status in (200, 201):
                acknowledged.add(".".join(ids))
            answered.release()
            return status

        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(one, ids) for ids in files]
            for _ in range(KILL_AFTER):
                answered.acquire(timeout=60)
            server.stop(signal.SIGKILL)
            statuses = [f.result() for f in futures]
        assert 0 in statuses, "the kill came after every answer: nothing was interrupted"
        store = Path(server.data_dir) / "store"
        _check_store(store, acknowledged)

        server.start()
        restaged: set[str] = set()
        for ids, data in files.items():
            status = _put(server, *ids, urls[ids])
            if status == 404 and kind == "moved":  # its staged copy moved away: stage again
                restaged.add(urls[ids][len("file://"):])
                status = _put(server, *ids, stage(ids, data))
            assert status in (200, 201), (ids, status)
        deadline = time.monotonic() + 60
        while any((store / "copies").glob("*")) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any((store / "copies").glob("*"))  # no claim left running
        documents = _check_store(store, acknowledged)
        assert set(documents) == {".".join(ids) for ids in files}
        for ids, data in files.items():
            assert documents[".".join(ids)]["sha256"] == checksum_bytes(data).sha256
        assert len(list((store / "blobs").iterdir())) == COUNT  # each content once
        if kind == "moved":
            assert not [p for p in (store / ".tmp").iterdir() if p.name.startswith("move-")]
            # Moved, not copied; a file staged again after its first copy was published
            # stays, for its client to discard.
            left = {str(p) for p in staging.rglob("*") if p.is_file()}
            assert left <= restaged
    finally:
        server.stop()
