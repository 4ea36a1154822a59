"""Live face and frame counts per camera, fed from the processed-frames topic, served at /stats/frames.

The processed-frames topic is keyed by camera id, so each camera's counts live in the partition that owns
its key without re-keying. Counts are approximate under failures (see ../shared/notes); PostgreSQL
frame_results is the exact record.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from visionstream.tables.partitions import served_partitions

if TYPE_CHECKING:
    from visionstream.faust_app import VisionApp

WINDOW_SECONDS = 60
WINDOWS_KEPT = 60  # an hour of per-minute counts


def _minute_label(window_start: float) -> str:
    return datetime.fromtimestamp(window_start, tz=timezone.utc).strftime("%Y-%m-%dT%H:%MZ")


def register_face_counts(app: VisionApp) -> None:
    partitions = app.settings.topic_partitions
    faces_per_minute = app.Table(
        "faces-per-minute", key_type=str, value_type=int, default=int, partitions=partitions,
    ).tumbling(WINDOW_SECONDS, expires=WINDOW_SECONDS * WINDOWS_KEPT)
    # Key "<camera>/processed" or "<camera>/skipped:<reason>": every frame the agent accounted for.
    frame_outcomes = app.Table(
        "frame-outcomes", key_type=str, value_type=int, default=int, partitions=partitions,
    )

    @app.agent(app.processed_frames_topic, name="count-faces")
    async def count_faces(stream):  # type: ignore[no-untyped-def]
        async for frame in stream:
            outcome = frame.status if frame.skip_reason is None else f"skipped:{frame.skip_reason}"
            frame_outcomes[f"{frame.camera_id}/{outcome}"] += 1
            if frame.face_count:
                faces_per_minute[frame.camera_id] += frame.face_count

    @app.page("/stats/frames")
    async def frame_stats(web: Any, request: Any) -> Any:
        cameras: dict[str, dict[str, Any]] = {}
        for key, count in frame_outcomes.items():
            camera, _, outcome = key.rpartition("/")
            cameras.setdefault(camera, {"frames": {}})["frames"][outcome] = count
        # Every kept minute, read from the underlying table: faust's delta()/current() need a stream
        # event, which a web request does not have. Keys are (camera, (window_start, window_end)).
        for (camera, (window_start, _)), faces in faces_per_minute.table.items():
            minutes = cameras.setdefault(camera, {"frames": {}}).setdefault("faces_per_minute", {})
            minutes[_minute_label(window_start)] = faces
        skipped = sum(n for c in cameras.values() for o, n in c["frames"].items() if o.startswith("skipped"))
        total = sum(n for c in cameras.values() for n in c["frames"].values())
        return web.json({
            "frames": total,
            "skipped": skipped,
            "drop_rate": skipped / total if total else 0.0,
            "cameras": cameras,
            "partitions": served_partitions(app, frame_outcomes),
        })
