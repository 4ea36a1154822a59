"""Live count of identified faces per enrolled person, fed from the identified-faces topic (keyed by person),
served at /stats/people. Approximate under failures like every table; face rows in PostgreSQL are exact."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from visionstream.tables.partitions import served_partitions

if TYPE_CHECKING:
    from visionstream.faust_app import VisionApp


def register_person_counts(app: VisionApp) -> None:
    counts = app.Table(
        "identified-per-person", key_type=str, value_type=int, default=int,
        partitions=app.settings.topic_partitions,
    )

    @app.agent(app.identified_faces_topic, name="count-people")
    async def count_people(stream):  # type: ignore[no-untyped-def]
        async for face in stream:
            counts[face.person] += 1

    @app.page("/stats/people")
    async def person_stats(web: Any, request: Any) -> Any:
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        return web.json({
            "people": [{"person": p, "faces": n} for p, n in ranked],
            "partitions": served_partitions(app, counts),
        })
