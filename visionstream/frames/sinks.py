"""What a frame batch stores and publishes, for the sinks of sinks.py: frame_results rows, processed-frame
records by camera and identified faces by person.

Idempotent like every sink: a redelivered frame hits the (camera_id, seq) key and adds nothing. Errors go
to processing_errors and the dead-letter topic like the classifier's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from visionstream.core.sinks import Records, ResultTable, columns_of, face_records, utc
from visionstream.frames.pipeline import FrameOutcome, FrameResult
from visionstream.frames.records import IdentifiedFace, ProcessedFrame

INSERT_FRAMES = """
INSERT INTO frame_results
    (camera_id, seq, captured_at, processed_at, latency_ms, status, skip_reason, width, height,
     face_count, faces, hostname, topic, "partition", "offset", header_size)
SELECT c, s, ca, pa, l, st, sr, w, h, fc, f::jsonb, hn, t, p, o, hs FROM unnest(
    $1::text[], $2::bigint[], $3::timestamptz[], $4::timestamptz[], $5::real[], $6::text[], $7::text[],
    $8::integer[], $9::integer[], $10::smallint[], $11::text[], $12::text[], $13::text[], $14::integer[],
    $15::bigint[], $16::text[]) AS u(c, s, ca, pa, l, st, sr, w, h, fc, f, hn, t, p, o, hs)
ON CONFLICT (camera_id, seq) DO NOTHING
"""


def processed_frame_records(outcome: FrameOutcome, hostname: str) -> list[ProcessedFrame]:
    return [
        ProcessedFrame(
            camera_id=r.frame.camera_id, seq=r.frame.seq, captured_at=r.frame.captured_at,
            processed_at=outcome.computed_at, latency=outcome.latency(r), status=r.status,
            skip_reason=r.skip_reason, width=r.width, height=r.height,
            face_count=len(r.faces), faces=face_records(r.faces, r.matches), hostname=hostname,
            header_size=r.header_size,
        )
        for r in outcome.results
    ]


def identified_face_records(frames: list[ProcessedFrame]) -> list[IdentifiedFace]:
    return [
        IdentifiedFace(
            person=face.person, similarity=face.similarity, camera_id=record.camera_id, seq=record.seq,
            captured_at=record.captured_at, box=face.box, hostname=record.hostname, embedder=face.embedder,
        )
        for record in frames
        for face in record.faces
        if face.person is not None
    ]


def frame_columns(results: Sequence[FrameResult], computed_at: float, hostname: str) -> list[list[Any]]:
    at = utc(computed_at)
    return columns_of([
        (r.frame.camera_id, r.frame.seq, utc(r.frame.captured_at), at,
         (computed_at - r.frame.captured_at) * 1000, r.status, r.skip_reason, r.width, r.height, len(r.faces),
         json.dumps([face.asdict() for face in face_records(r.faces, r.matches)]), hostname,
         r.ref.topic, r.ref.partition, r.ref.offset, r.header_size)
        for r in results
    ])


def frame_table(hostname: str) -> ResultTable[FrameResult]:
    return ResultTable(INSERT_FRAMES, lambda results, at: frame_columns(results, at, hostname))


def frame_topics(processed_topic: Any, identified_topic: Any, hostname: str) -> Records:
    def records(outcome: FrameOutcome) -> list[tuple[Any, str, Any]]:  # type: ignore[override]
        frames = processed_frame_records(outcome, hostname)
        return ([(processed_topic, record.camera_id, record) for record in frames]
                + [(identified_topic, record.person, record) for record in identified_face_records(frames)])

    return records  # type: ignore[return-value]
