"""Live frame latency with and without a replay of archived frames running, side by side.

    .venv/bin/python bench/replay_latency.py [--video PATH] [--fps 3] [--seconds 40] [--max-lag 3] [--rounds 4]
                                             [--nice 19]

On a private local stack, two frames-only workers (VISIONSTREAM_IMAGE_ANALYZERS empty):
  live    the frames topic, live mode (frames older than --max-lag are skipped), archive on, detection at 960 px;
  replay  the frame replay topic, archive mode, detection at 640 px (another detector version).
1. without a replay: camera A streams the arcade clip (encoded at 960 px) at --fps for --seconds, paced like a
   camera; its frames are archived.
2. with a replay: a replay worker starts, `visionstream replay --camera A` sends A's archived frames --rounds
   times (a replay again adds no rows but costs the same detection, so the replay worker stays busy for the
   whole phase), and camera B streams like A did.
3. the same with the replay worker started under `nice -n --nice`, its autogroup's nice value set alike
   (camera C).
Reported from frame_results per camera: frames processed and skipped as late, p50/p95 capture->result
latency of the processed frames; and the replay worker's frames/s during the phase (its processed-frames
records). The workers share this machine's cores, as they need not in production (replay workers on
machines or CPU quotas of their own). A benchmark, not a test: nothing asserts on speed.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from video_overload import (  # noqa: E402
    ARCADE,
    percentile,
    run_and_print,
    start_worker,
    wait_for_rows,
)

from visionstream.core.db import migrate  # noqa: E402
from visionstream.core.kafka_client import kafka_client_kwargs  # noqa: E402
from visionstream.dev.stack import LocalStack, free_port  # noqa: E402
from visionstream.dev.workerproc import LoggedProcess, faust_worker_argv  # noqa: E402
from visionstream.frames.producer import (  # noqa: E402
    CaptureOptions,
    VideoSource,
    capture_frames,
    produce_frames,
)
from visionstream.frames.replay import FrameSelection, replay_frames  # noqa: E402
from visionstream.settings import Settings  # noqa: E402
from visionstream.topics import ensure_topics  # noqa: E402

ENCODE_SIDE = 960


async def stream(settings: Settings, video: Path, camera: str, fps: float, seconds: float) -> int:
    options = CaptureOptions(fps=fps, max_side=ENCODE_SIDE, loop=True, realtime=True, limit=round(fps * seconds))
    counts = await produce_frames(settings, capture_frames([VideoSource(str(video), camera)], options))
    return counts[camera]


async def settle(settings: Settings, camera: str, expected: int, timeout: float = 120) -> list[dict]:
    rows = await wait_for_rows(settings, camera, expected, timeout)
    return [row for row in rows if row["camera_id"] == camera]


def phase(rows: list[dict], sent: int) -> dict[str, object]:
    latencies = [row["latency_ms"] / 1000 for row in rows if row["status"] == "processed"]
    return {"sent": sent, "processed": len(latencies), "skipped": len(rows) - len(latencies),
            "latency_p50_s": round(percentile(latencies, 50), 3) if latencies else None,
            "latency_p95_s": round(percentile(latencies, 95), 3) if latencies else None}


async def replay_rate(settings: Settings, topic: str, start: float, end: float) -> dict[str, object]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, **kafka_client_kwargs(settings), auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    times: list[float] = []
    try:
        quiet = time.monotonic()
        while time.monotonic() - quiet < 2.0:
            for messages in (await consumer.getmany(timeout_ms=300)).values():
                times += [json.loads(m.value)["processed_at"] for m in messages]
                quiet = time.monotonic()
    finally:
        await consumer.stop()
    during = [t for t in times if start <= t <= end]
    return {"replayed_during_phase": len(during), "replay_frames_per_s": round(len(during) / (end - start), 2)}


def start_replay_worker(stack: LocalStack, fields: dict[str, object], log_path: Path, nice: int) -> LoggedProcess:
    port = free_port()
    argv = faust_worker_argv(["-m", "faust", "-A", "visionstream"], port)
    worker = LoggedProcess("replay worker", ["nice", "-n", str(nice), *argv] if nice else argv,
                           stack.env(**fields, web_port=port), log_path)
    autogroup = Path(f"/proc/{worker.process.pid}/autogroup")
    if nice and autogroup.exists():
        # With the kernel's autogroups (sched_autogroup_enabled), CPU is shared between sessions first, and a
        # worker runs in a session of its own: `nice` alone changed nothing here (live p50 5.6 s vs 5.4 s).
        autogroup.write_text(str(nice))
    worker.wait_ready(180)
    return worker


def run(args) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="vs-replay-latency-") as folder:
        stack = LocalStack(Path(folder))
        stack.up()
        try:
            name = f"rl{uuid.uuid4().hex[:6]}"
            common: dict[str, object] = dict(
                frames_topic=f"{name}-frames", frame_replay_topic=f"{name}-frame-replay",
                dead_letter_topic=f"{name}-dead", identified_faces_topic=f"{name}-identified",
                image_analyzers="", frame_archive=True, device="cpu")
            settings = stack.settings(app_id=f"{name}-live", **common)
            asyncio.run(migrate(settings))
            asyncio.run(ensure_topics(settings))
            replay_fields = {**common, "app_id": f"{name}-replay", "frame_mode": "archive",
                             "frames_topic": common["frame_replay_topic"], "face_detect_max_side": 640,
                             "processed_frames_topic": f"{name}-replay-processed"}
            live = start_worker(stack, {**common, "app_id": f"{name}-live", "frame_mode": "live",
                                        "max_frame_lag_seconds": args.max_lag, "face_detect_max_side": 960,
                                        "processed_frames_topic": f"{name}-live-processed"},
                                Path(folder) / "live.log")
            phases: dict[str, dict[str, object]] = {}
            windows: dict[str, tuple[float, float]] = {}
            replayed = 0
            try:
                history = f"{name}-a"
                sent = asyncio.run(stream(settings, args.video, history, args.fps, args.seconds))
                phases["without replay"] = phase(asyncio.run(settle(settings, history, sent)), sent)
                print(f"without replay: {phases['without replay']}", flush=True)

                async def with_replay(camera: str) -> tuple[int, int, float, float]:
                    started = time.time()
                    count = 0
                    for _ in range(args.rounds):
                        count += await replay_frames(settings, FrameSelection(history))
                    return count, await stream(settings, args.video, camera, args.fps, args.seconds), started, time.time()

                for label, camera, nice in (("with replay", f"{name}-b", 0),
                                            (f"with replay (nice {args.nice})", f"{name}-c", args.nice)):
                    replay = start_replay_worker(stack, replay_fields, Path(folder) / f"replay-{nice}.log", nice)
                    try:
                        count, sent, start, end = asyncio.run(with_replay(camera))
                        replayed += count
                        phases[label] = phase(asyncio.run(settle(settings, camera, sent)), sent)
                        windows[label] = (start, end)
                        print(f"{label}: {phases[label]}", flush=True)
                    finally:
                        replay.stop()
            finally:
                live.stop()
            for label, (start, end) in windows.items():
                phases[label].update(asyncio.run(replay_rate(settings, f"{name}-replay-processed", start, end)))
        finally:
            stack.down()
    return {"fps": args.fps, "seconds": args.seconds, "max_lag_s": args.max_lag, "encode_side": ENCODE_SIDE,
            "replay_sent": replayed, "phases": phases}


def main() -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--video", type=Path, default=ARCADE, help="video file (default: the shared arcade clip)")
    parser.add_argument("--fps", type=float, default=3.0, help="live frames per second of the camera")
    parser.add_argument("--seconds", type=float, default=40.0, help="length of each phase")
    parser.add_argument("--max-lag", type=float, default=3.0, help="live mode: skip frames older than this")
    parser.add_argument("--rounds", type=int, default=4, help="times the archived frames are replayed per phase")
    parser.add_argument("--nice", type=int, default=19, help="niceness of the replay worker in phase 3")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return run_and_print(run, parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
