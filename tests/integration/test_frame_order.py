"""A camera's frames are processed and published in capture order (issue 24 point 5): a real frames-only
worker with three batches in flight, two cameras on one partition; the processed-frames topic holds each
camera's frames once, in capture (seq) order."""

from __future__ import annotations

import asyncio
import json
import uuid

from visionstream.dev.stack import free_port
from visionstream.dev.workerproc import WorkerProcess
from visionstream.frames.producer import CaptureOptions, VideoSource, capture_frames, produce_frames
from visionstream.topics import ensure_topics

from ..media import ARCADE_VIDEO, media_file
from .stacks import read_records
from .test_breaker import wait_for

FRAMES = 12  # per camera
CAMERAS = ("cam-a", "cam-b")


def test_each_cameras_frames_are_published_in_capture_order(stack, tmp_path):
    arcade = media_file(*ARCADE_VIDEO)
    name = f"ord{uuid.uuid4().hex[:8]}"
    overrides = dict(app_id=name, images_topic=f"{name}-images", predictions_topic=f"{name}-pred",
                     dead_letter_topic=f"{name}-dead", frames_topic=f"{name}-frames",
                     processed_frames_topic=f"{name}-processed", identified_faces_topic=f"{name}-identified",
                     frame_replay_topic=f"{name}-frame-replay", topic_partitions=1, image_analyzers="",
                     frame_mode="archive", face_batch_size=2, batches_in_flight=3, device="cpu",
                     hostname=f"host-{name}")
    settings = stack.settings(**overrides)
    asyncio.run(ensure_topics(settings))
    port = free_port()
    worker = WorkerProcess(stack.env(**overrides, web_port=port), tmp_path / "worker.log", port)
    try:
        worker.wait_ready()
        frames = capture_frames([VideoSource(str(arcade), camera) for camera in CAMERAS],
                                CaptureOptions(max_side=320, realtime=False, limit=FRAMES), first_seq=0)
        asyncio.run(produce_frames(settings, frames))

        def published() -> list[tuple[str, dict]]:
            return [(key.decode(), json.loads(value))
                    for key, value in asyncio.run(read_records(settings, settings.processed_frames_topic, 1.0))]

        records = wait_for(lambda: (r := published()) and len(r) >= FRAMES * len(CAMERAS) and r, 240,
                           "every frame's record")
    finally:
        assert worker.stop() == 0
    for camera in CAMERAS:
        seqs = [record["seq"] for key, record in records if key == camera]
        assert seqs == sorted(seqs) and len(seqs) == len(set(seqs)) == FRAMES, (camera, seqs)
        assert all(record["status"] == "processed" for key, record in records if key == camera)
    print(f"\nframe order: {len(records)} records, each camera's seqs in capture order")
