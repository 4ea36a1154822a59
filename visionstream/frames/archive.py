"""The frame archive (VISIONSTREAM_FRAME_ARCHIVE=on): each processed frame's JPEG in S3, its key in
frame_results.archive_key, so past frames can be searched in SQL and replayed (``visionstream replay --camera``).

Key scheme, in the configured bucket:

    frames/<camera>/<YYYY-MM-DD>/<seq>.jpg      archived frames (capture date in UTC)
    frames/<camera>/<seq>.jpg                   claim checks (frames above MAX_MESSAGE_BYTES, producer.py)

``<camera>`` is the camera id percent-encoded to one path segment: the frames topic accepts any id of
1-200 characters without NUL (records.py), '/' and '..' included, which would otherwise add segments or
be normalised away by S3 tools. An id whose encoding passes 255 bytes (non-ASCII ids near the limit) is
cut and ends with a hash of the whole id, so keys stay unique and well under S3's 1,024 bytes.

A frame that arrived as a claim check is in S3 already: its key is recorded as it is, with no second copy
(a PUT and the storage saved; claim checks are never deleted by visionstream). A claim check must name
exactly the key this scheme gives its camera and seq (``check_claim_check``): the claim-check key, or, for a
replayed frame, its archive key; any other key could name any object in the bucket (another camera's
archive included) and would be recorded as this frame's. The archive sink runs before the PostgreSQL sink,
so a key in frame_results always names an object that exists.

Archive PUTs never replace an object (``put_if_absent``): a redelivered frame finds its JPEG stored
already (412: done, not a failure), and its frame_results row is not written twice. What protects the first
write is the frames topic itself: whoever may write to it can send any camera's next frame first, so only
the producers may (README "Security": an authenticated, ACL'd topic).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from visionstream.core.faults import BadMessage, RetryPolicy, ServiceHealth
from visionstream.core.records import MalformedMessage
from visionstream.core.s3 import put_if_absent, s3_fault
from visionstream.frames.records import Frame, frame_of
from visionstream.settings import Settings

if TYPE_CHECKING:  # the producer imports the key scheme, and needs none of the analysis core
    from visionstream.core.pipeline import ImageOutcome

ARCHIVE_STAGE = "archive"
MAX_SEGMENT_BYTES = 255


def camera_segment(camera_id: str) -> str:
    """The camera id as one S3 key segment: percent-encoded, never '.' or '..', at most 255 bytes."""
    segment = quote(camera_id, safe="-_.~")
    if segment.strip(".") == "":  # "." and ".." mean something in paths
        segment = segment.replace(".", "%2E")
    if len(segment) > MAX_SEGMENT_BYTES:
        digest = hashlib.sha256(camera_id.encode()).hexdigest()[:16]
        head = segment[:MAX_SEGMENT_BYTES - len(digest) - 1]
        if "%" in head[-2:]:  # do not cut an escape in half
            head = head[:head.rindex("%")]
        segment = f"{head}~{digest}"
    return segment


def claim_check_key(camera_id: str, seq: int) -> str:
    return f"frames/{camera_segment(camera_id)}/{seq}.jpg"


def dated_key(frame: Frame) -> str:
    """The archive key of a frame that came inline: under its capture date (UTC)."""
    day = dt.datetime.fromtimestamp(frame.captured_at, tz=dt.timezone.utc).date().isoformat()
    return f"frames/{camera_segment(frame.camera_id)}/{day}/{frame.seq}.jpg"


def archive_key(frame: Frame) -> str:
    """Where a frame's JPEG is archived: its claim-check key when it came as one."""
    return frame.s3_key if frame.s3_key is not None else dated_key(frame)


def check_claim_check(frame: Frame) -> None:
    """A claim check names its own frame's object: the producer's key for its camera and seq, or the archive
    key ``visionstream replay --camera`` sends; any other key is a bad message, refused before any S3 call."""
    if frame.s3_key is not None and frame.s3_key not in (claim_check_key(frame.camera_id, frame.seq),
                                                         dated_key(frame)):
        raise MalformedMessage(f"vs-s3-key {frame.s3_key[:80]!r} is not the key of camera "
                               f"{frame.camera_id[:40]!r} frame {frame.seq} (frames/<camera>/[<day>/]<seq>.jpg)")


class FrameArchiveSink:
    """PUTs each processed frame's JPEG under its archive key, under the fault model (faults.py): an S3
    outage is waited out and nothing is committed meanwhile; a frame S3 refuses is dead-lettered (stage
    ``archive``) and the rest of the batch goes on."""

    def __init__(self, client: Any, settings: Settings, policy: RetryPolicy) -> None:
        self._client = client
        self._bucket = settings.s3_bucket
        self._limit = asyncio.Semaphore(settings.s3_concurrency)
        self._policy = policy
        self.health = ServiceHealth("S3", lambda: self._client.head_bucket(Bucket=self._bucket))

    async def _put(self, key: str, jpeg: bytes) -> None:
        async def put() -> None:
            async with self._limit:
                await put_if_absent(self._client, self._bucket, key, jpeg, "image/jpeg")  # False: stored before

        await self._policy.run(f"S3 PUT s3://{self._bucket}/{key}", put, s3_fault, self.health)

    async def write(self, outcome: ImageOutcome) -> None:
        # Claim checks (jpeg None) are in S3 already; skipped frames are not archived.
        uploads = [(r, frame) for r in outcome.results
                   if r.skip_reason is None and (frame := frame_of(r)).jpeg is not None]
        done = await asyncio.gather(*(self._put(archive_key(frame), frame.jpeg) for _, frame in uploads),  # type: ignore[arg-type]
                                    return_exceptions=True)
        for (result, _), error in zip(uploads, done, strict=True):
            if isinstance(error, BadMessage):
                outcome.reject(result, ARCHIVE_STAGE, error)
            elif isinstance(error, BaseException):
                raise error  # a bug: the worker crashes and the batch is redelivered (batching.py)
