"""Every S3 call hcafs makes goes through :class:`S3`.

boto3 is configured here once: retries in botocore's ``standard`` mode (capped exponential
backoff on throttling, 5xx and connection errors), the endpoint and credentials from the
usual AWS environment or config unless given.  botocore's exceptions are translated into
the hcafs error tree in :meth:`S3.call` and nowhere else.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import boto3
import botocore.config
import botocore.exceptions

from ..errors import NotFound, RemoteError, Unreachable, UsageError

log = logging.getLogger(__name__)

_S3_URL_RE = re.compile(r"^s3://(?P<bucket>[^/]+)(?:/(?P<key>.*))?\Z")
STREAM_CHUNK = 1024 * 1024
_MISSING = {"NoSuchKey", "404", "NotFound", "NoSuchBucket"}
_PRECONDITION = {"PreconditionFailed", "412", "ConditionalRequestConflict"}
CONFLICT_RETRIES = 5


@dataclass(frozen=True)
class S3Url:
    bucket: str
    key: str

    @classmethod
    def parse(cls, url: str) -> S3Url:
        match = _S3_URL_RE.match(url or "")
        if not match:
            raise UsageError(f"not an s3:// URL: {url!r}")
        return cls(match["bucket"], match["key"] or "")

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


class PreconditionFailed(RemoteError):
    """A conditional write's condition did not hold (the object exists, or changed)."""

    def __init__(self, message: str, code: str):
        self.code = code
        super().__init__(message)

    @property
    def transient(self) -> bool:
        return False


class S3:
    """A boto3 S3 client with hcafs's retry policy and error translation."""

    def __init__(self, endpoint_url: str | None = None, max_pool: int = 16,
                 sign_payload: bool = True):
        """``sign_payload=False``: requests carry ``UNSIGNED-PAYLOAD`` instead of the SHA-256
        of their body (which botocore otherwise computes over every byte sent on a plain
        ``http://`` endpoint).  Only for uploads whose bytes are checked end to end anyway:
        the staging uploads, whose four checksums the DSS verifies when it copies them."""
        config = botocore.config.Config(
            retries={"mode": "standard", "max_attempts": 8},
            max_pool_connections=max_pool,
            connect_timeout=10,
            read_timeout=60,
            s3={"addressing_style": "path",
                **({} if sign_payload else {"payload_signing_enabled": False})},
            # The DSS checksums every byte itself (hcafs.checksums): no extra CRC pass over
            # each upload and download unless the operation requires one.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self.client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url or None, config=config
        )

    @classmethod
    def with_keys(cls, endpoint_url: str, access_key_id: str, secret_access_key: str,
                  region: str | None = None) -> S3:
        """A client with its own keys (not the process's AWS configuration)."""
        s3 = cls(endpoint_url)
        s3.client = boto3.session.Session(
            aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key,
            region_name=region or "us-east-1").client(
                "s3", endpoint_url=endpoint_url, config=s3.client.meta.config)
        return s3

    def call(self, operation: str, **kwargs):
        """Run one S3 API call; botocore errors come out as hcafs errors."""
        try:
            return getattr(self.client, operation)(**kwargs)
        except botocore.exceptions.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _MISSING:
                raise NotFound(f"S3 {operation}: {code}") from exc
            if code in _PRECONDITION:
                raise PreconditionFailed(f"S3 {operation}: {code}", code) from exc
            raise RemoteError(f"S3 {operation} failed: {code}") from exc
        except (
            botocore.exceptions.EndpointConnectionError,
            botocore.exceptions.ConnectionClosedError,
            botocore.exceptions.ReadTimeoutError,
            botocore.exceptions.ConnectTimeoutError,
        ) as exc:
            raise Unreachable(f"S3 {operation}: {exc}") from exc
        except botocore.exceptions.NoCredentialsError as exc:
            raise RemoteError("S3: no AWS credentials found (set AWS_ACCESS_KEY_ID)") from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise RemoteError(f"S3 {operation}: {exc}") from exc

    def head(self, bucket: str, key: str) -> dict:
        return self.call("head_object", Bucket=bucket, Key=key)

    def put_conditional(self, bucket: str, key: str, body: bytes, *, absent: bool = False,
                        etag: str | None = None) -> str | None:
        """PUT an object only if it does not exist yet (``absent``: ``If-None-Match: *``)
        or still has ``etag`` (``If-Match``); its new ETag, or None if the condition failed.

        S3 answers 409 ``ConditionalRequestConflict`` while another conditional write of
        the key is in flight; the call is then repeated, and will see that write's outcome.
        """
        condition = {"IfNoneMatch": "*"} if absent else {"IfMatch": etag}
        conflicts = 0
        while True:
            try:
                answer = self.call("put_object", Bucket=bucket, Key=key, Body=body,
                                   **condition)
                return answer["ETag"]
            except PreconditionFailed as exc:
                if exc.code != "ConditionalRequestConflict":
                    return None
                conflicts += 1
                if conflicts > CONFLICT_RETRIES:
                    raise RemoteError(f"S3 put_object of s3://{bucket}/{key}: conditional "
                                      "writes kept conflicting") from exc
                time.sleep(0.05 * 2 ** conflicts)
            except NotFound:  # If-Match on a key that is gone
                return None

    def get_small(self, bucket: str, key: str, limit: int) -> tuple[dict, bytes | None]:
        """One GET: the object's headers (as a HEAD gives them) and, if it holds at most
        ``limit`` bytes, its bytes (None for a larger one, whose body is not read)."""
        answer = self.call("get_object", Bucket=bucket, Key=key)
        body = answer.pop("Body")
        try:
            data = body.read() if answer["ContentLength"] <= limit else None
        except botocore.exceptions.BotoCoreError as exc:
            raise Unreachable(f"S3 read of s3://{bucket}/{key} broke off: {exc}") from exc
        finally:
            body.close()
        if data is not None and len(data) != answer["ContentLength"]:
            raise Unreachable(f"S3 read of s3://{bucket}/{key} ended after {len(data)} of "
                              f"{answer['ContentLength']} bytes")
        return answer, data

    def tags(self, bucket: str, key: str) -> dict[str, str]:
        answer = self.call("get_object_tagging", Bucket=bucket, Key=key)
        return {tag["Key"]: tag["Value"] for tag in answer.get("TagSet", [])}

    def stream(self, bucket: str, key: str, start: int = 0, end: int | None = None
               ) -> Iterator[bytes]:
        """The bytes ``[start, end)`` of an object, in chunks of about 1 MiB."""
        kwargs = {"Bucket": bucket, "Key": key}
        if start or end is not None:
            last = "" if end is None else str(end - 1)
            kwargs["Range"] = f"bytes={start}-{last}"
        body = self.call("get_object", **kwargs)["Body"]
        try:
            yield from body.iter_chunks(STREAM_CHUNK)
        except botocore.exceptions.BotoCoreError as exc:
            raise Unreachable(f"S3 read of s3://{bucket}/{key} broke off: {exc}") from exc
        finally:
            body.close()

    def keys(self, bucket: str, prefix: str, start_after: str = "") -> Iterator[str]:
        token = None
        while True:
            kwargs = {"Bucket": bucket, "Prefix": prefix}
            if token:
                kwargs["ContinuationToken"] = token
            elif start_after:
                kwargs["StartAfter"] = start_after
            page = self.call("list_objects_v2", **kwargs)
            for item in page.get("Contents", []):
                yield item["Key"]
            if not page.get("IsTruncated"):
                return
            token = page["NextContinuationToken"]

    def upload_parts(self, bucket: str, key: str, parts: Iterable[bytes],
                     content_type: str = "application/octet-stream",
                     tags: dict[str, str] | None = None) -> str:
        """Upload an object whose parts arrive in order; returns its ETag.

        One part goes up as a plain PUT; more go through :meth:`multipart`.
        """
        tagging = "&".join(f"{k}={v}" for k, v in (tags or {}).items())
        extra = {"ContentType": content_type}
        if tagging:
            extra["Tagging"] = tagging
        iterator = iter(parts)
        first = next(iterator, b"")
        second = next(iterator, None)
        if second is None:
            answer = self.call("put_object", Bucket=bucket, Key=key, Body=first, **extra)
            return answer["ETag"].strip('"')
        return self.multipart(bucket, key, _chain(first, second, iterator), extra)

    def multipart(self, bucket: str, key: str, parts: Iterable, extra: dict | None = None,
                  workers: int = 1) -> str:
        """The one multipart upload: start, send the parts, complete; on any error abort,
        so that no unfinished upload is left behind.  Returns the object's ETag.

        ``parts`` are the part bodies in order: bytes, or readable objects with a length
        (read when sent, so a part can stream from disk).  With ``workers`` > 1 that many
        parts are sent at once, and ``parts`` is read ahead (give a list of lazy bodies).
        """
        upload_id = self.call("create_multipart_upload", Bucket=bucket, Key=key,
                              **(extra or {}))["UploadId"]

        def send(numbered: tuple[int, object]) -> dict:
            number, body = numbered
            answer = self.call("upload_part", Bucket=bucket, Key=key, UploadId=upload_id,
                               PartNumber=number, Body=body, ContentLength=len(body))
            return {"PartNumber": number, "ETag": answer["ETag"]}

        try:
            numbered = enumerate(parts, start=1)
            if workers > 1:
                with ThreadPoolExecutor(workers, thread_name_prefix="part") as pool:
                    done = list(pool.map(send, numbered))
            else:
                done = [send(item) for item in numbered]
            answer = self.call("complete_multipart_upload", Bucket=bucket, Key=key,
                               UploadId=upload_id, MultipartUpload={"Parts": done})
            return answer["ETag"].strip('"')
        except BaseException:
            try:
                self.call("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id)
            except Exception:  # the original error matters more
                log.warning("could not abort multipart upload of s3://%s/%s", bucket, key)
            raise


def _chain(first: bytes, second: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield second
    yield from rest


def rechunk(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    """Regroup a byte stream into pieces of exactly ``size`` bytes (the last may be short)."""
    buffer = bytearray()
    for chunk in chunks:
        buffer += chunk
        while len(buffer) >= size:
            yield bytes(buffer[:size])
            del buffer[:size]
    if buffer:
        yield bytes(buffer)
