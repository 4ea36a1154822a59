"""The typed records visionstream puts on Kafka topics (JSON, readable by any consumer)."""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import faust

from visionstream.core.faults import REASON_LIMIT, BadMessage, describe
from visionstream.settings import is_bucket_name

SCHEMA_VERSION = 1


class MalformedMessage(BadMessage):
    """A message on an input topic that is not a valid record of a version we understand."""


MAX_NAME = 200  # camera ids, person names, categories, model ids, statuses


def check_names(record: Any, *fields: str, optional: Collection[str] = (), longest: int = MAX_NAME) -> None:
    """ValueError unless each field is a string of 1-``longest`` characters (None allowed for ``optional``).

    Faust's records check no ``str`` field: a forged result record with camera id 7 or status {"s": 1} became
    a live table's key and a /stats entry. Called from a record's ``__post_init__``, so such a record fails to
    decode and is a dead letter (faust_ext/decode_errors.py)."""
    for name in fields:
        value = getattr(record, name)
        if value is None and name in optional:
            continue
        if not isinstance(value, str) or not 0 < len(value) <= longest:
            raise ValueError(f"{type(record).__name__}.{name} is not a string of 1-{longest} characters")


MAX_KEY_BYTES = 1024  # S3's limit for an object key, in UTF-8 bytes
# Of an images-topic value that does not parse, what processing_errors keeps for `visionstream retry`: any
# valid request fits (a 1,024-byte key as JSON \u escapes is 6 KiB); a megabyte of junk does not.
REQUEST_PAYLOAD_KEPT = 8 << 10


def check_bucket_name(bucket: str) -> None:
    """S3's bucket naming rules (settings.is_bucket_name): botocore refuses other names before sending anything."""
    if not is_bucket_name(bucket):
        raise MalformedMessage(f"bucket {bucket[:70]!r} is not a valid S3 bucket name")


def check_allowed_bucket(bucket: str | None, allowed: Collection[str]) -> None:
    """A request may name only a bucket this deployment reads (None: the configured one): any other would
    let a writer of the topic read, through the worker's credentials, what it cannot read itself, and fix
    a key's results with another bucket's object (results are keyed by image key, the first write wins)."""
    if bucket is not None and bucket not in allowed:
        raise MalformedMessage(f"bucket {bucket[:70]!r} is not one this deployment reads "
                               "(VISIONSTREAM_S3_BUCKET, VISIONSTREAM_S3_ALLOWED_BUCKETS)")


def check_object_key(key: str, what: str = "image_key") -> None:
    """A key S3 accepts and PostgreSQL can store (text holds no NUL; UTF-8 holds no lone surrogate)."""
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise MalformedMessage(f"{what} is not valid Unicode (a lone surrogate)") from None
    if size > MAX_KEY_BYTES:
        raise MalformedMessage(f"{what} is {size} bytes in UTF-8; S3 allows {MAX_KEY_BYTES}")
    if "\x00" in key:
        raise MalformedMessage(f"{what} contains a NUL character")


RECORDS_PER_INPUT = 1 << 16  # records one input message may put on one result topic (faces of a frame: far fewer)


def source_of(ref: Any, place: int = 0) -> list[int]:
    """A result record's ``source``: its input message's partition and offset (a SourceRef), and its place
    among the records that input puts on the topic. The live tables skip a result whose source they have
    applied (tables/partitions.py): the result topics are at-least-once, this makes their counts exact."""
    return [ref.partition, ref.offset, place]


def check_source(record: Any) -> None:
    """ValueError unless ``record.source`` is None (a record from before it was kept) or a ``source_of``."""
    source = record.source
    if source is None:
        return
    if not (isinstance(source, list) and len(source) == 3 and all(type(n) is int and n >= 0 for n in source)
            and source[2] < RECORDS_PER_INPUT):
        raise ValueError(f"{type(record).__name__}.source is not [partition, offset, place] of non-negative "
                         f"integers (place below {RECORDS_PER_INPUT})")


class ImageRequest(faust.Record, serializer="json"):
    """Images topic value: classify this S3 object. Keyed by image_key."""

    image_key: str
    bucket: str | None = None  # None: the worker's configured bucket
    v: int = SCHEMA_VERSION


class Category(faust.Record, serializer="json"):
    rank: int
    class_index: int
    category: str
    confidence: float


class Prediction(faust.Record, serializer="json"):
    """Predictions topic value: an image's top-k categories. Keyed by image_key."""

    image_key: str
    model: str
    category: str  # top-1, repeated here so consumers and the category table need not unpack top_k
    confidence: float
    top_k: list[Category]
    hostname: str
    time: float  # epoch seconds when the result was computed
    v: int = SCHEMA_VERSION
    source: list[int] | None = None  # source_of the input; None in records from before it was kept

    def __post_init__(self) -> None:
        check_names(self, "model", "category")
        check_names(self, "image_key", longest=MAX_KEY_BYTES)
        check_source(self)


class ProcessingError(faust.Record, serializer="json"):
    """Dead-letter topic value: a message that could not be processed, and why. Keyed by image_key."""

    image_key: str
    stage: str  # parse | fetch | decode | classify | detect | identify | store
    reason: str
    hostname: str
    time: float
    topic: str
    partition: int
    offset: int
    attempts: int = 1  # how often it was tried before it was given up on
    v: int = SCHEMA_VERSION


# Kafka Connect's dead-letter context headers (errors.deadletterqueue.context.headers.enable), beside the
# record, so tools written for Connect's dead-letter queues can find and replay the message that failed.
CONNECT_HEADER = "__connect.errors."
# A reason's leading exception type (describe: "Type: message"), dotted; anything else is a refusal of ours.
_EXCEPTION_TYPE = re.compile(r"[A-Za-z_][\w.]{0,99}")


def connect_error_headers(error: ProcessingError) -> list[tuple[str, bytes]]:
    """The Connect error headers of a dead letter: its input's topic, partition and offset, the exception's
    class and its message (the reason, made by faults.BadMessage/describe, which mask URL credentials)."""
    name = error.reason.split(":", 1)[0].strip()
    if not _EXCEPTION_TYPE.fullmatch(name):
        name = "visionstream.core.records.MalformedMessage" if error.stage == "parse" \
            else "visionstream.core.faults.BadMessage"
    message = error.reason[:REASON_LIMIT]
    return [(CONNECT_HEADER + field, value.encode("utf-8", errors="backslashreplace")) for field, value in (
        ("topic", error.topic), ("partition", str(error.partition)), ("offset", str(error.offset)),
        ("exception.class.name", name), ("exception.message", message))]


@dataclass(frozen=True, slots=True)
class SourceRef:
    """Where a message came from: enough to trace a result or an error back to it."""

    topic: str
    partition: int
    offset: int


def parse_image_request(key: bytes | None, value: bytes | None) -> ImageRequest:
    """Validate a raw images-topic message; raise MalformedMessage saying what is wrong."""
    if not value:
        raise MalformedMessage("empty message value")
    try:
        payload: Any = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:  # RecursionError: nested 100,000 deep
        raise MalformedMessage(f"value is not JSON: {describe(exc)}") from None
    if not isinstance(payload, dict):
        raise MalformedMessage("value is not a JSON object")
    version = payload.get("v", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise MalformedMessage(f"unknown record version {version!r} (this worker reads v{SCHEMA_VERSION})")
    image_key = payload.get("image_key")
    if not isinstance(image_key, str) or not image_key:
        raise MalformedMessage("image_key missing or not a non-empty string")
    bucket = payload.get("bucket")
    check_object_key(image_key)
    if bucket is not None and not isinstance(bucket, str):
        raise MalformedMessage("bucket is not a string")
    if bucket:
        check_bucket_name(bucket)
    return ImageRequest(image_key=image_key, bucket=bucket or None)


def key_of_malformed(key: bytes | None) -> str:
    """The best image_key we can name for a message we could not parse (a Kafka key may hold a megabyte;
    no valid one holds more than an S3 key)."""
    if not key:
        return ""
    return printable(key[:MAX_KEY_BYTES].decode("utf-8", errors="backslashreplace"))


def printable(text: str) -> str:
    """``text`` as PostgreSQL text and UTF-8 can always hold it: NUL and lone surrogates escaped."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    return text.encode("utf-8", errors="backslashreplace").decode("utf-8")
