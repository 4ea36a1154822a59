"""Visits as a frame sink: the tracker's visit ids on each frame's accepted faces, and the visits table.

``VisitTrackingSink`` runs before PostgreSQL (a frame input's store, frames/input.py): it gives each accepted
face of each processed frame its visit id (``outputs["visits"]``), which the frame_results jsonb then stores
with the face; ``visit_table`` adds the frames to the visits table in the same transaction as the frame rows.
A camera the tracker does not know (a new worker after a crash or a rebalance, an evicted camera) is seeded
from the stored frames of the gap window before its first frame, so a redelivered frame gets the visit ids it
got the first time (faces/tracking.py). Idempotent: see migration 0011. With distinct visitors on, each visit
then gets its anonymous visitor id (``outputs["visitors"]``, faces/visitors.py) before the rows are written.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import asyncpg

from visionstream.faces.records import IDENTIFY
from visionstream.core.faults import RetryPolicy, ServiceHealth
from visionstream.core.pipeline import AnalyzedImage, ImageOutcome
from visionstream.core.sinks import ResultTable, columns_of, db_fault, utc
from visionstream.faces.sinks import faces_of
from visionstream.faces.tracking import VISITS, FaceTracker
from visionstream.faces.visitors import VISITORS, NewVisit, VisitorStore
from visionstream.frames.records import frame_of
from visionstream.settings import Settings

STORED_FRAMES = """
SELECT seq, extract(epoch FROM captured_at)::float8 AS captured_at, faces FROM frame_results
WHERE camera_id = $1 AND seq >= $2 AND seq < $3 AND status = 'processed' ORDER BY seq
"""

# Runs after the frame_results insert of the same transaction. A face adds to its visit only when the stored
# frame row (the first write wins) names that visit, so a frame replayed through another detector version or
# redelivered with other ids adds nothing; and only past the visit's last_seq: a camera's frames come in
# order, so a frame at or before it was counted already (a redelivered batch, however it is split).
# visitor: the faces', else the one assigned to the visit since (faces/visitors.py: a visit assigned after its
# track ended, while its rows still waited in the sink's buffer).
UPSERT_VISITS = """
WITH faces AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::timestamptz[], $5::real[], $6::text[],
                         $7::text[]) AS u(visit_id, camera_id, seq, seen, probability, person, visitor)
), fresh AS (
    SELECT faces.* FROM faces
    JOIN frame_results f ON f.camera_id = faces.camera_id AND f.seq = faces.seq
        AND f.faces @> jsonb_build_array(jsonb_build_object('visit', faces.visit_id))
    LEFT JOIN visits USING (visit_id)
    WHERE visits.last_seq IS NULL OR faces.seq > visits.last_seq
)
INSERT INTO visits AS v (visit_id, camera_id, first_seq, last_seq, first_seen, last_seen, frames, best_probability,
                         person, visitor)
SELECT visit_id, min(camera_id), min(seq), max(seq), min(seen), max(seen), count(*), max(probability), max(person),
       coalesce(min(visitor)::uuid,
                (SELECT e.visitor_id FROM visitor_embeddings e WHERE e.visit_id = fresh.visit_id))
FROM fresh GROUP BY visit_id
ON CONFLICT (visit_id) DO UPDATE SET
    last_seq = greatest(v.last_seq, excluded.last_seq), last_seen = greatest(v.last_seen, excluded.last_seen),
    frames = v.frames + excluded.frames, best_probability = greatest(v.best_probability, excluded.best_probability),
    person = coalesce(v.person, excluded.person), visitor = coalesce(v.visitor, excluded.visitor)
"""


def stored_tracks(faces_json: str | None) -> tuple[list[tuple[float, float, float, float]], list[str]]:
    """(boxes, visit ids) of a stored frame's accepted, tracked faces."""
    boxes, visits = [], []
    for face in json.loads(faces_json or "[]"):
        if face.get("accepted", True) and face.get("visit"):
            boxes.append(tuple(face["box"]))
            visits.append(face["visit"])
    return boxes, visits  # type: ignore[return-value]


class VisitTrackingSink:
    """The worker's own PostgreSQL pool and health (PostgresSink's), not a connection per batch: a camera's
    seed and each visitor assignment are one short query or transaction on the hot path."""

    def __init__(self, settings: Settings, policy: RetryPolicy, pool: asyncpg.Pool, health: ServiceHealth,
                 tracker: FaceTracker | None = None) -> None:
        self._policy = policy
        self._pool = pool
        self.health = health
        self.tracker = tracker or FaceTracker.from_settings(settings)
        # Distinct visitors on: each new visit's embedding (the identify analyzer's) gets a visitor id.
        self.visitors = VisitorStore(settings) if settings.face_distinct_visitors else None

    async def _seed(self, camera_id: str, seq: int) -> None:
        window = self.tracker.limits.max_gap_frames + 1

        async def read() -> list[Any]:
            return list(await self._pool.fetch(STORED_FRAMES, camera_id, seq - window, seq))

        rows = await self._policy.run(f"PostgreSQL read of camera {camera_id!r}'s open visits", read, db_fault,
                                      self.health)
        self.tracker.seed(camera_id, [(row["seq"], row["captured_at"], *stored_tracks(row["faces"])) for row in rows])

    async def _assign_visitors(self, results: Sequence[AnalyzedImage]) -> None:
        store = self.visitors
        assert store is not None
        new: dict[str, NewVisit] = {}
        for result in results:
            identified, frame = result.outputs.get(IDENTIFY), frame_of(result)
            for n in store.ready(frame.camera_id, frame.captured_at, result.outputs[VISITS],
                                 identified.embeddings if identified else None,
                                 identified.matches if identified else [None] * len(result.outputs[VISITS]),
                                 self.tracker.open_visits(frame.camera_id), identified.reused if identified else ()):
                new.setdefault(n.visit, n)  # a visit's first embedded face in the batch
        if new:
            async def assign() -> None:
                async with self._pool.acquire() as conn:
                    await store.assign(conn, list(new.values()))

            await self._policy.run("PostgreSQL visitor assignment", assign, db_fault, self.health)
        for result in results:
            result.outputs[VISITORS] = [store.remembered(visit) for visit in result.outputs[VISITS]]

    async def write(self, outcome: ImageOutcome) -> None:
        tracked = []
        for result in outcome.results:
            faces = result.outputs.get("faces")
            if faces is None or result.skip_reason is not None:
                continue
            frame = frame_of(result)
            if self.tracker.missed_frames_before(frame.camera_id, frame.seq):
                # Seeded again from what is stored: the frames in between (skipped, or another worker's while
                # the camera's partition was elsewhere) may have opened visits this tracker never saw.
                self.tracker.forget(frame.camera_id)
            if not self.tracker.knows(frame.camera_id):
                await self._seed(frame.camera_id, frame.seq)
            result.outputs[VISITS] = self.tracker.assign(frame.camera_id, frame.seq, frame.captured_at,
                                                         [face.box for face in faces])
            tracked.append(result)
        if self.visitors is not None and tracked:
            await self._assign_visitors(tracked)


def visit_columns(results: Sequence[AnalyzedImage]) -> list[list[Any]]:
    rows = []
    for r in results:
        if VISITS not in r.outputs:
            continue
        frame = frame_of(r)
        for face in faces_of(r) or ():
            rows.append((face.visit, frame.camera_id, frame.seq, utc(frame.captured_at), face.probability,
                         face.person, face.visitor))
    return columns_of(rows)


def visit_table() -> ResultTable[AnalyzedImage]:
    return ResultTable(UPSERT_VISITS, lambda results, at: visit_columns(results))
