"""Poison messages: no single message may stop a partition, an agent or a worker (faults.py).

Real stack, real worker processes. Every kind below passes the Kafka client and reaches a worker; each must
end as exactly one result or exactly one dead letter (processing_errors row + dead-letter record), with the
good messages of the same batches processed, a good message sent afterwards processed, every partition
committed to its end, no agent crash, and a worker restart in the middle that does not crash again.
The module runs its own LocalStack because one test stops S3.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import time
import uuid
from collections import Counter
from dataclasses import dataclass

import cv2
import numpy as np
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from PIL import Image
from skimage import data

from visionstream.classification.sinks import prediction_table
from visionstream.core.db import connect, create_pool
from visionstream.core.faults import RetryPolicy
from visionstream.core.kafka_client import kafka_client_kwargs
from visionstream.core.pipeline import AnalyzedImage, Outcome
from visionstream.core.records import SourceRef
from visionstream.core.sinks import PostgresSink
from visionstream.dev.stack import LocalStack
from visionstream.frames.archive import claim_check_key
from visionstream.frames.records import frame_headers

from .stacks import running_stack
from .test_reliability import App, read_topic, small_jpegs, upload, wait_until

PARTITIONS = 4
GRACE = 5.0  # the workers' stop grace in this module: SIGTERM must end a worker within it plus a few seconds
CRASH_LINES = ("Crashed reason", "a batch raised")


@pytest.fixture(scope="module")
def pstack(tmp_path_factory):
    with running_stack(tmp_path_factory.mktemp("poison")) as local:
        yield local


def poison_app(stack: LocalStack, tmp_path, **overrides: object) -> App:
    name = f"p{uuid.uuid4().hex[:6]}"
    return App(stack, tmp_path, **{
        **dict(frames_topic=f"{name}-frames", processed_frames_topic=f"{name}-processed",
               identified_faces_topic=f"{name}-identified", image_faces_topic=f"{name}-image-faces",
               frame_mode="archive", face_batch_size=8, stop_grace_seconds=GRACE,
               s3_allowed_buckets="no-such-bucket-vs",
               image_analyzers="classify,faces", frame_analyzers="faces"),  # every stage of both agents
        **overrides,
    })


def jpeg(pixels: np.ndarray, quality: int = 85) -> bytes:
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return encoded.tobytes()


def noise(height: int, width: int, seed: int = 0) -> bytes:
    return jpeg(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def claims_size(data: bytes, width: int, height: int) -> bytes:
    """The JPEG with its frame header (SOF0) claiming another size: a decompression bomb's header."""
    start = data.index(b"\xff\xc0")
    return data[: start + 5] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + data[start + 9:]


def gif() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 200, 10)).save(buffer, "GIF")
    return buffer.getvalue()


@dataclass(frozen=True)
class Kind:
    """One kind of message and what it must end as: a dead letter of ``stage``, or a result."""

    name: str
    topic: str  # "images" or "frames"
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()
    stage: str | None = None  # None: a result


def header(headers: list[tuple[str, bytes]], name: str, value: bytes) -> tuple[tuple[str, bytes], ...]:
    return tuple((n, value if n == name else v) for n, v in headers)


def kinds(prefix: str, face: bytes) -> list[Kind]:
    """The poison kinds; ``prefix`` keeps this run's S3 keys and camera ids apart."""
    good = small_jpegs(1, seed=7)[0]

    def request(key: str, **extra: object) -> bytes:
        return json.dumps({"image_key": key, **extra}).encode()

    def frame_kind(name: str, stage: str | None, value: bytes, seq: int = 1, width: int = 64, height: int = 64,
                   camera: bytes | None = None, s3_key: str | None = None, **headers: bytes) -> Kind:
        built = frame_headers(seq, time.time(), width, height, s3_key)
        for hname, hvalue in headers.items():
            built = list(header(built, hname.replace("_", "-"), hvalue))
        return Kind(name, "frames", camera or f"{prefix}{name}".encode(), value, tuple(built), stage)

    images = [
        Kind("bucket name botocore refuses", "images", b"b1", request(f"{prefix}ok.jpg", bucket="Bad_Bucket!"),
             stage="parse"),
        Kind("bucket that does not exist", "images", b"b2", request(f"{prefix}ok.jpg", bucket="no-such-bucket-vs"),
             stage="fetch"),  # allowed (poison_app), so S3 is asked: NoSuchBucket
        Kind("bucket the workers do not read", "images", b"b3", request(f"{prefix}ok.jpg", bucket="someone-elses"),
             stage="parse"),
        Kind("key S3 answers InvalidRequest", "images", b"k1", request(f"{prefix}a/../b.jpg"), stage="fetch"),
        Kind("key with a NUL", "images", b"k2", request(f"{prefix}nul\x00.jpg"), stage="parse"),
        Kind("key over 1,024 bytes", "images", b"k3", request(prefix + "é" * 600), stage="parse"),
        Kind("key with a lone surrogate", "images", b"k4",
             ('{"image_key": "%ssur\\ud800.jpg"}' % prefix).encode(), stage="parse"),
        Kind("JSON nested 100,000 deep", "images", b"k5",
             b'{"image_key": "x", "n": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", stage="parse"),
        Kind("GIF under a .jpg key", "images", b"d1", request(f"{prefix}gif.jpg"), stage="decode"),
        Kind("JPEG header claiming 30000x30000", "images", b"d2", request(f"{prefix}bomb.jpg"), stage="decode"),
        Kind("good image", "images", b"g1", request(f"{prefix}good.jpg")),
    ]
    frames = [
        frame_kind("capture time NaN", "parse", good, vs_captured=b"nan"),
        frame_kind("capture time infinite", "parse", good, vs_captured=b"inf"),
        frame_kind("capture time in the year 3e12", "parse", good, vs_captured=b"1e20"),
        frame_kind("seq beyond bigint", "parse", good, seq=2**63),
        frame_kind("negative seq", "parse", good, seq=-1),
        frame_kind("width zero", "parse", good, width=0),
        frame_kind("width over JPEG's limit", "parse", good, width=70_000),
        frame_kind("camera id with a NUL", "parse", good, camera=f"{prefix}nul\x00cam".encode()),
        frame_kind("camera id not UTF-8", "parse", good, camera=b"\xff\xfe" + prefix.encode()),
        frame_kind("claim check to a missing object", "fetch", b"",
                   s3_key=claim_check_key(f"{prefix}claim check to a missing object", 1)),
        frame_kind("claim check key with a NUL", "parse", b"", s3_key=f"{prefix}frames/\x00.jpg"),
        frame_kind("claim check naming another object", "parse", b"", s3_key=f"{prefix}a/../frame.jpg"),
        frame_kind("value not a JPEG", "decode", b"plain text, not a JPEG"),
        frame_kind("1x1 frame (crashed MTCNN)", None, noise(1, 1), width=1, height=1),
        frame_kind("24x3000 frame, 8x960 at detection scale (crashed MTCNN)", None, noise(24, 3000),
                   width=3000, height=24),
        frame_kind("headers claiming 640x480 for a 64x48 JPEG", None, noise(48, 64), width=640, height=480),
        frame_kind("good frame with a face", None, face, width=300, height=300),
    ]
    return images + frames


def s3_objects(prefix: str) -> dict[str, bytes]:
    good = small_jpegs(1, seed=7)[0]
    return {f"{prefix}ok.jpg": good, f"{prefix}good.jpg": good, f"{prefix}gif.jpg": gif(),
            f"{prefix}bomb.jpg": claims_size(good, 30_000, 30_000)}


async def send(app: App, batch: list[Kind]) -> list[tuple[Kind, tuple[str, int, int]]]:
    """Send each message in order; each kind with its (topic, partition, offset)."""
    topics = {"images": app.settings.images_topic, "frames": app.settings.frames_topic}
    sent = []
    producer = AIOKafkaProducer(**kafka_client_kwargs(app.settings), max_request_size=16_777_216)
    await producer.start()
    try:
        for kind in batch:
            meta = await producer.send_and_wait(topics[kind.topic], kind.value, key=kind.key,
                                                headers=list(kind.headers))
            sent.append((kind, (meta.topic, meta.partition, meta.offset)))
    finally:
        await producer.stop()
    return sent


def ends_of(sent: list[tuple[Kind, tuple[str, int, int]]]) -> dict[tuple[str, int], int]:
    ends: dict[tuple[str, int], int] = {}
    for _, (topic, partition, offset) in sent:
        ends[(topic, partition)] = max(ends.get((topic, partition), 0), offset + 1)
    return ends


async def committed(app: App, topics: list[str]) -> dict[tuple[str, int], int]:
    admin = AIOKafkaAdminClient(**kafka_client_kwargs(app.settings))
    await admin.start()
    try:
        partitions = [TopicPartition(topic, p) for topic in topics for p in range(PARTITIONS)]
        offsets = await admin.list_consumer_group_offsets(app.settings.app_id, partitions=partitions)
        return {(tp.topic, tp.partition): meta.offset for tp, meta in offsets.items() if meta.offset > 0}
    finally:
        await admin.close()


async def outcomes(app: App) -> dict[str, list[tuple[str, int, int]]]:
    """(source topic, partition, offset) of every result and dead letter in PostgreSQL, by table."""
    s = app.settings
    conn = await connect(s)
    try:
        queries = {
            "errors": ('SELECT topic, "partition", "offset" FROM processing_errors WHERE topic = ANY($1)',
                       [s.images_topic, s.frames_topic]),
            "predictions": ('SELECT DISTINCT topic, "partition", "offset" FROM prediction_results WHERE topic = $1',
                            s.images_topic),
            "frames": ('SELECT topic, "partition", "offset" FROM frame_results WHERE topic = $1', s.frames_topic),
        }
        return {name: [tuple(row) for row in await conn.fetch(sql, arg)] for name, (sql, arg) in queries.items()}
    finally:
        await conn.close()


def test_poison_messages_end_as_one_result_or_one_dead_letter_each(pstack, tmp_path):
    app = poison_app(pstack, tmp_path)
    prefix = f"{app.name}/"
    face = jpeg(cv2.resize(data.astronaut(), (300, 300), interpolation=cv2.INTER_AREA))  # under MAX_PIXELS
    batch = kinds(f"{prefix}r0/", face)
    assert len(batch) >= 20
    # Three rounds of every kind (their own keys and cameras), shuffled together, so poison shares batches
    # with good messages.
    rounds = [kind for n in range(3) for kind in kinds(f"{prefix}r{n}/", face)]
    np.random.default_rng(1).shuffle(rounds)
    good_after = [Kind("good image sent after", "images", b"after", json.dumps({"image_key": f"{prefix}after.jpg",
                                                                                "n": 1}).encode()),
                  Kind("good frame sent after", "frames", f"{prefix}after".encode(), face,
                       tuple(frame_headers(1, time.time(), 300, 300)))]
    objects = {k: v for n in range(3) for k, v in s3_objects(f"{prefix}r{n}/").items()}
    asyncio.run(upload(app.settings, {**objects, f"{prefix}after.jpg": small_jpegs(1, seed=8)[0]}))
    first = app.start_worker("first")
    second = None
    try:
        first.wait_ready()
        sent = asyncio.run(send(app, rounds))

        async def handled(count: int):
            found = await outcomes(app)
            return found if sum(map(len, found.values())) >= count else None

        # A restart in the middle: the next worker gets the rest, redelivered poison included, and must not crash.
        asyncio.run(wait_until(lambda: handled(len(rounds) // 3), 120, "a third of the messages handled"))
        assert first.stop(timeout=GRACE + 30) == 0
        second = app.start_worker("second")
        second.wait_ready()
        asyncio.run(wait_until(lambda: handled(len(rounds)), 180, "every poison message handled"))
        started = time.monotonic()
        sent += asyncio.run(send(app, good_after))
        asyncio.run(wait_until(lambda: handled(len(sent)), 60, "the good messages sent after the poison"))
        good_after_s = time.monotonic() - started
        ends = ends_of(sent)
        asyncio.run(wait_until(lambda: _committed_to(app, ends), 30, f"every partition committed to its end {ends}"))
        found = asyncio.run(outcomes(app))
        letters = asyncio.run(read_topic(app.settings, app.settings.dead_letter_topic))
        rows = asyncio.run(_rows(app))
    finally:
        first.stop(timeout=GRACE + 30)
        if second is not None:
            second.stop(timeout=GRACE + 30)

    for worker in (first, second):
        log = worker.log_text()
        assert not [line for line in CRASH_LINES if line in log], f"{worker.name} crashed:\n{log[-3000:]}"

    # Exactly one outcome per message: a result or a dead letter, never both, never twice.
    sources = Counter(found["errors"] + found["predictions"] + found["frames"])
    assert set(sources) == {source for _, source in sent} and set(sources.values()) == {1}
    stage_of = {(r["topic"], r["partition"], r["offset"]): r["stage"] for r in rows["errors"]}
    observed = Counter((kind.name, stage_of.get(source)) for kind, source in sent)
    assert observed == Counter((kind.name, kind.stage) for kind, _ in sent)
    letters_by_source = Counter((d["topic"], d["partition"], d["offset"]) for d in letters)
    assert set(letters_by_source) == set(stage_of)  # every error row has its dead-letter record
    assert max(letters_by_source.values()) <= 2  # re-published at most once, by the restart's redelivery

    # The corrected size, the degenerate frames' empty results, and reasons that say what was wrong.
    frames = {row["camera_id"]: row for row in rows["frames"]}
    mismatch = frames[f"{prefix}r0/headers claiming 640x480 for a 64x48 JPEG"]
    assert (mismatch["width"], mismatch["height"], mismatch["header_size"]) == (64, 48, "640x480")
    assert frames[f"{prefix}r1/1x1 frame (crashed MTCNN)"]["face_count"] == 0
    assert frames[f"{prefix}r2/good frame with a face"]["face_count"] == 1
    assert frames[f"{prefix}after"]["face_count"] == 1
    reasons = Counter(row["reason"] for row in rows["errors"])
    assert reasons["InvalidRequest"] == 3 and reasons["NoSuchBucket"] == 3 and reasons["NoSuchKey"] == 3
    assert sum("VISIONSTREAM_S3_ALLOWED_BUCKETS" in r for r in reasons.elements()) == 3
    assert sum("is not the key of camera" in r for r in reasons.elements()) == 3
    assert sum("not a time between 1970 and 9999" in r for r in reasons.elements()) == 9

    results = sum(1 for kind, _ in sent if kind.stage is None)
    print(f"\npoison: {len(batch)} kinds x 3 + 2 good after = {len(sent)} messages: {results} results, "
          f"{len(sent) - results} dead letters, 0 lost, 0 crashes, restart in the middle; the good messages "
          f"sent after them handled in {good_after_s:.1f}s")
    for name, stage in sorted({(kind.name, kind.stage or "result") for kind in batch}, key=lambda x: x[1]):
        print(f"  {stage:8} {name}")


async def _committed_to(app: App, ends: dict[tuple[str, int], int]) -> bool:
    return await committed(app, sorted({topic for topic, _ in ends})) == ends


async def _rows(app: App) -> dict[str, list]:
    s = app.settings
    conn = await connect(s)
    try:
        return {
            "errors": await conn.fetch("SELECT * FROM processing_errors WHERE topic = ANY($1)",
                                       [s.images_topic, s.frames_topic]),
            "frames": await conn.fetch("SELECT * FROM frame_results WHERE topic = $1", s.frames_topic),
            "predictions": await conn.fetch("SELECT * FROM prediction_results WHERE topic = $1", s.images_topic),
        }
    finally:
        await conn.close()


def test_postgres_rejects_only_the_rows_it_cannot_hold_and_writes_the_rest(pstack):
    """A value PostgreSQL refuses is not waited out: bisection finds its message, which is dead-lettered."""
    settings = pstack.settings()
    topic = f"sink-{uuid.uuid4().hex[:6]}"

    def classified(offset: int, key: str, top: tuple[int, str, float] = (281, "tabby", 0.75)) -> AnalyzedImage:
        return AnalyzedImage(key, SourceRef(topic, 0, offset), {"classify": [top]})

    good = [classified(i, f"{topic}/good-{i}.jpg") for i in range(13)]
    bad = {
        13: classified(13, f"{topic}/nul\x00.jpg"),  # text cannot hold NUL
        14: classified(14, f"{topic}/nan.jpg", (281, "tabby", math.nan)),  # the confidence CHECK
        15: classified(15, f"{topic}/range.jpg", (2**40, "tabby", 0.5)),  # integer out of range
    }
    outcome = Outcome(results=good[:5] + [bad[13]] + good[5:9] + [bad[14], bad[15]] + good[9:], computed_at=1e9)

    async def scenario():
        from visionstream.core.db import migrate

        await migrate(settings)
        pool = await create_pool(settings)
        try:
            sink = PostgresSink(pool, [prediction_table("test@1", "host")], "host", RetryPolicy(2))
            await sink.write(outcome)
            async with pool.acquire() as conn:
                written = await conn.fetch('SELECT "offset" FROM prediction_results WHERE topic = $1', topic)
                errors = await conn.fetch('SELECT "offset", stage, reason, image_key, attempts FROM processing_errors '
                                          'WHERE topic = $1', topic)
            return sorted(r["offset"] for r in written), sorted((tuple(r) for r in errors))
        finally:
            await pool.close()

    written, errors = asyncio.run(scenario())
    assert written == list(range(13))
    assert [(offset, stage) for offset, stage, *_ in errors] == [(13, "store"), (14, "store"), (15, "store")]
    reasons = {offset: reason for offset, _, reason, *_ in errors}
    assert "CharacterNotInRepertoire" in reasons[13] or "0x00" in reasons[13]
    assert "check" in reasons[14].lower() and "out of" in reasons[15]
    assert errors[0][3] == f"{topic}/nul\\x00.jpg"  # the dead letter itself is storable: NUL escaped
    assert [len(outcome.results), len(outcome.failed)] == [13, 3]


def test_sigterm_during_an_s3_outage_exits_within_the_grace_and_acks_nothing_unfinished(pstack, tmp_path):
    # Also a worker that runs only the classifier: it loads no face model at all.
    app = poison_app(pstack, tmp_path, image_analyzers="classify", frame_analyzers="")
    keys = [f"{app.name}/img-{i:04d}.jpg" for i in range(140)]
    images = small_jpegs(10, seed=5)
    asyncio.run(upload(app.settings, {key: images[i % 10] for i, key in enumerate(keys)}))
    worker = app.start_worker("outage")
    s3_stopped = False
    try:
        worker.wait_ready()
        # Faust is ready before the agent has loaded its model (torch is imported then, in the model thread).
        deadline = time.monotonic() + 60
        while "S3 images: classify (squeezenet1_1@" not in worker.log_text():
            assert time.monotonic() < deadline, "the worker never logged its model"
            time.sleep(0.2)
        assert "mtcnn" not in worker.log_text().lower()
        asyncio.run(_produce_keys(app, keys[:40]))
        asyncio.run(wait_until(lambda: _handled_offsets(app, 40), 60, "the first 40 results"))
        pstack.stop_server("s3")
        s3_stopped = True
        log_mark = len(worker.log_text())
        asyncio.run(_produce_keys(app, keys[40:]))
        deadline = time.monotonic() + 60
        while "S3 does not answer" not in worker.log_text()[log_mark:]:
            assert time.monotonic() < deadline, "the worker never waited for S3"
            time.sleep(0.2)
        signalled = time.monotonic()
        worker.process.terminate()
        code = worker.process.wait(GRACE + 30)
        exit_s = time.monotonic() - signalled
        log = worker.log_text()[log_mark:]
        assert code == 0, log[-3000:]
        assert exit_s <= GRACE + 10, f"exit took {exit_s:.1f}s with a {GRACE:.0f}s grace"
        assert "not finished within" in log
        handled = asyncio.run(_handled_offsets(app, 0))
        commits = asyncio.run(committed(app, [app.settings.images_topic]))
        # Committed up to exactly what was handled: nothing it did not finish was acked.
        assert {p: set(range(commits.get((app.settings.images_topic, p), 0))) for p in range(PARTITIONS)} == {
            p: {o for part, o in handled if part == p} for p in range(PARTITIONS)}
    finally:
        worker.stop()
        if s3_stopped:
            pstack.up()
    successor = app.start_worker("successor")
    try:
        successor.wait_ready()
        asyncio.run(wait_until(lambda: _handled_offsets(app, len(keys)), 120, "every key after the outage"))
        assert asyncio.run(_errors(app)) == 0  # the outage was waited out, not dead-lettered
    finally:
        successor.stop()
    print(f"\nSIGTERM during an S3 outage: exit {exit_s:.1f}s after the signal (grace {GRACE:.0f}s), code 0; "
          f"committed = handled on every partition; all {len(keys)} keys done by the successor")


async def _produce_keys(app: App, keys: list[str]) -> None:
    from visionstream.images.producer import produce_keys

    async def source():
        for key in keys:
            yield key, None

    await produce_keys(app.settings, source())


async def _handled_offsets(app: App, at_least: int):
    conn = await connect(app.settings)
    try:
        rows = await conn.fetch('SELECT DISTINCT "partition", "offset" FROM prediction_results WHERE topic = $1',
                                app.settings.images_topic)
    finally:
        await conn.close()
    found = {(r["partition"], r["offset"]) for r in rows}
    return found if len(found) >= at_least else None


async def _errors(app: App) -> int:
    conn = await connect(app.settings)
    try:
        return await conn.fetchval("SELECT count(*) FROM processing_errors WHERE topic = $1", app.settings.images_topic)
    finally:
        await conn.close()
