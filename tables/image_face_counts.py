"""Live face counts on S3 images per detector version, fed from the image-faces topic, served at
/stats/image-faces.

The image-faces topic is keyed by image key, so no count can be keyed by what it counts (the partition that
owns the key "faces" is not the one each event comes from, and Faust writes a table entry to the changelog
partition of the event being processed). Each count is kept per source partition instead and the page sums
them. Approximate under failures like every live table; PostgreSQL image_faces is the exact record.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from visionstream.faust_app import VisionApp

COUNTS = ("images", "with_faces", "faces")


def register_image_face_counts(app: VisionApp) -> None:
    # Key "<model>/<count>/<partition>": a model id is name@version, which has no "/".
    counts = app.Table(
        "image-face-counts", key_type=str, value_type=int, default=int, partitions=app.settings.topic_partitions,
    )

    @app.agent(app.image_faces_topic, name="count-image-faces")
    async def count_image_faces(stream):  # type: ignore[no-untyped-def]
        async for event in stream.events():
            faces, partition = event.value, event.message.partition
            counts[f"{faces.model}/images/{partition}"] += 1
            if faces.face_count:
                counts[f"{faces.model}/with_faces/{partition}"] += 1
                counts[f"{faces.model}/faces/{partition}"] += faces.face_count

    @app.page("/stats/image-faces")
    async def image_face_stats(web: Any, request: Any) -> Any:
        models: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(COUNTS, 0))
        for key, count in counts.items():
            model, what, _ = key.rsplit("/", 2)
            models[model][what] += count
        return web.json({
            "models": dict(models),
            # With several workers each one serves the partitions it holds; PostgreSQL has the exact totals.
            "partitions": sorted(tp.partition for tp in app.assignor.assigned_actives()
                                 if tp.topic == counts.changelog_topic.get_topic_name()),
        })
