"""Live back-pressure under overload: capture->result latency (p50/p99) and drop rate of the faces agent.

    .venv/bin/python bench/video_overload.py [--video PATH] [--overload 2] [--seconds 30] [--max-lag 1.0]

1. capacity: one faces worker (archive mode: every frame processed) gets the arcade video's 1080p frames as fast
   as they can be sent; its frames/s from frame_results.processed_at is the capacity C.
2. overload: one worker in live mode (frames older than --max-lag are skipped) gets frames from several cameras
   (the same video, looped) at --overload x C frames/s in all, paced like real cameras, for --seconds.
   Reported from frame_results: every frame accounted for (processed or skipped with its reason), p50/p99
   capture->result latency of the processed frames, and the share skipped.

Runs on a private local stack in a temporary folder. A benchmark, not a test: nothing asserts on speed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from visionstream.core.db import connect, migrate
from visionstream.dev.stack import LocalStack, free_port
from visionstream.dev.workerproc import WorkerProcess
from visionstream.frames.producer import (
    CaptureOptions,
    VideoSource,
    capture_frames,
    produce_frames,
)
from visionstream.settings import Settings
from visionstream.topics import ensure_topics

ROOT = Path(__file__).resolve().parents[1]
ARCADE = ROOT.parent / "shared" / "assets" / "media" / "arcade_pedestrians_1080p.mp4"
CAMERAS = 4
CAPACITY_FRAMES = 105


def start_worker(stack: LocalStack, settings_fields: dict[str, object], log_path: Path) -> WorkerProcess:
    port = free_port()
    env = stack.env(**settings_fields, web_port=port)
    worker = WorkerProcess(env, log_path, port)
    worker.wait_ready(180)
    return worker


async def frame_rows(settings: Settings, prefix: str) -> list[dict]:
    conn = await connect(settings)
    try:
        rows = await conn.fetch(
            "SELECT camera_id, seq, status, skip_reason, latency_ms, processed_at FROM frame_results "
            "WHERE starts_with(camera_id, $1)", prefix)
        return [dict(row) for row in rows]
    finally:
        await conn.close()


async def wait_for_rows(settings: Settings, prefix: str, expected: int, timeout: float) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        rows = await frame_rows(settings, prefix)
        if len(rows) >= expected or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.5)


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


async def send(settings: Settings, video: Path, prefix: str, cameras: int, options: CaptureOptions) -> int:
    sources = [VideoSource(str(video), f"{prefix}{camera}") for camera in range(cameras)]
    counts = await produce_frames(settings, capture_frames(sources, options))
    counts.pop("claim_checked", 0)
    return sum(counts.values())


def run(args: argparse.Namespace) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="vs-overload-") as folder:
        stack = LocalStack(Path(folder))
        stack.up()
        try:
            name = f"ovl{uuid.uuid4().hex[:6]}"
            fields: dict[str, object] = dict(app_id=name, frames_topic=f"{name}-frames",
                                             processed_frames_topic=f"{name}-processed",
                                             dead_letter_topic=f"{name}-dead", allow_random_weights=True,
                                             compile_model=False)  # the classifier idles here
            settings = stack.settings(**fields)
            asyncio.run(migrate(settings))
            asyncio.run(ensure_topics(settings))

            # 1. Capacity, archive mode.
            worker = start_worker(stack, {**fields, "frame_mode": "archive"}, Path(folder) / "archive.log")
            try:
                sent = asyncio.run(send(settings, args.video, f"{name}-cap-", 1,
                                        CaptureOptions(realtime=False, limit=CAPACITY_FRAMES)))
                rows = asyncio.run(wait_for_rows(settings, f"{name}-cap-", sent, 600))
            finally:
                worker.stop()
            times = sorted(row["processed_at"].timestamp() for row in rows)
            # The first batch includes the model's warm-up: rate over the rest.
            capacity = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else float("nan")
            print(f"capacity: {len(rows)}/{sent} frames processed, {capacity:.2f} frames/s", flush=True)

            # 2. Overload, live mode.
            rate = args.overload * capacity
            worker = start_worker(stack, {**fields, "frame_mode": "live", "max_frame_lag_seconds": args.max_lag},
                                  Path(folder) / "live.log")
            try:
                per_camera = rate / CAMERAS
                options = CaptureOptions(fps=per_camera, loop=True, realtime=True,
                                         limit=max(1, round(per_camera * args.seconds)))
                started = time.monotonic()
                sent = asyncio.run(send(settings, args.video, f"{name}-live-", CAMERAS, options))
                send_seconds = time.monotonic() - started
                rows = asyncio.run(wait_for_rows(settings, f"{name}-live-", sent, 300))
            finally:
                worker.stop()
        finally:
            stack.down()
    processed = [row["latency_ms"] / 1000 for row in rows if row["status"] == "processed"]
    skipped = [row for row in rows if row["status"] == "skipped"]
    reasons: dict[str, int] = {}
    for row in skipped:
        reasons[row["skip_reason"]] = reasons.get(row["skip_reason"], 0) + 1
    return {
        "capacity_fps": round(capacity, 2), "offered_fps": round(rate, 2), "offered_fps_measured":
        round(sent / send_seconds, 2), "cameras": CAMERAS, "max_lag_s": args.max_lag, "seconds": args.seconds,
        "sent": sent, "accounted": len(rows), "processed": len(processed), "skipped": len(skipped),
        "skip_reasons": reasons, "drop_rate": round(len(skipped) / max(len(rows), 1), 3),
        "latency_p50_s": round(percentile(processed, 50), 3) if processed else None,
        "latency_p99_s": round(percentile(processed, 99), 3) if processed else None,
        "latency_max_s": round(max(processed), 3) if processed else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--video", type=Path, default=ARCADE, help="video file (default: the shared arcade clip)")
    parser.add_argument("--overload", type=float, default=2.0, help="offered rate / measured capacity")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the overload phase")
    parser.add_argument("--max-lag", type=float, default=1.0, help="live mode: skip frames older than this")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return run_and_print(run, parser.parse_args())


def run_and_print(run: Callable[[argparse.Namespace], dict[str, object]], args: argparse.Namespace) -> int:
    """A video bench's end: its figures as JSON on stdout and in ``--json``; exit 2 without the video."""
    if not args.video.exists():
        print(f"no video at {args.video}: pass --video", file=sys.stderr)
        return 2
    figures = run(args)
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
