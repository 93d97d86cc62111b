"""The read path on real mounts: zero-copy ``read_buf`` serving, per-block checks of cached
bytes, and parallel ranged fetches that survive a broken stream."""

from __future__ import annotations

import errno
import os
import random
import threading
from pathlib import Path

import pytest
from fixtures.dss_server import USER, DSSServer
from fixtures.faults import Fault, FaultyHttpProxy
from fixtures.hcafs_mount import Mount, needs_fuse
from fixtures.publishing import publish

from hcafs.remote.client import DSSClient

MiB = 1024 * 1024
pytestmark = needs_fuse


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A server with one 40 MiB file (not a whole number of blocks), behind a fault proxy."""
    work = tmp_path_factory.mktemp("read-world")
    staging = work / "staging"
    staging.mkdir()
    server = DSSServer(str(work / "server"), args=["--staging-root", str(staging)]).start()
    client = DSSClient(server.url, token=USER)
    data = random.Random(15).randbytes(40 * MiB + 4321)
    fqid, registered = publish(client, staging, {"big.bin": data})
    sha256 = client.head_file(*registered["big.bin"]).sha256
    proxy = FaultyHttpProxy(server.url)
    yield {"server": server, "fqid": fqid, "data": data, "sha256": sha256, "proxy": proxy}
    proxy.close()
    server.stop()


def _pread(path: Path, offset: int, size: int) -> bytes:
    """One read that reaches the daemon as it is: O_DIRECT, so no kernel read-ahead and no
    kernel retry of a failed page read hide what the daemon answered."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


def test_random_preads_and_block_boundaries_match_the_server(world, tmp_path):
    data = world["data"]
    rng = random.Random(1)
    with Mount(str(tmp_path), world["server"].url, token=USER) as mount:
        path = Path(mount.path) / "bundles" / world["fqid"] / "big.bin"
        fd = os.open(path, os.O_RDONLY)
        try:
            for boundary in (MiB, 7 * MiB, 40 * MiB):  # a read that straddles two blocks
                assert os.pread(fd, 8192, boundary - 4096) == data[boundary - 4096:
                                                                   boundary + 4096]
            for _ in range(40):
                offset = rng.randrange(len(data))
                size = rng.choice([1, 4096, 65536, MiB, 3 * MiB + 17])
                assert os.pread(fd, size, offset) == data[offset:offset + size]
            assert os.pread(fd, 4096, len(data) - 100) == data[-100:]  # short at the end
            assert os.pread(fd, 4096, len(data) + 10) == b""
        finally:
            os.close(fd)
        assert "Traceback" not in mount.log()


def test_readers_racing_one_cold_fetch_all_get_the_right_bytes(world, tmp_path):
    data = world["data"]
    with Mount(str(tmp_path), world["server"].url, token=USER) as mount:
        path = Path(mount.path) / "bundles" / world["fqid"] / "big.bin"
        results: dict[int, bool] = {}

        def reader(n: int) -> None:
            rng = random.Random(100 + n)
            ok = True
            with open(path, "rb", buffering=0) as handle:
                if n % 2 == 0:  # sequential readers of the whole file
                    ok = handle.read() == data
                else:  # random readers of the same blocks at the same time
                    for _ in range(25):
                        offset = rng.randrange(0, 16 * MiB)
                        ok &= os.pread(handle.fileno(), 300000, offset) == \
                            data[offset:offset + 300000]
            results[n] = ok

        threads = [threading.Thread(target=reader, args=(n,)) for n in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert results == {n: True for n in range(6)}


@pytest.mark.allow_daemon_errors(r"does not match its checksum", r"cached bytes of \w+ are corrupt")
def test_a_block_corrupted_in_the_cache_is_never_served(world, tmp_path):
    data = world["data"]
    with Mount(str(tmp_path), world["server"].url, token=USER) as mount:
        path = Path(mount.path) / "bundles" / world["fqid"] / "big.bin"
        assert path.read_bytes() == data  # the whole file cached and verified
        cached = Path(mount.cache_dir) / "blobs" / world["sha256"][:2] / world["sha256"]
    # Flip bytes in block 5 of the cached copy while nothing has it open.
    with open(cached, "r+b") as handle:
        handle.seek(5 * MiB + 1000)
        handle.write(bytes(b ^ 0xFF for b in data[5 * MiB + 1000:5 * MiB + 1100]))
    with Mount(str(tmp_path), world["server"].url, token=USER) as mount:
        path = Path(mount.path) / "bundles" / world["fqid"] / "big.bin"
        with pytest.raises(OSError) as caught:
            _pread(path, 5 * MiB + 900, 4096)
        assert caught.value.errno == errno.EIO
        assert "cached block 5 of" in mount.log()
        assert "does not match its checksum" in mount.log()
        # The next read fetches the block again: right bytes, and the rest is intact.
        assert _pread(path, 5 * MiB + 900, 4096) == data[5 * MiB + 900:5 * MiB + 900 + 4096]
        assert path.read_bytes() == data
    with open(cached, "rb") as handle:  # the cached copy itself was mended
        handle.seek(5 * MiB)
        assert handle.read(MiB) == data[5 * MiB:6 * MiB]


def test_parallel_ranges_survive_a_stream_cut_mid_range(world, tmp_path):
    data, proxy = world["data"], world["proxy"]
    cut = proxy.when(Fault(cut_after=300 * 1024), method="GET", path="/blobs/", times=2)
    with Mount(str(tmp_path), proxy.url, token=USER,
               args=["--read-streams", "4", "--read-chunk", "4M"]) as mount:
        path = Path(mount.path) / "bundles" / world["fqid"] / "big.bin"
        assert path.read_bytes() == data
        log = mount.log()
    assert cut.reached.is_set(), "no ranged fetch was cut: the test proved nothing"
    ranged = [seen for seen in proxy.seen if seen.method == "GET" and "/blobs/" in seen.path]
    assert len(ranged) >= 4, "the file came in fewer ranged fetches than streams"
    assert "Traceback" not in log
