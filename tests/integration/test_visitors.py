"""Visits on the real stack: the arcade clip through a worker with the tracker on (the default), a worker
replaced halfway with frames redelivered, against the same clip run through in one go."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import urllib.request
import uuid

import cv2
import numpy as np
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


def _worker_settings(stack, name, **extra):
    overrides = dict(
        app_id=name, frames_topic=f"{name}-frames", processed_frames_topic=f"{name}-processed",
        identified_faces_topic=f"{name}-identified", dead_letter_topic=f"{name}-dead", topic_partitions=2,
        frame_mode="archive", face_batch_size=8, image_analyzers="", frame_analyzers="faces",
        hostname=f"host-{name}", web_port=free_port(), device="cpu", **extra,
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


VISITOR_FRAMES = 30  # the clip's first 30 frames (embedding costs ~90 ms a face on a CPU)


def _mirror(frame):
    image = cv2.flip(cv2.imdecode(np.frombuffer(frame.jpeg, np.uint8), cv2.IMREAD_COLOR), 1)
    return dataclasses.replace(frame, jpeg=cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())


async def _visitors(settings, camera, since_seq=0, until_seq=1 << 40):
    conn = await connect(settings)
    try:
        return await conn.fetch("SELECT visit_id, visitor::text, first_seq, frames FROM visits WHERE camera_id = $1"
                                " AND first_seq >= $2 AND first_seq < $3 ORDER BY visit_id", camera, since_seq,
                                until_seq)
    finally:
        await conn.close()


async def _hourly_visits(settings, cameras):
    conn = await connect(settings)
    try:
        rows = await conn.fetch("SELECT camera_id, to_char(hour AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:00\"Z\"')"
                                " AS hour, visits FROM visitors_per_camera_hour WHERE camera_id = ANY($1)", cameras)
        return {camera: {r["hour"]: r["visits"] for r in rows if r["camera_id"] == camera} for camera in cameras}
    finally:
        await conn.close()


def _until_live_visits(settings, cameras, timeout=60.0):
    """/stats/visitors once its live table (visits begun per camera per capture hour) says what the view says."""
    deadline = time.monotonic() + timeout
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{settings.web_port}/stats/visitors", timeout=10) as r:
            page = json.loads(r.read())
        stored = asyncio.run(_hourly_visits(settings, cameras))
        live = {camera: page["visits_per_hour"].get(camera, {}) for camera in cameras}
        if live == stored:
            return page
        assert time.monotonic() < deadline, (live, stored)
        time.sleep(0.5)


def test_distinct_visitors_count_a_return_and_a_second_camera_once_and_outlive_their_embeddings(
        stack, tmp_path_factory, monkeypatch, capsys):
    """Real MTCNN and dlib: the clip's first frames, then the same frames 5 minutes later on the same camera
    (the same people back, within the window), and mirrored on a second camera: the same visitors each time;
    then the retention purge deletes every anonymous embedding while the visits keep their visitors."""
    name = f"visitors{uuid.uuid4().hex[:8]}"
    settings, env = _worker_settings(stack, name, face_distinct_visitors=True)
    door, mirror = f"{name}-door", f"{name}-mirror"
    frames = asyncio.run(_frames())[:VISITOR_FRAMES]
    start = time.time() - 3600
    first = [dataclasses.replace(f, camera_id=door, seq=i, captured_at=start + i / 25) for i, f in enumerate(frames)]
    again = [dataclasses.replace(f, camera_id=door, seq=1000 + i, captured_at=start + 300 + i / 25)
             for i, f in enumerate(frames)]
    mirrored = [_mirror(dataclasses.replace(f, camera_id=mirror, seq=i, captured_at=start + i / 25))
                for i, f in enumerate(frames)]
    worker = WorkerProcess(env, tmp_path_factory.mktemp("visitors-worker") / "worker.log", settings.web_port)
    try:
        worker.wait_ready()
        asyncio.run(_send(settings, first))
        asyncio.run(_wait_rows(settings, door, VISITOR_FRAMES, worker))
        asyncio.run(_send(settings, again + mirrored))
        asyncio.run(_wait_rows(settings, door, 2 * VISITOR_FRAMES, worker))
        asyncio.run(_wait_rows(settings, mirror, VISITOR_FRAMES, worker))
        # The live table is fed from the processed-frames topic, published after the rows: until it has them.
        page = _until_live_visits(settings, [door, mirror])
    finally:
        worker.stop()

    first_visits = asyncio.run(_visitors(settings, door, 0, 1000))
    again_visits = asyncio.run(_visitors(settings, door, 1000))
    mirror_visits = asyncio.run(_visitors(settings, mirror))
    visits = first_visits + again_visits + mirror_visits
    # Visitor ids are random (uuid4); a visit has one from its face_visitor_faces-th face (a shorter one once its
    # track has ended: only a short track still open at a camera's last frame has none yet).
    assert all(uuid.UUID(v["visitor"]).version == 4 for v in visits if v["visitor"] is not None)
    assert all(v["visitor"] is not None for v in visits if v["frames"] >= settings.face_visitor_faces), visits
    people = {v["visitor"] for v in first_visits} - {None}
    assert len(people) >= 3, first_visits
    # The return 5 minutes later is the same people, not new ones (a glimpse still within the tracker's gap at
    # the camera's last frame waits for its next frame to be clustered: no visitor yet).
    again_people = {v["visitor"] for v in again_visits} - {None}
    assert again_people <= people, (first_visits, again_visits)
    assert len(again_people) >= len(people) - sum(v["visitor"] is None for v in again_visits), again_visits
    # So is the mirrored camera, but for a glimpse: a person the door saw in fewer than face_visitor_faces faces
    # (a mean of few small faces) may be new there (measured: one person, 3 faces at the door and 6 mirrored).
    glimpses = {v["first_seq"] for v in first_visits if v["frames"] < settings.face_visitor_faces}
    new_there = [v for v in mirror_visits if v["visitor"] is not None and v["visitor"] not in people]
    assert all(any(abs(v["first_seq"] - seq) <= 2 for seq in glimpses) for v in new_there), (first_visits,
                                                                                              mirror_visits)
    assert len(new_there) <= len(glimpses)
    assert {v["visitor"] for v in mirror_visits} >= people - {v["visitor"] for v in first_visits
                                                               if v["frames"] < settings.face_visitor_faces}

    async def stored_and_hourly():
        conn = await connect(settings)
        try:
            return (await conn.fetchval("SELECT count(*) FROM visitor_embeddings WHERE camera_id = ANY($1)",
                                        [door, mirror]),
                    await conn.fetch("SELECT camera_id, visits, visitors, faces FROM visitors_per_camera_hour"
                                     " WHERE camera_id = ANY($1) ORDER BY camera_id, hour", [door, mirror]))
        finally:
            await conn.close()

    stored, hourly_before = asyncio.run(stored_and_hourly())
    # One anonymous embedding per visit, not one per face.
    assert stored == sum(v["visitor"] is not None for v in visits)
    # /stats/visitors (PostgreSQL-backed, the last day): what the visits table says.
    mirror_visitors = len({v["visitor"] or v["visit_id"] for v in mirror_visits})
    assert page["cameras"][mirror]["visitors"] == mirror_visitors
    assert page["cameras"][door]["visits"] == len(first_visits) + len(again_visits)
    assert [(r["visits"], r["visitors"]) for r in hourly_before if r["camera_id"] == mirror] == [
        (len(mirror_visits), mirror_visitors)]

    # Retention: `people purge` deletes the anonymous embeddings older than the setting; visits stay counted.
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    monkeypatch.setenv("VISIONSTREAM_FACE_VISITOR_EMBEDDING_RETENTION_HOURS", str(1 / 3600))
    time.sleep(1.5)
    capsys.readouterr()
    assert main(["people", "purge"]) == 0
    assert "anonymous visitor embedding(s)" in capsys.readouterr().out

    left, hourly_after = asyncio.run(stored_and_hourly())
    assert left == 0
    assert [tuple(r) for r in hourly_after] == [tuple(r) for r in hourly_before]
