"""Live count of identified faces per enrolled person, fed from the identified-faces topic (keyed by person),
served at /stats/people. Each record is counted once, after any number of SIGKILLs and rebalances
(partitions.py: add_once): the topic is keyed by person, so a person's count is fed from one partition."""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING, Any

from visionstream.tables.partitions import add_once, counted_table, counts, inputs_kept, served_partitions
from visionstream.web_access import stats_page

if TYPE_CHECKING:
    from visionstream.faust_app import VisionApp

PEOPLE_LISTED = 100  # the page lists the people seen most; a page of every enrolled name helps no one


def register_person_counts(app: VisionApp) -> None:
    table = counted_table(app, "identified-per-person", app.settings.topic_partitions)
    kept = inputs_kept(app.settings)

    @app.agent(app.identified_faces_topic, name="count-people")
    async def count_people(stream):  # type: ignore[no-untyped-def]
        async for event in stream.events():
            add_once(table, event.value.person, event, kept)

    @stats_page(app, "/stats/people")
    async def person_stats(web: Any, request: Any) -> Any:
        totals = counts(table)
        ranked = heapq.nsmallest(PEOPLE_LISTED, totals.items(), key=lambda item: (-item[1], item[0]))
        return web.json({
            "people": [{"person": p, "faces": n} for p, n in ranked],
            "people_counted": len(totals),
            "partitions": served_partitions(app, table),
        })
