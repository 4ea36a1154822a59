"""No lost or duplicated results under crashes, outages and bad input, on a real local stack.

The module runs its own LocalStack because it stops and restarts servers; each test uses its own
app id and topics. Images are small (64x64 JPEGs, many keys holding copies of a few) so that the
checks are about delivery, not about inference speed. Figures are printed (pytest -s shows them).
"""

from __future__ import annotations

import asyncio
import io
import json
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from PIL import Image

from visionstream import cli
from visionstream.db import connect, migrate
from visionstream.producer import produce_keys
from visionstream.s3 import s3_client
from visionstream.settings import Settings, env_name
from visionstream.stack import LocalStack, StackPorts, free_port, free_ports
from visionstream.topics import ensure_topics
from visionstream.workerproc import WorkerProcess

PARTITIONS = 4
MAX_PIXELS = 100_000  # a 512x512 image is over it, the 64x64 test images are not
FINISHING_LINE = "stopping: finishing the in-flight batch first"


# Helpers -----------------------------------------------------------------------------------------------

def small_jpegs(count: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=80)
        images.append(buffer.getvalue())
    return images


def corrupt_jpeg(data: bytes) -> bytes:
    """Zero the frame header's height and width: a JPEG marker structure no decoder accepts."""
    start = data.index(b"\xff\xc0")
    return data[: start + 5] + b"\x00\x00\x00\x00" + data[start + 9:]


def oversized_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (512, 512), (200, 30, 30)).save(buffer, "JPEG")
    return buffer.getvalue()


async def upload(settings: Settings, objects: dict[str, bytes]) -> None:
    limit = asyncio.Semaphore(32)
    async with s3_client(settings) as client:
        async def put(key: str, data: bytes) -> None:
            async with limit:
                await client.put_object(Bucket=settings.s3_bucket, Key=key, Body=data)

        await asyncio.gather(*(put(key, data) for key, data in objects.items()))


async def produce(settings: Settings, keys: Iterable[str]) -> int:
    async def source():
        for key in keys:
            yield key, None

    return await produce_keys(settings, source())


async def produce_raw(settings: Settings, messages: Iterable[tuple[bytes | None, bytes | None]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        for key, value in messages:
            await producer.send_and_wait(settings.images_topic, value, key=key)
    finally:
        await producer.stop()


async def wait_until(predicate: Callable[[], Awaitable[object]], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.2)


async def result_counts(settings: Settings) -> tuple[int, int]:
    """(rows, distinct image keys) of prediction_results from this test's images topic."""
    conn = await connect(settings)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS rows, count(DISTINCT image_key) AS keys FROM prediction_results WHERE topic = $1",
            settings.images_topic)
        return row["rows"], row["keys"]
    finally:
        await conn.close()


async def results_per_partition(settings: Settings) -> dict[int, int]:
    conn = await connect(settings)
    try:
        rows = await conn.fetch(
            'SELECT "partition", count(*) AS n FROM prediction_results WHERE topic = $1 GROUP BY 1',
            settings.images_topic)
        return {row["partition"]: row["n"] for row in rows}
    finally:
        await conn.close()


async def results_since(settings: Settings, epoch: float) -> int:
    conn = await connect(settings)
    try:
        return await conn.fetchval(
            "SELECT count(*) FROM prediction_results WHERE topic = $1 AND time >= to_timestamp($2)",
            settings.images_topic, epoch)
    finally:
        await conn.close()


async def committed_offsets(settings: Settings) -> dict[int, int]:
    """The consumer group's committed offsets; partitions are named (Tansu drops the call otherwise)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        partitions = [TopicPartition(settings.images_topic, p) for p in range(PARTITIONS)]
        offsets = await admin.list_consumer_group_offsets(settings.app_id, partitions=partitions)
        return {tp.partition: max(meta.offset, 0) for tp, meta in offsets.items()}
    finally:
        await admin.close()


async def read_topic(settings: Settings, topic: str, idle: float = 2.0) -> list[dict]:
    """Every record of a topic, read until nothing arrived for ``idle`` seconds (end offsets are unreliable
    on Tansu)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    records = []
    try:
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < idle:
            batch = await consumer.getmany(timeout_ms=300)
            for messages in batch.values():
                records += [json.loads(message.value) for message in messages]
                quiet_since = time.monotonic()
    finally:
        await consumer.stop()
    return records


class App:
    """One test's app id, topics and settings on the module's stack, and its workers."""

    def __init__(self, stack: LocalStack, tmp_path, **overrides: object) -> None:
        name = f"rel{uuid.uuid4().hex[:8]}"
        self.overrides = dict(
            app_id=name, images_topic=f"{name}-images", predictions_topic=f"{name}-predictions",
            dead_letter_topic=f"{name}-dead", topic_partitions=PARTITIONS, top_k=1, batch_size=32,
            allow_random_weights=True, max_image_pixels=MAX_PIXELS, **overrides,
        )
        self.name = name
        self.stack = stack
        self.settings = stack.settings(**self.overrides)
        self.tmp_path = tmp_path
        asyncio.run(self._prepare())

    async def _prepare(self) -> None:
        await migrate(self.settings)
        await ensure_topics(self.settings)

    def env(self, **overrides: object) -> dict[str, str]:
        fields = {**self.overrides, **overrides}
        return {**self.stack.env(), **{env_name(k): str(v) for k, v in fields.items()}}

    def start_worker(self, hostname: str) -> WorkerProcess:
        port = free_port()
        return WorkerProcess(self.env(hostname=hostname, web_port=port), self.tmp_path / f"{hostname}.log", port)


@pytest.fixture(scope="module")
def rstack(tmp_path_factory):
    """This module's own stack: its tests stop PostgreSQL and S3, which must not disturb other modules."""
    kafka, s3, postgres = free_ports(3)
    local = LocalStack(tmp_path_factory.mktemp("reliability"), StackPorts(kafka=kafka, s3=s3, postgres=postgres))
    try:
        local.up()
        yield local
    finally:
        local.down()


# Crashes -----------------------------------------------------------------------------------------------

CRASH_KEYS = 2000


def test_sigkill_loses_and_duplicates_nothing(rstack, tmp_path):
    """Two workers share 2,000 keys; one is SIGKILLed mid-run; the survivor finishes everything."""
    app = App(rstack, tmp_path)
    images = small_jpegs(20)
    keys = [f"{app.name}/img-{i:05d}.jpg" for i in range(CRASH_KEYS)]
    asyncio.run(upload(app.settings, {key: images[i % len(images)] for i, key in enumerate(keys)}))
    victim, survivor = app.start_worker("victim"), app.start_worker("survivor")
    try:
        victim.wait_ready()
        survivor.wait_ready()

        async def scenario() -> dict[str, float]:
            conn = await connect(app.settings)
            try:
                assert await produce(app.settings, keys) == CRASH_KEYS
                started = time.monotonic()

                async def victim_busy():
                    n = await conn.fetchval("SELECT count(*) FROM prediction_results WHERE topic = $1 AND "
                                            "hostname = 'victim'", app.settings.images_topic)
                    return n >= 200

                await wait_until(victim_busy, 120, "the victim to write 200 results")
                victim.kill()
                killed_at = time.time()
                _, at_kill = await result_counts(app.settings)
                await wait_until(lambda: _all_keys(app.settings, CRASH_KEYS), 180, "every key's result")
                elapsed = time.monotonic() - started
                victim_partitions = {r["partition"] for r in await conn.fetch(
                    'SELECT DISTINCT "partition" FROM prediction_results WHERE topic = $1 AND hostname = $2',
                    app.settings.images_topic, "victim")}
                taken_over = await conn.fetch(
                    'SELECT "partition", min(time) AS first FROM prediction_results WHERE topic = $1 AND '
                    "hostname = 'survivor' AND time > to_timestamp($2) GROUP BY 1",
                    app.settings.images_topic, killed_at)
            finally:
                await conn.close()
            # The survivor wrote to every partition after the kill: it took over the victim's.
            assert victim_partitions and {r["partition"] for r in taken_over} == set(range(PARTITIONS))
            takeover = min(r["first"].timestamp() for r in taken_over if r["partition"] in victim_partitions)
            published = await read_topic(app.settings, app.settings.predictions_topic)
            return {"done at kill": at_kill, "takeover s": takeover - killed_at, "run s": elapsed,
                    "published": len(published), "reprocessed": len(published) - CRASH_KEYS}

        figures = asyncio.run(scenario())
    finally:
        victim.kill()
        survivor.stop()
    rows, distinct = asyncio.run(result_counts(app.settings))
    assert (rows, distinct) == (CRASH_KEYS, CRASH_KEYS)  # top_k 1: one row per key, none twice
    assert figures["published"] >= CRASH_KEYS  # at-least-once on the topic: redelivery may republish
    print(f"\nSIGKILL: {CRASH_KEYS} keys, rows {rows}, distinct {distinct}, {figures}")


async def _all_keys(settings: Settings, expected: int) -> bool:
    _, keys = await result_counts(settings)
    return keys >= expected


def test_sigterm_finishes_and_commits_the_in_flight_batch(rstack, tmp_path):
    """After SIGTERM, the committed offset of every partition equals the results written from it."""
    app = App(rstack, tmp_path)
    images = small_jpegs(10, seed=1)
    keys = [f"{app.name}/img-{i:05d}.jpg" for i in range(1000)]
    asyncio.run(upload(app.settings, {key: images[i % len(images)] for i, key in enumerate(keys)}))
    worker = app.start_worker("stopping")
    try:
        worker.wait_ready()

        async def run_then_stop() -> None:
            assert await produce(app.settings, keys) == len(keys)

            async def some_done():
                return (await result_counts(app.settings))[1] >= 200

            await wait_until(some_done, 120, "200 results")

        asyncio.run(run_then_stop())
        signalled_at = time.time()
        assert worker.stop() is not None
        stop_seconds = time.time() - signalled_at
    finally:
        worker.kill()
    written = asyncio.run(results_per_partition(app.settings))
    finished_after_signal = asyncio.run(results_since(app.settings, signalled_at))
    committed = asyncio.run(committed_offsets(app.settings))
    # Every key is distinct and valid, so a partition's results are its first N offsets. Committed < written
    # would mean finished work is redone; committed > written would mean a result was lost.
    assert sum(written.values()) < len(keys), "the worker finished everything before SIGTERM: no in-flight work"
    assert committed == {p: written.get(p, 0) for p in range(PARTITIONS)}
    print(f"\nSIGTERM: stopped in {stop_seconds:.1f}s; results per partition {written} == committed {committed}; "
          f"{finished_after_signal} results computed after the signal; "
          f"cancelled mid-batch: {FINISHING_LINE in worker.log_text()}")
