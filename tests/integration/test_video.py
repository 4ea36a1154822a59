"""Video capture, and frames -> Kafka -> faces agent -> PostgreSQL/topics/stats on the real local stack."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
import uuid

import cv2
import numpy as np
import pytest
from aiokafka import AIOKafkaProducer

from visionstream.cli.main import main
from visionstream.core.db import connect
from visionstream.core.kafka_client import kafka_client_kwargs
from visionstream.core.s3 import s3_client
from visionstream.dev.stack import free_port
from visionstream.dev.workerproc import WorkerProcess
from visionstream.frames.producer import (
    CaptureOptions,
    VideoSource,
    capture_frames,
    video_sources,
)
from visionstream.frames.records import frame_headers
from visionstream.topics import ensure_topics

from ..media import ARCADE_VIDEO, media_file

ARCADE_FRAMES = 105


async def _collect(frames):
    return [frame async for frame in frames]


@pytest.fixture(scope="module")
def short_video(tmp_path_factory):
    """A 3-frame 64x48 clip at 25 fps whose frames are told apart by their brightness."""
    path = tmp_path_factory.mktemp("video") / "short.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (64, 48))
    for level in (40, 120, 200):
        writer.write(np.full((48, 64, 3), level, np.uint8))
    writer.release()
    return path


def test_capture_file_with_limit_and_max_side():
    source = VideoSource(str(media_file(*ARCADE_VIDEO)), "arcade")
    frames = asyncio.run(_collect(capture_frames(
        [source], CaptureOptions(max_side=640, realtime=False, limit=4), first_seq=100)))
    assert [(f.camera_id, f.seq, f.width, f.height) for f in frames] == [("arcade", s, 640, 360) for s in range(100, 104)]
    assert all(a.captured_at <= b.captured_at for a, b in zip(frames, frames[1:]))
    image = cv2.imdecode(np.frombuffer(frames[0].jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (360, 640, 3)


def test_capture_loops_files_and_interleaves_sources(short_video):
    sources = [VideoSource(str(short_video), "looped"), VideoSource(str(short_video), "once")]

    async def scenario():
        looped = capture_frames(sources[:1], CaptureOptions(realtime=False, loop=True, limit=7), first_seq=0)
        both = capture_frames(sources, CaptureOptions(realtime=False), first_seq=0)
        return await _collect(looped), await _collect(both)

    looped, both = asyncio.run(scenario())
    brightness = [int(cv2.imdecode(np.frombuffer(f.jpeg, np.uint8), cv2.IMREAD_GRAYSCALE).mean()) for f in looped]
    assert [f.seq for f in looped] == list(range(7))
    assert [round(b, -1) for b in brightness] == [40, 120, 200, 40, 120, 200, 40]
    assert sorted((f.camera_id, f.seq) for f in both) == [(c, s) for c in ("looped", "once") for s in range(3)]


class _FakeClock:
    """A monotonic clock that only moves when the capture sleeps; records when each wait ended."""

    def __init__(self) -> None:
        self.now = 100.0
        self.woke_at: list[float] = []
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds
            self.woke_at.append(self.now)


@pytest.mark.parametrize(("fps", "interval"), [(10.0, 0.1), (None, 1 / 25)])  # --fps, else the file's 25 fps
def test_realtime_files_are_paced(short_video, fps, interval):
    clock = _FakeClock()
    frames = asyncio.run(_collect(capture_frames(
        [VideoSource(str(short_video), "paced")], CaptureOptions(fps=fps), first_seq=0,
        clock=clock, sleep=clock.sleep)))
    assert len(frames) == 3
    # One wait before each frame: the first at once, then one interval apart.
    assert clock.woke_at == pytest.approx([100.0, 100.0 + interval, 100.0 + 2 * interval])
    unpaced = _FakeClock()
    asyncio.run(_collect(capture_frames([VideoSource(str(short_video), "fast")], CaptureOptions(realtime=False),
                                        first_seq=0, clock=unpaced, sleep=unpaced.sleep)))
    assert unpaced.woke_at == []  # as fast as possible: never waits


def test_video_sources_name_cameras_and_reject_duplicates():
    sources = video_sources(["/videos/door.mp4", "0", "rtsp://cam.example:554/live/1"], None)
    assert [s.camera_id for s in sources] == ["door", "device0", "cam.example-554-live-1"]
    assert [s.live for s in sources] == [False, True, True]
    with pytest.raises(ValueError, match="repeated: a"):
        video_sources(["/x/a.mp4", "/y/a.mp4"], None)
    with pytest.raises(ValueError, match="one per source"):
        video_sources(["/x/a.mp4", "/y/a.mp4"], ["only-one"])


# --- end to end on the real stack ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def faces_run(stack, tmp_path_factory):
    """A worker in archive mode on fresh topics with 2 partitions; frames get faces and classes."""
    name = f"faces{uuid.uuid4().hex[:8]}"
    overrides = dict(
        app_id=name, images_topic=f"{name}-images", predictions_topic=f"{name}-predictions",
        dead_letter_topic=f"{name}-dead", frames_topic=f"{name}-frames",
        processed_frames_topic=f"{name}-processed", identified_faces_topic=f"{name}-identified",
        topic_partitions=2, frame_mode="archive", face_batch_size=8, face_detect_max_side=960,
        allow_random_weights=True, hostname=f"host-{name}", web_port=free_port(), device="cpu",
        compile_model=False, frame_analyzers="faces,classify", top_k=2,
    )
    settings = stack.settings(**overrides)
    asyncio.run(ensure_topics(settings))
    env = stack.env(**overrides)
    worker = WorkerProcess(env, tmp_path_factory.mktemp("faces-worker") / "worker.log", settings.web_port)
    try:
        worker.wait_ready()
        yield settings, env, worker
    finally:
        worker.stop()


def _produce_cli(monkeypatch, env, *args):
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    return main(["produce", "video", *args])


def test_arcade_video_end_to_end(faces_run, monkeypatch, capsys):
    settings, env, worker = faces_run
    arcade = str(media_file(*ARCADE_VIDEO))
    camera, big, broken, after = (f"{settings.app_id}-{n}" for n in ("arcade", "big", "broken", "after"))

    assert _produce_cli(monkeypatch, env, arcade, "--camera-id", camera, "--as-fast-as-possible",
                        "--max-side", "960") == 0
    assert f"sent {ARCADE_FRAMES} frames" in capsys.readouterr().out
    # Full-size frames (about 235 KB) over a 100 KB limit travel through S3.
    monkeypatch.setenv("VISIONSTREAM_MAX_MESSAGE_BYTES", "100000")
    assert _produce_cli(monkeypatch, env, arcade, "--camera-id", big, "--as-fast-as-possible", "--limit", "3") == 0
    assert "3 via S3 claim check" in capsys.readouterr().out

    async def send_corrupt():
        producer = AIOKafkaProducer(**kafka_client_kwargs(settings))
        await producer.start()
        try:
            await producer.send_and_wait(settings.frames_topic, b"this is not a JPEG", key=broken.encode(),
                                         headers=frame_headers(1, time.time(), 960, 540))
        finally:
            await producer.stop()

    asyncio.run(send_corrupt())
    # The worker goes on after the corrupt frame.
    monkeypatch.setenv("VISIONSTREAM_MAX_MESSAGE_BYTES", "900000")
    assert _produce_cli(monkeypatch, env, arcade, "--camera-id", after, "--as-fast-as-possible",
                        "--max-side", "960", "--limit", "2") == 0

    async def results():
        conn = await connect(settings)
        try:
            deadline = time.monotonic() + 420
            while True:
                counts = dict(await conn.fetch(
                    "SELECT camera_id, count(DISTINCT seq) FROM frame_results WHERE hostname = $1 GROUP BY 1",
                    settings.hostname))
                errors = await conn.fetch(
                    "SELECT image_key, stage, reason FROM processing_errors WHERE topic = $1", settings.frames_topic)
                classified = await conn.fetchval(
                    "SELECT count(*) FROM prediction_results WHERE hostname = $1", settings.hostname)
                if counts == {camera: ARCADE_FRAMES, big: 3, after: 2} and errors and classified == 2 * (
                        ARCADE_FRAMES + 5):
                    break
                assert time.monotonic() < deadline, f"timed out: {counts}, {len(errors)} errors"
                await asyncio.sleep(1.0)
            rows = await conn.fetch(
                "SELECT camera_id, seq, status, skip_reason, width, height, face_count, faces, latency_ms"
                " FROM frame_results WHERE hostname = $1 ORDER BY camera_id, seq", settings.hostname)
            classes = await conn.fetch(
                "SELECT image_key, rank, topic, model FROM prediction_results WHERE hostname = $1", settings.hostname)
            return rows, errors, classes
        finally:
            await conn.close()

    rows, errors, classes = asyncio.run(results())
    # Each frame's classification is stored under its frame key, with the frames topic as its source.
    assert {c["image_key"] for c in classes} == {f"{r['camera_id']}/{r['seq']}" for r in rows}
    assert {(c["topic"], c["model"].partition("@")[0]) for c in classes} == {(settings.frames_topic, "squeezenet1_1")}
    by_camera = {}
    for row in rows:
        by_camera.setdefault(row["camera_id"], []).append(row)
    arcade_rows = by_camera[camera]
    seqs = [r["seq"] for r in arcade_rows]
    assert seqs == list(range(seqs[0], seqs[0] + ARCADE_FRAMES))  # every produced frame accounted for
    assert {r["status"] for r in rows} == {"processed"}  # archive mode skips nothing
    # MTCNN's candidates are 3 to 8 a frame; at the default floor (0.97) one frame keeps 2 (BENCHMARKS.md).
    candidates = [json.loads(r["faces"]) for r in arcade_rows]
    assert all(3 <= len(c) <= 8 for c in candidates), [len(c) for c in candidates]
    assert all(2 <= r["face_count"] <= 8 for r in arcade_rows), [r["face_count"] for r in arcade_rows]
    for row, faces in zip(arcade_rows, candidates, strict=True):
        accepted = [f for f in faces if f["accepted"]]
        assert len(accepted) == row["face_count"] and faces[:len(accepted)] == accepted  # accepted ones first
        assert all((f["probability"] >= settings.face_min_probability) == f["accepted"] for f in faces)
    assert all(r["latency_ms"] > 0 for r in rows)
    faces = candidates[0]
    assert {"box", "probability", "landmarks", "visit"} <= set(faces[0]) and len(faces[0]["landmarks"]) == 5
    assert all(0 <= f["box"][0] < f["box"][2] <= 960 for f in faces)

    # Claim-checked frames were processed at their full size; the JPEGs are in S3.
    assert [(r["width"], r["height"]) for r in by_camera[big]] == [(1920, 1080)] * 3
    assert all(3 <= r["face_count"] <= 8 for r in by_camera[big])
    assert max(f["box"][2] for r in by_camera[big] for f in json.loads(r["faces"])) > 960

    async def claim_checked():
        async with s3_client(settings) as client:
            listing = await client.list_objects_v2(Bucket=settings.s3_bucket, Prefix=f"frames/{big}/")
            return len(listing.get("Contents", []))

    assert asyncio.run(claim_checked()) == 3

    assert [(e["image_key"], e["stage"]) for e in errors] == [(f"{broken}/1", "decode")]
    assert "dead letter" in worker.log_text()

    # The live table counted the frames from the processed-frames topic.
    deadline = time.monotonic() + 30
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{settings.web_port}/stats/frames", timeout=5) as response:
            stats = json.loads(response.read())
        frames = stats["cameras"].get(camera, {}).get("frames", {})
        if frames.get("processed", 0) >= ARCADE_FRAMES or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert frames["processed"] >= ARCADE_FRAMES
    assert stats["skipped"] == 0
    # At least every face in the database: a rebalance may replay events into the table, never drop them.
    faces_in_db = sum(r["face_count"] for r in arcade_rows)
    assert sum(stats["cameras"][camera]["faces_per_minute"].values()) >= faces_in_db
