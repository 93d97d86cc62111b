"""The data the benchmarks run on, put into the server through :class:`DSSClient`.

* one big file (random bytes, default 512 MiB) in a bundle of its own;
* one tiny file registered once and named by every other bundle, so that there are
  ``bundles`` bundle versions in all (default 10,000) for the listing benchmark;
* a local directory with as many entries, named like the bundles, as the ``ls`` baseline.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from harness import BenchError, MiB

from hcafs.remote.client import DSSClient
from hcafs.versions import new_uuid, now_version

PUT_THREADS = 8


@dataclass(frozen=True)
class Dataset:
    big_uuid: str
    big_version: str
    big_sha256: str
    big_size: int
    big_bundle: str  # fqid
    bundle_fqids: list[str]
    seconds: dict[str, float]

    @property
    def big_path_in_mount(self) -> str:
        return f"bundles/{self.big_bundle}/big.bin"


def _write_random(path: str, size: int) -> None:
    block = os.urandom(MiB)
    with open(path, "wb") as handle:
        for index in range(-(-size // MiB)):
            # A fresh prefix per MiB keeps every block distinct at the cost of 16 bytes.
            handle.write((os.urandom(16) + block[16:])[:min(MiB, size - index * MiB)])


def _put_file(client: DSSClient, path: str) -> tuple[str, str, str]:
    uuid, version = new_uuid(), now_version()
    status, _ = client.put_file(uuid, version, "file://" + path)
    if status not in (200, 201, 202):
        raise BenchError(f"PUT /files answered {status}")
    info = client.wait_file(uuid, version, interval=0.5) if status == 202 else \
        client.head_file(uuid, version)
    return uuid, version, info.sha256


def populate(client: DSSClient, staging: str, bundles: int, big_size: int) -> Dataset:
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    big_path = os.path.join(staging, "big.bin")
    _write_random(big_path, big_size)
    seconds["write the big file locally"] = time.perf_counter() - started

    started = time.perf_counter()
    big_uuid, big_version, big_sha256 = _put_file(client, big_path)
    os.unlink(big_path)  # the server holds its own copy now
    seconds["PUT /files big file (incl. async copy)"] = time.perf_counter() - started

    tiny_path = os.path.join(staging, "tiny.txt")
    with open(tiny_path, "w") as handle:
        handle.write("hcafs benchmark\n")
    tiny_uuid, tiny_version, _ = _put_file(client, tiny_path)

    def put(files: list[dict]) -> str:
        uuid, version = new_uuid(), now_version()
        status, _ = client.put_bundle(uuid, version, files)
        if status not in (200, 201):
            raise BenchError(f"PUT /bundles answered {status}")
        return f"{uuid}.{version}"

    started = time.perf_counter()
    big_bundle = put([{"uuid": big_uuid, "version": big_version, "name": "big.bin",
                       "indexed": False}])
    tiny = [{"uuid": tiny_uuid, "version": tiny_version, "name": "tiny.txt",
             "indexed": False}]
    with ThreadPoolExecutor(PUT_THREADS) as pool:
        fqids = [big_bundle, *pool.map(lambda _: put(tiny), range(bundles - 1))]
    seconds[f"PUT /bundles x{bundles} ({PUT_THREADS} threads)"] = \
        time.perf_counter() - started
    return Dataset(big_uuid, big_version, big_sha256, big_size, big_bundle, sorted(fqids),
                   seconds)


def publish_one(client: DSSClient, staging: str, name: str, size: int
                ) -> tuple[str, str, str, str]:
    """One file of random bytes in a bundle of its own: (uuid, version, sha256, fqid)."""
    path = os.path.join(staging, name)
    _write_random(path, size)
    uuid, version, sha256 = _put_file(client, path)
    os.unlink(path)
    bundle, bundle_version = new_uuid(), now_version()
    status, _ = client.put_bundle(bundle, bundle_version, [
        {"uuid": uuid, "version": version, "name": name, "indexed": False}])
    if status not in (200, 201):
        raise BenchError(f"PUT /bundles answered {status}")
    return uuid, version, sha256, f"{bundle}.{bundle_version}"


def local_twin(root: str, names: list[str]) -> str:
    """A local directory with one empty subdirectory per name (the ``ls -l`` baseline)."""
    os.makedirs(root, exist_ok=True)
    for name in names:
        os.mkdir(os.path.join(root, name))
    return root
