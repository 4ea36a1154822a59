"""Archive camera frames, replay them through another detector version, compare face counts in SQL.

Real stack: a live frames-only worker (detection at max side 960, VISIONSTREAM_FRAME_ARCHIVE on) on the frames
topic, and a replay worker (max side 640: another detector version) on the frame replay topic. The shared
arcade clip's first frames go to a camera whose id needs escaping in an S3 key, and two more as claim
checks, whose S3 keys the archive reuses.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib.metadata
import json
import uuid

import pytest

from visionstream.cli import main as cli
from visionstream.core.s3 import s3_client
from visionstream.dev.stack import free_port
from visionstream.dev.workerproc import WorkerProcess
from visionstream.frames.archive import camera_segment
from visionstream.frames.producer import (
    CaptureOptions,
    VideoSource,
    capture_frames,
    produce_frames,
)
from visionstream.topics import ensure_topics

from ..media import ARCADE_VIDEO, media_file
from .stacks import read_records
from .test_replay import committed, fetch, fetchval, wait_until

FRAMES = 12
CLAIMED = 2
PARTITIONS = 2


@pytest.fixture(scope="module")
def detectors(stack, tmp_path_factory):
    arcade = media_file(*ARCADE_VIDEO)
    tmp = tmp_path_factory.mktemp("frame-replay")
    name = f"fr{uuid.uuid4().hex[:8]}"
    common = dict(
        images_topic=f"{name}-images", predictions_topic=f"{name}-pred", dead_letter_topic=f"{name}-dead",
        frames_topic=f"{name}-frames", frame_replay_topic=f"{name}-frame-replay",
        identified_faces_topic=f"{name}-identified", topic_partitions=PARTITIONS, image_analyzers="",
        frame_mode="archive", frame_archive=True, face_batch_size=4, device="cpu",
    )
    settings = stack.settings(app_id=f"{name}-live", **common)
    asyncio.run(ensure_topics(settings))
    workers = {}
    try:
        for version, side, topic in (("live", 960, common["frames_topic"]),
                                     ("replay", 640, common["frame_replay_topic"])):
            port = free_port()
            env = stack.env(**{**common, "app_id": f"{name}-{version}", "frames_topic": topic,
                               "processed_frames_topic": f"{name}-{version}-processed",
                               "face_detect_max_side": side, "hostname": f"{name}-{version}", "web_port": port})
            workers[version] = WorkerProcess(env, tmp / f"{version}.log", port)
        for worker in workers.values():
            worker.wait_ready()
        version = importlib.metadata.version("facenet-pytorch")  # the detector's name@version (detector.py)
        yield dict(settings=settings, name=name, arcade=arcade, stack=stack, workers=workers,
                   live=f"mtcnn@facenet-pytorch-{version}-side960", replayed=f"mtcnn@facenet-pytorch-{version}-side640")
    finally:
        for worker in workers.values():
            worker.stop()


async def _send(settings, arcade, camera: str, count: int, first_seq: int) -> None:
    frames = capture_frames([VideoSource(str(arcade), camera)],
                            CaptureOptions(max_side=960, realtime=False, limit=count), first_seq=first_seq)
    await produce_frames(settings, frames)


def test_archive_replay_and_compare_face_counts(detectors, monkeypatch, capsys):
    settings, name, arcade = detectors["settings"], detectors["name"], detectors["arcade"]
    live, replayed = detectors["live"], detectors["replayed"]
    camera, claimed_camera = f"{name}/arcade ..", f"{name}-claimed"
    for key, value in detectors["stack"].env(frame_replay_topic=settings.frame_replay_topic).items():
        monkeypatch.setenv(key, value)
    archived = "SELECT count(*) FROM frame_results WHERE camera_id = $1 AND archive_key IS NOT NULL"
    faces_of = "SELECT count(*) FROM frame_faces WHERE camera_id = $1 AND model = $2"

    async def archive() -> list:
        await _send(settings, arcade, camera, FRAMES, 1000)
        await _send(settings.model_copy(update={"max_message_bytes": 1000}), arcade, claimed_camera, CLAIMED, 1000)
        for cam, count in ((camera, FRAMES), (claimed_camera, CLAIMED)):
            await wait_until(lambda c=cam, n=count: _equals(fetchval(settings, archived, c), n), 240,
                             f"{count} archived frames of {cam}")
        rows = await fetch(settings, "SELECT camera_id, seq, captured_at, archive_key, face_count FROM frame_results"
                           " WHERE camera_id = ANY($1) ORDER BY camera_id, seq", [camera, claimed_camera])
        async with s3_client(settings) as client:
            for row in rows:
                body = await client.get_object(Bucket=settings.s3_bucket, Key=row["archive_key"])
                async with body["Body"] as stream:
                    assert (await stream.read())[:2] == b"\xff\xd8", row["archive_key"]  # a JPEG
        return rows

    rows = asyncio.run(archive())
    day = rows[0]["captured_at"].astimezone(dt.timezone.utc).date().isoformat()
    by_camera = {c: [r for r in rows if r["camera_id"] == c] for c in (camera, claimed_camera)}
    # The documented scheme, with the camera id as one escaped segment; claim checks keep their own key.
    assert camera_segment(camera) == f"{name}%2Farcade%20.."
    assert [r["archive_key"] for r in by_camera[camera]] == [
        f"frames/{camera_segment(camera)}/{day}/{seq}.jpg" for seq in range(1000, 1000 + FRAMES)]
    assert [r["archive_key"] for r in by_camera[claimed_camera]] == [
        f"frames/{claimed_camera}/{seq}.jpg" for seq in range(1000, 1000 + CLAIMED)]
    # The live detector's frame_faces rows agree with the live frame records.
    live_faces = asyncio.run(fetch(settings, "SELECT seq, face_count, backend FROM frame_faces WHERE camera_id = $1 "
                                   "AND model = $2 ORDER BY seq", camera, live))
    assert {r["backend"] for r in live_faces} <= {"torch", "onnxruntime", "openvino"}  # what ran MTCNN's nets
    assert [(r["seq"], r["face_count"]) for r in live_faces] == [(r["seq"], r["face_count"]) for r in by_camera[camera]]

    # Replay: a dry run counts, a replay sends every archived frame, the replay worker adds its version's rows.
    capsys.readouterr()
    assert cli.main(["replay", "--camera", camera, "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith(f"{FRAMES} archived frames of camera {camera!r} selected")
    assert cli.main(["replay", "--camera", camera, "--prefix", "x/"]) == 2  # image options do not mix in
    assert cli.main(["replay", "--camera", camera, "--no-progress"]) == 0
    asyncio.run(wait_until(lambda: _equals(fetchval(settings, faces_of, camera, replayed), FRAMES), 240,
                           "the replayed version's faces"))

    # The replay worker's own processed-frames records: an independent account of the new version's counts.
    records = asyncio.run(read_records(settings, f"{name}-replay-processed"))
    replayed_counts = {}
    for key, value in records:
        record = json.loads(value)
        assert key.decode() == camera and record["status"] == "processed"
        replayed_counts[record["seq"]] = record["face_count"]
    live_counts = {r["seq"]: r["face_count"] for r in by_camera[camera]}
    assert set(replayed_counts) == set(live_counts)

    pairs = asyncio.run(fetch(settings, "SELECT seq, faces_old, faces_new, change FROM frame_face_count_pairs "
                              "WHERE model_old = $1 AND model_new = $2 AND camera_id = $3 ORDER BY seq",
                              live, replayed, camera))
    assert [(r["seq"], r["faces_old"], r["faces_new"], r["change"]) for r in pairs] == [
        (seq, live_counts[seq], replayed_counts[seq], replayed_counts[seq] - live_counts[seq])
        for seq in sorted(live_counts)]
    changed = {seq for seq in live_counts if live_counts[seq] != replayed_counts[seq]}
    assert changed, "640 px found the same faces as 960 px on every frame: the comparison would prove nothing"
    changes = asyncio.run(fetch(settings, "SELECT seq FROM frame_face_changes WHERE model_new = $1 AND camera_id = $2",
                                replayed, camera))
    assert {r["seq"] for r in changes} == changed
    [agreement] = asyncio.run(fetch(settings, "SELECT * FROM frame_face_agreement WHERE model_new = $1 AND "
                                    "camera_id = $2", replayed, camera))
    assert (agreement["model_old"], agreement["frames"], agreement["same_count"], agreement["faces_old"],
            agreement["faces_new"]) == (live, FRAMES, FRAMES - len(changed), sum(live_counts.values()),
                                        sum(replayed_counts.values()))
    capsys.readouterr()
    assert cli.main(["report", "--format", "json", "--table", "face_versions"]) == 0
    reported = [r for r in json.loads(capsys.readouterr().out)["face_versions"] if r["camera_id"] == camera]
    assert [(r["model_old"], r["model_new"], r["frames"], r["same_count"], r["faces_new"]) for r in reported] == [
        (live, replayed, FRAMES, FRAMES - len(changed), sum(replayed_counts.values()))]
    with capsys.disabled():
        print(f"\nframe replay: {camera}: {FRAMES} frames, {len(changed)} with another face count at 640 px; faces "
              f"{sum(live_counts.values())} -> {sum(replayed_counts.values())}")

    # A second replay is consumed (the replay group's offsets reach 2 x frames) and adds nothing; nothing is
    # missing for the replayed version any more; the live records are untouched.
    assert cli.main(["replay", "--camera", camera, "--no-progress"]) == 0
    asyncio.run(wait_until(lambda: _equals(committed(settings, f"{name}-replay", settings.frame_replay_topic),
                                           2 * FRAMES), 120, "the second replay to be consumed"))
    assert asyncio.run(fetchval(settings, faces_of, camera, replayed)) == FRAMES
    assert asyncio.run(fetchval(settings, "SELECT count(*) FROM frame_faces WHERE camera_id = $1", camera)) == 2 * FRAMES
    assert asyncio.run(fetchval(settings, "SELECT count(*) FROM frame_results WHERE camera_id = $1", camera)) == FRAMES
    capsys.readouterr()
    assert cli.main(["replay", "--camera", camera, "--only-missing", replayed, "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith("0 archived frames")


async def _equals(value, expected) -> bool:
    return await value == expected
