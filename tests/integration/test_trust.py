"""Trust nothing that arrives, on the data path: a real worker on the real stack, each attack failing and
nothing else breaking (README "Security").

One worker takes both inputs (SqueezeNet on S3 images and on frames, the frame archive on) with the settings'
own defaults for what a message may cost: allowed buckets, object size, pixels and decode memory. Its memory
is read from /proc while the attacks run. Figures are printed (pytest -s shows them).
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
import uuid
from collections.abc import Iterator, Sequence

import numpy as np
import pytest
from aiokafka import AIOKafkaProducer
from botocore.exceptions import ClientError
from PIL import Image

from visionstream.core.kafka_client import kafka_client_kwargs
from visionstream.core.s3 import s3_client
from visionstream.frames.archive import claim_check_key, dated_key
from visionstream.frames.records import Frame, frame_headers
from visionstream.settings import Settings

from .test_reliability import App, fetchval, small_jpegs, upload, wait_until

MAX_OBJECT_BYTES = 4 << 20  # the worker's VISIONSTREAM_S3_MAX_OBJECT_BYTES here (the default is 32 MiB)
LARGE_OBJECT_BYTES = 128 << 20  # what an attacker puts under an image key
TIMEOUT = 90.0


class PeakRss:
    """The highest VmRSS of a process, sampled every 20 ms from /proc while the ``with`` block runs."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._stop = threading.Event()
        self.baseline = self.now()
        self.peak = self.baseline
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def now(self) -> int:
        with open(f"/proc/{self._pid}/status") as status:
            line = next(line for line in status if line.startswith("VmRSS:"))
        return int(line.split()[1]) * 1024

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.now())

    @property
    def growth(self) -> int:
        return self.peak - self.baseline

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture(scope="module")
def trusted(stack, tmp_path_factory) -> Iterator[tuple[App, object]]:
    name = f"tr{uuid.uuid4().hex[:6]}"
    app = App(stack, tmp_path_factory.mktemp("trust"), **dict(
        max_image_pixels=Settings.model_fields["max_image_pixels"].default,  # the defaults under test
        s3_max_object_bytes=MAX_OBJECT_BYTES, frames_topic=f"{name}-frames",
        processed_frames_topic=f"{name}-processed", identified_faces_topic=f"{name}-identified",
        image_analyzers="classify", frame_analyzers="classify", frame_mode="archive", frame_archive=True,
    ))
    worker = app.start_worker("trust")
    try:
        worker.wait_ready()
        yield app, worker
    finally:
        worker.stop()


async def send(settings: Settings, topic: str, messages: Sequence[tuple[bytes, bytes, list | None]]) -> list[int]:
    """Send in order; the offset of each."""
    producer = AIOKafkaProducer(**kafka_client_kwargs(settings))
    await producer.start()
    try:
        return [(await producer.send_and_wait(topic, value, key=key, headers=headers)).offset
                for key, value, headers in messages]
    finally:
        await producer.stop()


def request(key: str, **extra: object) -> bytes:
    return json.dumps({"image_key": key, **extra}).encode()


async def errors_of(settings: Settings, key: str) -> list:
    from visionstream.core.db import connect

    conn = await connect(settings)
    try:
        return await conn.fetch("SELECT stage, reason, \"offset\", payload FROM processing_errors WHERE image_key = $1"
                                " ORDER BY id", key)
    finally:
        await conn.close()


def test_a_request_for_another_bucket_is_dead_lettered_and_the_real_result_stored(trusted):
    """Before: the worker read s3://other/<key> with its own credentials, and that object's labels became
    the key's result for good (first write wins). Now: a parse-stage dead letter, no S3 call, and the key's
    result is its own object's."""
    app, _ = trusted
    settings = app.settings
    key = f"{app.name}/bucket/photo.jpg"
    other = f"vs-other-{uuid.uuid4().hex[:8]}"
    own, foreign = small_jpegs(2, seed=11)

    async def scenario() -> tuple[list[int], object, list]:
        async with s3_client(settings) as client:
            await client.create_bucket(Bucket=other)
            await client.put_object(Bucket=other, Key=key, Body=foreign)
        await upload(settings, {key: own})
        # Same Kafka key: one partition, the foreign request first.
        offsets = await send(settings, settings.images_topic, [
            (key.encode(), request(key, bucket=other), None),
            (key.encode(), request(key), None),
        ])
        stored = await wait_until(lambda: fetchval(
            settings, 'SELECT "offset" FROM prediction_results WHERE image_key = $1 AND topic = $2',
            key, settings.images_topic), TIMEOUT, "the real object's result")
        return offsets, stored, await errors_of(settings, key)

    offsets, stored_offset, errors = asyncio.run(scenario())
    assert stored_offset == offsets[1], "the result is the configured bucket's object's"
    assert [(e["stage"], e["offset"]) for e in errors] == [("parse", offsets[0])]
    assert "VISIONSTREAM_S3_ALLOWED_BUCKETS" in errors[0]["reason"]
    assert "NoSuchKey" not in errors[0]["reason"] and "AccessDenied" not in errors[0]["reason"]


def test_an_oversized_object_is_dead_lettered_without_being_read(trusted):
    """Before: ``await response.read()`` held the whole object (and the worker's RSS grew by its size);
    now: refused from its Content-Length, the worker's RSS flat."""
    app, worker = trusted
    settings = app.settings
    key = f"{app.name}/large/huge.jpg"
    good = f"{app.name}/large/good.jpg"
    # A JPEG header in front, so nothing but its size is wrong with it.
    huge = small_jpegs(1, seed=3)[0] + np.random.default_rng(0).bytes(LARGE_OBJECT_BYTES)
    asyncio.run(upload(settings, {key: huge, good: small_jpegs(1, seed=4)[0]}))
    del huge

    async def scenario() -> list:
        await send(settings, settings.images_topic, [(key.encode(), request(key), None),
                                                     (good.encode(), request(good), None)])
        await wait_until(lambda: fetchval(settings, "SELECT count(*) FROM prediction_results WHERE image_key = $1",
                                          good), TIMEOUT, "the good image's result")
        return await wait_until(lambda: errors_of(settings, key), TIMEOUT, "the large object's dead letter")

    with PeakRss(worker.process.pid) as rss:
        errors = asyncio.run(scenario())
    print(f"\nworker RSS {rss.baseline / 2**20:.0f} MiB, peak growth {rss.growth / 2**20:.1f} MiB while a "
          f"{LARGE_OBJECT_BYTES / 2**20:.0f} MiB object was refused")
    assert [e["stage"] for e in errors] == ["fetch"]
    assert f"VISIONSTREAM_S3_MAX_OBJECT_BYTES allows {MAX_OBJECT_BYTES}" in errors[0]["reason"]
    assert rss.growth < LARGE_OBJECT_BYTES // 8


def png_bomb(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (side, side)).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def progressive_jpeg(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (90, 90, 90)).save(buffer, "JPEG", progressive=True, subsampling=0, quality=50)
    return buffer.getvalue()


def test_decompression_bombs_are_dead_lettered(trusted):
    """Both are under the old 89 MP limit: a 36 MP PNG of ~40 KB (decoded whole: ~290 MB with its RGB copy
    before) and a 64 MP progressive JPEG of ~750 KB (its coefficients alone: 373 MB RSS at 1/8 scale before)."""
    app, worker = trusted
    settings = app.settings
    bombs = {f"{app.name}/bomb/flat.png": png_bomb(6000), f"{app.name}/bomb/progressive.jpg": progressive_jpeg(8000)}
    good = f"{app.name}/bomb/good.jpg"
    asyncio.run(upload(settings, {**bombs, good: small_jpegs(1, seed=5)[0]}))

    async def scenario() -> dict[str, list]:
        await send(settings, settings.images_topic, [(k.encode(), request(k), None) for k in [*bombs, good]])
        await wait_until(lambda: fetchval(settings, "SELECT count(*) FROM prediction_results WHERE image_key = $1",
                                          good), TIMEOUT, "the good image's result")
        return {k: await wait_until(lambda k=k: errors_of(settings, k), TIMEOUT, k) for k in bombs}

    with PeakRss(worker.process.pid) as rss:
        errors = asyncio.run(scenario())
    print(f"\nbombs of {', '.join(f'{len(b) / 1e3:.0f} KB' for b in bombs.values())}: worker RSS peak growth "
          f"{rss.growth / 2**20:.1f} MiB")
    png, jpeg = (errors[k] for k in bombs)
    assert [e["stage"] for e in png] == ["decode"] and "VISIONSTREAM_MAX_FULL_DECODE_PIXELS" in png[0]["reason"]
    assert [e["stage"] for e in jpeg] == ["decode"] and "VISIONSTREAM_DECODE_MEMORY_BYTES" in jpeg[0]["reason"]
    assert rss.growth < 64 << 20


def frame_message(frame: Frame, value: bytes) -> tuple[bytes, bytes, list]:
    return frame.camera_id.encode(), value, frame_headers(frame.seq, frame.captured_at, frame.width, frame.height,
                                                          frame.s3_key)


async def frame_row(settings: Settings, camera: str, seq: int) -> object:
    return await fetchval(settings, "SELECT archive_key FROM frame_results WHERE camera_id = $1 AND seq = $2",
                          camera, seq)


async def object_bytes(settings: Settings, key: str) -> bytes:
    async with s3_client(settings) as client:
        response = await client.get_object(Bucket=settings.s3_bucket, Key=key)
        async with response["Body"] as body:
            return await body.read()


def test_a_forged_claim_check_is_refused(trusted):
    """Before: vs-s3-key could name any object of the bucket (another camera's archive, anything), which was
    analysed and recorded as the frame's archive key. Now only the scheme's key for its camera and seq."""
    app, _ = trusted
    settings = app.settings
    camera, victim = f"{app.name}-cam", f"{app.name}-other"
    private = f"{app.name}/private/secret.jpg"
    jpeg = small_jpegs(1, seed=6)[0]
    now = time.time()
    genuine = Frame(camera, 3, now, 64, 64, None, claim_check_key(camera, 3))
    forged = [Frame(camera, 1, now, 64, 64, None, private),
              Frame(camera, 2, now, 64, 64, None, claim_check_key(victim, 2))]
    asyncio.run(upload(settings, {private: jpeg, claim_check_key(victim, 2): jpeg, genuine.s3_key: jpeg}))

    async def scenario() -> tuple[object, list, list]:
        offsets = await send(settings, settings.frames_topic, [frame_message(f, b"") for f in [*forged, genuine]])
        archived = await wait_until(lambda: frame_row(settings, camera, 3), TIMEOUT, "the genuine claim check")
        # A frame that does not parse is named by its camera id alone.
        return archived, offsets, await errors_of(settings, camera)

    archived, offsets, errors = asyncio.run(scenario())
    assert archived == genuine.s3_key
    assert [(e["stage"], e["offset"]) for e in errors] == [("parse", offsets[0]), ("parse", offsets[1])]
    assert all("is not the key of camera" in e["reason"] for e in errors)
    assert [asyncio.run(frame_row(settings, camera, f.seq)) for f in forged] == [None, None]


def test_an_archived_frame_is_never_replaced(trusted):
    """Before: every archive PUT replaced the object, so a forged frame with an existing camera, seq and day
    replaced the archived JPEG while the row stayed. Now a conditional PUT: the redelivered frame and the
    forged one find the object there (412), are not failures, and the first JPEG stays."""
    app, _ = trusted
    settings = app.settings
    camera = f"{app.name}-arch"
    first, forged_jpeg, later = small_jpegs(3, seed=8)
    frame = Frame(camera, 1, time.time(), 64, 64, None)
    sentinel = Frame(camera, 2, frame.captured_at, 64, 64, None)

    async def scenario() -> tuple[object, bytes, list]:
        await send(settings, settings.frames_topic, [frame_message(frame, first)])
        await wait_until(lambda: frame_row(settings, camera, 1), TIMEOUT, "the frame archived")
        # The same frame again (a redelivery), then a forged one under its key; one camera is one partition,
        # so the sentinel's row means both were handled.
        await send(settings, settings.frames_topic, [frame_message(frame, first), frame_message(frame, forged_jpeg),
                                                     frame_message(sentinel, later)])
        await wait_until(lambda: frame_row(settings, camera, 2), TIMEOUT, "the sentinel frame")
        errors = [e for key in (camera, f"{camera}/1", f"{camera}/2") for e in await errors_of(settings, key)]
        return await frame_row(settings, camera, 1), await object_bytes(settings, dated_key(frame)), errors

    archived, stored, errors = asyncio.run(scenario())
    assert archived == dated_key(frame)
    assert stored == first
    assert errors == []


def test_dead_letters_keep_bounded_payloads(trusted):
    """Before: processing_errors.payload kept the whole value, a frame with bad headers its whole JPEG."""
    app, _ = trusted
    settings = app.settings
    camera = f"{app.name}-bad"
    jpeg = small_jpegs(1, seed=9)[0] + bytes(300_000)
    junk_key = f"{app.name}/junk"
    headers = [(n, b"nan" if n == "vs-captured" else v) for n, v in frame_headers(1, time.time(), 64, 64)]

    async def scenario() -> tuple[list, list]:
        await send(settings, settings.frames_topic, [(camera.encode(), jpeg, headers)])
        await send(settings, settings.images_topic, [(junk_key.encode(), b"{" * 500_000, None)])
        frame = await wait_until(lambda: errors_of(settings, camera), TIMEOUT, "the frame's dead letter")
        junk = await wait_until(lambda: errors_of(settings, junk_key), TIMEOUT, "the junk request's dead letter")
        return frame, junk

    frame, junk = asyncio.run(scenario())
    assert frame[0]["stage"] == "parse" and frame[0]["payload"] is None
    assert f"a {len(jpeg)}-byte value: 0 bytes kept" in frame[0]["reason"]
    assert junk[0]["stage"] == "parse" and len(junk[0]["payload"]) == 8 << 10


def test_s3_refuses_a_second_conditional_put(trusted):
    """What the archive relies on, measured on the stack's SeaweedFS: If-None-Match: * is honoured."""
    app, _ = trusted
    settings = app.settings
    key = f"{app.name}/conditional.bin"

    async def scenario() -> tuple[str, bytes]:
        async with s3_client(settings) as client:
            await client.put_object(Bucket=settings.s3_bucket, Key=key, Body=b"first", IfNoneMatch="*")
            with pytest.raises(ClientError) as refused:
                await client.put_object(Bucket=settings.s3_bucket, Key=key, Body=b"second", IfNoneMatch="*")
        return refused.value.response["Error"]["Code"], await object_bytes(settings, key)

    code, stored = asyncio.run(scenario())
    assert (code, stored) == ("PreconditionFailed", b"first")
