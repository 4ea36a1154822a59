"""Stream image keys into the images topic, from image_info or from an S3 prefix listing."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Sequence

from aiokafka import AIOKafkaProducer
from tqdm import tqdm

from visionstream.core.db import Parameters, connect
from visionstream.core.kafka_client import kafka_client_kwargs
from visionstream.core.records import ImageRequest
from visionstream.core.s3 import s3_client
from visionstream.settings import Settings
from visionstream.topics import ensure_topics

log = logging.getLogger(__name__)

FETCH_ROWS = 5_000  # rows per server-side cursor round trip
IN_FLIGHT = 20_000  # sends awaited together; bounds memory while keeping the producer's batches full


def encode_request(image_key: str, bucket: str | None) -> bytes:
    return ImageRequest(image_key=image_key, bucket=bucket).dumps()


async def keys_from_database(settings: Settings, where: str | None = None, limit: int | None = None,
                             prefix: str | None = None) -> AsyncIterator[tuple[str, str]]:
    """(image_key, bucket) rows of image_info, streamed through a server-side cursor."""
    conditions: list[str] = []
    args = Parameters()
    if prefix:
        conditions.append(f"starts_with(image_key, {args.bind(prefix)})")
    if where:
        # An operator's SQL filter, like a psql query; the READ ONLY transaction below keeps it from
        # changing anything. Everything else is a bound parameter.
        conditions.append(f"({where})")
    query = "SELECT image_key, bucket FROM image_info"
    if conditions:
        query += " WHERE " + " AND ".join(conditions)
    query += " ORDER BY image_key"
    if limit is not None:
        query += f" LIMIT {args.bind(limit)}"
    async for key in selected_keys(settings, query, args):
        yield key


async def selected_keys(settings: Settings, query: str, args: Sequence[object]) -> AsyncIterator[tuple[str, str]]:
    """(image_key, bucket) of a query's rows, through a server-side cursor in a READ ONLY transaction (the
    query may hold an operator's own condition)."""
    conn = await connect(settings)
    try:
        async with conn.transaction(readonly=True):
            async for row in conn.cursor(query, *args, prefetch=FETCH_ROWS):
                yield row["image_key"], row["bucket"]
    finally:
        await conn.close()


async def keys_from_s3(settings: Settings, prefix: str, limit: int | None) -> AsyncIterator[tuple[str, str]]:
    """(key, bucket) of every object under prefix in the configured bucket."""
    produced = 0
    async with s3_client(settings) as client:
        paginator = client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=settings.s3_bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                if limit is not None and produced >= limit:
                    return
                produced += 1
                yield obj["Key"], settings.s3_bucket


async def produce_keys(settings: Settings, keys: AsyncIterator[tuple[str, str | None]],
                       progress: tqdm | None = None) -> int:
    """Send every (image_key, bucket) to the images topic, keyed by image key; return how many. Keys of a
    bucket the workers do not read (VISIONSTREAM_S3_ALLOWED_BUCKETS) are not sent, and counted in a warning:
    each would only be a dead letter."""
    refused: Counter[str] = Counter()

    async def messages() -> AsyncIterator[Message]:
        async for image_key, bucket in keys:
            if bucket is not None and bucket not in settings.allowed_buckets:
                refused[bucket] += 1
                continue
            yield image_key.encode(), encode_request(image_key, bucket), None

    sent = await produce_messages(settings, messages(), progress)
    for bucket, count in refused.items():
        log.warning("%d keys of bucket %s not sent: workers read only VISIONSTREAM_S3_BUCKET and "
                    "VISIONSTREAM_S3_ALLOWED_BUCKETS", count, bucket)
    return sent


# (key, value, Kafka headers or None)
Message = tuple[bytes, bytes, Sequence[tuple[str, bytes]] | None]


async def produce_messages(settings: Settings, messages: AsyncIterator[Message],
                           progress: tqdm | None = None, topic: str | None = None) -> int:
    """Send every message as it is to ``topic`` (default: the images topic); return how many."""
    await ensure_topics(settings)
    producer = AIOKafkaProducer(
        **kafka_client_kwargs(settings),
        client_id=f"{settings.app_id}-producer",
        acks="all",
        linger_ms=20,
        max_batch_size=1 << 20,
    )
    await producer.start()
    sent = 0
    pending: list[asyncio.Future] = []
    try:
        async for key, value, headers in messages:
            pending.append(await producer.send(topic or settings.images_topic, value, key=key, headers=headers))
            sent += 1
            if len(pending) >= IN_FLIGHT:
                await asyncio.gather(*pending)
                if progress is not None:
                    progress.update(len(pending))
                pending.clear()
        await asyncio.gather(*pending)
        if progress is not None:
            progress.update(len(pending))
    finally:
        await producer.stop()
    return sent
