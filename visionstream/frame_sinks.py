"""Where a frame batch's outcome goes: PostgreSQL frame_results (+ processing_errors) and the frame topics.

Idempotent like sinks.py: a redelivered frame hits the (camera_id, seq) key and adds nothing. Errors reuse
the classifier's processing_errors table and dead-letter records.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any

import asyncpg

from visionstream.frame_pipeline import FrameOutcome, FrameResult
from visionstream.retry import Backoff
from visionstream.sinks import INSERT_ERRORS, RETRYABLE_DB_ERRORS, error_columns, error_records
from visionstream.video_records import Face, IdentifiedFace, ProcessedFrame

INSERT_FRAMES = """
INSERT INTO frame_results
    (camera_id, seq, captured_at, processed_at, latency_ms, status, skip_reason, width, height,
     face_count, faces, hostname, topic, "partition", "offset")
SELECT c, s, ca, pa, l, st, sr, w, h, fc, f::jsonb, hn, t, p, o FROM unnest(
    $1::text[], $2::bigint[], $3::timestamptz[], $4::timestamptz[], $5::real[], $6::text[], $7::text[],
    $8::integer[], $9::integer[], $10::smallint[], $11::text[], $12::text[], $13::text[], $14::integer[],
    $15::bigint[]) AS u(c, s, ca, pa, l, st, sr, w, h, fc, f, hn, t, p, o)
ON CONFLICT (camera_id, seq) DO NOTHING
"""


def face_records(result: FrameResult) -> list[Face]:
    matches = result.matches or [None] * len(result.faces)
    return [
        Face(
            box=[round(c, 1) for c in face.box], probability=face.probability,
            landmarks=[[round(x, 1), round(y, 1)] for x, y in face.landmarks],
            person=match.person if match else None, similarity=match.similarity if match else None,
        )
        for face, match in zip(result.faces, matches, strict=True)
    ]


def processed_frame_records(outcome: FrameOutcome, hostname: str) -> list[ProcessedFrame]:
    return [
        ProcessedFrame(
            camera_id=r.frame.camera_id, seq=r.frame.seq, captured_at=r.frame.captured_at,
            processed_at=outcome.computed_at, latency=outcome.latency(r), status=r.status,
            skip_reason=r.skip_reason, width=r.frame.width, height=r.frame.height,
            face_count=len(r.faces), faces=face_records(r), hostname=hostname,
        )
        for r in outcome.frames
    ]


def identified_face_records(frames: list[ProcessedFrame]) -> list[IdentifiedFace]:
    return [
        IdentifiedFace(
            person=face.person, similarity=face.similarity, camera_id=record.camera_id, seq=record.seq,
            captured_at=record.captured_at, box=face.box, hostname=record.hostname,
        )
        for record in frames
        for face in record.faces
        if face.person is not None
    ]


def frame_columns(outcome: FrameOutcome, hostname: str) -> list[list[Any]]:
    at = dt.datetime.fromtimestamp(outcome.computed_at, tz=dt.timezone.utc)
    rows = [
        (r.frame.camera_id, r.frame.seq, dt.datetime.fromtimestamp(r.frame.captured_at, tz=dt.timezone.utc), at,
         outcome.latency(r) * 1000, r.status, r.skip_reason, r.frame.width, r.frame.height, len(r.faces),
         json.dumps([face.asdict() for face in face_records(r)]), hostname,
         r.ref.topic, r.ref.partition, r.ref.offset)
        for r in outcome.frames
    ]
    return [list(column) for column in zip(*rows, strict=True)] if rows else []


class PostgresFrameSink:
    """Writes a batch's frame results and errors in one transaction; waits out database outages."""

    def __init__(self, pool: asyncpg.Pool, hostname: str, backoff: Backoff | None = None) -> None:
        self._pool = pool
        self._hostname = hostname
        self._backoff = backoff or Backoff()

    async def write(self, outcome: FrameOutcome) -> None:
        frames = frame_columns(outcome, self._hostname)
        errors = error_columns(outcome, self._hostname)  # type: ignore[arg-type]
        if not frames and not errors:
            return

        async def transaction() -> None:
            async with self._pool.acquire() as conn, conn.transaction():
                if frames:
                    await conn.execute(INSERT_FRAMES, *frames)
                if errors:
                    await conn.execute(INSERT_ERRORS, *errors)

        await self._backoff.run("PostgreSQL write", transaction, RETRYABLE_DB_ERRORS)


class FrameTopicSink:
    """Publishes frame results (by camera), identified faces (by person) and dead letters; returns once
    the broker has them all."""

    def __init__(self, processed_topic: Any, identified_topic: Any, dead_letter_topic: Any, hostname: str) -> None:
        self._processed = processed_topic
        self._identified = identified_topic
        self._dead_letters = dead_letter_topic
        self._hostname = hostname

    async def write(self, outcome: FrameOutcome) -> None:
        frames = processed_frame_records(outcome, self._hostname)
        pending = [await self._processed.send(key=record.camera_id, value=record) for record in frames]
        pending += [
            await self._identified.send(key=record.person, value=record)
            for record in identified_face_records(frames)
        ]
        pending += [
            await self._dead_letters.send(key=record.image_key, value=record)
            for record in error_records(outcome, self._hostname)  # type: ignore[arg-type]
        ]
        await asyncio.gather(*pending)
