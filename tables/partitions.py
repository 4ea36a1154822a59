"""What the live tables share: counts kept per source partition, and the partitions a worker serves.

Faust writes a table entry to the changelog partition of the event being processed, so a table fed from a
topic not keyed by what it counts keeps each count per source partition ("<what>/<partition>") and its page
sums them; with several workers each one serves the partitions it holds (PostgreSQL has the exact totals).
"""

from __future__ import annotations

from typing import Any


def per_partition(key: str, event: Any) -> str:
    """The table key of ``key`` counted from ``event``'s partition."""
    return f"{key}/{event.message.partition}"


def without_partition(table_key: str) -> str:
    """What ``per_partition`` counted: the key before its last "/" (a partition never holds one)."""
    return table_key.rpartition("/")[0]


def served_partitions(app: Any, table: Any) -> list[int]:
    """The partitions of ``table`` this worker holds."""
    changelog = table.changelog_topic.get_topic_name()
    return sorted(tp.partition for tp in app.assignor.assigned_actives() if tp.topic == changelog)
