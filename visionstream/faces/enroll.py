"""Who the faces agent can identify: enrolment and the enrolled people (`visionstream enroll NAME PHOTO...`
and `visionstream people`, cli/people.py).

Each photo must show exactly one face (no face, or several, and it is rejected: whose face would it be?);
the person's reference is the mean of the photos' embeddings, stored per embedder. ``--backfill`` then
looks for the person in the stored face embeddings (history.py) without running a model again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import numpy as np

from visionstream.core.db import connect, migrate
from visionstream.core.imaging import ImageDecodeError
from visionstream.faces.detector import FaceDetector
from visionstream.faces.history import Sighting, backfill
from visionstream.faces.identifier import Embedder, load_embedder, match_threshold
from visionstream.faces.identities import mean_embedding, store_identity
from visionstream.settings import Settings


class EnrolmentError(ValueError):
    """A photo cannot be used to enrol (unreadable, no face, or more than one)."""


def photo_embeddings(detector: FaceDetector, embedder: Embedder, photos: Sequence[Path]) -> np.ndarray:
    """One embedding per photo, of its only face."""
    embeddings = []
    for photo in photos:
        try:
            prepared = detector.prepare(photo.read_bytes())
        except (OSError, ImageDecodeError) as exc:
            raise EnrolmentError(f"{photo}: {exc}") from None
        faces = detector.detect([prepared])[0]
        if len(faces) != 1:
            raise EnrolmentError(f"{photo}: {'no face' if not faces else f'{len(faces)} faces'} found; "
                                 "an enrolment photo must show exactly one face")
        embeddings.append(embedder.embed_faces(prepared, faces)[0])
    return np.stack(embeddings)


@dataclass(frozen=True, slots=True)
class Enrolment:
    """A person enrolled: under which embedder, and (with backfill) where they were seen before."""

    embedder: str
    sightings: list[Sighting]


def enroll(settings: Settings, name: str, photos: Sequence[Path], with_backfill: bool = False) -> Enrolment:
    """Store ``name``'s reference embedding; EnrolmentError or EmbeddingWeightsMissing when it cannot be made."""
    detector = FaceDetector.from_settings(settings)
    embedder = load_embedder(settings, detector)
    embedding = mean_embedding(photo_embeddings(detector, embedder, photos))

    async def store() -> list[Sighting]:
        await migrate(settings)
        conn = await connect(settings)
        try:
            await store_identity(conn, name, embedder.model_id, embedding, len(photos))
            if not with_backfill:
                return []
            return await backfill(conn, name, embedder.model_id, embedding, match_threshold(settings))
        finally:
            await conn.close()

    return Enrolment(embedder.model_id, sorted(asyncio.run(store()), key=lambda s: s.captured_at))


async def enrolled_people(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """Each enrolment (name, embedder, photos, enrolled_at) with its backfilled sightings."""
    return await conn.fetch(
        "SELECT i.name, i.embedder, i.photos, i.enrolled_at, count(s.source) AS sightings "
        "FROM face_identities i LEFT JOIN face_sightings s ON s.person = i.name AND s.embedder = i.embedder "
        "GROUP BY i.name, i.embedder ORDER BY i.name, i.embedder")


async def remove_person(conn: asyncpg.Connection, name: str) -> bool:
    """Forget a person (every embedder), their sightings and visits; False when nobody has that name."""
    async with conn.transaction():
        await conn.execute("DELETE FROM face_sightings WHERE person = $1", name)
        await conn.execute("DELETE FROM visits WHERE person = $1", name)  # where they were, when
        status = await conn.execute("DELETE FROM face_identities WHERE name = $1", name)
    return not status.endswith(" 0")


async def rename_person(conn: asyncpg.Connection, name: str, new_name: str) -> bool:
    """False when nobody has that name."""
    async with conn.transaction():
        status = await conn.execute("UPDATE face_identities SET name = $2 WHERE name = $1", name, new_name)
        await conn.execute("UPDATE face_sightings SET person = $2 WHERE person = $1", name, new_name)
        await conn.execute("UPDATE visits SET person = $2 WHERE person = $1", name, new_name)
    return not status.endswith(" 0")
