"""Seeks a partition back to its committed offset when its commits stop behind records this worker lost.

A backstop for Faust's consumer bookkeeping. Its read offset per partition decides which fetched records are
"already read"; when it runs ahead of records this worker never processed, Faust drops them when the broker
serves them again. Nothing is committed past the hole, so nothing is lost, but the partition never commits
again. faust-streaming 0.15.3 got there through records fetched before a rebalance's seek and delivered after
it (about one SIGKILL takeover in ten); ``seek_safe_consumer`` now drops those, and this watchdog catches
whatever else leads there.

The state is visible: offsets acked beyond the committed one, and nothing of the partition in flight. When it
lasts ``STALL_SECONDS`` the partition is sought back to its committed offset; the records after the hole are
processed once more, which the idempotent sinks make harmless.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from visionstream.faust_app import VisionApp

log = logging.getLogger(__name__)

CHECK_INTERVAL_SECONDS = 2.0
# Far longer than a batch takes between its last record arriving and its ack; an outage keeps records in
# flight, so it never looks like a hole.
STALL_SECONDS = 10.0

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class PartitionProgress:
    committed: int | None  # the next offset to commit
    first_acked: int | None  # the lowest acked offset that cannot be committed yet
    in_flight: int  # records delivered to a stream and not acked

    @property
    def has_hole(self) -> bool:
        """Acked records beyond a committed offset whose own records nobody holds."""
        return (self.committed is not None and self.first_acked is not None
                and self.first_acked > self.committed and self.in_flight == 0)


class HoleDetector:
    """Reports partitions whose hole at the same committed offset has lasted ``stall_seconds``."""

    def __init__(self, stall_seconds: float = STALL_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self._stall_seconds = stall_seconds
        self._clock = clock
        self._since: dict[tuple[Any, int | None], float] = {}

    def stalled(self, progress: Mapping[K, PartitionProgress]) -> list[K]:
        now = self._clock()
        since = {(key, p.committed): self._since.get((key, p.committed), now)
                 for key, p in progress.items() if p.has_hole}
        self._since = since
        return [key for (key, _), first_seen in since.items() if now - first_seen >= self._stall_seconds]


def partition_progress(consumer: Any, acks_enabled_for: Callable[[str], bool]) -> dict[Any, PartitionProgress]:
    """Each assigned partition's progress, read from Faust's consumer bookkeeping (no public accessor)."""
    acked = consumer._acked
    # Faust leaves an acked message in _unacked_messages when its offset was below the committed one or acked
    # before (the stale records this module is about), until it cleans the set at shutdown: not in flight.
    in_flight = Counter(message.tp for message in consumer._unacked_messages if not message.acked)
    return {
        tp: PartitionProgress(consumer._committed_offset.get(tp), min(acked.get(tp) or (None,)), in_flight[tp])
        for tp in consumer.assignment() if acks_enabled_for(tp.topic)
    }


def register_partition_watchdog(app: VisionApp) -> None:
    detector = HoleDetector()

    @app.timer(CHECK_INTERVAL_SECONDS)
    async def reseek_stalled_partitions() -> None:
        progress = partition_progress(app.consumer, app.topics.acks_enabled_for)
        for tp in detector.stalled(progress):
            offset = progress[tp].committed
            log.warning("%s[%d]: commits stopped at offset %d, before records this worker never received; "
                        "seeking back to %d", tp.topic, tp.partition, offset, offset)
            await app.consumer.seek(tp, offset)
