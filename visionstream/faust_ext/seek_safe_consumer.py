"""Faust's Kafka consumer, made to drop records fetched before their partition was sought.

faust-streaming 0.15.3 seeks the stream partitions to their committed offsets while its fetch loop runs
(after a rebalance it resumes fetching first: ``Recovery.on_recovery_completed``, faust-streaming issue #216),
and the fetch loop iterates a fetched batch to its end even when a seek happened meanwhile. A record fetched
before the seek but delivered after it is stale, and it corrupts Faust's per-partition read offset in one of
two ways (both caught by the SIGKILL takeover test, with the offsets logged):

- it lands ahead of the sought offset, so Faust records the distance as a *gap* (which it reserves for
  compacted topics and transaction markers) and commits over it. The records in between were delivered
  before the seek into a stream queue that ``flow_control.resume()`` then cleared: never processed, yet
  committed. That is a lost result.
- it moves the read offset past records the broker serves again after the seek, and Faust drops those as
  already read: the partition's commits stop behind them (``partition_watchdog`` repairs that).

The seek runs in aiokafka's thread, so a batch that ends up in Faust's hands while a seek is awaited may hold
records from before or after aiokafka moved. This consumer therefore drops a sought partition's records from
any batch requested before the seek finished, and seeks that partition again from inside the fetch loop,
where no batch is in flight: aiokafka then serves everything from the sought offset, and whatever was dropped
comes back. The cost is a few records fetched twice per seek.

It also lets a stopping worker abandon events (``abandon``): Faust's shutdown waits, without a limit, until
every event it handed to a stream is acked (``Consumer.wait_empty``), so a batch stuck in an outage would
hold the worker forever.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import faust
from faust import transport
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message, TransportT


class SeekSafeConsumer(faust_aiokafka.Consumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._seek_count: Counter[TP] = Counter()
        self._sought_offset: dict[TP, int] = {}

    async def seek(self, partition: TP, offset: int) -> None:
        await super().seek(partition, offset)
        self._note_sought(partition, offset)

    async def seek_to_committed(self) -> Mapping[TP, int]:
        committed = await super().seek_to_committed()
        for tp, offset in committed.items():
            if offset:  # aiokafka seeks only to a committed offset above 0 (Faust's perform_seek does the same)
                self._note_sought(tp, offset)
        return committed

    def _note_sought(self, tp: TP, offset: int) -> None:
        self._seek_count[tp] += 1
        self._sought_offset[tp] = offset

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:
        seeks_at_request = self._seek_count.copy()
        sought_again: set[TP] = set()

        async def stale(tp: TP) -> bool:
            if self._seek_count[tp] == seeks_at_request[tp]:
                return False
            if tp not in sought_again and tp in self.assignment():  # a revoked partition is not ours to seek
                sought_again.add(tp)
                await self.seek(tp, self._sought_offset[tp])
            return True

        async for tp, message in super().getmany(timeout):
            if await stale(tp):
                continue
            yield tp, message
            # Sought while this message waited for room in a stream queue: the read offset Faust sets after
            # delivering it is stale too, and seeking again puts it back.
            await stale(tp)


    def abandon(self, messages: Iterable[Message]) -> None:
        """Stop waiting for these messages' acks: they stay unacked, so the commit stops before them and they
        are redelivered to whoever takes their partitions."""
        self._unacked_messages.difference_update(messages)


class SeekSafeTransport(faust_aiokafka.Transport):
    Consumer = SeekSafeConsumer


class SeekSafeApp(faust.App):
    """A faust.App whose Kafka transport is SeekSafeTransport: Faust picks its transport by the broker URL's
    scheme in a private factory, overridden here (another scheme keeps Faust's own)."""

    def _new_transport(self) -> TransportT:
        transport_cls = transport.by_url(self.conf.broker_consumer[0])
        if transport_cls is faust_aiokafka.Transport:
            transport_cls = SeekSafeTransport
        return transport_cls(self.conf.broker_consumer, self)
