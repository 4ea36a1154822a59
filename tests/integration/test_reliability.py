"""No lost or duplicated results under crashes, outages and bad input, on a real local stack.

The module runs its own LocalStack because it stops and restarts servers; each test uses its own
app id and topics. Images are small (64x64 JPEGs, many keys holding copies of a few) so that the
checks are about delivery, not about inference speed. Figures are printed (pytest -s shows them).
"""

from __future__ import annotations

import asyncio
import io
import json
import signal
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable

import numpy as np
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from PIL import Image

from visionstream.cli import main as cli
from visionstream.core.db import connect, migrate
from visionstream.core.kafka_client import kafka_client_kwargs
from visionstream.core.s3 import s3_client
from visionstream.dev.stack import LocalStack, free_port
from visionstream.dev.workerproc import WorkerProcess
from visionstream.images.producer import produce_keys
from visionstream.settings import Settings
from visionstream.topics import ensure_topics

from .stacks import own_topics, read_records, running_stack

PARTITIONS = 4
MAX_PIXELS = 100_000  # a 512x512 image is over it, the 64x64 test images are not
FINISHING_LINE = "stopping: finishing the in-flight batch first"
DRAIN_LINE = "[^-VisionApp]: Wait for streams..."  # Faust's stop, waiting for the acks of taken events
GAVE_UP_LINE = "not finished within"  # the agent's warning when the stop grace ran out


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
    producer = AIOKafkaProducer(**kafka_client_kwargs(settings))
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


async def result_counts(settings: Settings, prefix: str = "") -> tuple[int, int]:
    """(rows, distinct image keys) of prediction_results from this app's images topic, keys under prefix."""
    conn = await connect(settings)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS rows, count(DISTINCT image_key) AS keys FROM prediction_results"
            " WHERE topic = $1 AND starts_with(image_key, $2)", settings.images_topic, prefix)
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


async def fetchval(settings: Settings, query: str, *args: object) -> object:
    conn = await connect(settings)
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


async def results_since(settings: Settings, epoch: float) -> int:
    return await fetchval(settings, "SELECT count(*) FROM prediction_results WHERE topic = $1 AND "
                          "time >= to_timestamp($2)", settings.images_topic, epoch)


async def committed_offsets(settings: Settings) -> dict[int, int]:
    """The consumer group's committed offsets; partitions are named (Tansu drops the call otherwise)."""
    admin = AIOKafkaAdminClient(**kafka_client_kwargs(settings))
    await admin.start()
    try:
        partitions = [TopicPartition(settings.images_topic, p) for p in range(PARTITIONS)]
        offsets = await admin.list_consumer_group_offsets(settings.app_id, partitions=partitions)
        return {tp.partition: max(meta.offset, 0) for tp, meta in offsets.items()}
    finally:
        await admin.close()


async def settled_offsets(settings: Settings, timeout: float = 15.0) -> dict[int, int]:
    """The committed offsets once they stop moving: equal in two reads three commit intervals (0.2 s) apart
    (commits of batches acked before an outage may still land after it began)."""
    deadline = time.monotonic() + timeout
    offsets = await committed_offsets(settings)
    while True:
        await asyncio.sleep(0.6)
        again = await committed_offsets(settings)
        if again == offsets:
            return offsets
        if time.monotonic() > deadline:
            raise AssertionError(f"committed offsets still moving after {timeout:.0f}s: {offsets} -> {again}")
        offsets = again


async def read_topic(settings: Settings, topic: str, idle: float = 2.0) -> list[dict]:
    """Every record of a topic as JSON."""
    return [json.loads(value) for _, value in await read_records(settings, topic, idle)]


class App:
    """One test's app id, topics and settings on the module's stack, and its workers."""

    def __init__(self, stack: LocalStack, tmp_path, **overrides: object) -> None:
        name = f"rel{uuid.uuid4().hex[:8]}"
        self.overrides = {
            **dict(app_id=name, **own_topics(name), topic_partitions=PARTITIONS, top_k=1, batch_size=32,
                   allow_random_weights=True, max_image_pixels=MAX_PIXELS, compile_model=False,
                   # Delivery, not models, is under test: the classifier alone, no frames.
                   image_analyzers="classify", frame_analyzers=""),
            **overrides,
        }
        self.name = name
        self.stack = stack
        self.settings = stack.settings(**self.overrides)
        self.tmp_path = tmp_path
        asyncio.run(self._prepare())

    async def _prepare(self) -> None:
        await migrate(self.settings)
        await ensure_topics(self.settings)

    def env(self, **overrides: object) -> dict[str, str]:
        return self.stack.env(**{**self.overrides, **overrides})

    def start_worker(self, hostname: str) -> WorkerProcess:
        port = free_port()
        return WorkerProcess(self.env(hostname=hostname, web_port=port), self.tmp_path / f"{hostname}.log", port)


@pytest.fixture(scope="module")
def rstack(tmp_path_factory):
    """This module's own stack: its tests stop PostgreSQL and S3, which must not disturb other modules."""
    with running_stack(tmp_path_factory.mktemp("reliability")) as local:
        yield local


# Crashes -----------------------------------------------------------------------------------------------

CRASH_KEYS = 2000


def max_republished(settings: Settings) -> int:
    """What one SIGKILL may re-publish: only what was not committed when it struck, i.e. the batches in flight
    on each of the two workers (2 x VISIONSTREAM_BATCHES_IN_FLIGHT x VISIONSTREAM_BATCH_SIZE, 3 x 32 here; the
    survivor's too, as the takeover's rebalance revokes its partitions) and what was acked within one 0.2 s
    commit interval on each (<= 64). The README's runs re-published 0-134 (with 2 in flight). Reading a
    taken-over partition again from its start would re-publish everything the victim wrote before it was
    killed, so the victim is killed only once it has written more than this bound (``kill_after``)."""
    return 2 * settings.batches_in_flight * settings.batch_size + 64


def kill_after(settings: Settings) -> int:
    """The victim's written results that trigger the SIGKILL: past the re-publish bound by a margin, so that
    the regression the bound exists for (re-reading a taken-over partition from its start) exceeds it."""
    return max_republished(settings) + 100


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

                async def victim_written() -> int:
                    return await conn.fetchval("SELECT count(*) FROM prediction_results WHERE topic = $1 AND "
                                               "hostname = 'victim'", app.settings.images_topic)

                trigger = kill_after(app.settings)

                async def victim_busy():
                    return await victim_written() >= trigger

                await wait_until(victim_busy, 120, f"the victim to write {trigger} results")
                victim.kill()
                # What a re-read from the start would re-publish at least: above the bound, or the test is blind.
                assert await victim_written() > max_republished(app.settings)
                killed_at = time.time()
                _, at_kill = await result_counts(app.settings)
                try:
                    await wait_until(lambda: _all_keys(app.settings, CRASH_KEYS), 180, "every key's result")
                except AssertionError as exc:
                    consumer = await asyncio.to_thread(_consumer_stats, survivor)
                    per_partition = await conn.fetch(
                        'SELECT "partition", count(*), max("offset") FROM prediction_results WHERE topic = $1 '
                        "GROUP BY 1 ORDER BY 1", app.settings.images_topic)
                    # mode's SIGUSR1 handler logs every thread's and task's stack: where the survivor waits.
                    survivor.process.send_signal(signal.SIGUSR1)
                    await asyncio.sleep(3)
                    raise AssertionError(f"{exc}; survivor consumer: {consumer}; results per partition: "
                                         f"{[tuple(r) for r in per_partition]}; survivor log: {survivor.log_path}\n"
                                         f"{survivor.log_text()[-6000:]}") from None
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
            published = Counter(record["image_key"] for record in
                                await read_topic(app.settings, app.settings.predictions_topic))
            return published, {"done at kill": at_kill, "takeover s": takeover - killed_at, "run s": elapsed,
                               "published": sum(published.values()),
                               "re-published": sum(published.values()) - CRASH_KEYS}

        published, figures = asyncio.run(scenario())
    finally:
        victim.kill()
        survivor.stop()
    rows, distinct = asyncio.run(result_counts(app.settings))
    assert (rows, distinct) == (CRASH_KEYS, CRASH_KEYS)  # top_k 1: one row per key, none twice
    # What a downstream consumer of the predictions topic sees: every key at least once, and few keys again.
    # The topic is at-least-once (Tansu has no transactions): a key in flight on the victim and then again on
    # the survivor when a second rebalance revokes it is published three times (CI, 2026-12-01), so the bound
    # is on the total re-published, not per key.
    assert set(published) == set(keys), f"{len(set(keys) - set(published))} keys never published"
    bound = max_republished(app.settings)
    assert figures["re-published"] <= bound, (
        f"{figures['re-published']} results re-published after one SIGKILL (bound {bound})")
    print(f"\nSIGKILL: {CRASH_KEYS} keys, rows {rows}, distinct {distinct}, {figures}")


def _consumer_stats(worker: WorkerProcess) -> object:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.web_port}/stats/consumer", timeout=5) as response:
            return json.load(response)
    except OSError as exc:
        return f"unavailable: {exc}"


async def _all_keys(settings: Settings, expected: int, prefix: str = "") -> bool:
    _, keys = await result_counts(settings, prefix)
    return keys >= expected


def test_sigterm_finishes_and_commits_the_in_flight_batch(rstack, tmp_path):
    """SIGTERM to a busy worker: it finishes the batches in flight, commits them and exits 0 within the stop
    grace, with no SIGKILL; the committed offset of every partition then equals the results written from it."""
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
        mark = worker.log_mark()
        grace = app.settings.stop_grace_seconds  # the documented 30 s unless overridden
        signalled_at = time.time()
        # Past the grace: a worker that has not exited by then is SIGKILLed, and the test says so.
        exit_code = worker.stop(timeout=grace + 15)
    finally:
        worker.kill()
    stopping_log = worker.log_text(since=mark)
    assert not worker.killed, f"the worker ignored SIGTERM for {grace + 15:.0f}s and was SIGKILLed"
    assert exit_code == 0, f"the worker exited with {exit_code} after SIGTERM:\n{stopping_log[-4000:]}"
    assert worker.stop_seconds <= grace, (
        f"the worker took {worker.stop_seconds:.1f}s to exit, over the {grace:.0f}s stop grace")
    written = asyncio.run(results_per_partition(app.settings))
    finished_after_signal = asyncio.run(results_since(app.settings, signalled_at))
    committed = asyncio.run(committed_offsets(app.settings))
    assert sum(written.values()) < len(keys), "the worker finished everything before SIGTERM: no in-flight work"
    assert finished_after_signal > 0, "no result was written after SIGTERM: the in-flight batches were dropped"
    # Every key is distinct and valid, so a partition's results are its first N offsets. Committed < written
    # would mean finished work is redone; committed > written would mean a result was lost.
    assert committed == {p: written.get(p, 0) for p in range(PARTITIONS)}
    # Who finished the batches: Faust's stop waits for every taken event's ack ("Wait for streams...", its
    # stream_wait_empty) before it cancels the agents; the agent's own finishing step (FINISHING_LINE) runs
    # only if it is cancelled with batches still in flight. Either way nothing may be given up.
    assert DRAIN_LINE in stopping_log or FINISHING_LINE in stopping_log, (
        f"no drain of the in-flight batches logged after SIGTERM:\n{stopping_log[-4000:]}")
    assert GAVE_UP_LINE not in stopping_log, stopping_log[-4000:]
    print(f"\nSIGTERM: exit {exit_code} in {worker.stop_seconds:.1f}s; results per partition {written} == committed "
          f"{committed}; {finished_after_signal} results computed after the signal; "
          f"finished by {'the agent' if FINISHING_LINE in stopping_log else 'Faust'}")


# Bad input, hostile keys and outages: one worker shared by these tests -------------------------------

@pytest.fixture(scope="module")
def steady(rstack, tmp_path_factory):
    app = App(rstack, tmp_path_factory.mktemp("steady"))
    worker = app.start_worker("steady")
    try:
        worker.wait_ready()
        yield app, worker
    finally:
        worker.stop()


def test_bad_input_is_dead_lettered_once_and_can_be_retried(steady, monkeypatch, capsys):
    app, _ = steady
    settings = app.settings
    good = small_jpegs(1, seed=2)[0]
    prefix = f"{app.name}/bad/"
    objects = {
        f"{prefix}zero-bytes.jpg": b"",
        f"{prefix}truncated.jpg": good[: len(good) // 2],
        f"{prefix}corrupt.jpg": corrupt_jpeg(good),
        f"{prefix}not-an-image.jpg": b"plain text, not a JPEG",
        f"{prefix}oversized.jpg": oversized_jpeg(),
    }
    missing = f"{prefix}uploaded-later.jpg"
    raw = [
        (b"malformed", b"{not json"),
        (b"future", json.dumps({"image_key": "x.jpg", "v": 7}).encode()),
        (b"not-an-object", b"[1, 2]"),
        (b"empty-value", b""),
        (None, json.dumps({"bucket": "b"}).encode()),  # no image_key, no Kafka key
    ]

    async def send_bad_input() -> list:
        await upload(settings, objects)
        await produce(settings, [*objects, missing])
        await produce_raw(settings, raw)
        expected = len(objects) + 1 + len(raw)
        conn = await connect(settings)
        try:
            async def recorded():
                rows = await conn.fetch("SELECT * FROM processing_errors WHERE topic = $1", settings.images_topic)
                return rows if len(rows) >= expected else None

            await wait_until(recorded, 120, f"{expected} processing_errors rows")
            await asyncio.sleep(1.0)  # a duplicate would arrive now
            return await conn.fetch("SELECT * FROM processing_errors WHERE topic = $1", settings.images_topic)
        finally:
            await conn.close()

    rows = asyncio.run(send_bad_input())
    by_key = {row["image_key"]: row for row in rows}
    assert len(rows) == len(by_key) == len(objects) + 1 + len(raw)
    assert {key: by_key[key]["stage"] for key in objects} == dict.fromkeys(objects, "decode")
    assert by_key[f"{prefix}oversized.jpg"]["reason"] == (
        f"512x512 exceeds {MAX_PIXELS} pixels (VISIONSTREAM_MAX_IMAGE_PIXELS)")
    assert (by_key[missing]["stage"], by_key[missing]["reason"]) == ("fetch", "NoSuchKey")
    parse_rows = [row for row in rows if row["stage"] == "parse"]
    assert sorted(row["payload"] for row in parse_rows) == sorted(value for _, value in raw)
    assert "unknown record version 7" in by_key["future"]["reason"]
    # The dead-letter topic has the same errors, each message exactly once.
    letters = asyncio.run(read_topic(settings, settings.dead_letter_topic))
    assert Counter((d["partition"], d["offset"]) for d in letters) == Counter(
        (row["partition"], row["offset"]) for row in rows)
    assert {d["image_key"]: d["stage"] for d in letters} == {row["image_key"]: row["stage"] for row in rows}

    for name, value in app.env().items():
        monkeypatch.setenv(name, value)
    assert cli.main(["errors", "--stage", "decode", "--limit", "10"]) == 0
    table = capsys.readouterr().out
    assert all(key in table for key in objects) and missing not in table and "exceeds" in table
    assert cli.main(["retry"]) == 2  # nothing chosen: refuses rather than retrying everything

    # The missing object appears; retrying its key classifies it.
    asyncio.run(upload(settings, {missing: good}))
    assert cli.main(["retry", "--key", missing]) == 0
    assert "sent 1 message(s)" in capsys.readouterr().out
    asyncio.run(wait_until(lambda: _all_keys(settings, 1, missing), 60, "the retried key's result"))
    assert asyncio.run(result_counts(settings, missing)) == (1, 1)

    # Parse errors go back raw: they fail again, with the same payloads under new offsets; a second
    # retry sends only those new ones.
    def parse_errors_reaching(count: int) -> Callable[[], Awaitable[list | None]]:
        async def check():
            conn = await connect(settings)
            try:
                found = await conn.fetch("SELECT payload, retried_at FROM processing_errors WHERE topic = $1 "
                                         "AND stage = 'parse'", settings.images_topic)
                return found if len(found) >= count else None
            finally:
                await conn.close()

        return check

    for round_ in (2, 3):
        assert cli.main(["retry", "--stage", "parse"]) == 0
        assert f"sent {len(raw)} message(s)" in capsys.readouterr().out
        again = asyncio.run(wait_until(parse_errors_reaching(round_ * len(raw)), 60, "the re-sent errors"))
    assert sorted(row["payload"] for row in again) == sorted(value for _, value in raw * 3)
    assert sum(row["retried_at"] is not None for row in again) == 2 * len(raw)


HOSTILE_NAMES = [
    "quote's \"double\" `back`.jpg",
    "back\\slash\\\\twice\\.jpg",
    "ünïcødé/猫の写真/😀 émoji.jpg",
    "combining e\u0301 vs \u00e9.jpg",  # NFD and NFC must stay two different keys
    "  spaces  inside and trailing .jpg ",
    "percent%20plus+amp&hash#query?x=1;semi.jpg",
    "'; DROP TABLE prediction_results; --.jpg",
]


def test_hostile_keys_round_trip_exactly(steady):
    app, _ = steady
    settings = app.settings
    prefix = f"{app.name}/hostile/"
    keys = [prefix + name for name in HOSTILE_NAMES]
    # 1,000 characters in 200-character path segments; S3 allows 1,024 UTF-8 bytes.
    long_key = (prefix + "long 'é' \\" + "x" * 1000)[:995] + ".jpg"
    keys.append("/".join(long_key[i:i + 199] for i in range(0, len(long_key), 199)))
    assert len(keys[-1]) >= 1000 and len(keys[-1].encode()) <= 1024
    image = small_jpegs(1, seed=3)[0]

    async def scenario() -> tuple[list[str], list[dict]]:
        await upload(settings, dict.fromkeys(keys, image))
        await produce(settings, keys)
        await wait_until(lambda: _all_keys(settings, len(keys), prefix), 120, "the hostile keys' results")
        conn = await connect(settings)
        try:
            stored = [row["image_key"] for row in await conn.fetch(
                "SELECT image_key FROM prediction_results WHERE topic = $1 AND starts_with(image_key, $2)",
                settings.images_topic, prefix)]
        finally:
            await conn.close()
        return stored, await read_topic(settings, settings.predictions_topic)

    stored, published = asyncio.run(scenario())
    assert sorted(stored) == sorted(keys)
    assert {p["image_key"] for p in published if p["image_key"].startswith(prefix)} == set(keys)


OUTAGE_KEYS = 400


@pytest.mark.parametrize(("server", "down_seconds", "retry_line"), [
    ("postgres", 10.0, "PostgreSQL write failed"),
    ("s3", 5.0, "S3 GET"),
])
def test_outage_is_waited_out(steady, rstack, server, down_seconds, retry_line):
    """A server stops mid-run: work waits, offsets stay put, and nothing is lost when it is back."""
    app, worker = steady
    settings = app.settings
    prefix = f"{app.name}/{server}-outage/"
    images = small_jpegs(10, seed=4)
    keys = [f"{prefix}{i:04d}.jpg" for i in range(OUTAGE_KEYS)]

    async def scenario() -> dict[str, float]:
        await upload(settings, {key: images[i % len(images)] for i, key in enumerate(keys)})
        await produce(settings, keys)
        await wait_until(lambda: _some_keys(settings, 64, prefix), 120, "the first results")
        mark = worker.log_mark()  # the worker is shared: look only at what it logs from here on
        stopped_at = time.monotonic()
        await asyncio.to_thread(rstack.stop_server, server)  # up() and stop_server() run their own loops
        try:
            async def retrying() -> bool:
                return retry_line in worker.log_text(since=mark)

            await wait_until(retrying, 30, f"the worker to log {retry_line!r} during the {server} outage")
            frozen = await settled_offsets(settings)
            checks = 0
            while checks < 3 or time.monotonic() < stopped_at + down_seconds:
                assert await committed_offsets(settings) == frozen, "offsets were committed during the outage"
                checks += 1
                await asyncio.sleep(0.5)
        finally:
            await asyncio.to_thread(rstack.up)
        back_at = time.monotonic()
        _, before = await result_counts(settings, prefix)
        await wait_until(lambda: _some_keys(settings, before + 1, prefix), 60, "a result after the restart")
        resumed_at = time.monotonic()
        await wait_until(lambda: _all_keys(settings, OUTAGE_KEYS, prefix), 120, "every key after the outage")
        return {"down s": back_at - stopped_at, "first result s after restart": resumed_at - back_at,
                "all done s after restart": time.monotonic() - back_at,
                "frozen committed offsets": sum(frozen.values())}

    figures = asyncio.run(scenario())
    assert asyncio.run(result_counts(settings, prefix)) == (OUTAGE_KEYS, OUTAGE_KEYS)
    assert asyncio.run(_errors_under(settings, prefix)) == 0  # the outage was not mistaken for bad input
    print(f"\n{server} outage: {OUTAGE_KEYS} keys, all {OUTAGE_KEYS} results, no errors, {figures}")


async def _some_keys(settings: Settings, expected: int, prefix: str) -> bool:
    _, keys = await result_counts(settings, prefix)
    return keys >= expected


async def _errors_under(settings: Settings, prefix: str) -> int:
    return await fetchval(settings, "SELECT count(*) FROM processing_errors WHERE topic = $1 AND "
                          "starts_with(image_key, $2)", settings.images_topic, prefix)
