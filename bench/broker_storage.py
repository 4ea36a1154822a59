"""What the local stack's durable broker costs, and what it keeps (issue 24 point 2):

    .venv/bin/python bench/broker_storage.py durable   # Tansu on the stack's S3 (stack up --durable-broker)
    .venv/bin/python bench/broker_storage.py memory    # Tansu in memory (the default stack)

Each run starts its own stack in a temporary folder on free ports, then: 200 records sent one at a time
(send_and_wait), 2,000 x 1 kB pipelined with one record per batch (the workers' PRODUCER_MAX_BATCH_SIZE on
the local stack), all 2,200 read back by a consumer group that commits; then the broker alone is restarted and
the topic read again without a group (what it kept) and with the group (what it re-reads: 0 when its offsets
were kept).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from visionstream.core.kafka_client import kafka_client_kwargs
from visionstream.dev.stack import LocalStack, StackPorts, free_ports
from visionstream.settings import Settings

TOPIC = "broker-storage"


async def produce(settings: Settings) -> tuple[float, float]:
    """Seconds for 200 records one at a time, and for 2,000 x 1 kB pipelined (one record a batch)."""
    admin = AIOKafkaAdminClient(**kafka_client_kwargs(settings))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(TOPIC, 2, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(**kafka_client_kwargs(settings), max_batch_size=1)
    await producer.start()
    try:
        started = time.monotonic()
        for i in range(200):
            await producer.send_and_wait(TOPIC, b"v", key=f"k{i}".encode())
        one_at_a_time = time.monotonic() - started
        started = time.monotonic()
        for _ in range(2000):
            await producer.send(TOPIC, b"x" * 1000)
        await producer.flush()
        return one_at_a_time, time.monotonic() - started
    finally:
        await producer.stop()


async def read(settings: Settings, group: str | None, idle: float = 3.0) -> tuple[int, float]:
    """(records read, seconds until the last one arrived); a group commits what it read."""
    consumer = AIOKafkaConsumer(TOPIC, **kafka_client_kwargs(settings), auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=group)
    await consumer.start()
    count, started = 0, time.monotonic()
    last = quiet_since = started
    try:
        while time.monotonic() - quiet_since < idle:
            for messages in (await consumer.getmany(timeout_ms=300)).values():
                count += len(messages)
                last = quiet_since = time.monotonic()
        if count and group:
            await consumer.commit()
    finally:
        await consumer.stop()
    return count, last - started


def main(engine: str) -> None:
    with tempfile.TemporaryDirectory(prefix="broker-storage-") as folder:
        local = LocalStack(Path(folder), StackPorts(*free_ports(3)), durable_broker=engine == "durable")
        local.up()
        try:
            settings = local.settings()
            one_at_a_time, pipelined = asyncio.run(produce(settings))
            print(f"{engine}: 200 send_and_wait {one_at_a_time:.2f} s; 2,000 x 1 kB pipelined {pipelined:.2f} s")
            print("{}: read with a group: {} records in {:.2f} s".format(engine, *asyncio.run(read(settings, "g"))))
            local.stop_server("kafka")
            local.up()
            print(f"{engine}: after a broker restart, without a group: {asyncio.run(read(settings, None))[0]} "
                  f"records; the group re-reads {asyncio.run(read(settings, 'g'))[0]}")
        finally:
            local.down()


if __name__ == "__main__":
    if sys.argv[1:] not in (["durable"], ["memory"]):
        sys.exit(__doc__)
    main(sys.argv[1])
