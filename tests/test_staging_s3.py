"""The S3 stager against SeaweedFS: what a staged object holds, however its checksums came.

Each path the stager takes is checked on the object itself: its bytes, its ETag (the DSS's
``s3_etag``) and its four ``hca-dss-*`` tags.  A file whose checksums were computed while it
was written is staged with them; one without is checksummed by the stager (a big one beside
its parts' upload, the tags set afterwards); known checksums that no longer match the file's
size are not used.
"""

from __future__ import annotations

import hashlib
import os

import pytest

from hcafs.checksums import checksum_bytes
from hcafs.remote.s3 import S3
from hcafs.sync.staging import S3Stager

MiB = 1024 * 1024


@pytest.fixture
def stager(seaweed, monkeypatch):
    for name, value in seaweed.env().items():
        monkeypatch.setenv(name, value)
    bucket = seaweed.make_bucket()
    return S3Stager(f"s3://{bucket}/staged", S3(seaweed.endpoint, sign_payload=False))


def _stage(stager: S3Stager, tmp_path, data: bytes, known=None):
    path = tmp_path / "data"
    path.write_bytes(data)
    sent = []
    url, sums = stager.stage(str(path), "u", "v", "f.bin", sent.append, known=known)
    return url, sums, sent


def _check_object(seaweed, stager: S3Stager, url: str, data: bytes) -> None:
    key = url.split("/", 3)[3]
    s3 = seaweed.client()
    answer = s3.get_object(Bucket=stager.bucket, Key=key)
    assert hashlib.sha256(answer["Body"].read()).digest() == hashlib.sha256(data).digest()
    expected = checksum_bytes(data)
    assert answer["ETag"].strip('"') == expected.s3_etag
    tags = {t["Key"]: t["Value"]
            for t in s3.get_object_tagging(Bucket=stager.bucket, Key=key)["TagSet"]}
    assert tags == expected.tags()


@pytest.mark.parametrize("size", [0, 1000, 5 * MiB, 64 * MiB + 3 * MiB])
def test_the_stager_checksums_what_it_stages(seaweed, stager, tmp_path, size):
    data = os.urandom(size)
    url, sums, sent = _stage(stager, tmp_path, data)
    assert sums == checksum_bytes(data)
    assert not sent or sent[-1] == size
    _check_object(seaweed, stager, url, data)


@pytest.mark.parametrize("size", [1000, 64 * MiB + 3 * MiB])
def test_known_checksums_are_used_when_they_fit(seaweed, stager, tmp_path, size):
    data = os.urandom(size)
    real = checksum_bytes(data)
    asked = []

    def known(fd):
        asked.append(os.fstat(fd).st_size)
        return real

    url, sums, _ = _stage(stager, tmp_path, data, known)
    assert asked == [size] and sums == real
    _check_object(seaweed, stager, url, data)


def test_known_checksums_of_another_size_are_not_used(seaweed, stager, tmp_path):
    data = os.urandom(2000)
    url, sums, _ = _stage(stager, tmp_path, data, lambda fd: checksum_bytes(data[:10]))
    assert sums == checksum_bytes(data)
    _check_object(seaweed, stager, url, data)
