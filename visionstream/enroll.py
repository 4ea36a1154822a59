"""`visionstream enroll NAME PHOTO...`: store a person's face embedding for the faces agent to match."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from visionstream.db import connect, migrate
from visionstream.identities import mean_embedding, store_identity
from visionstream.imaging import ImageDecodeError
from visionstream.models.face_detector import FaceDetector
from visionstream.models.face_embedder import EmbeddingWeightsMissing, FaceEmbedder
from visionstream.settings import Settings


class EnrolmentError(ValueError):
    """A photo cannot be used to enrol (unreadable, or no face in it)."""


def photo_embeddings(detector: FaceDetector, embedder: FaceEmbedder, photos: Sequence[Path]) -> np.ndarray:
    """One embedding per photo, of its most confident face."""
    embeddings = []
    for photo in photos:
        try:
            prepared = detector.prepare(photo.read_bytes())
        except (OSError, ImageDecodeError) as exc:
            raise EnrolmentError(f"{photo}: {exc}") from None
        faces = detector.detect([prepared])[0]
        if not faces:
            raise EnrolmentError(f"{photo}: no face found")
        best = max(faces, key=lambda face: face.probability)
        embeddings.append(embedder.embed(detector.face_crops(prepared, [best]))[0])
    return np.stack(embeddings)


def enroll_command(settings: Settings, name: str, photos: Sequence[Path]) -> int:
    try:
        embedder = FaceEmbedder.from_settings(settings)
    except EmbeddingWeightsMissing as exc:
        print(f"visionstream enroll: {exc}")
        return 2
    detector = FaceDetector.from_settings(settings)
    try:
        embedding = mean_embedding(photo_embeddings(detector, embedder, photos))
    except EnrolmentError as exc:
        print(f"visionstream enroll: {exc}")
        return 2

    async def store() -> None:
        await migrate(settings)
        conn = await connect(settings)
        try:
            await store_identity(conn, name, embedding, len(photos))
        finally:
            await conn.close()

    asyncio.run(store())
    print(f"enrolled {name!r} from {len(photos)} photo(s); workers match against it from their next start")
    return 0
