"""Model tier: what the sync engine takes from a put-file answer instead of a HEAD."""

from __future__ import annotations

import pytest

from hcafs.remote.client import FileInfo

UUID = "0aea1c0a-7595-40bf-a081-8d539e7a1131"
VERSION = "2026-12-03T132222.098803Z"
ANSWER = {"version": VERSION, "size": 3, "content_type": "text/plain", "creator_uid": 7,
          "sha256": "a" * 64, "sha1": "b" * 40, "crc32c": "c" * 8, "s3_etag": "d" * 32}


def test_an_hcafs_answer_describes_the_stored_version():
    info = FileInfo.from_answer(UUID, VERSION, ANSWER)
    assert info == FileInfo(uuid=UUID, version=VERSION, size=3, content_type="text/plain",
                            creator_uid=7, sha256="a" * 64, sha1="b" * 40, crc32c="c" * 8,
                            s3_etag="d" * 32)


@pytest.mark.parametrize("body", [
    {"version": VERSION},  # the DSS's own answer: a HEAD is needed
    {**ANSWER, "version": "2026-12-03T132222.098804Z"},  # another version
    {**ANSWER, "size": "3"}, {**ANSWER, "size": True}, {**ANSWER, "creator_uid": None},
    {**ANSWER, "sha256": ""}, {**ANSWER, "crc32c": 12}, ["not", "a", "dict"], None,
])
def test_any_other_answer_asks_for_a_head(body):
    assert FileInfo.from_answer(UUID, VERSION, body) is None
