"""Live face and frame counts per camera, fed from the processed-frames topic, served at /stats/frames.

The processed-frames topic is keyed by camera id, so each camera's counts live in the partition that owns
its key without re-keying, and each key is fed from that one partition. Each record is counted once, after
any number of SIGKILLs and rebalances (partitions.py: add_once); the per-minute counts too, in the minute of
the record's timestamp (Faust's default for a windowed table), so equal to PostgreSQL over the same minutes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from visionstream.metrics import OTHER_CAMERAS, CameraLabels
from visionstream.tables.partitions import (
    add_once,
    added_once,
    counted_table,
    counts,
    inputs_kept,
    served_partitions,
    window_counts,
)
from visionstream.web_access import stats_page

if TYPE_CHECKING:
    from visionstream.faust_app import VisionApp

WINDOW_SECONDS = 60
WINDOWS_KEPT = 60  # an hour of per-minute counts


MINUTE_LABEL = "%Y-%m-%dT%H:%MZ"


def camera_key(labels: CameraLabels, event: Any) -> str:
    """The table key of a processed frame's camera: bounded like the metrics' labels; later cameras count as
    "other:<partition>" (each key is fed from one partition, see partitions.py)."""
    camera = labels(event.value.camera_id)
    return f"{OTHER_CAMERAS}:{event.message.partition}" if camera == OTHER_CAMERAS else camera


def register_face_counts(app: VisionApp) -> None:
    partitions = app.settings.topic_partitions
    faces_per_minute = counted_table(app, "faces-per-minute", partitions).tumbling(
        WINDOW_SECONDS, expires=WINDOW_SECONDS * WINDOWS_KEPT)
    # Key "<camera>/processed" or "<camera>/skipped:<reason>": every frame the agent accounted for.
    frame_outcomes = counted_table(app, "frame-outcomes", partitions)
    kept = inputs_kept(app.settings)

    # Bounded: whoever writes frames names cameras, and every name would otherwise stay in the table and on the
    # page for good (camera_key).
    labels = CameraLabels(app.settings.metrics_max_cameras)

    @app.agent(app.processed_frames_topic, name="count-faces")
    async def count_faces(stream):  # type: ignore[no-untyped-def]
        async for event in stream.events():
            frame, camera = event.value, camera_key(labels, event)
            outcome = frame.status if frame.skip_reason is None else f"skipped:{frame.skip_reason}"
            add_once(frame_outcomes, f"{camera}/{outcome}", event, kept)
            # The window of the event's timestamp: read and written through the windowed wrapper.
            if frame.face_count and (minute := added_once(faces_per_minute[camera].current(), event, kept,
                                                          frame.face_count)) is not None:
                faces_per_minute[camera] = minute

    @stats_page(app, "/stats/frames")
    async def frame_stats(web: Any, request: Any) -> Any:
        cameras: dict[str, dict[str, Any]] = {}
        for key, count in counts(frame_outcomes).items():
            camera, _, outcome = key.rpartition("/")
            cameras.setdefault(camera, {"frames": {}})["frames"][outcome] = count
        for camera, minutes in window_counts(faces_per_minute, MINUTE_LABEL).items():
            cameras.setdefault(camera, {"frames": {}})["faces_per_minute"] = minutes
        skipped = sum(n for c in cameras.values() for o, n in c["frames"].items() if o.startswith("skipped"))
        total = sum(n for c in cameras.values() for n in c["frames"].values())
        return web.json({
            "frames": total,
            "skipped": skipped,
            "drop_rate": skipped / total if total else 0.0,
            "cameras": cameras,
            "partitions": served_partitions(app, frame_outcomes),
        })
