"""Visits per camera per hour, live, fed from the processed-frames topic; served with the distinct visitors from
PostgreSQL at /stats/visitors.

A face opens its visit in the frame its visit id names (``<camera>/<seq>/<index>``, faces/tracking.py), so each
visit is counted once, in the capture hour of its first face (the window follows ``captured_at``, not the
record's timestamp): what the visitors_per_camera_hour view's ``visits`` column says (migration 0011). The
topic is keyed by camera, so a camera's counts are fed from one partition; each record is counted once after any
number of SIGKILLs and rebalances (partitions.py: added_once).

Distinct visitors are PostgreSQL's answer, not a table's: a visitor id is decided by clustering across cameras
(workers, partitions) after a visit's faces may have been published (a short visit is clustered once its track
ends, when no later frame carries its id), and an enrolled person's name or a visitor id replaces the visit as
"who" only in the visits table. Every worker reads the same rows there, so every worker answers the same.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from visionstream.core.fresh import FreshFor
from visionstream.frames.records import ProcessedFrame
from visionstream.metrics import CameraLabels
from visionstream.tables.face_counts import camera_key
from visionstream.tables.partitions import (
    added_once,
    counted_table,
    inputs_kept,
    served_partitions,
    window_counts,
    window_label,
)
from visionstream.web_access import stats_page

if TYPE_CHECKING:
    from visionstream.faust_app import VisionApp

HOUR = 3600
HOURS_KEPT = 24


HOUR_LABEL = "%Y-%m-%dT%H:00Z"


def hour_label(window_start: float) -> str:
    return window_label(window_start, HOUR_LABEL)


def visits_opened(frame: Any) -> int:
    """Faces of the frame that open their visit (the first face of each visit)."""
    prefix = f"{frame.camera_id}/{frame.seq}/"
    return sum(1 for face in frame.faces if face.accepted and (face.visit or "").startswith(prefix))


def register_visit_counts(app: VisionApp) -> None:
    visits_per_hour = counted_table(app, "visits-per-camera-hour", app.settings.topic_partitions).tumbling(
        HOUR, expires=HOUR * HOURS_KEPT).relative_to_field(ProcessedFrame.captured_at)
    kept = inputs_kept(app.settings)
    labels = CameraLabels(app.settings.metrics_max_cameras)

    @app.agent(app.processed_frames_topic, name="count-visits")
    async def count_visits(stream):  # type: ignore[no-untyped-def]
        async for event in stream.events():
            frame, camera = event.value, camera_key(labels, event)
            opened = visits_opened(frame) if frame.skip_reason is None else 0
            # value(), not current(): current() picks the window by the record's timestamp, not captured_at.
            if opened and (hour := added_once(visits_per_hour[camera].value(), event, kept, opened)) is not None:
                visits_per_hour[camera] = hour

    async def stored_visitors() -> dict[str, Any]:
        from visionstream.core.db import connect
        from visionstream.faces.visitors import visitors_since

        conn = await connect(app.settings)
        try:
            return await visitors_since(conn)
        finally:
            await conn.close()

    # One connection and query per dashboard refresh however many clients poll, one at a time (review M2).
    stored_fresh = FreshFor(stored_visitors, app.settings.dashboard_refresh_seconds)

    @stats_page(app, "/stats/visitors")
    async def visitor_stats(web: Any, request: Any) -> Any:
        live = window_counts(visits_per_hour, HOUR_LABEL)
        stored = await stored_fresh.get()
        return web.json({**stored, "visits_per_hour": live, "partitions": served_partitions(app, visits_per_hour.table)})
