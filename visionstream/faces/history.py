"""Identifying people after the fact: stored face embeddings, backfill matching, purge.

With ``store_face_embeddings`` on, the faces worker keeps every detected face's embedding
(face_embeddings). ``enroll --backfill`` then compares a newly enrolled person with that history in numpy,
without any model, and records the sightings (face_sightings). Embeddings are biometric data: off by
default, deleted after the retention period by ``visionstream people purge``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
import numpy as np

from visionstream.core.faults import BadMessage, RetryPolicy, ServiceHealth
from visionstream.core.sinks import classify_db, utc
from visionstream.faces.identities import normalise
from visionstream.frames.pipeline import FrameOutcome, FrameResult

log = logging.getLogger(__name__)

INSERT_EMBEDDINGS = """
INSERT INTO face_embeddings (source, face_index, embedder, camera_id, captured_at, image_key, box, embedding)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING
"""
HISTORY = """
SELECT source, face_index, camera_id, captured_at, image_key, embedding FROM face_embeddings
WHERE embedder = $1
"""
INSERT_SIGHTINGS = """
INSERT INTO face_sightings (person, embedder, source, face_index, camera_id, captured_at, image_key, similarity)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (person, embedder, source, face_index) DO UPDATE SET similarity = EXCLUDED.similarity,
    found_at = now()
"""
HISTORY_CHUNK = 10_000


def embedding_rows(results: Sequence[FrameResult], embedder: str) -> list[tuple]:
    return [
        (r.key, index, embedder, r.frame.camera_id, utc(r.frame.captured_at), r.frame.s3_key,
         [float(c) for c in face.box], [float(x) for x in vector])
        for r in results if r.embeddings is not None
        for index, (face, vector) in enumerate(zip(r.faces, r.embeddings, strict=True))
    ]


class EmbeddingSink:
    """Stores the faces' embeddings of a batch (after the frame rows, under the same fault model)."""

    def __init__(self, pool: asyncpg.Pool, embedder: str, policy: RetryPolicy, health: ServiceHealth) -> None:
        self._pool = pool
        self._embedder = embedder
        self._policy = policy
        self._health = health

    async def write(self, outcome: FrameOutcome) -> None:
        rows = embedding_rows(outcome.results, self._embedder)
        if not rows:
            return
        try:
            await self._policy.run("PostgreSQL write", lambda: self._pool.executemany(INSERT_EMBEDDINGS, rows),
                                   classify_db, self._health)
        except BadMessage as exc:  # the frame rows are stored; only the history misses these faces
            log.error("%d face embedding(s) not stored: %s", len(rows), exc.reason)


@dataclass(frozen=True, slots=True)
class Sighting:
    source: str
    face_index: int
    camera_id: str | None
    captured_at: object  # datetime
    image_key: str | None
    similarity: float


async def backfill(conn: asyncpg.Connection, person: str, embedder: str, reference: np.ndarray,
                   threshold: float) -> list[Sighting]:
    """Every stored face of this embedder at least ``threshold`` similar to the reference; recorded."""
    reference = normalise(reference)
    found: list[Sighting] = []
    async with conn.transaction():
        cursor = await conn.cursor(HISTORY, embedder)
        while rows := await cursor.fetch(HISTORY_CHUNK):
            similarity = normalise(np.array([row["embedding"] for row in rows], np.float32)) @ reference
            found += [Sighting(row["source"], row["face_index"], row["camera_id"], row["captured_at"],
                               row["image_key"], float(s))
                      for row, s in zip(rows, similarity, strict=True) if s >= threshold]
        await conn.executemany(INSERT_SIGHTINGS, [
            (person, embedder, s.source, s.face_index, s.camera_id, s.captured_at, s.image_key, s.similarity)
            for s in found])
    return found


async def purge(conn: asyncpg.Connection, older_than_days: float | None) -> int:
    """Delete stored embeddings older than the given days (None: all of them); return how many."""
    if older_than_days is None:
        status = await conn.execute("DELETE FROM face_embeddings")
    else:
        status = await conn.execute("DELETE FROM face_embeddings WHERE stored_at < now() - make_interval(secs => $1)",
                                    older_than_days * 86400)
    return int(status.split()[-1])
