"""Seeks a partition back to its committed offset when this worker stopped reading it.

A backstop for Faust's consumer bookkeeping, which can leave a partition stuck in two visible ways:

- a hole: Faust's read offset ran ahead of records this worker never processed, so it drops them as already
  read when the broker serves them again; offsets beyond the committed one are acked and the partition never
  commits again. faust-streaming 0.15.3 got there through records fetched before a rebalance's seek and
  delivered after it, which ``seek_safe_consumer`` now drops.
- a fetch stall: records exist beyond the committed offset (the broker's high watermark says so), yet none
  reach the agents. Seen once in 36 SIGKILL takeovers after the fix above, cause not found; a seek
  makes aiokafka fetch the partition again.

Either way nothing is committed past the records, so nothing is lost, but the worker would never finish them.
When the state lasts ``STALL_SECONDS`` with nothing of the partition in flight, the partition is sought back to
its committed offset; records after a hole are processed once more, which the idempotent sinks make harmless.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from visionstream.faust_ext.consumer_view import PartitionProgress, partition_progress, read_offsets

if TYPE_CHECKING:
    from visionstream.faust_app import VisionApp

log = logging.getLogger(__name__)

CHECK_INTERVAL_SECONDS = 2.0
# Far longer than a batch takes between its last record arriving and its ack. An outage keeps records in
# flight; a partition whose records wait behind a blocked stream queue meanwhile can look stuck, and its seek
# is harmless (nothing of it was delivered), but the wait is long enough that a short outage never gets there.
STALL_SECONDS = 30.0

K = TypeVar("K", bound=Hashable)


class StuckPartitionDetector:
    """Reports partitions stuck at the same committed offset for ``stall_seconds``."""

    def __init__(self, stall_seconds: float = STALL_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self._stall_seconds = stall_seconds
        self._clock = clock
        self._since: dict[tuple[Any, int | None], float] = {}

    def stalled(self, progress: Mapping[K, PartitionProgress]) -> list[K]:
        now = self._clock()
        since = {(key, p.committed): self._since.get((key, p.committed), now)
                 for key, p in progress.items() if p.is_stuck}
        self._since = since
        return [key for (key, _), first_seen in since.items() if now - first_seen >= self._stall_seconds]


def register_partition_watchdog(app: VisionApp) -> None:
    detector = StuckPartitionDetector()

    @app.timer(CHECK_INTERVAL_SECONDS)
    async def reseek_stalled_partitions() -> None:
        progress = partition_progress(app.consumer, app.topics.acks_enabled_for)
        for tp in detector.stalled(progress):
            offset = progress[tp].committed
            log.warning("%s[%d]: stuck at committed offset %d (read offset %s, %s); seeking back to it",
                        tp.topic, tp.partition, offset, read_offsets(app.consumer).get(tp), progress[tp])
            await app.consumer.seek(tp, offset)
