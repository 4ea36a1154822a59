"""Live face counts on S3 images per detector version, fed from the image-faces topic, served at
/stats/image-faces.

The image-faces topic is keyed by image key, so no count can be keyed by what it counts: each is kept per
source partition instead (partitions.py) and the page sums them. Each record is counted once, after any number
of SIGKILLs and rebalances (partitions.py: add_once).
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

from visionstream.tables.partitions import (
    add_once,
    counted_table,
    counts,
    inputs_kept,
    per_partition,
    served_partitions,
    without_partition,
)
from visionstream.web_access import stats_page

if TYPE_CHECKING:
    from visionstream.faust_app import VisionApp

COUNTS = ("images", "with_faces", "faces")


def register_image_face_counts(app: VisionApp) -> None:
    # Key "<model>/<count>/<partition>": a model id is name@version, which has no "/".
    table = counted_table(app, "image-face-counts", app.settings.topic_partitions)
    kept = inputs_kept(app.settings)

    @app.agent(app.image_faces_topic, name="count-image-faces")
    async def count_image_faces(stream):  # type: ignore[no-untyped-def]
        async for event in stream.events():
            faces = event.value
            add_once(table, per_partition(f"{faces.model}/images", event), event, kept)
            if faces.face_count:
                add_once(table, per_partition(f"{faces.model}/with_faces", event), event, kept)
                add_once(table, per_partition(f"{faces.model}/faces", event), event, kept, faces.face_count)

    @stats_page(app, "/stats/image-faces")
    async def image_face_stats(web: Any, request: Any) -> Any:
        models: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(COUNTS, 0))
        for key, count in counts(table).items():
            model, what = without_partition(key).rsplit("/", 1)
            models[model][what] += count
        return web.json({
            "models": dict(models),
            "partitions": served_partitions(app, table),
        })
