"""Keys -> Kafka -> Faust worker -> S3 -> SqueezeNet -> PostgreSQL and topics, on the real local stack."""

from __future__ import annotations

import asyncio
import json
import math
import time
import urllib.request
import uuid
from collections import Counter

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from visionstream.classification.model import weights_file_version
from visionstream.core.db import connect
from visionstream.core.kafka_client import kafka_client_kwargs
from visionstream.core.s3 import s3_client
from visionstream.dev.samples import sample_images
from visionstream.dev.stack import free_port
from visionstream.dev.workerproc import WorkerProcess
from visionstream.images.producer import encode_request, produce_keys
from visionstream.schemas import message_errors

from ..media import squeezenet_weights
from .stacks import own_topics, read_records, seed_stack

GOOD_IMAGES = 240
TOP_K = 3
PARTITIONS = 2


async def _keys(items):
    for item in items:
        yield item


async def _wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.3)


@pytest.fixture(scope="module")
def run(stack, tmp_path_factory):
    """A worker on fresh topics with 2 partitions, and a bucket holding good and bad images."""
    name = f"e2e{uuid.uuid4().hex[:8]}"
    weights = squeezenet_weights()
    overrides = dict(
        app_id=name, **own_topics(name), topic_partitions=PARTITIONS, top_k=TOP_K, batch_size=16,
        model_weights=weights, allow_random_weights=weights is None, hostname=f"host-{name}",
        web_port=free_port(), compile_model=False,  # compiling is covered by test_classifier.py
    )
    settings = stack.settings(**overrides)
    good = {}
    for label, file_name, data in sample_images(GOOD_IMAGES):
        good[f"{name}/{label}/{file_name}"] = (label, data)
    bad = {
        f"{name}/bad/zero.jpg": b"",
        f"{name}/bad/not-an-image.jpg": b"this is a text file, not a JPEG",
        f"{name}/bad/truncated.jpg": next(iter(good.values()))[1][:5000],
    }

    asyncio.run(seed_stack(settings, {**{key: data for key, (_, data) in good.items()}, **bad}))
    env = stack.env(**overrides)
    worker = WorkerProcess(env, tmp_path_factory.mktemp("worker") / "worker.log", settings.web_port)
    try:
        worker.wait_ready()
        yield settings, good, bad, worker
    finally:
        worker.stop()


def test_keys_to_results_end_to_end(run):
    settings, good, bad, worker = run
    missing_key = f"{settings.app_id}/missing/never-uploaded.jpg"
    duplicated = list(good)[:20]

    async def scenario():
        keys = [(k, settings.s3_bucket) for k in good] + [(k, settings.s3_bucket) for k in duplicated]
        keys += [(k, settings.s3_bucket) for k in bad] + [(missing_key, settings.s3_bucket)]
        assert await produce_keys(settings, _keys(keys)) == len(keys)
        producer = AIOKafkaProducer(**kafka_client_kwargs(settings))
        await producer.start()
        try:
            await producer.send_and_wait(settings.images_topic, b"{not json", key=b"malformed-1")
            await producer.send_and_wait(
                settings.images_topic, json.dumps({"image_key": "x", "v": 7}).encode(), key=b"future-version"
            )
        finally:
            await producer.stop()

        conn = await connect(settings)
        try:
            expected_errors = len(bad) + 3

            async def finished():
                results = await conn.fetchval(
                    "SELECT count(DISTINCT image_key) FROM prediction_results WHERE hostname = $1",
                    settings.hostname)
                errors = await conn.fetchval(
                    "SELECT count(*) FROM processing_errors WHERE topic = $1", settings.images_topic)
                return results >= len(good) and errors >= expected_errors

            await _wait_until(finished, 300, "every key to have a result or an error")
            rows = await conn.fetch(
                "SELECT image_key, rank, category, class_index, confidence, hostname, time, model, \"partition\""
                " FROM prediction_results WHERE hostname = $1", settings.hostname)
            errors = await conn.fetch(
                "SELECT image_key, stage, reason, hostname FROM processing_errors WHERE topic = $1",
                settings.images_topic)
        finally:
            await conn.close()

        # One row per key and rank: the 20 keys produced twice did not add rows.
        assert len(rows) == len(good) * TOP_K
        assert {(r["image_key"], r["rank"]) for r in rows} == {(k, rank) for k in good for rank in (1, 2, 3)}
        weights = squeezenet_weights()
        version = weights_file_version(weights) if weights else "random"
        assert {r["model"] for r in rows} == {f"squeezenet1_1@{version}"}  # name@version of the weights
        assert {r["partition"] for r in rows} == {0, 1}
        now = time.time()
        assert all(now - 600 < r["time"].timestamp() <= now + 5 for r in rows)
        assert all(0 <= r["confidence"] <= 1 for r in rows)
        by_key = {}
        for r in rows:
            by_key.setdefault(r["image_key"], []).append(r)
        for ranked in by_key.values():
            ranked.sort(key=lambda r: r["rank"])
            assert ranked[0]["confidence"] >= ranked[1]["confidence"] >= ranked[2]["confidence"]
        if squeezenet_weights() is not None:
            assert by_key[f"{settings.app_id}/chelsea/chelsea.jpg"][0]["category"] == "Egyptian cat"
            assert by_key[f"{settings.app_id}/coffee/coffee.jpg"][0]["category"] == "espresso"

        stages = {e["image_key"]: (e["stage"], e["reason"]) for e in errors}
        assert stages[missing_key] == ("fetch", "NoSuchKey")
        for key in bad:
            assert stages[key][0] == "decode", stages[key]
        assert stages["malformed-1"][0] == "parse"
        assert "unknown record version 7" in stages["future-version"][1]
        assert len(errors) == len(bad) + 3
        assert {e["hostname"] for e in errors} == {settings.hostname}
        return rows, errors

    rows, errors = asyncio.run(scenario())

    async def dead_letters():
        consumer = AIOKafkaConsumer(
            settings.dead_letter_topic, **kafka_client_kwargs(settings),
            auto_offset_reset="earliest", enable_auto_commit=False, group_id=None,
        )
        await consumer.start()
        seen = {}
        try:
            deadline = time.monotonic() + 30
            while len(seen) < len(errors) and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for record in records:
                        assert message_errors("dead_letter_topic", record.key, record.value, record.headers) == []
                        payload = json.loads(record.value)
                        seen[payload["image_key"]] = payload
        finally:
            await consumer.stop()
        return seen

    # What a downstream consumer of the predictions topic sees: plain JSON keyed by image key, agreeing with
    # the database, one record per message produced (the 20 keys produced twice are published twice). One
    # worker and no fault: a record published more often is work redone (offsets committed late or re-read).
    published = asyncio.run(read_records(settings, settings.predictions_topic))
    ours = [(key, value) for key, value in published if key.decode() in good]
    assert Counter(key.decode() for key, _ in ours) == Counter([*good, *duplicated])
    assert not {key.decode() for key, _ in published} & {*bad, missing_key}
    ranked = {(r["image_key"], r["rank"]): r for r in rows}
    for key, value in ours:
        assert message_errors("predictions_topic", key, value) == []  # the published contract
        record = json.loads(value)
        assert isinstance(record, dict) and record["image_key"] == key.decode(), record
        assert (record["v"], record["model"], record["hostname"]) == (
            1, ranked[(record["image_key"], 1)]["model"], settings.hostname)
        assert [c["rank"] for c in record["top_k"]] == [1, 2, 3]
        for category in record["top_k"]:
            row = ranked[(record["image_key"], category["rank"])]
            assert (category["category"], category["class_index"]) == (row["category"], row["class_index"])
            assert math.isclose(category["confidence"], row["confidence"], rel_tol=1e-6)
        assert (record["category"], record["confidence"]) == (record["top_k"][0]["category"],
                                                              record["top_k"][0]["confidence"])
        # Epoch seconds of the computation; a key produced twice keeps its first row, its second record is later.
        stored = ranked[(record["image_key"], 1)]["time"].timestamp()
        assert record["time"] >= stored - 1e-3 if record["image_key"] in duplicated else \
            math.isclose(record["time"], stored, abs_tol=1e-3), (record["time"], stored)

    seen = asyncio.run(dead_letters())
    assert set(seen) == {e["image_key"] for e in errors}
    assert seen[missing_key]["stage"] == "fetch" and seen[missing_key]["reason"] == "NoSuchKey"

    # The live table counts each prediction record once: top-1 per image, the 20 keys produced twice twice
    # (two records), nothing else (exact: a record applied again is skipped, tables/partitions.py).
    def stats():
        with urllib.request.urlopen(f"http://127.0.0.1:{settings.web_port}/stats/categories", timeout=5) as r:
            return json.loads(r.read())

    expected = Counter(json.loads(value)["category"] for _, value in published)
    deadline = time.monotonic() + 30
    while (body := stats())["total"] < len(good) + len(duplicated) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert body["total"] == len(good) + len(duplicated) == len(published)
    assert {c["category"]: c["count"] for c in body["categories"]} == expected
    assert body["categories"][0]["count"] >= body["categories"][-1]["count"]


def test_offsets_are_committed_only_after_the_database_write(run):
    """While results cannot be written, the consumer group's committed offsets must not move."""
    settings, good, _, worker = run
    image = good[f"{settings.app_id}/chelsea/chelsea.jpg"][1]
    late = f"{settings.app_id}/late/{uuid.uuid4().hex}"
    warm_up = {p: f"{late}-warm-up-{p}.jpg" for p in range(PARTITIONS)}
    fresh = f"{late}.jpg"

    async def scenario():
        conn = await connect(settings)
        admin = AIOKafkaAdminClient(**kafka_client_kwargs(settings))
        producer = AIOKafkaProducer(**kafka_client_kwargs(settings))
        await admin.start()
        await producer.start()
        partitions = [TopicPartition(settings.images_topic, p) for p in range(PARTITIONS)]

        async def committed() -> dict[int, int]:
            offsets = await admin.list_consumer_group_offsets(settings.app_id, partitions=partitions)
            return {tp.partition: meta.offset for tp, meta in offsets.items()}

        async def send(key: str, partition: int) -> int:
            sent = await producer.send_and_wait(settings.images_topic, encode_request(key, settings.s3_bucket),
                                                key=key.encode(), partition=partition)
            return sent.offset

        try:
            async with s3_client(settings) as client:
                for key in [*warm_up.values(), fresh]:
                    await client.put_object(Bucket=settings.s3_bucket, Key=key, Body=image)
            # Independent of the tests before: one key on each partition, then wait until both partitions are
            # committed past it (so everything before it is committed too, and nothing else is on its way).
            warm_offsets = {p: await send(key, p) for p, key in warm_up.items()}

            async def warmed_up():
                offsets = await committed()
                return offsets if all(offsets[p] > warm_offsets[p] for p in range(PARTITIONS)) else None

            before = await _wait_until(warmed_up, 60, f"commits past the warm-up keys at {warm_offsets}")
            mark = worker.log_mark()
            await conn.execute("ALTER TABLE prediction_results RENAME TO prediction_results_away")
            try:
                fresh_offset = await send(fresh, 0)

                async def write_failing():  # three failures: past several 0.2 s commit intervals
                    return worker.log_text(since=mark).count("PostgreSQL write failed") >= 3

                await _wait_until(write_failing, 30, "three 'PostgreSQL write failed' retries in the worker log")
                assert await committed() == before, "offsets moved while the write was failing"
            finally:
                await conn.execute("ALTER TABLE prediction_results_away RENAME TO prediction_results")

            async def written():
                return await conn.fetchval(
                    "SELECT count(*) FROM prediction_results WHERE image_key = $1", fresh) == TOP_K

            await _wait_until(written, 60, "the retried write")

            async def committed_after_write():
                return await committed() == {**before, 0: fresh_offset + 1}

            await _wait_until(committed_after_write, 30, f"partition 0 committed to {fresh_offset + 1}, "
                                                         f"past the written key, and nothing else")
        finally:
            await producer.stop()
            await admin.close()
            await conn.close()

    asyncio.run(scenario())


def test_s3_images_get_their_faces_beside_their_classes(run):
    """Both analyzers run on every S3 image by default: scikit-image's astronaut has exactly one face."""
    settings, _, _, worker = run
    from skimage import data

    from visionstream.dev.samples import encode_jpeg

    key = f"{settings.app_id}/faces/astronaut-{uuid.uuid4().hex[:6]}.jpg"

    def face_stats() -> dict[str, dict[str, int]]:
        with urllib.request.urlopen(f"http://127.0.0.1:{settings.web_port}/stats/image-faces", timeout=5) as r:
            return json.loads(r.read())["models"]

    before = face_stats()

    async def scenario():
        async with s3_client(settings) as client:
            await client.put_object(Bucket=settings.s3_bucket, Key=key, Body=encode_jpeg(data.astronaut()))
        assert await produce_keys(settings, _keys([(key, settings.s3_bucket)])) == 1
        conn = await connect(settings)
        try:
            async def stored():
                faces = await conn.fetchrow("SELECT * FROM image_faces WHERE image_key = $1", key)
                classes = await conn.fetchval("SELECT count(*) FROM prediction_results WHERE image_key = $1", key)
                return (faces, classes) if faces is not None and classes else None

            return await _wait_until(stored, 60, "the astronaut's faces and classes")
        finally:
            await conn.close()

    faces, classes = asyncio.run(scenario())
    assert classes == TOP_K
    assert faces["face_count"] == 1 and faces["model"].startswith("mtcnn@facenet-pytorch-2.6.0-side")
    assert faces["backend"] in ("torch", "onnxruntime", "openvino")  # what ran the nets, beside the model id
    (face,) = json.loads(faces["faces"])
    x1, y1, x2, y2 = face["box"]
    assert 150 < (x1 + x2) / 2 < 300 and 50 < (y1 + y2) / 2 < 200  # her face, in the 512x512 photo's pixels
    assert "S3 images: classify (squeezenet1_1@" in worker.log_text() and ", faces (mtcnn@" in worker.log_text()

    # The live table counts exactly what its topic holds for the detector version, her one face included.
    # Isolated from the tests before by comparing with the topic itself, not with a delta over a window that
    # a late record of an earlier test's images may land in.
    def published() -> dict[str, int]:
        published = asyncio.run(read_records(settings, settings.image_faces_topic))
        assert [message_errors("image_faces_topic", k, v) for k, v in published] == [[]] * len(published)
        records = [json.loads(value) for _, value in published]
        ours = [r for r in records if r["model"] == faces["model"]]
        assert [r["face_count"] for r in ours if r["image_key"] == key] == [1]
        return {"images": len(ours), "with_faces": sum(1 for r in ours if r["face_count"]),
                "faces": sum(r["face_count"] for r in ours)}

    expected = published()
    deadline = time.monotonic() + 30
    while (now := face_stats().get(faces["model"])) != expected and time.monotonic() < deadline:
        time.sleep(0.5)
        expected = published()
    assert now == expected
    assert now["images"] > before.get(faces["model"], {"images": 0})["images"]


def test_a_record_the_category_table_cannot_decode_is_a_dead_letter_and_counting_goes_on(run):
    """Faust throws a decode error into the agent reading the topic; the app's Topic dead-letters it instead."""
    settings, good, _, worker = run

    def total() -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{settings.web_port}/stats/categories", timeout=5) as r:
            return json.loads(r.read())["total"]

    again = list(good)[:3]

    async def scenario():
        producer = AIOKafkaProducer(**kafka_client_kwargs(settings))
        await producer.start()
        try:
            await producer.send_and_wait(settings.predictions_topic, b"{not a prediction", key=b"stranger-1")
        finally:
            await producer.stop()
        # Classified again: new records on the predictions topic, after the undecodable one on its partition.
        assert await produce_keys(settings, _keys([(k, settings.s3_bucket) for k in again])) == len(again)

    before = total()
    asyncio.run(scenario())
    deadline = time.monotonic() + 60
    while total() < before + len(again) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert total() >= before + len(again), "the category table stopped counting"

    read = asyncio.run(read_records(settings, settings.dead_letter_topic, with_headers=True))
    assert [message_errors("dead_letter_topic", *message) for message in read] == [[]] * len(read)
    letters = [json.loads(value) for _, value, _ in read]
    (letter,) = [d for d in letters if d["topic"] == settings.predictions_topic]
    assert (letter["image_key"], letter["stage"]) == ("stranger-1", "parse")
    assert "cannot be decoded" in letter["reason"]
    assert "crashed" not in worker.log_text().lower()
