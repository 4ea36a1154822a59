"""What a frame batch stores and publishes: one frame_results row per frame (processed with its faces, or
skipped; with the archive on, its archive key), one frame_faces row per processed frame and detector version,
processed-frame records by camera and identified faces by person. A frame's classification, when the frame
analyzers include ``classify``, goes where every classification goes (classification/sinks.py).

Idempotent like every sink: a redelivered frame hits the (camera_id, seq) key, a replayed one the
(camera_id, seq, model) key of frame_faces, and adds nothing. Errors go to processing_errors and the
dead-letter topic like every input's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from visionstream.core.pipeline import AnalyzedImage, Outcome
from visionstream.core.records import source_of
from visionstream.core.sinks import Records, ResultTable, columns_of, utc
from visionstream.faces.sinks import faces_of, identified_faces, stored_faces_json
from visionstream.frames.archive import archive_key
from visionstream.frames.records import ProcessedFrame, frame_of

INSERT_FRAMES = """
INSERT INTO frame_results
    (camera_id, seq, captured_at, processed_at, latency_ms, status, skip_reason, width, height,
     face_count, faces, hostname, topic, "partition", "offset", header_size, archive_key)
SELECT c, s, ca, pa, l, st, sr, w, h, fc, f::jsonb, hn, t, p, o, hs, ak FROM unnest(
    $1::text[], $2::bigint[], $3::timestamptz[], $4::timestamptz[], $5::real[], $6::text[], $7::text[],
    $8::integer[], $9::integer[], $10::smallint[], $11::text[], $12::text[], $13::text[], $14::integer[],
    $15::bigint[], $16::text[], $17::text[]) AS u(c, s, ca, pa, l, st, sr, w, h, fc, f, hn, t, p, o, hs, ak)
ON CONFLICT (camera_id, seq) DO NOTHING
"""

# The faces of each processed frame under the detector's name@version: a replay through another version
# adds its own rows next to the live ones (migration 0009).
INSERT_FRAME_FACES = """
INSERT INTO frame_faces
    (camera_id, seq, model, captured_at, face_count, faces, hostname, time, topic, "partition", "offset", backend)
SELECT c, s, m, ca, fc, f::jsonb, hn, t, tp, p, o, b FROM unnest(
    $1::text[], $2::bigint[], $3::text[], $4::timestamptz[], $5::smallint[], $6::text[], $7::text[],
    $8::timestamptz[], $9::text[], $10::integer[], $11::bigint[], $12::text[])
    AS u(c, s, m, ca, fc, f, hn, t, tp, p, o, b)
ON CONFLICT (camera_id, seq, model) DO NOTHING
"""


def frame_latency(outcome: Outcome[AnalyzedImage], result: AnalyzedImage) -> float:
    """Seconds from the frame's capture to its result."""
    return outcome.computed_at - frame_of(result).captured_at


def status(result: AnalyzedImage) -> str:
    return "processed" if result.skip_reason is None else "skipped"


def size(result: AnalyzedImage) -> tuple[int, int]:
    """The JPEG's own width and height once decoded; the headers' claim for a skipped frame."""
    frame = frame_of(result)
    return result.size or (frame.width, frame.height)


def header_size(result: AnalyzedImage) -> str | None:
    """The size the headers claimed, when the JPEG has another one (the JPEG's is what is stored)."""
    frame = frame_of(result)
    claimed = (frame.width, frame.height)
    return f"{claimed[0]}x{claimed[1]}" if result.size is not None and result.size != claimed else None


def processed_frame_records(outcome: Outcome[AnalyzedImage], hostname: str) -> list[ProcessedFrame]:
    records = []
    for r in outcome.results:
        frame, faces = frame_of(r), faces_of(r)
        # A skipped frame ran no analyzer: no face was looked for, and it has none.
        detected = faces if faces is not None or r.skip_reason is None else []
        width, height = size(r)
        records.append(ProcessedFrame(
            camera_id=frame.camera_id, seq=frame.seq, captured_at=frame.captured_at,
            processed_at=outcome.computed_at, latency=frame_latency(outcome, r), status=status(r),
            skip_reason=r.skip_reason, width=width, height=height,
            face_count=len(detected) if detected is not None else None, faces=detected or [], hostname=hostname,
            header_size=header_size(r), source=source_of(r.ref),
        ))
    return records


def archived_key(result: AnalyzedImage) -> str | None:
    """The key frame_results records for a result of an archiving worker: processed frames only (archive.py)."""
    return archive_key(frame_of(result)) if result.skip_reason is None else None


def frame_columns(results: Sequence[AnalyzedImage], computed_at: float, hostname: str,
                  archive: bool = False) -> list[list[Any]]:
    at = utc(computed_at)
    rows = []
    for r in results:
        frame, faces = frame_of(r), faces_of(r)
        detected = faces if faces is not None or r.skip_reason is None else []
        rows.append((
            frame.camera_id, frame.seq, utc(frame.captured_at), at, (computed_at - frame.captured_at) * 1000,
            status(r), r.skip_reason, *size(r), len(detected) if detected is not None else None,
            stored_faces_json(r, detected) if detected is not None else None, hostname,
            r.ref.topic, r.ref.partition, r.ref.offset, header_size(r), archived_key(r) if archive else None))
    return columns_of(rows)


def frame_face_columns(results: Sequence[AnalyzedImage], computed_at: float, model: str,
                       hostname: str, backend: str) -> list[list[Any]]:
    at = utc(computed_at)
    rows = []
    for r in results:
        if (faces := faces_of(r)) is not None:  # the detector ran (a skipped frame ran no analyzer)
            frame = frame_of(r)
            rows.append((frame.camera_id, frame.seq, model, utc(frame.captured_at), len(faces), stored_faces_json(r, faces),
                         hostname, at, r.ref.topic, r.ref.partition, r.ref.offset, backend))
    return columns_of(rows)


def frame_table(hostname: str, archive: bool = False) -> ResultTable[AnalyzedImage]:
    """frame_results rows; with ``archive``, each processed frame's archive key (the archive sink stored it)."""
    return ResultTable(INSERT_FRAMES, lambda results, at: frame_columns(results, at, hostname, archive))


def frame_face_table(model: str, hostname: str, backend: str) -> ResultTable[AnalyzedImage]:
    """frame_faces rows; ``backend``: what ran the detector's nets (migration 0016), not part of the key."""
    return ResultTable(INSERT_FRAME_FACES,
                       lambda results, at: frame_face_columns(results, at, model, hostname, backend))


def frame_topics(processed_topic: Any, identified_topic: Any, hostname: str) -> Records:
    def records(outcome: Outcome[Any]) -> list[tuple[Any, str, Any]]:
        frames = processed_frame_records(outcome, hostname)
        return ([(processed_topic, record.camera_id, record) for record in frames]
                + [(identified_topic, face.person, face) for record in frames
                   for face in identified_faces(record.faces, hostname, record.source,
                                                camera_id=record.camera_id, seq=record.seq,
                                                captured_at=record.captured_at)])

    return records
