"""The SeaweedFS store behaves like S3 where hcafs and the hca CLI depend on it.

These run boto3 against the real ``seaweed`` fixture: if a SeaweedFS upgrade changes one of
these behaviours, the server tests would fail for reasons that are not hcafs's.
"""

from __future__ import annotations

import hashlib
import io
import os

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

pytestmark = pytest.mark.s3

MiB = 1024 * 1024
PART = 64 * MiB  # the hca CLI's (dcplib's) multipart chunk size


def unquote(etag: str) -> str:
    return etag.strip('"')


def composite_etag(parts: list[bytes]) -> str:
    digest = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest()
    return f"{digest}-{len(parts)}"


@pytest.fixture(scope="module")
def s3(seaweed):
    return seaweed.client()


@pytest.fixture
def bucket(seaweed):
    return seaweed.make_bucket()


@pytest.fixture(scope="module")
def big(seaweed, s3):
    """A 65 MiB object uploaded as two parts (64 MiB + 1 MiB), and its parts."""
    name = seaweed.make_bucket()
    parts = [os.urandom(PART), os.urandom(MiB)]
    upload = s3.create_multipart_upload(Bucket=name, Key="big.bin", ContentType="application/gzip")
    done = []
    for number, data in enumerate(parts, 1):
        r = s3.upload_part(
            Bucket=name, Key="big.bin", UploadId=upload["UploadId"], PartNumber=number, Body=data
        )
        assert unquote(r["ETag"]) == hashlib.md5(data).hexdigest()
        done.append({"PartNumber": number, "ETag": r["ETag"]})
    result = s3.complete_multipart_upload(
        Bucket=name, Key="big.bin", UploadId=upload["UploadId"], MultipartUpload={"Parts": done}
    )
    return name, parts, result


def test_put_keeps_content_type_and_md5_etag(s3, bucket):
    r = s3.put_object(
        Bucket=bucket, Key="a/x.json", Body=b'{"a": 1}', ContentType="application/json"
    )
    md5 = hashlib.md5(b'{"a": 1}').hexdigest()
    assert r["ETag"] == f'"{md5}"'
    head = s3.head_object(Bucket=bucket, Key="a/x.json")
    assert head["ETag"] == f'"{md5}"'
    assert head["ContentType"] == "application/json"
    assert head["ContentLength"] == 8


def test_tags_round_trip(s3, bucket):
    """The four checksum tags the hca CLI puts on a staged file come back unchanged."""
    s3.put_object(Bucket=bucket, Key="f", Body=b"data")
    tags = {
        "hca-dss-sha256": hashlib.sha256(b"data").hexdigest(),
        "hca-dss-sha1": hashlib.sha1(b"data").hexdigest(),
        "hca-dss-s3_etag": hashlib.md5(b"data").hexdigest(),
        "hca-dss-crc32c": "aabbccdd",
    }
    s3.put_object_tagging(
        Bucket=bucket,
        Key="f",
        Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in tags.items()]},
    )
    tag_set = s3.get_object_tagging(Bucket=bucket, Key="f")["TagSet"]
    assert {t["Key"]: t["Value"] for t in tag_set} == tags
    # Quirk: SeaweedFS returns tags sorted by key, not in put order.
    assert [t["Key"] for t in tag_set] == sorted(tags)


def test_tagging_a_missing_key_is_no_such_key(s3, bucket):
    with pytest.raises(ClientError) as e:
        s3.get_object_tagging(Bucket=bucket, Key="missing")
    assert e.value.response["Error"]["Code"] == "NoSuchKey"


def test_multipart_etag_is_md5_of_part_md5s(s3, big):
    name, parts, result = big
    expected = composite_etag(parts)
    assert unquote(result["ETag"]) == expected
    head = s3.head_object(Bucket=name, Key="big.bin")
    assert head["ETag"] == f'"{expected}"'
    assert head["ContentLength"] == sum(map(len, parts))
    assert head["ContentType"] == "application/gzip"
    listed = s3.list_objects_v2(Bucket=name, Prefix="big.bin")["Contents"]
    assert [(o["Key"], o["ETag"]) for o in listed] == [("big.bin", f'"{expected}"')]


def test_managed_upload_with_hca_settings_gives_the_same_etag(s3, bucket, big):
    """boto3's managed transfer, configured like the hca CLI's upload, splits at 64 MiB."""
    _, parts, _ = big
    config = TransferConfig(multipart_threshold=PART + 1, multipart_chunksize=PART)

    s3.upload_fileobj(io.BytesIO(b"".join(parts)), bucket, "managed.bin", Config=config)
    head = s3.head_object(Bucket=bucket, Key="managed.bin")
    assert unquote(head["ETag"]) == composite_etag(parts)


def test_range_reads(s3, big):
    name, parts, _ = big
    whole = b"".join(parts)
    r = s3.get_object(Bucket=name, Key="big.bin", Range=f"bytes={PART - 3}-{PART + 2}")
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert r["ContentRange"] == f"bytes {PART - 3}-{PART + 2}/{len(whole)}"
    assert r["Body"].read() == whole[PART - 3 : PART + 3]
    tail = s3.get_object(Bucket=name, Key="big.bin", Range="bytes=-5")["Body"].read()
    assert tail == whole[-5:]
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=name, Key="big.bin", Range=f"bytes={len(whole)}-")
    assert e.value.response["Error"]["Code"] == "InvalidRange"


def test_list_with_prefix_start_after_and_pages(s3, bucket):
    keys = ["a/1", "a/2", "a/3", "b/1", "c"]
    for k in keys:
        s3.put_object(Bucket=bucket, Key=k, Body=b"x")

    def listed(**kw):
        return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, **kw).get("Contents", [])]

    assert listed(Prefix="a/") == ["a/1", "a/2", "a/3"]
    assert listed(StartAfter="a/2") == ["a/3", "b/1", "c"]
    assert listed(Prefix="a/", StartAfter="a/1") == ["a/2", "a/3"]
    assert listed(Prefix="zzz") == []

    first = s3.list_objects_v2(Bucket=bucket, MaxKeys=2)
    assert first["IsTruncated"] is True
    rest = s3.list_objects_v2(Bucket=bucket, ContinuationToken=first["NextContinuationToken"])
    assert [o["Key"] for o in first["Contents"] + rest["Contents"]] == keys


def test_copy_keeps_body_type_tags_and_etag(s3, bucket, seaweed):
    s3.put_object(Bucket=bucket, Key="src", Body=b"payload", ContentType="text/plain")
    s3.put_object_tagging(
        Bucket=bucket, Key="src", Tagging={"TagSet": [{"Key": "hca-dss-sha1", "Value": "0f"}]}
    )
    other = seaweed.make_bucket()
    r = s3.copy_object(Bucket=other, Key="dst", CopySource={"Bucket": bucket, "Key": "src"})
    md5 = hashlib.md5(b"payload").hexdigest()
    # Quirk: CopyObjectResult.ETag comes back unquoted; unquote() works either way.
    assert unquote(r["CopyObjectResult"]["ETag"]) == md5
    head = s3.head_object(Bucket=other, Key="dst")
    assert head["ETag"] == f'"{md5}"'
    assert head["ContentType"] == "text/plain"
    assert s3.get_object(Bucket=other, Key="dst")["Body"].read() == b"payload"
    assert s3.get_object_tagging(Bucket=other, Key="dst")["TagSet"] == [
        {"Key": "hca-dss-sha1", "Value": "0f"}
    ]


def test_managed_multipart_copy_of_a_big_object(s3, bucket, big):
    """``client.copy`` uses UploadPartCopy above its threshold; the bytes survive."""
    name, parts, _ = big
    s3.copy({"Bucket": name, "Key": "big.bin"}, bucket, "copy.bin")
    body = s3.get_object(Bucket=bucket, Key="copy.bin")["Body"].read()
    assert hashlib.md5(body).digest() == hashlib.md5(b"".join(parts)).digest()


def test_missing_bucket_and_key(s3, bucket):
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket="no-such-bucket-here", Key="x", Body=b"1")
    assert e.value.response["Error"]["Code"] == "NoSuchBucket"
    with pytest.raises(ClientError) as e:
        s3.head_object(Bucket=bucket, Key="missing")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_wrong_secret_is_refused(seaweed):
    client = boto3.client(
        "s3",
        endpoint_url=seaweed.endpoint,
        aws_access_key_id=seaweed.access_key,
        aws_secret_access_key="wrong",
        region_name=seaweed.region,
    )
    with pytest.raises(ClientError) as e:
        client.list_buckets()
    assert e.value.response["Error"]["Code"] == "SignatureDoesNotMatch"


def test_env_alone_points_boto3_at_the_store(seaweed, bucket, monkeypatch, tmp_path):
    """What the hca CLI relies on: a bare ``boto3.client("s3")`` configured by env()."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    for name, value in seaweed.env().items():
        monkeypatch.setenv(name, value)
    client = boto3.session.Session().client("s3")
    client.put_object(Bucket=bucket, Key="via-env", Body=b"1")
    assert client.head_object(Bucket=bucket, Key="via-env")["ContentLength"] == 1
