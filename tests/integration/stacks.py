"""A real local stack (Kafka-API broker, S3, PostgreSQL) on free ports, for the session and for the modules
that stop servers and so need one of their own; and reading back what a topic holds."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from aiokafka import AIOKafkaConsumer

from visionstream.core.db import migrate
from visionstream.core.kafka_client import kafka_client_kwargs
from visionstream.core.s3 import s3_client
from visionstream.dev.stack import LocalStack, StackPorts, free_ports
from visionstream.settings import Settings
from visionstream.topics import ensure_topics


@contextlib.contextmanager
def running_stack(folder: Path, durable_broker: bool = False) -> Iterator[LocalStack]:
    """A LocalStack under ``folder`` on free ports, up for the ``with`` block, down after it."""
    kafka, s3, postgres = free_ports(3)
    local = LocalStack(folder, StackPorts(kafka=kafka, s3=s3, postgres=postgres), durable_broker=durable_broker)
    try:
        local.up()
        yield local
    finally:
        local.down()


def own_topics(name: str) -> dict[str, str]:
    """Settings naming every topic ``<name>-...``: a test that changes the partition count must not create a
    default-named topic on the session stack with it (a later test's table then sees its changelog and its
    source topic disagree: PartitionsMismatch)."""
    return {field: f"{name}-{field.removesuffix('_topic').replace('_', '-')}"
            for field in Settings.model_fields if field.endswith("_topic")}


async def read_records(settings: Settings, topic: str, idle: float = 2.0, with_headers: bool = False) -> list[tuple]:
    """(key, value) of every record of a topic (and its headers ``with_headers``), read until nothing arrived
    for ``idle`` seconds (end offsets are unreliable on Tansu)."""
    consumer = AIOKafkaConsumer(topic, **kafka_client_kwargs(settings), auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    records = []
    try:
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < idle:
            for messages in (await consumer.getmany(timeout_ms=300)).values():
                records += [(message.key, message.value, *([message.headers] if with_headers else []))
                            for message in messages]
                quiet_since = time.monotonic()
    finally:
        await consumer.stop()
    return records


async def seed_stack(settings: Settings, objects: Mapping[str, bytes]) -> None:
    """What a worker under test finds: the schema, its topics, and these objects in the S3 bucket."""
    await migrate(settings)
    await ensure_topics(settings)
    async with s3_client(settings) as client:
        for key, data in objects.items():
            await client.put_object(Bucket=settings.s3_bucket, Key=key, Body=data)
