"""`visionstream enroll NAME PHOTO...` and `visionstream people`: who the faces agent can identify.

Each photo must show exactly one face (no face, or several, and it is rejected: whose face would it be?);
the person's reference is the mean of the photos' embeddings, stored per embedder. ``--backfill`` then
looks for the person in the stored face embeddings (face_history.py) without running a model again.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from visionstream.core.db import connect, migrate
from visionstream.core.imaging import ImageDecodeError
from visionstream.faces.detector import FaceDetector
from visionstream.faces.embedder import EmbeddingWeightsMissing
from visionstream.faces.history import backfill, purge
from visionstream.faces.identifier import Embedder, load_embedder, match_threshold
from visionstream.faces.identities import mean_embedding, store_identity
from visionstream.faces.visitors import purge_visitor_embeddings
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


def enroll_command(settings: Settings, name: str, photos: Sequence[Path], with_backfill: bool = False) -> int:
    detector = FaceDetector.from_settings(settings)
    try:
        embedder = load_embedder(settings, detector)
        embedding = mean_embedding(photo_embeddings(detector, embedder, photos))
    except (EmbeddingWeightsMissing, EnrolmentError) as exc:
        print(f"visionstream enroll: {exc}")
        return 2

    async def store() -> None:
        await migrate(settings)
        conn = await connect(settings)
        try:
            await store_identity(conn, name, embedder.model_id, embedding, len(photos))
            print(f"enrolled {name!r} from {len(photos)} photo(s) with {embedder.model_id}; "
                  "workers match against it from their next start")
            if with_backfill:
                sightings = await backfill(conn, name, embedder.model_id, embedding, match_threshold(settings))
                print(f"{len(sightings)} past sighting(s) of {name!r} in stored face embeddings:")
                for s in sorted(sightings, key=lambda s: s.captured_at):
                    print(f"  {s.captured_at:%Y-%m-%d %H:%M:%S} camera={s.camera_id} {s.source} "
                          f"face {s.face_index} image={s.image_key} similarity={s.similarity:.3f}")
        finally:
            await conn.close()

    asyncio.run(store())
    return 0


async def people(settings: Settings, args: argparse.Namespace) -> int:
    await migrate(settings)
    conn = await connect(settings)
    try:
        if args.action == "list":
            rows = await conn.fetch(
                "SELECT i.name, i.embedder, i.photos, i.enrolled_at, count(s.source) AS sightings "
                "FROM face_identities i LEFT JOIN face_sightings s ON s.person = i.name AND s.embedder = i.embedder "
                "GROUP BY i.name, i.embedder ORDER BY i.name, i.embedder")
            for r in rows:
                print(f"{r['name']}\t{r['embedder']}\t{r['photos']} photo(s)\tenrolled {r['enrolled_at']:%Y-%m-%d %H:%M}"
                      f"\t{r['sightings']} backfilled sighting(s)")
            print(f"{len(rows)} enrolment(s)")
        elif args.action == "remove":
            async with conn.transaction():
                await conn.execute("DELETE FROM face_sightings WHERE person = $1", args.name)
                await conn.execute("DELETE FROM visits WHERE person = $1", args.name)  # where they were, when
                status = await conn.execute("DELETE FROM face_identities WHERE name = $1", args.name)
            if status.endswith(" 0"):
                print(f"visionstream people: no one called {args.name!r} is enrolled")
                return 1
            print(f"removed {args.name!r}")
        elif args.action == "rename":
            async with conn.transaction():
                status = await conn.execute("UPDATE face_identities SET name = $2 WHERE name = $1",
                                            args.name, args.new_name)
                await conn.execute("UPDATE face_sightings SET person = $2 WHERE person = $1", args.name, args.new_name)
                await conn.execute("UPDATE visits SET person = $2 WHERE person = $1", args.name, args.new_name)
            if status.endswith(" 0"):
                print(f"visionstream people: no one called {args.name!r} is enrolled")
                return 1
            print(f"renamed {args.name!r} to {args.new_name!r}; workers use the new name from their next start")
        else:
            deleted = await purge(conn, None if args.all else settings.face_embedding_retention_days)
            anonymous = await purge_visitor_embeddings(
                conn, None if args.all else settings.face_visitor_embedding_retention_hours)
            print(f"deleted {deleted} stored face embedding(s) and {anonymous} anonymous visitor embedding(s)")
        return 0
    finally:
        await conn.close()
