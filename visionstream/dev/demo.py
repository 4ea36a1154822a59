"""`visionstream demo`: the whole pipeline on the local stack, ending with a SQL summary."""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from pathlib import Path

import cv2

from visionstream.bulk.upload import upload
from visionstream.core.db import connect, migrate
from visionstream.dev.samples import write_sample_tree
from visionstream.dev.stack import LocalStack, free_port, port_is_free
from visionstream.dev.workerproc import LoggedProcess, WorkerProcess
from visionstream.frames.producer import (
    CaptureOptions,
    EncodedFrame,
    VideoSource,
    capture_frames,
    encode_jpeg,
    produce_frames,
)
from visionstream.images.producer import keys_from_database, produce_keys
from visionstream.settings import Settings
from visionstream.topics import ensure_topics

RESULT_TIMEOUT = 900.0

TOP_CATEGORIES = """
SELECT category, count(*) AS images, round(avg(confidence)::numeric, 3) AS mean_confidence
FROM prediction_results WHERE rank = 1 AND starts_with(image_key, $1)
GROUP BY category ORDER BY images DESC, category LIMIT 10
"""
BY_LABEL = """
SELECT DISTINCT ON (i.label) i.label, p.category, count(*) AS images
FROM prediction_results p JOIN image_info i USING (image_key)
WHERE p.rank = 1 AND starts_with(p.image_key, $1)
GROUP BY i.label, p.category ORDER BY i.label, images DESC
"""
PER_HOST = """
SELECT hostname, count(DISTINCT image_key) AS images, count(*) AS rows,
       extract(epoch FROM max(time) - min(time)) AS seconds
FROM prediction_results WHERE starts_with(image_key, $1) GROUP BY hostname ORDER BY hostname
"""
FACES_PER_PHOTO = """
SELECT i.label, count(*) AS images, count(*) FILTER (WHERE f.face_count > 0) AS with_faces,
       sum(f.face_count) AS faces, sum(jsonb_array_length(f.faces) - f.face_count) AS below_floor
FROM image_faces f JOIN image_info i USING (image_key)
WHERE starts_with(f.image_key, $1) GROUP BY i.label ORDER BY faces DESC, i.label
"""
DONE = """
SELECT (SELECT count(DISTINCT image_key) FROM prediction_results WHERE starts_with(image_key, $1))
     + (SELECT count(DISTINCT image_key) FROM processing_errors WHERE starts_with(image_key, $1))
"""
IDENTIFIED = """
SELECT f.camera_id, f.seq, face->>'person' AS person, round((face->>'similarity')::numeric, 3) AS similarity,
       face->>'embedder' AS embedder
FROM frame_results f, jsonb_array_elements(f.faces) AS face
WHERE f.camera_id = $1 AND f.seq = $2 AND coalesce((face->>'accepted')::boolean, true) ORDER BY f.seq
"""
# The camera's distinct visitors as visitors_per_camera_hour counts them (migration 0012), and for contrast the
# faces counted frame by frame.
VISITS = """
SELECT (SELECT count(*) FROM frame_results WHERE camera_id = $1 AND status = 'processed') AS frames,
       (SELECT sum(face_count) FROM frame_results WHERE camera_id = $1) AS faces_per_frame_sum,
       count(*) AS visits, count(person) AS visits_of_enrolled,
       count(DISTINCT coalesce('person:' || person, 'visitor:' || visitor::text, visit_id)) AS distinct_visitors
FROM visits WHERE camera_id = $1
"""
PROCESSED_FRAMES = "SELECT count(*) FROM frame_results WHERE camera_id = $1"
RESULT_TIMES = """
SELECT extract(epoch FROM min(time)) AS first, extract(epoch FROM max(time)) AS last
FROM prediction_results WHERE starts_with(image_key, $1)
"""


def _table(title: str, rows: list, columns: list[str]) -> str:
    cells = [[str(v) for v in columns]] + [[str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return f"\n{title}\n" + "\n".join(lines)


async def _wait_for_results(settings: Settings, prefix: str, expected: int, worker: WorkerProcess) -> None:
    conn = await connect(settings)
    try:
        deadline = time.monotonic() + RESULT_TIMEOUT
        while (done := await conn.fetchval(DONE, prefix)) < expected:
            if worker.process.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{worker.log_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {done}/{expected} images have a result after {RESULT_TIMEOUT:.0f}s")
            await asyncio.sleep(0.5)
    finally:
        await conn.close()


async def _summary(settings: Settings, prefix: str, produced_at: float) -> str:
    conn = await connect(settings)
    try:
        top = await conn.fetch(TOP_CATEGORIES, prefix)
        by_label = await conn.fetch(BY_LABEL, prefix)
        hosts = await conn.fetch(PER_HOST, prefix)
        times = await conn.fetchrow(RESULT_TIMES, prefix)
        errors = await conn.fetchval(
            "SELECT count(*) FROM processing_errors WHERE starts_with(image_key, $1)", prefix
        )
        faces = await conn.fetch(FACES_PER_PHOTO, prefix)
    finally:
        await conn.close()
    images = sum(r["images"] for r in hosts)
    first, last = float(times["first"]), float(times["last"])
    seconds = last - produced_at
    # The first batch waits for the model to load (and compile): the rate after it is the worker's speed.
    streaming = f"; {(images - 1) / (last - first):.1f} images/s from first to last result" if last > first else ""
    return "\n".join([
        _table("Top categories (rank 1)", [tuple(r) for r in top], ["category", "images", "mean_confidence"]),
        _table("Most common prediction per sample photo", [tuple(r) for r in by_label],
               ["photo", "category", "images"]),
        _table("Faces found per sample photo (image_faces)", [tuple(r) for r in faces],
               ["photo", "images", "with_faces", "faces", "below_floor"]),
        _table("Rows per host", [(r["hostname"], r["images"], r["rows"]) for r in hosts],
               ["hostname", "images", "rows"]),
        f"\n{images} images classified, {errors} dead letters; "
        f"{images / seconds:.1f} images/s from first key produced to last result written ({seconds:.1f}s)"
        f"{streaming}",
    ])


async def _wait_for_frames(settings: Settings, camera: str, frames: int, worker: WorkerProcess) -> None:
    conn = await connect(settings)
    try:
        deadline = time.monotonic() + 600
        while await conn.fetchval(PROCESSED_FRAMES, camera) < frames:
            if worker.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"camera {camera}'s frames not all stored:\n{worker.log_text()[-3000:]}")
            await asyncio.sleep(0.5)
    finally:
        await conn.close()


async def _identify_portrait(settings: Settings, portrait: Path, camera: str, worker: WorkerProcess) -> str:
    """Send the enrolled person's photo, mirrored (not the enrolled pixels), as the camera's frame 1; the faces
    agent's rows for it, as a table."""
    jpeg, width, height = encode_jpeg(cv2.flip(cv2.imread(str(portrait)), 1), settings.face_detect_max_side, 90)

    async def one_frame():  # type: ignore[no-untyped-def]
        yield EncodedFrame(camera, 1, time.time(), width, height, jpeg)

    await produce_frames(settings, one_frame())
    await _wait_for_frames(settings, camera, 1, worker)
    conn = await connect(settings)
    try:
        rows = await conn.fetch(IDENTIFIED, camera, 1)
    finally:
        await conn.close()
    return _table("Faces on camera frames (identified: an enrolled person)", [tuple(r) for r in rows],
                  ["camera", "seq", "person", "similarity", "embedder"])


async def _count_visitors(settings: Settings, clip: Path | None, camera: str, worker: WorkerProcess,
                          frames_before: int) -> str:
    """Play ``clip`` as the camera's next frames (as fast as the worker takes them: it runs in archive mode),
    then the camera's distinct visitors."""
    if clip is not None:
        # Two seconds after the portrait frame: its visit has ended (the tracker's gap is 1 s).
        await asyncio.sleep(2.0)
        played = 0

        async def counted():  # type: ignore[no-untyped-def]
            nonlocal played
            async for frame in capture_frames([VideoSource(str(clip), camera)], CaptureOptions(
                    max_side=settings.face_detect_max_side, realtime=False), first_seq=frames_before + 1):
                played += 1
                yield frame

        await produce_frames(settings, counted())
        print(f"played {clip.name} as camera {camera}'s frames {frames_before + 1}-{frames_before + played}; "
              "waiting for its faces ...", flush=True)
        await _wait_for_frames(settings, camera, frames_before + played, worker)
    conn = await connect(settings)
    try:
        visits = await conn.fetchrow(VISITS, camera)
    finally:
        await conn.close()
    return _table(f"Distinct visitors on camera {camera} (distinct visitors on for the demo: faces tracked into "
                  "visits, an enrolled person counted by name, anyone else by an anonymous visitor id)",
                  [tuple(visits)], list(visits.keys()))


def run_demo(settings: Settings, images: int, keep_stack: bool, portrait: Path | None = None,
             secure: bool = False, clip: Path | None = None) -> int:
    stack = LocalStack.from_settings(settings, secure=secure)
    was_running = stack.is_up()
    stack.up()
    worker = dashboard = None
    try:
        # The demo archives its frames, so `visionstream replay --camera` has something to replay.
        # Distinct visitors on (faces/visitors.py): the camera's visits are counted as people, not tracks; archive
        # mode: the clip is produced faster than a CPU analyses it, and no frame is skipped as late.
        overrides = {"model_weights": settings.model_weights, "frame_archive": True, "face_distinct_visitors": True,
                     "frame_mode": "archive"}
        if settings.model_weights is None:
            print("No SqueezeNet weights file set (VISIONSTREAM_MODEL_WEIGHTS): trying the torch hub cache; "
                  "if it is empty, labels come from RANDOM weights and mean nothing.")
            overrides["allow_random_weights"] = True
        stack_settings = stack.settings(**overrides)
        asyncio.run(_prepare(stack_settings))

        run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        prefix = f"demo/{run_id}/"
        tree = write_sample_tree(settings.data_dir / "demo" / run_id, images)
        print(f"\nprepared {images} sample images under {tree}")
        summary = asyncio.run(upload(stack_settings, [tree], prefix=prefix, progress=True))
        registered = summary.registered

        if portrait is not None:  # the worker loads enrolled people when it starts
            from visionstream.cli.people import enroll_command

            if enroll_command(stack_settings, portrait.parent.name, [portrait]) != 0:
                return 2
        worker_env = stack.env(**overrides)
        worker = WorkerProcess(worker_env, settings.data_dir / "logs" / "demo-worker.log", free_port())
        print(f"starting a worker (log: {worker.log_path}) ...")
        worker.wait_ready()
        dashboard_port = settings.dashboard_port if port_is_free(settings.dashboard_port) else free_port()
        dashboard = LoggedProcess(
            "dashboard", [sys.executable, "-m", "visionstream.cli.main", "dashboard"],
            {**worker_env, "VISIONSTREAM_DASHBOARD_PORT": str(dashboard_port)},
            settings.data_dir / "logs" / "demo-dashboard.log", ready_line="dashboard: http://")
        dashboard.wait_ready()
        print(f"dashboard: http://{settings.dashboard_host}:{dashboard_port}/   "
              f"metrics: http://{settings.web_host}:{worker.web_port}/metrics")

        produced_at = time.time()
        sent = asyncio.run(produce_keys(stack_settings, keys_from_database(stack_settings, prefix=prefix)))
        print(f"produced {sent} keys; waiting for results ...")
        asyncio.run(_wait_for_results(stack_settings, prefix, registered, worker))
        print(asyncio.run(_summary(stack_settings, prefix, produced_at)))
        camera = f"demo-{run_id}"
        if portrait is not None:
            print(asyncio.run(_identify_portrait(stack_settings, portrait, camera, worker)))
        if portrait is not None or clip is not None:
            print(asyncio.run(_count_visitors(stack_settings, clip, camera, worker, int(portrait is not None))))
        print(f"\nQuery the results yourself: source {stack.env_file} && psql \"$VISIONSTREAM_DATABASE_URL\"")
        return 0
    finally:
        if keep_stack:
            running = [p for p in (worker, dashboard) if p is not None and p.process.poll() is None]
            if running:
                print("still running: " + ", ".join(f"{p.name} (pid {p.process.pid})" for p in running)
                      + f"; produce more with `source {stack.env_file}` and `visionstream produce video ...`, "
                      "stop them with kill and the stack with `visionstream stack down`")
        else:
            for process in (dashboard, worker):
                if process is not None:
                    process.stop()
            if not was_running:
                stack.down()


async def _prepare(settings: Settings) -> None:
    await migrate(settings)
    await ensure_topics(settings)

