"""The one place that reads Faust's consumer bookkeeping, which it keeps private (faust-streaming 0.15.3:
``Consumer._acked``, ``_unacked_messages``, ``_committed_offset``, ``_read_offset``, ``_active_partitions``).
The partition watchdog, ``/stats/consumer`` and the lag metric read it through here, so a Faust upgrade
that renames them breaks one module (and tests/unit/test_partition_watchdog.py says so)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from faust.types import TP


@dataclass(frozen=True, slots=True)
class PartitionProgress:
    committed: int | None  # the next offset to commit
    first_acked: int | None  # the lowest acked offset that cannot be committed yet
    in_flight: int  # records delivered to a stream and not acked
    highwater: int | None = None  # the broker's end of the partition, as of the last fetch

    @property
    def is_stuck(self) -> bool:
        """Records beyond the committed offset (acked ones, or not fetched) and none of the partition held."""
        if self.committed is None or self.in_flight:
            return False
        hole = self.first_acked is not None and self.first_acked > self.committed
        # + 1: a transaction's closing marker can sit after the last record, where nothing is left to read.
        unread = self.highwater is not None and self.highwater > self.committed + 1
        return hole or unread


def partition_progress(consumer: Any, acks_enabled_for: Callable[[str], bool]) -> dict[TP, PartitionProgress]:
    """Each assigned partition's progress, read from Faust's consumer bookkeeping (no public accessor)."""
    acked = consumer._acked
    # Faust leaves an acked message in _unacked_messages when its offset was below the committed one or acked
    # before (stale records redelivered around a seek; see seek_safe_consumer.py), until it cleans the set at
    # shutdown: not in flight.
    in_flight = Counter(message.tp for message in consumer._unacked_messages if not message.acked)
    return {
        tp: PartitionProgress(consumer._committed_offset.get(tp), min(acked.get(tp) or (None,)), in_flight[tp],
                              consumer.highwater(tp))
        for tp in consumer.assignment() if acks_enabled_for(tp.topic)
    }


def read_offsets(consumer: Any) -> Mapping[TP, int | None]:
    """The offset of the last record read from each partition."""
    return consumer._read_offset  # type: ignore[no-any-return]


def fetching_partitions(consumer: Any) -> set[TP]:
    """The partitions the consumer fetches now (flow control pauses the others)."""
    return consumer._active_partitions or set()
