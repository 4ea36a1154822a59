"""Live count of images per predicted top-1 category, as a Faust table served over HTTP."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from visionstream.faust_app import VisionApp


def register_category_counts(app: VisionApp) -> None:
    counts = app.Table(
        "category-counts", key_type=str, value_type=int, default=int,
        partitions=app.settings.topic_partitions,
    )

    # The category topic is keyed by top-1 category (the classify agent's TopicSink), so each count lives
    # in the partition that owns its key.
    @app.agent(app.category_topic, name="count-categories")
    async def count_categories(stream):  # type: ignore[no-untyped-def]
        async for prediction in stream:
            counts[prediction.category] += 1

    @app.page("/stats/categories")
    async def category_stats(web: Any, request: Any) -> Any:
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        return web.json({
            "total": sum(n for _, n in ranked),
            "categories": [{"category": c, "count": n} for c, n in ranked],
            # With several workers each one serves the partitions it holds; PostgreSQL has the exact totals.
            "partitions": sorted(tp.partition for tp in app.assignor.assigned_actives()
                                 if tp.topic == counts.changelog_topic.get_topic_name()),
        })
