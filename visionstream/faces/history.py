"""Identifying people after the fact: stored face embeddings, backfill matching, purge.

With ``store_face_embeddings`` on, a worker that identifies faces keeps every detected face's embedding
(face_embeddings), of camera frames and S3 images alike. ``enroll --backfill`` then compares a newly
enrolled person with that history in numpy, without any model, and records the sightings (face_sightings).
Embeddings are biometric data: off by default, deleted after the retention period by ``visionstream people
purge``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import asyncpg
import numpy as np

from visionstream.faces.records import FACES, IDENTIFY
from visionstream.core.faults import BadMessage, RetryPolicy, ServiceHealth, isolate_failures
from visionstream.core.pipeline import AnalyzedImage, Failed, Outcome
from visionstream.core.sinks import INSERT_ERRORS, db_fault, error_columns, utc
from visionstream.faces.identities import normalise
from visionstream.frames.records import Frame

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


def _where(result: AnalyzedImage, computed_at: float) -> tuple[str | None, float, str | None]:
    """(camera, when, S3 object) of a face's pixels: a frame's camera and capture time, or an S3 image's key
    and the time it was analyzed."""
    if isinstance(result.source, Frame):
        return result.source.camera_id, result.source.captured_at, result.source.s3_key
    return None, computed_at, result.image_key


def embedding_rows(results: list[AnalyzedImage], computed_at: float, embedder: str) -> list[tuple]:
    rows = []
    for r in results:
        if IDENTIFY not in r.outputs:
            continue
        camera, when, image_key = _where(r, computed_at)
        rows += [(r.key, index, embedder, camera, utc(when), image_key, [float(c) for c in face.box],
                  [float(x) for x in vector])
                 for index, (face, vector) in enumerate(zip(r.outputs[FACES], r.outputs[IDENTIFY].embeddings,
                                                            strict=True))]
    return rows


class EmbeddingSink:
    """Stores the faces' embeddings of a batch (after the frame rows, under the same fault model).

    A message whose embeddings PostgreSQL refuses keeps its stored result and becomes a dead letter of stage
    ``embeddings`` too (processing_errors, the dead-letter topic, the dead-letter metric), so the faces that
    ``enroll --backfill`` cannot see are on record and can be retried.
    """

    def __init__(self, pool: asyncpg.Pool, embedder: str, policy: RetryPolicy, health: ServiceHealth,
                 hostname: str) -> None:
        self._pool = pool
        self._embedder = embedder
        self._policy = policy
        self._health = health
        self._hostname = hostname

    async def _insert(self, results: list[AnalyzedImage], computed_at: float, max_attempts: int | None = None,
                      ) -> None:
        rows = embedding_rows(results, computed_at, self._embedder)
        if rows:
            await self._policy.run("PostgreSQL write", lambda: self._pool.executemany(INSERT_EMBEDDINGS, rows),
                                   db_fault, self._health, max_attempts)

    async def write(self, outcome: Outcome[AnalyzedImage]) -> None:
        with_faces = [r for r in outcome.results if IDENTIFY in r.outputs]
        try:
            await self._insert(with_faces, outcome.computed_at)
            return
        except BadMessage as exc:
            log.warning("PostgreSQL refused a batch's face embeddings (%s); finding the messages it refuses",
                        exc.reason)
        # executemany is one transaction: the parts that pass are stored, the messages that fail alone are not.
        refused = await isolate_failures(
            with_faces, lambda part: self._insert(list(part), outcome.computed_at, max_attempts=1))
        failed = [Failed.of(result.key, result.ref, "embeddings", error) for result, error in refused]
        await self._policy.run(
            "PostgreSQL write",
            lambda: self._pool.execute(INSERT_ERRORS, *error_columns(failed, outcome.computed_at, self._hostname)),
            db_fault, self._health)
        outcome.failed.extend(failed)  # the topic sink publishes them, the metrics count them


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
