"""Visits on the real stack: the arcade clip through a worker with the tracker on (the default), a worker
replaced halfway with frames redelivered, against the same clip run through in one go."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid

import pytest

from visionstream.cli.main import main
from visionstream.core.db import connect
from visionstream.dev.stack import free_port
from visionstream.dev.workerproc import WorkerProcess
from visionstream.frames.producer import CaptureOptions, VideoSource, capture_frames, produce_frames
from visionstream.topics import ensure_topics

from ..media import ARCADE_VIDEO, media_file

ARCADE_FRAMES = 105


async def _frames():
    source = VideoSource(str(media_file(*ARCADE_VIDEO)), "arcade")
    return [f async for f in capture_frames([source], CaptureOptions(max_side=960, realtime=False), first_seq=1000)]


async def _send(settings, frames):
    async def each():
        for frame in frames:
            yield frame

    await produce_frames(settings, each())


async def _wait_rows(settings, camera, count, worker, timeout=300.0):
    conn = await connect(settings)
    try:
        deadline = time.monotonic() + timeout
        while (n := await conn.fetchval("SELECT count(*) FROM frame_results WHERE camera_id = $1", camera)) < count:
            assert worker.process.poll() is None, worker.log_text()[-3000:]
            assert time.monotonic() < deadline, f"{n} of {count} frames of {camera}"
            await asyncio.sleep(0.5)
    finally:
        await conn.close()


async def _visits(settings, camera):
    conn = await connect(settings)
    try:
        visits = await conn.fetch("SELECT visit_id, first_seq, last_seq, frames FROM visits WHERE camera_id = $1"
                                  " ORDER BY visit_id", camera)
        faces = await conn.fetchval("SELECT sum(face_count) FROM frame_results WHERE camera_id = $1", camera)
        hourly = await conn.fetch("SELECT visits, visitors, faces FROM visitors_per_camera_hour WHERE camera_id = $1",
                                  camera)
        return visits, faces, hourly
    finally:
        await conn.close()


def _worker_settings(stack, name):
    overrides = dict(
        app_id=name, frames_topic=f"{name}-frames", processed_frames_topic=f"{name}-processed",
        identified_faces_topic=f"{name}-identified", dead_letter_topic=f"{name}-dead", topic_partitions=2,
        frame_mode="archive", face_batch_size=8, image_analyzers="", frame_analyzers="faces",
        hostname=f"host-{name}", web_port=free_port(), device="cpu",
    )
    settings = stack.settings(**overrides)
    asyncio.run(ensure_topics(settings))
    return settings, stack.env(**overrides)


@pytest.fixture(scope="module")
def visits_env(stack):
    """Two workers' settings: the second takes over the cameras of the first with no tracker state, on its
    own topics (a worker restarted in the same group waited on its tables' changelog recovery on the local
    broker; what matters here is only that its tracker starts cold)."""
    name = f"visits{uuid.uuid4().hex[:8]}"
    return _worker_settings(stack, name), _worker_settings(stack, f"{name}b")


def test_a_worker_replaced_midway_with_frames_redelivered_counts_the_same_visits(visits_env, tmp_path_factory,
                                                                                   monkeypatch, capsys):
    (settings, env), (later, later_env) = visits_env
    frames = asyncio.run(_frames())
    assert len(frames) == ARCADE_FRAMES
    broken, whole = f"{settings.app_id}-broken", f"{settings.app_id}-whole"
    first_half = [dataclasses.replace(f, camera_id=broken) for f in frames[:60]]
    # Frames 40..59 again (same camera and seq, as after a crash before the commit), then the rest.
    second_half = [dataclasses.replace(f, camera_id=broken) for f in frames[40:]]
    logs = tmp_path_factory.mktemp("visits-worker")

    worker = WorkerProcess(env, logs / "first.log", settings.web_port)
    try:
        worker.wait_ready()
        asyncio.run(_send(settings, first_half))
        asyncio.run(_wait_rows(settings, broken, 60, worker))
    finally:
        worker.stop()
    # A fresh worker: its tracker knows nothing of the camera and is seeded from the stored frames.
    worker = WorkerProcess(later_env, logs / "second.log", later.web_port)
    try:
        worker.wait_ready()
        asyncio.run(_send(later, second_half))
        asyncio.run(_wait_rows(later, broken, ARCADE_FRAMES, worker))
        asyncio.run(_send(later, [dataclasses.replace(f, camera_id=whole) for f in frames]))
        asyncio.run(_wait_rows(later, whole, ARCADE_FRAMES, worker))
    finally:
        worker.stop()

    broken_visits, broken_faces, broken_hourly = asyncio.run(_visits(settings, broken))
    whole_visits, whole_faces, _ = asyncio.run(_visits(settings, whole))
    # Every accepted face is in exactly one visit: nothing counted twice, nothing lost.
    assert sum(v["frames"] for v in broken_visits) == broken_faces
    assert sum(v["frames"] for v in whole_visits) == whole_faces
    # The same visits as the run in one go: ids (but for the camera), extents and frames.
    def shape(visits):
        return sorted((v["visit_id"].split("/", 1)[1], v["first_seq"], v["last_seq"], v["frames"]) for v in visits)

    assert shape(broken_visits) == shape(whole_visits)
    # 9 people show their face in the clip (established by looking at the frames, BENCHMARKS.md); the
    # tracker's count, not the 495 faces per frame.
    assert 8 <= len(whole_visits) <= 11, shape(whole_visits)
    assert [(r["visits"], r["faces"]) for r in broken_hourly] == [(len(broken_visits), broken_faces)]

    # `visionstream report --table visitors` says the same, and plots it.
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    plots = tmp_path_factory.mktemp("plots")
    capsys.readouterr()
    assert main(["report", "--format", "json", "--table", "visitors", "--plot", str(plots)]) == 0
    reported = {r["camera_id"]: r for r in json.loads(capsys.readouterr().out)["visitors"]
                if r["camera_id"] in (broken, whole)}
    assert {camera: (r["visits"], r["visitors"], r["faces"]) for camera, r in reported.items()} == {
        broken: (len(broken_visits), len(broken_visits), broken_faces),
        whole: (len(whole_visits), len(whole_visits), whole_faces)}
    assert (plots / "visitors_per_camera.png").stat().st_size > 1000
