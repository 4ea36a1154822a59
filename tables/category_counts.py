"""Live count of images per predicted top-1 category, fed from the predictions topic, served at
/stats/categories.

The predictions topic is keyed by image key, so each count is kept per source partition (partitions.py).
Counting there, rather than from the same record re-published keyed by category, saves one produce per image
(BENCHMARKS.md, "one produce per image"). Each prediction record is counted once, after any number of
SIGKILLs and rebalances (partitions.py: add_once), so the total equals the records on the topic.
"""

from __future__ import annotations

from collections import Counter
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


def register_category_counts(app: VisionApp) -> None:
    table = counted_table(app, "category-counts", app.settings.topic_partitions)
    kept = inputs_kept(app.settings)

    @app.agent(app.predictions_topic, name="count-categories")
    async def count_categories(stream):  # type: ignore[no-untyped-def]
        async for event in stream.events():
            add_once(table, per_partition(event.value.category, event), event, kept)

    @stats_page(app, "/stats/categories")
    async def category_stats(web: Any, request: Any) -> Any:
        totals: Counter[str] = Counter()
        for key, count in counts(table).items():
            totals[without_partition(key)] += count  # a category may hold "/"
        ranked = sorted(totals.items(), key=lambda item: (-item[1], item[0]))
        return web.json({
            "total": sum(totals.values()),
            "categories": [{"category": c, "count": n} for c, n in ranked],
            "partitions": served_partitions(app, table),
        })
