"""GET /stats/consumer: where this worker's consumer stands on each assigned partition of its input topics.

Operators read it to find a partition that stopped: not fetching, or a committed offset that stays behind
acked ones (see partition_watchdog.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from visionstream.faust_ext.consumer_view import fetching_partitions, partition_progress, read_offsets
from visionstream.web_access import stats_page

if TYPE_CHECKING:
    from visionstream.faust_app import VisionApp


def consumer_state(app: VisionApp) -> dict[str, Any]:
    consumer = app.consumer
    fetching = fetching_partitions(consumer)
    read = read_offsets(consumer)
    progress = partition_progress(consumer, app.topics.acks_enabled_for)
    return {
        "flow_active": consumer.flow_active,
        "partitions": [
            {"topic": tp.topic, "partition": tp.partition, "fetching": tp in fetching,
             "read_offset": read.get(tp), "committed_offset": p.committed, "first_acked": p.first_acked,
             "in_flight": p.in_flight, "highwater": p.highwater}
            for tp, p in sorted(progress.items())
        ],
    }


def register_consumer_stats(app: VisionApp) -> None:
    @stats_page(app, "/stats/consumer")
    async def consumer_stats(web: Any, request: Any) -> Any:
        return web.json(consumer_state(app))
