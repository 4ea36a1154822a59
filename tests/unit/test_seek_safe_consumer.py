"""SeekSafeConsumer drops records fetched before their partition was sought and seeks it again: pure logic,
the broker replaced by a fixed batch and a list of seeks. The race itself is exercised on the real stack by the
SIGKILL takeover test."""

from __future__ import annotations

import asyncio

import faust
from aiokafka.structs import ConsumerRecord
from faust.types import TP

from visionstream.faust_ext.seek_safe_consumer import SeekSafeTransport

SOUGHT = TP("images", 0)
OTHER = TP("images", 1)


def record(tp: TP, offset: int) -> ConsumerRecord:
    return ConsumerRecord(tp.topic, tp.partition, offset, 0, 0, b"k", b"v", None, 1, 1, [])


def batch_of(**offsets: range) -> dict[TP, list[ConsumerRecord]]:
    tps = {"sought": SOUGHT, "other": OTHER}
    return {tps[name]: [record(tps[name], o) for o in span] for name, span in offsets.items()}


def consumer_fetching(batch: dict[TP, list[ConsumerRecord]], committed: dict[TP, int]):
    """A consumer whose every fetch returns ``batch``; the seeks it sends to aiokafka land in ``.broker_seeks``."""
    app = faust.App("seek-safe-test", broker="kafka://127.0.0.1:9")
    unused = object()  # the fetch loop's callbacks: these tests iterate getmany themselves
    consumer = SeekSafeTransport(app.conf.broker_consumer, app).create_consumer(
        callback=unused, on_partitions_revoked=unused, on_partitions_assigned=unused)
    consumer.broker_seeks = []

    async def next_records(timeout: float):
        return batch, set(batch)

    class AiokafkaThread:
        def seek(self, tp: TP, offset: int) -> None:
            consumer.broker_seeks.append((tp, offset))

        async def seek_to_committed(self) -> dict[TP, int]:
            consumer.broker_seeks.extend((tp, offset) for tp, offset in committed.items() if offset)
            return committed

    consumer._wait_next_records = next_records
    consumer._thread = AiokafkaThread()
    consumer.highwater = lambda tp: 100
    consumer.assignment = lambda: set(batch)
    return consumer


async def deliver(consumer, seek_while_delivering=None, seek=None) -> list[tuple[TP, int]]:
    """Iterates one batch the way Faust's fetch loop does; ``seek`` runs while that record is delivered."""
    delivered = []
    async for tp, message in consumer.getmany(timeout=1):
        delivered.append((tp, message.offset))
        if (tp, message.offset) == seek_while_delivering:
            await seek()
        consumer._read_offset[tp] = message.offset  # Faust sets it once the message is in a stream queue
    return delivered


def test_records_fetched_before_a_seek_are_dropped_and_the_partition_sought_again():
    consumer = consumer_fetching(batch_of(sought=range(10, 15), other=range(20, 23)), committed={})
    delivered = asyncio.run(deliver(consumer, (SOUGHT, 11), lambda: consumer.seek(SOUGHT, 3)))

    assert [o for tp, o in delivered if tp == SOUGHT] == [10, 11]  # 12-14 are stale: fetched again from 3
    assert [o for tp, o in delivered if tp == OTHER] == [20, 21, 22]  # not sought: untouched
    # Sought again from the fetch loop, so aiokafka serves from 3 whatever it had handed over meanwhile.
    assert consumer.broker_seeks == [(SOUGHT, 3), (SOUGHT, 3)]
    # Not 11, which the stale delivery set: from 11 Faust would see 12 as a gap, or drop 3-10 as read.
    assert consumer._read_offset[SOUGHT] == 3
    assert consumer._read_offset[OTHER] == 22


def test_seeking_to_the_committed_offsets_drops_the_rest_of_the_batch_of_the_partitions_sought():
    committed = {SOUGHT: 4, OTHER: 18}
    consumer = consumer_fetching(batch_of(sought=range(10, 15), other=range(20, 23)), committed=committed)
    delivered = asyncio.run(deliver(consumer, (SOUGHT, 10), consumer.perform_seek))

    assert delivered == [(SOUGHT, 10)]
    assert sorted(consumer.broker_seeks) == sorted([*committed.items()] * 2)
    assert consumer._read_offset == committed


def test_a_partition_with_nothing_committed_is_not_sought_and_keeps_its_records():
    consumer = consumer_fetching(batch_of(sought=range(10, 13), other=range(0, 3)), committed={SOUGHT: 4, OTHER: None})
    delivered = asyncio.run(deliver(consumer, (SOUGHT, 10), consumer.perform_seek))

    assert [o for tp, o in delivered if tp == OTHER] == [0, 1, 2]
    assert consumer.broker_seeks == [(SOUGHT, 4), (SOUGHT, 4)]


def test_a_batch_requested_after_the_seek_is_delivered_whole():
    consumer = consumer_fetching(batch_of(sought=range(3, 6)), committed={})
    asyncio.run(consumer.seek(SOUGHT, 3))
    delivered = asyncio.run(deliver(consumer))

    assert delivered == [(SOUGHT, 3), (SOUGHT, 4), (SOUGHT, 5)]
    assert consumer.broker_seeks == [(SOUGHT, 3)]
    assert consumer._read_offset[SOUGHT] == 5
