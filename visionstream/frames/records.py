"""The frames topic's wire format, and the processed-frame record the frames agent publishes.

A frame message is the JPEG itself as the raw message value (no base64 or JSON around 100s of KB), keyed
by camera id so one camera's frames stay ordered in one partition; its metadata travels in Kafka headers:

    vs-v          schema version ("1")
    vs-seq        sequence number, increasing per camera (also across producer restarts)
    vs-captured   capture time, epoch seconds as a decimal string
    vs-width      vs-height: pixel size of the JPEG
    vs-s3-key     only for a claim check: the JPEG is this S3 object (configured bucket), the value is empty

(camera_id, seq) identifies a frame everywhere (PostgreSQL key, result records).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import faust

from visionstream.core.records import MalformedMessage, check_names, check_object_key, check_source
from visionstream.faces.records import Face

if TYPE_CHECKING:
    from visionstream.core.pipeline import AnalyzedImage

FRAME_SCHEMA_VERSION = 1

# Limits a frame's metadata must respect to be stored (frame_results columns) and published.
MAX_CAMERA_ID = 200
MAX_SIDE = 65_535  # JPEG's own limit on a side
MAX_SEQ = 2**63 - 1  # PostgreSQL bigint
MAX_EPOCH = 253_402_300_799.0  # 9999-12-31T23:59:59Z, the last second timestamptz and Python both hold

Headers = Mapping[str, bytes] | Sequence[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class Frame:
    camera_id: str
    seq: int
    captured_at: float
    width: int
    height: int
    jpeg: bytes | None  # None when the JPEG is in S3 (s3_key)
    s3_key: str | None = None

    @property
    def frame_key(self) -> str:
        """The frame's name in dead letters and processing_errors."""
        return f"{self.camera_id}/{self.seq}"


def frame_of(result: AnalyzedImage) -> Frame:
    """The frame an analysis result is of: the frames input's parsed source (frames/input.py)."""
    return result.source  # type: ignore[no-any-return]


def frame_headers(seq: int, captured_at: float, width: int, height: int,
                  s3_key: str | None = None) -> list[tuple[str, bytes]]:
    """Kafka headers of a frame message; the camera id is the message key."""
    headers = [
        ("vs-v", str(FRAME_SCHEMA_VERSION).encode()),
        ("vs-seq", str(seq).encode()),
        ("vs-captured", repr(captured_at).encode()),
        ("vs-width", str(width).encode()),
        ("vs-height", str(height).encode()),
    ]
    if s3_key is not None:
        headers.append(("vs-s3-key", s3_key.encode()))
    return headers


def parse_frame(key: bytes | None, value: bytes | None, headers: Headers | None) -> Frame:
    """Validate a raw frames-topic message; raise MalformedMessage saying what is wrong."""
    if not key:
        raise MalformedMessage("frame has no camera id (message key)")
    try:
        camera_id = key.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedMessage("camera id (message key) is not UTF-8") from None
    if "\x00" in camera_id or len(camera_id) > MAX_CAMERA_ID:
        raise MalformedMessage(f"camera id must be 1-{MAX_CAMERA_ID} characters without NUL")
    items = headers.items() if isinstance(headers, Mapping) else (headers or ())
    meta = {name: raw for name, raw in items}

    def field(name: str, kind: type, required: bool = True) -> object:
        raw = meta.get(name)
        if raw is None:
            if required:
                raise MalformedMessage(f"header {name} missing")
            return None
        try:
            return kind(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise MalformedMessage(f"header {name} is not a valid {kind.__name__}: {raw[:40]!r}") from None

    version = field("vs-v", int)
    if version != FRAME_SCHEMA_VERSION:
        raise MalformedMessage(f"unknown frame version {version!r} (this worker reads v{FRAME_SCHEMA_VERSION})")
    s3_key = field("vs-s3-key", str, required=False)
    if not value and not s3_key:
        raise MalformedMessage("frame has neither a JPEG value nor a vs-s3-key header")
    if s3_key is not None:
        check_object_key(s3_key, "vs-s3-key")  # type: ignore[arg-type]
    width, height = field("vs-width", int), field("vs-height", int)
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):  # type: ignore[operator]
        raise MalformedMessage(f"frame size {width}x{height} is not within 1-{MAX_SIDE} pixels a side")
    seq = field("vs-seq", int)
    if not 0 <= seq <= MAX_SEQ:  # type: ignore[operator]
        raise MalformedMessage(f"header vs-seq {seq} is not within 0-{MAX_SEQ} (PostgreSQL bigint)")
    captured_at = field("vs-captured", float)
    if not (math.isfinite(captured_at) and 0 <= captured_at <= MAX_EPOCH):  # type: ignore[arg-type]
        raise MalformedMessage(f"header vs-captured {captured_at} is not a time between 1970 and 9999")
    return Frame(
        camera_id=camera_id, seq=seq, captured_at=captured_at,  # type: ignore[arg-type]
        width=width, height=height, jpeg=value or None, s3_key=s3_key,  # type: ignore[arg-type]
    )


class ProcessedFrame(faust.Record, serializer="json"):
    """Processed-frames topic value, keyed by camera id. status 'skipped' frames carry skip_reason."""

    camera_id: str
    seq: int
    captured_at: float
    processed_at: float
    latency: float  # seconds from capture to result
    status: str  # processed | skipped
    skip_reason: str | None
    width: int
    height: int
    face_count: int | None  # None when this worker's frame analyzers do not include faces
    faces: list[Face]
    hostname: str
    header_size: str | None = None  # what the headers claimed when the JPEG has another size (width/height)
    v: int = FRAME_SCHEMA_VERSION
    source: list[int] | None = None  # core/records.py source_of the input; None in records from before it

    def __post_init__(self) -> None:  # the live tables key by camera and outcome (core/records.py)
        check_names(self, "camera_id", longest=MAX_CAMERA_ID)
        check_names(self, "status", "skip_reason", optional=("skip_reason",))
        check_source(self)
