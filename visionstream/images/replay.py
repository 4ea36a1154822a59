"""`visionstream replay`: send past images to the replay topic, for workers running another model version
(archived camera frames, ``--camera``: frames/replay.py).

Workers for the new version consume the replay topic (started with VISIONSTREAM_IMAGES_TOPIC set to it,
their own VISIONSTREAM_APP_ID and weights), so the live images topic keeps its own workers and latency.
Replaying again adds no rows (every result write is idempotent on image, model and rank), and
``--only-missing MODEL`` resumes an interrupted replay: it selects only images lacking that version.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from tqdm import tqdm

from visionstream.core.db import Parameters, count_rows
from visionstream.images.producer import produce_keys, selected_keys
from visionstream.settings import Settings


@dataclass(frozen=True, slots=True)
class Selection:
    """Which images of image_info to replay; every field but ``where`` is a bound parameter."""

    prefix: str | None = None
    label: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    only_missing: str | None = None  # a model version, name@version
    where: str | None = None  # the operator's own SQL condition on image_info i
    limit: int | None = None

    def query(self) -> tuple[str, list[object]]:
        conditions: list[str] = []
        args = Parameters()
        if self.prefix:
            conditions.append(f"starts_with(i.image_key, {args.bind(self.prefix)})")
        if self.label:
            conditions.append(f"i.label = {args.bind(self.label)}")
        if self.since:
            conditions.append(f"i.created_at >= {args.bind(self.since)}")
        if self.until:
            conditions.append(f"i.created_at < {args.bind(self.until)}")
        if self.only_missing:
            conditions.append("NOT EXISTS (SELECT 1 FROM prediction_results p WHERE p.image_key = i.image_key"
                              f" AND p.model = {args.bind(self.only_missing)})")
        if self.where:
            # Like `produce keys --where`: the operator's filter, run inside a READ ONLY transaction.
            conditions.append(f"({self.where})")
        query = "SELECT i.image_key, i.bucket FROM image_info i"
        if conditions:
            query += " WHERE " + " AND ".join(conditions)
        query += " ORDER BY i.image_key"
        if self.limit is not None:
            query += f" LIMIT {args.bind(self.limit)}"
        return query, args


async def count_selected(settings: Settings, selection: Selection) -> int:
    return await count_rows(settings, *selection.query())


def replay_settings(settings: Settings) -> Settings:
    """The same settings with the replay topic as the topic keys are sent to."""
    return settings.model_copy(update={"images_topic": settings.replay_topic})


async def replay(settings: Settings, selection: Selection, progress: bool = False) -> int:
    """Send the selected images to the replay topic; return how many."""
    total = await count_selected(settings, selection)
    with tqdm(total=total, desc=f"replay to {settings.replay_topic}", unit="key", disable=not progress) as bar:
        return await produce_keys(replay_settings(settings), selected_keys(settings, *selection.query()), bar)
