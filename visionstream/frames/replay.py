"""`visionstream replay --camera`: archived frames back through a detector of another version.

Each archived frame (frame_results.archive_key, VISIONSTREAM_FRAME_ARCHIVE) is sent to the frame replay
topic as a claim check pointing at its archive key, with its original camera id, seq, capture time and
size, so the worker sees the frame it saw live. Workers of the other version consume that topic as their
VISIONSTREAM_FRAMES_TOPIC, in archive mode (live mode would skip every old frame as late), and write
frame_faces rows under their own detector version; the live frames topic keeps its own workers. Replaying
again adds no rows (frame_faces is idempotent on camera, seq and model); ``--only-missing MODEL`` sends only
the frames that version has not seen.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass

from tqdm import tqdm

from visionstream.core.db import Parameters, connect, count_rows
from visionstream.frames.records import frame_headers
from visionstream.images.producer import FETCH_ROWS, Message, produce_messages
from visionstream.settings import Settings


@dataclass(frozen=True, slots=True)
class FrameSelection:
    """Which archived frames of one camera to replay; every field is a bound parameter."""

    camera: str
    since: dt.datetime | None = None  # capture time
    until: dt.datetime | None = None
    only_missing: str | None = None  # a detector version, name@version
    limit: int | None = None

    def query(self) -> tuple[str, list[object]]:
        args = Parameters()
        conditions = [f"f.camera_id = {args.bind(self.camera)}", "f.archive_key IS NOT NULL"]
        if self.since:
            conditions.append(f"f.captured_at >= {args.bind(self.since)}")
        if self.until:
            conditions.append(f"f.captured_at < {args.bind(self.until)}")
        if self.only_missing:
            conditions.append("NOT EXISTS (SELECT 1 FROM frame_faces ff WHERE ff.camera_id = f.camera_id"
                              f" AND ff.seq = f.seq AND ff.model = {args.bind(self.only_missing)})")
        query = ("SELECT f.camera_id, f.seq, f.captured_at, f.width, f.height, f.archive_key FROM frame_results f"
                 " WHERE " + " AND ".join(conditions) + " ORDER BY f.captured_at, f.seq")
        if self.limit is not None:
            query += f" LIMIT {args.bind(self.limit)}"
        return query, args


async def count_frames(settings: Settings, selection: FrameSelection) -> int:
    return await count_rows(settings, *selection.query())


async def archived_frames(settings: Settings, selection: FrameSelection) -> AsyncIterator[Message]:
    """Claim-check frame messages of the selected frames, through a server-side cursor, in capture order."""
    query, args = selection.query()
    conn = await connect(settings)
    try:
        async with conn.transaction(readonly=True):
            async for row in conn.cursor(query, *args, prefetch=FETCH_ROWS):
                headers = frame_headers(row["seq"], row["captured_at"].timestamp(), row["width"], row["height"],
                                        s3_key=row["archive_key"])
                yield row["camera_id"].encode(), b"", headers
    finally:
        await conn.close()


async def replay_frames(settings: Settings, selection: FrameSelection, progress: bool = False) -> int:
    """Send the selected archived frames to the frame replay topic; return how many."""
    total = await count_frames(settings, selection)
    topic = settings.frame_replay_topic
    with tqdm(total=total, desc=f"replay to {topic}", unit="frame", disable=not progress) as bar:
        return await produce_messages(settings, archived_frames(settings, selection), bar, topic=topic)
