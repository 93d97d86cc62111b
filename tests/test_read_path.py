"""The read path on real mounts: zero-copy ``read_buf`` serving, per-block checks of cached
bytes, and parallel ranged fetches that survive a broken stream."""

from __future__ import annotations

import errno
import http.server
import os
import random
import threading
from pathlib import Path

import pytest
from fixtures.dss_server import USER, DSSServer
from fixtures.faults import Fault, FaultyHttpProxy
from fixtures.hcafs_mount import Mount, needs_fuse
from fixtures.publishing import publish

from hcafs.errors import Unreachable
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
    yield {"server": server, "fqid": fqid, "data": data, "sha256": sha256, "proxy": proxy,
           "file": registered["big.bin"]}
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


def _received(chunks) -> tuple[bytearray, list[memoryview | bytes], BaseException | None]:
    """What a stream yielded (copied as it came) and the error it ended with, if any."""
    got, seen = bytearray(), []
    try:
        for chunk in chunks:
            seen.append(chunk)
            got += chunk
    except Unreachable as exc:
        return got, seen, exc
    return got, seen, None


def test_a_ranged_stream_is_received_into_one_buffer_and_keeps_its_connection(world):
    data = world["data"]
    client = DSSClient(world["server"].url, token=USER)
    url = client.file_url(*world["file"])
    start, end = MiB + 5, 6 * MiB + 17
    got, seen, error = _received(client.stream(url, start, end, reuse=True))
    assert error is None and bytes(got) == data[start:end]
    assert [len(chunk) for chunk in seen] == [MiB] * 5 + [12]
    assert all(isinstance(chunk, memoryview) and chunk.obj is seen[0].obj for chunk in seen)
    got, seen, error = _received(client.stream(url, start, None))
    assert error is None and bytes(got) == data[start:]
    assert all(isinstance(chunk, bytes) for chunk in seen)
    assert _kept_open(client) == 1  # the whole body read, its connection went back open


def _kept_open(client: DSSClient) -> int:
    """Idle connections in the client's pools whose socket is still open."""
    pools = client.session.get_adapter("http://").poolmanager.pools
    return sum(1 for key in pools.keys() for conn in list(pools[key].pool.queue)
               if conn is not None and conn.sock is not None)


def test_a_ranged_stream_cut_mid_block_is_unreachable_after_the_bytes_that_came(world):
    data, proxy = world["data"], world["proxy"]
    client = DSSClient(proxy.url, token=USER)
    url = client.file_url(*world["file"])
    cut = proxy.when(Fault(cut_after=2 * MiB + 300 * 1024), method="GET", path="/blobs/",
                     times=1)
    got, _, error = _received(client.stream(url, MiB, 8 * MiB, reuse=True))
    assert cut.reached.is_set(), "the stream was not cut: the test proved nothing"
    assert isinstance(error, Unreachable) and "broke off" in str(error)
    # What arrived is right (a reset may drop bytes the client had not read yet).
    assert len(got) <= 2 * MiB + 300 * 1024 and bytes(got) == data[MiB:MiB + len(got)]


class _ShortBody(http.server.BaseHTTPRequestHandler):
    """Promises 3 MiB, sends 2.5 MiB of a known pattern, then closes cleanly."""

    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(206)
        self.send_header("Content-Length", str(3 * MiB))
        self.end_headers()
        self.wfile.write(bytes(range(256)) * (10 * 1024))  # 2.5 MiB
        self.close_connection = True

    def log_message(self, format, *args):  # noqa: A002 - quiet
        pass


def test_a_body_short_of_its_length_is_unreachable_not_a_short_file():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ShortBody)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = DSSClient(f"http://127.0.0.1:{server.server_address[1]}")
        url = f"http://127.0.0.1:{server.server_address[1]}/blobs/x"
        got, _, error = _received(client.stream(url, 0, 3 * MiB, reuse=True))
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert isinstance(error, Unreachable) and "broke off" in str(error)
    assert bytes(got) == bytes(range(256)) * (10 * 1024)
