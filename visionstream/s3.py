"""Asynchronous S3 access: one client per process, bounded concurrency, permanent vs transient errors."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aioboto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from visionstream.retry import Backoff
from visionstream.settings import Settings

log = logging.getLogger(__name__)

TRANSIENT_S3_ERRORS = (ClientError, BotoCoreError, OSError, asyncio.TimeoutError)

# Errors that retrying cannot fix: the object (or bucket) is not there or not ours to read.
_PERMANENT_CODES = {"NoSuchKey", "NoSuchBucket", "404", "AccessDenied", "403", "InvalidObjectState"}


class ObjectUnavailable(Exception):
    """The object cannot be fetched and retrying will not help (missing key, no permission)."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


def client_kwargs(settings: Settings) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "region_name": settings.s3_region,
        "config": Config(
            max_pool_connections=settings.s3_concurrency,
            retries={"max_attempts": 3, "mode": "standard"},
            s3={"addressing_style": "path"},
        ),
    }
    if settings.s3_endpoint_url:
        kwargs["endpoint_url"] = settings.s3_endpoint_url
    if settings.s3_access_key_id and settings.s3_secret_access_key:
        kwargs["aws_access_key_id"] = settings.s3_access_key_id.get_secret_value()
        kwargs["aws_secret_access_key"] = settings.s3_secret_access_key.get_secret_value()
    return kwargs


@asynccontextmanager
async def s3_client(settings: Settings) -> AsyncIterator[Any]:
    async with aioboto3.Session().client("s3", **client_kwargs(settings)) as client:
        yield client


def is_permanent(exc: BaseException) -> bool:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code")) in _PERMANENT_CODES
    return False


class ImageStore:
    """Reads image bytes from S3; waits out outages, reports objects that will never be readable."""

    def __init__(self, client: Any, settings: Settings, backoff: Backoff | None = None) -> None:
        self._client = client
        self._default_bucket = settings.s3_bucket
        self._limit = asyncio.Semaphore(settings.s3_concurrency)
        self._backoff = backoff or Backoff()

    async def get(self, key: str, bucket: str | None = None) -> bytes:
        bucket = bucket or self._default_bucket

        async def fetch() -> bytes:
            try:
                async with self._limit:
                    response = await self._client.get_object(Bucket=bucket, Key=key)
                    async with response["Body"] as body:
                        return await body.read()
            except ClientError as exc:
                if is_permanent(exc):
                    raise ObjectUnavailable(key, str(exc.response["Error"].get("Code", "error"))) from None
                raise

        return await self._backoff.run(f"S3 GET s3://{bucket}/{key}", fetch, TRANSIENT_S3_ERRORS)

    async def get_many(
        self, requests: Sequence[tuple[str, str | None]]
    ) -> list[bytes | ObjectUnavailable]:
        """Fetch every (key, bucket) concurrently; a permanent failure comes back in place of its bytes."""

        async def one(key: str, bucket: str | None) -> bytes | ObjectUnavailable:
            try:
                return await self.get(key, bucket)
            except ObjectUnavailable as exc:
                return exc

        return list(await asyncio.gather(*(one(k, b) for k, b in requests)))
