"""The `s3` / `minio` tier: objects in one bucket of an S3-compatible endpoint, via boto3.

Objects live at `s3://<bucket>/noetl-results/<execution_id>/<step>/<name>/<token>`. Writes
are multipart uploads of 8 MiB parts (a value smaller than one part is a single put), so a
large value is never held whole; an upload that fails is aborted, leaving no object. Reads
stream the response body. The bucket is created on first use. Timeouts are short and
retries few, so a dead endpoint is reported quickly and the facade can fall back.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, BinaryIO

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from noetl_pg import settings
from noetl_pg.store.base import (
    CHUNK_SIZE,
    ChunkReader,
    Digest,
    ObjectKey,
    ResultMissing,
    StoredObject,
    StoreUnavailable,
    Tier,
    buffered,
    regroup,
)

PART_SIZE = 8 * 1024 * 1024
PREFIX = "noetl-results"
MISSING_CODES = {"404", "NoSuchKey", "NoSuchBucket", "NotFound"}


class S3Tier(Tier):
    """One bucket on `endpoint_url`. Every method raises `StoreUnavailable` when the endpoint
    cannot be reached or refuses the request, and `ResultMissing` when an object is gone."""

    name = "s3"

    def __init__(
        self,
        endpoint_url: str,
        bucket: str,
        credentials: Mapping[str, str] | None = None,
        region: str = "us-east-1",
    ) -> None:
        """`credentials` holds `access_key_id`, `secret_access_key` and optionally
        `session_token`; without it boto3's own chain (environment, profile) applies."""
        self.bucket = bucket
        credentials = credentials or {}
        self._client: Any = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id=credentials.get("access_key_id"),
            aws_secret_access_key=credentials.get("secret_access_key"),
            aws_session_token=credentials.get("session_token"),
            config=Config(
                connect_timeout=3,
                read_timeout=60,
                retries={"max_attempts": 2, "mode": "standard"},
                s3={"addressing_style": "path"},
            ),
        )

    @classmethod
    def from_env(cls, credentials: Mapping[str, str] | None = None) -> S3Tier | None:
        """The tier configured by `NOETL_S3_ENDPOINT` (None when unset), `NOETL_S3_BUCKET`
        (default `noetl-results`), `NOETL_S3_REGION` and, unless `credentials` is given,
        `NOETL_S3_ACCESS_KEY_ID` / `NOETL_S3_SECRET_ACCESS_KEY`."""
        configured = settings.current()
        endpoint = configured.s3_endpoint
        if not endpoint:
            return None
        if credentials is None and configured.s3_access_key_id:
            credentials = {
                "access_key_id": configured.s3_access_key_id,
                "secret_access_key": configured.s3_secret_access_key or "",
            }
        return cls(endpoint, configured.s3_bucket, credentials, configured.s3_region)

    def ensure_ready(self) -> None:
        """Check the bucket exists, creating it when it does not."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _code(exc) not in MISSING_CODES:
                raise StoreUnavailable(self.name, str(exc)) from exc
            self._call(self._client.create_bucket, Bucket=self.bucket)
        except BotoCoreError as exc:
            raise StoreUnavailable(self.name, str(exc)) from exc

    def put_stream(self, key: ObjectKey, chunks: Iterable[bytes]) -> StoredObject:
        """Upload the chunks part by part; an interrupted upload is aborted."""
        self.ensure_ready()
        object_key = f"{PREFIX}/{key.path}"
        digest = Digest()
        # S3 needs at least 5 MiB in every part but the last.
        parts = regroup((digest.update(block) for block in chunks), PART_SIZE)
        first = next(parts, b"")
        second = next(parts, None)
        if second is None:
            self._call(self._client.put_object, Bucket=self.bucket, Key=object_key, Body=first)
        else:
            self._multipart(object_key, [first, second], parts)
        return StoredObject(f"s3://{self.bucket}/{object_key}", digest.bytes_size, digest.sha256)

    def open_stream(self, physical_uri: str) -> BinaryIO:
        """Stream the object body; a broken connection mid-read raises `StoreUnavailable`."""
        bucket, object_key = _parse(physical_uri)
        try:
            body = self._client.get_object(Bucket=bucket, Key=object_key)["Body"]
        except ClientError as exc:
            if _code(exc) in MISSING_CODES:
                raise ResultMissing(f"{physical_uri}: object does not exist") from exc
            raise StoreUnavailable(self.name, str(exc)) from exc
        except BotoCoreError as exc:
            raise StoreUnavailable(self.name, str(exc)) from exc

        def chunks() -> Iterator[bytes]:
            try:
                yield from body.iter_chunks(CHUNK_SIZE)
            except (BotoCoreError, OSError) as exc:
                raise StoreUnavailable(self.name, f"read of {physical_uri} broke: {exc}") from exc

        return buffered(ChunkReader(chunks(), on_close=body.close))

    def delete(self, physical_uri: str) -> None:
        """Delete the object (S3 deletes are idempotent)."""
        bucket, object_key = _parse(physical_uri)
        self._call(self._client.delete_object, Bucket=bucket, Key=object_key)

    def delete_execution(self, execution_id: int) -> None:
        """Delete every object under the execution's prefix, 1000 per request."""
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=f"{PREFIX}/{execution_id}/"
        )
        try:
            for page in pages:
                objects = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                if objects:
                    self._client.delete_objects(
                        Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True}
                    )
        except ClientError as exc:
            if _code(exc) not in MISSING_CODES:
                raise StoreUnavailable(self.name, str(exc)) from exc
        except BotoCoreError as exc:
            raise StoreUnavailable(self.name, str(exc)) from exc

    def _multipart(self, object_key: str, head: list[bytes], rest: Iterator[bytes]) -> None:
        upload_id = self._call(
            self._client.create_multipart_upload, Bucket=self.bucket, Key=object_key
        )["UploadId"]
        try:
            done = []
            for number, part in enumerate(itertools.chain(head, rest), start=1):
                response = self._call(
                    self._client.upload_part,
                    Bucket=self.bucket,
                    Key=object_key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=part,
                )
                done.append({"PartNumber": number, "ETag": response["ETag"]})
            self._call(
                self._client.complete_multipart_upload,
                Bucket=self.bucket,
                Key=object_key,
                UploadId=upload_id,
                MultipartUpload={"Parts": done},
            )
        except BaseException:
            # When the endpoint is down the abort fails too; its lifecycle rules reap the upload.
            with contextlib.suppress(BotoCoreError, ClientError):
                self._client.abort_multipart_upload(
                    Bucket=self.bucket, Key=object_key, UploadId=upload_id
                )
            raise

    def _call(self, method: Any, **kwargs: Any) -> Any:
        try:
            return method(**kwargs)
        except (BotoCoreError, ClientError) as exc:
            raise StoreUnavailable(self.name, str(exc)) from exc


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _parse(physical_uri: str) -> tuple[str, str]:
    if not physical_uri.startswith("s3://"):
        raise ValueError(f"not an s3 physical URI: {physical_uri!r}")
    bucket, _, object_key = physical_uri.removeprefix("s3://").partition("/")
    return bucket, object_key
