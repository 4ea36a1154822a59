"""The typed records visionstream puts on Kafka topics (JSON, readable by any consumer)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import faust

SCHEMA_VERSION = 1


class MalformedMessage(ValueError):
    """A message on an input topic that is not a valid record of a version we understand."""


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


class ProcessingError(faust.Record, serializer="json"):
    """Dead-letter topic value: a message that could not be processed, and why. Keyed by image_key."""

    image_key: str
    stage: str  # parse | fetch | decode
    reason: str
    hostname: str
    time: float
    topic: str
    partition: int
    offset: int
    v: int = SCHEMA_VERSION


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
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedMessage(f"value is not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise MalformedMessage("value is not a JSON object")
    version = payload.get("v", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise MalformedMessage(f"unknown record version {version!r} (this worker reads v{SCHEMA_VERSION})")
    image_key = payload.get("image_key")
    if not isinstance(image_key, str) or not image_key:
        raise MalformedMessage("image_key missing or not a non-empty string")
    bucket = payload.get("bucket")
    if bucket is not None and not isinstance(bucket, str):
        raise MalformedMessage("bucket is not a string")
    return ImageRequest(image_key=image_key, bucket=bucket or None)


def key_of_malformed(key: bytes | None) -> str:
    """The best image_key we can name for a message we could not parse."""
    if not key:
        return ""
    return key.decode("utf-8", errors="backslashreplace")
