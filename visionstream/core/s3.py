"""Asynchronous S3 access: one client per process, bounded concurrency, permanent vs transient errors."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aioboto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

from visionstream.core.faults import BadMessage, Fault, RetryPolicy, ServiceHealth
from visionstream.settings import Settings

log = logging.getLogger(__name__)

TRANSIENT_S3_ERRORS = (ClientError, BotoCoreError, OSError, asyncio.TimeoutError)

# 4xx answers that are about the request as a whole (credentials, clock, throttling), not about this object:
# every request gets them until someone acts, so they are waited out like an outage.
_NOT_THE_MESSAGES_FAULT = {
    "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
    "RequestTimeout", "RequestTimeTooSkewed", "ExpiredToken", "TokenRefreshRequired", "InvalidAccessKeyId",
    "SignatureDoesNotMatch", "InvalidToken",
}


class ObjectUnavailable(BadMessage):
    """The object cannot be fetched and retrying will not help (missing key, no permission, rejected key)."""

    def __init__(self, key: str, reason: str, attempts: int = 1) -> None:
        super().__init__(reason, attempts)
        self.key = key


def classify_s3(exc: BaseException) -> Fault | None:
    """The fault model's reading of an S3 failure (faults.py)."""
    if isinstance(exc, (ParamValidationError, UnicodeError)):
        return Fault.BAD_MESSAGE  # rejected by botocore before it was sent: an invalid bucket name or key
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or _status_of(error.get("Code"))
        if str(error.get("Code")) in _NOT_THE_MESSAGES_FAULT or status in (408, 429):
            return Fault.OUTAGE
        if status is not None and 400 <= status < 500:
            return Fault.BAD_MESSAGE
    return None  # unreachable, timing out, 5xx: an outage unless other requests succeed


def s3_bad_message(exc: BaseException) -> bool:
    """Is this S3 failure the request's own fault (retrying it cannot help)?"""
    return classify_s3(exc) is Fault.BAD_MESSAGE


def _status_of(code: object) -> int | None:
    return int(code) if isinstance(code, str) and code.isdigit() else None


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


class ImageStore:
    """Reads image bytes from S3 under the fault model (faults.py): waits out outages, gives up on objects
    that fail while S3 works, and reports objects that will never be readable."""

    def __init__(self, client: Any, settings: Settings, policy: RetryPolicy | None = None) -> None:
        self._client = client
        self._default_bucket = settings.s3_bucket
        self._limit = asyncio.Semaphore(settings.s3_concurrency)
        self._policy = policy or RetryPolicy(settings.message_max_attempts)
        # S3 works when any GET succeeds; with no other traffic, when the default bucket answers HEAD.
        self.health = ServiceHealth("S3", lambda: self._client.head_bucket(Bucket=self._default_bucket))

    async def get(self, key: str, bucket: str | None = None) -> bytes:
        bucket = bucket or self._default_bucket

        async def fetch() -> bytes:
            async with self._limit:
                response = await self._client.get_object(Bucket=bucket, Key=key)
                async with response["Body"] as body:
                    return await body.read()

        try:
            return await self._policy.run(f"S3 GET s3://{bucket}/{key}", fetch, classify_s3, self.health)
        except BadMessage as exc:
            cause = exc.__cause__
            if isinstance(cause, ClientError) and exc.attempts == 1:  # S3's error code says it all: NoSuchKey
                raise ObjectUnavailable(key, str(cause.response.get("Error", {}).get("Code")), 1) from cause
            raise ObjectUnavailable(key, exc.reason, exc.attempts) from cause

    async def get_many(
        self, requests: Sequence[tuple[str, str | None]]
    ) -> list[bytes | ObjectUnavailable]:
        """Fetch every (key, bucket) concurrently; an object that cannot be had comes back as ObjectUnavailable."""

        async def one(key: str, bucket: str | None) -> bytes | ObjectUnavailable:
            try:
                return await self.get(key, bucket)
            except ObjectUnavailable as exc:
                return exc

        return list(await asyncio.gather(*(one(k, b) for k, b in requests)))
