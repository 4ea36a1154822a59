"""`visionstream enroll NAME PHOTO...` and `visionstream people`: the command line of faces/enroll.py."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from visionstream.core.db import connect, migrate
from visionstream.faces.embedder import EmbeddingWeightsMissing
from visionstream.faces.enroll import EnrolmentError, enroll, enrolled_people, remove_person, rename_person
from visionstream.faces.history import purge
from visionstream.faces.visitors import purge_visitor_embeddings
from visionstream.settings import Settings


def enroll_command(settings: Settings, name: str, photos: Sequence[Path], with_backfill: bool = False) -> int:
    try:
        enrolment = enroll(settings, name, photos, with_backfill)
    except (EmbeddingWeightsMissing, EnrolmentError) as exc:
        print(f"visionstream enroll: {exc}")
        return 2
    print(f"enrolled {name!r} from {len(photos)} photo(s) with {enrolment.embedder}; "
          "workers match against it from their next start")
    if with_backfill:
        print(f"{len(enrolment.sightings)} past sighting(s) of {name!r} in stored face embeddings:")
        for s in enrolment.sightings:
            print(f"  {s.captured_at:%Y-%m-%d %H:%M:%S} camera={s.camera_id} {s.source} "
                  f"face {s.face_index} image={s.image_key} similarity={s.similarity:.3f}")
    return 0


def nobody_called(name: str) -> int:
    print(f"visionstream people: no one called {name!r} is enrolled")
    return 1


async def people_command(settings: Settings, args: argparse.Namespace) -> int:
    await migrate(settings)
    conn = await connect(settings)
    try:
        if args.action == "list":
            rows = await enrolled_people(conn)
            for r in rows:
                print(f"{r['name']}\t{r['embedder']}\t{r['photos']} photo(s)\tenrolled {r['enrolled_at']:%Y-%m-%d %H:%M}"
                      f"\t{r['sightings']} backfilled sighting(s)")
            print(f"{len(rows)} enrolment(s)")
        elif args.action == "remove":
            if not await remove_person(conn, args.name):
                return nobody_called(args.name)
            print(f"removed {args.name!r}")
        elif args.action == "rename":
            if not await rename_person(conn, args.name, args.new_name):
                return nobody_called(args.name)
            print(f"renamed {args.name!r} to {args.new_name!r}; workers use the new name from their next start")
        else:
            deleted = await purge(conn, None if args.all else settings.face_embedding_retention_days)
            anonymous = await purge_visitor_embeddings(
                conn, None if args.all else settings.face_visitor_embedding_retention_hours)
            print(f"deleted {deleted} stored face embedding(s) and {anonymous} anonymous visitor embedding(s)")
        return 0
    finally:
        await conn.close()
