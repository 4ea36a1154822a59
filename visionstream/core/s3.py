"""Asynchronous S3 access: one client per process, bounded concurrency, permanent vs transient errors."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import logging
import re
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote, urlsplit

import aioboto3
import aiohttp
from aiobotocore.session import AioSession
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    ParamValidationError,
)
from yarl import URL

from visionstream.core.faults import BadMessage, Fault, RetryPolicy, ServiceHealth
from visionstream.settings import Settings

log = logging.getLogger(__name__)

TRANSIENT_S3_ERRORS = (ClientError, BotoCoreError, OSError, asyncio.TimeoutError, aiohttp.ClientError)

# 4xx answers that are about the request as a whole (credentials, clock, throttling), not about this object:
# every request gets them until someone acts, so they are waited out like an outage.
_NOT_THE_MESSAGES_FAULT = {
    "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
    "RequestTimeout", "RequestTimeTooSkewed", "ExpiredToken", "TokenRefreshRequired", "InvalidAccessKeyId",
    "SignatureDoesNotMatch", "InvalidToken",
}


class ObjectTooLarge(BadMessage):
    """The object is larger than VISIONSTREAM_S3_MAX_OBJECT_BYTES: refused from its Content-Length, or cut off
    once that many bytes arrived, so that one large object under an image key costs no more than the limit."""

    def __init__(self, size: int | None, limit: int) -> None:
        said = f"{size} bytes" if size is not None else f"over {limit} bytes"
        super().__init__(f"object is {said}; VISIONSTREAM_S3_MAX_OBJECT_BYTES allows {limit}")


class ObjectUnavailable(BadMessage):
    """The object cannot be fetched and retrying will not help (missing key, no permission, rejected key)."""

    def __init__(self, key: str, reason: str, attempts: int = 1) -> None:
        super().__init__(reason, attempts)
        self.key = key


def s3_fault(exc: BaseException) -> Fault | None:
    """The fault model's reading of an S3 failure (faults.py)."""
    if isinstance(exc, (ParamValidationError, UnicodeError)):
        return Fault.BAD_MESSAGE  # rejected by botocore before it was sent: an invalid bucket name or key
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or _status_of(error.get("Code"))
        if str(error.get("Code")) in _NOT_THE_MESSAGES_FAULT or status in (408, 429):
            return Fault.OUTAGE
        if error.get("Code") == "ConditionalRequestConflict":  # 409: a concurrent conditional PUT; retry it
            return None
        if status is not None and 400 <= status < 500:
            return Fault.BAD_MESSAGE
    return None  # unreachable, timing out, 5xx: an outage unless other requests succeed


async def put_if_absent(client: Any, bucket: str, key: str, body: bytes, content_type: str) -> bool:
    """PUT an object only where there is none (If-None-Match: *); False when one is there already (412).

    For a key that names one frame, that is the frame stored before (a redelivery, a retried PUT), never a
    reason to replace it. SeaweedFS 4.48 honours the condition (measured: a second PUT answers 412
    PreconditionFailed and the first body stays), as AWS S3 does since 2024.
    """
    try:
        await client.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type, IfNoneMatch="*")
    except ClientError as exc:
        if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 412:
            return False
        raise
    return True


def s3_bad_message(exc: BaseException) -> bool:
    """Is this S3 failure the request's own fault (retrying it cannot help)?"""
    return s3_fault(exc) is Fault.BAD_MESSAGE


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
    if settings.s3_ca_bundle:
        kwargs["verify"] = str(settings.s3_ca_bundle)
    if settings.s3_access_key_id and settings.s3_secret_access_key:
        kwargs["aws_access_key_id"] = settings.s3_access_key_id.get_secret_value()
        kwargs["aws_secret_access_key"] = settings.s3_secret_access_key.get_secret_value()
    return kwargs


@asynccontextmanager
async def s3_client(settings: Settings) -> AsyncIterator[Any]:
    async with aioboto3.Session().client("s3", **client_kwargs(settings)) as client:
        yield client


# SHA-256 of an empty body: a GET's payload hash.
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_ERROR_CODE = re.compile(rb"<Code>([^<]{1,100})</Code>")
_ERROR_MESSAGE = re.compile(rb"<Message>([^<]{0,500})</Message>")
ERROR_BODY_BYTES = 64 << 10  # of an error answer: its XML code and message are in the first few hundred
READ_CHUNK = 256 << 10


class ObjectReader:
    """The hot path's S3 GET: one aiohttp request signed with AWS Signature V4, path-style addressing.

    aiobotocore's get_object cost 1.60 core-ms per ~110 KB object (endpoint resolution, event hooks, response
    parsing) against 0.16 for this (bench/worker_stages.py, 1000 GETs, 32 in flight). An error answer becomes
    the ClientError botocore would raise (code from the XML body, HTTP status), so ``s3_fault`` and the
    poison rules read both alike. Listing, HEAD (the health probe) and uploads stay with aioboto3.
    """

    def __init__(self, session: aiohttp.ClientSession, endpoint: str, region: str,
                 credentials: Callable[[], Any], max_bytes: int) -> None:
        self._session = session
        self._max_bytes = max_bytes
        self._endpoint = endpoint.rstrip("/")
        self._host = urlsplit(self._endpoint).netloc
        self._base_path = urlsplit(self._endpoint).path  # an endpoint behind a path prefix signs it too
        self._region = region
        self._credentials = credentials  # -> awaitable of frozen (access_key, secret_key, token)
        self._signing_keys: dict[tuple[str, str], bytes] = {}

    async def get(self, bucket: str, key: str) -> bytes:
        path = f"{self._base_path}/{bucket}/{quote(key, safe='/~')}"
        headers = self.signed_headers(path, await self._credentials(), dt.datetime.now(dt.timezone.utc))
        # encoded=True: the key goes out exactly as quoted (yarl would fold "a/../b" into "b").
        url = URL(f"{self._endpoint[: len(self._endpoint) - len(self._base_path)]}{path}", encoded=True)
        # No redirects: the signed request and its bounded read go to the configured endpoint only (S3 answers a
        # wrong region with 301 and the endpoint in its XML, not a Location to follow).
        async with self._session.get(url, headers=headers, allow_redirects=False) as response:
            if response.status >= 300:
                raise _client_error(response.status, await _read_bounded(response, ERROR_BODY_BYTES, cut=True))
            size = response.content_length
            if size is not None and size > self._max_bytes:
                response.close()  # the connection goes, not the body through it
                raise ObjectTooLarge(size, self._max_bytes)
            if size is not None:  # aiohttp reads no more than Content-Length
                return await response.read()
            return await _read_bounded(response, self._max_bytes)

    def signed_headers(self, path: str, credentials: Any, now: dt.datetime) -> dict[str, str]:
        """The headers of a SigV4-signed GET of ``path`` (no query string, empty body)."""
        access_key, secret_key, token = credentials
        amz_date = now.strftime("%Y%m%dT%H%M%SZ")
        day = amz_date[:8]
        headers = {"host": self._host, "x-amz-content-sha256": _EMPTY_SHA256, "x-amz-date": amz_date}
        if token:
            headers["x-amz-security-token"] = token
        names = ";".join(sorted(headers))
        canonical = "\n".join(["GET", path, "", *(f"{n}:{headers[n]}" for n in sorted(headers)), "", names,
                               _EMPTY_SHA256])
        scope = f"{day}/{self._region}/s3/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(self._signing_key(secret_key, day), to_sign.encode(), hashlib.sha256).hexdigest()
        headers["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={names}, "
                                    f"Signature={signature}")
        del headers["host"]  # aiohttp sends it from the URL
        return headers

    def _signing_key(self, secret_key: str, day: str) -> bytes:
        cached = self._signing_keys.get((secret_key, day))
        if cached is None:
            cached = _hmac(f"AWS4{secret_key}".encode(), day)
            for part in (self._region, "s3", "aws4_request"):
                cached = _hmac(cached, part)
            self._signing_keys = {(secret_key, day): cached}  # one day's key, for the current secret
        return cached


async def _read_bounded(response: aiohttp.ClientResponse, limit: int, cut: bool = False) -> bytes:
    """The body of a response without a Content-Length, read until ``limit`` bytes: more is ObjectTooLarge,
    or, with ``cut``, dropped (an error answer's code and message come first)."""
    body = bytearray()
    async for chunk in response.content.iter_chunked(READ_CHUNK):
        body += chunk
        if len(body) > limit:
            response.close()
            if cut:
                return bytes(body[:limit])
            raise ObjectTooLarge(None, limit)
    return bytes(body)


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


def _client_error(status: int, body: bytes) -> ClientError:
    code = _ERROR_CODE.search(body)
    message = _ERROR_MESSAGE.search(body)
    error = {"Code": code.group(1).decode(errors="replace") if code else str(status),
             "Message": message.group(1).decode(errors="replace") if message else ""}
    return ClientError({"Error": error, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


@asynccontextmanager
async def object_reader(settings: Settings) -> AsyncIterator[ObjectReader]:
    """An ObjectReader with the settings' credentials, or botocore's default chain (refreshed when they expire)."""
    endpoint = settings.s3_endpoint_url or f"https://s3.{settings.s3_region}.amazonaws.com"
    if settings.s3_access_key_id and settings.s3_secret_access_key:
        static = (settings.s3_access_key_id.get_secret_value(), settings.s3_secret_access_key.get_secret_value(),
                  None)

        async def credentials() -> Any:
            return static
    else:
        chain = await AioSession().get_credentials()
        if chain is None:
            raise NoCredentialsError()

        async def credentials() -> Any:
            return await chain.get_frozen_credentials()

    # The endpoint's CA when it has a private one; otherwise aiohttp's default verification (system CAs).
    tls = ssl.create_default_context(cafile=str(settings.s3_ca_bundle)) if settings.s3_ca_bundle else True
    connector = aiohttp.TCPConnector(limit=settings.s3_concurrency, ssl=tls)
    timeout = aiohttp.ClientTimeout(sock_connect=60, sock_read=60)  # botocore's defaults
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:
        yield ObjectReader(session, endpoint, settings.s3_region, credentials, settings.s3_max_object_bytes)


class ImageStore:
    """Reads image bytes from S3 under the fault model (faults.py): waits out outages, gives up on objects
    that fail while S3 works, and reports objects that will never be readable."""

    def __init__(self, client: Any, settings: Settings, policy: RetryPolicy | None = None,
                 reader: ObjectReader | None = None) -> None:
        self._client = client
        self._reader = reader
        self._default_bucket = settings.s3_bucket
        self._allowed_buckets = settings.allowed_buckets
        self._max_bytes = settings.s3_max_object_bytes
        self._limit = asyncio.Semaphore(settings.s3_concurrency)
        self._policy = policy or RetryPolicy(settings.message_max_attempts)
        # S3 works when any GET succeeds; with no other traffic, when the default bucket answers HEAD.
        self.health = ServiceHealth("S3", lambda: self._client.head_bucket(Bucket=self._default_bucket))

    async def get(self, key: str, bucket: str | None = None) -> bytes:
        bucket = bucket or self._default_bucket
        if bucket not in self._allowed_buckets:  # input adapters refuse these at parse; no path gets past here
            raise ObjectUnavailable(key, f"bucket {bucket[:70]!r} is not one this deployment reads")

        async def fetch() -> bytes:
            async with self._limit:
                if self._reader is not None:
                    return await self._reader.get(bucket, key)
                response = await self._client.get_object(Bucket=bucket, Key=key)
                async with response["Body"] as body:
                    if response.get("ContentLength", 0) > self._max_bytes:
                        raise ObjectTooLarge(response["ContentLength"], self._max_bytes)
                    return await body.read()  # botocore reads no more than ContentLength

        try:
            return await self._policy.run(f"S3 GET s3://{bucket}/{key}", fetch, s3_fault, self.health)
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
