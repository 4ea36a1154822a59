"""`visionstream produce keys`, `produce video` and `replay`: the command line of the producers
(images/producer.py, frames/producer.py) and of the replays (images/replay.py, frames/replay.py)."""

from __future__ import annotations

import argparse
import time

from tqdm import tqdm

from visionstream.frames.producer import CaptureOptions, capture_frames, produce_frames, video_sources
from visionstream.images.producer import keys_from_database, keys_from_s3, produce_keys
from visionstream.images.replay import Selection, count_selected, replay
from visionstream.settings import Settings

IMAGE_ONLY = ("prefix", "label", "where")


def per_second(count: int, seconds: float) -> float:
    return count / max(seconds, 1e-9)


async def produce_keys_command(settings: Settings, args: argparse.Namespace) -> int:
    if args.s3:
        source = keys_from_s3(settings, args.prefix or "", args.limit)
        what = f"s3://{settings.s3_bucket}/{args.prefix or ''}"
    else:
        source = keys_from_database(settings, args.where, args.limit, args.prefix)
        what = "image_info"
    started = time.perf_counter()
    with tqdm(desc=f"keys from {what}", unit="key", disable=args.no_progress) as progress:
        sent = await produce_keys(settings, source, progress)
    elapsed = time.perf_counter() - started
    print(f"sent {sent} keys to {settings.images_topic} in {elapsed:.1f}s ({per_second(sent, elapsed):,.0f} keys/s)")
    return 0


async def produce_video_command(settings: Settings, args: argparse.Namespace) -> int:
    try:
        sources = video_sources(args.sources, args.camera_id)
    except ValueError as exc:
        print(f"visionstream produce video: {exc}")
        return 2
    options = CaptureOptions(
        fps=args.fps, max_side=args.max_side, jpeg_quality=args.jpeg_quality, loop=args.repeat,
        realtime=not args.as_fast_as_possible, limit=args.limit,
    )
    started = time.perf_counter()
    counts = await produce_frames(settings, capture_frames(sources, options))
    elapsed = time.perf_counter() - started
    claimed = counts.pop("claim_checked", 0)
    total = sum(counts.values())
    per_camera = ", ".join(f"{camera}: {n}" for camera, n in sorted(counts.items()))
    print(f"sent {total} frames to {settings.frames_topic} in {elapsed:.1f}s ({per_second(total, elapsed):.1f} "
          f"frames/s; {claimed} via S3 claim check) — {per_camera or 'no frames'}")
    return 0


async def replay_command(settings: Settings, args: argparse.Namespace) -> int:
    if args.camera is not None:
        return await _replay_frames_command(settings, args)
    selection = Selection(prefix=args.prefix, label=args.label, since=args.since, until=args.until,
                          only_missing=args.only_missing, where=args.where, limit=args.limit)
    if args.dry_run:
        print(f"{await count_selected(settings, selection)} images selected; dry run, nothing sent")
        return 0
    started = time.perf_counter()
    sent = await replay(settings, selection, progress=not args.no_progress)
    elapsed = time.perf_counter() - started
    print(f"replayed {sent} images to {settings.replay_topic} in {elapsed:.1f}s "
          f"({per_second(sent, elapsed):,.0f} keys/s); workers consuming {settings.replay_topic} write them "
          "under their own model version")
    return 0


async def _replay_frames_command(settings: Settings, args: argparse.Namespace) -> int:
    from visionstream.frames.replay import FrameSelection, count_frames, replay_frames

    given = [f"--{name}" for name in IMAGE_ONLY if getattr(args, name) is not None]
    if given:
        print(f"visionstream replay: {', '.join(given)} select images, not the frames of --camera")
        return 2
    selection = FrameSelection(camera=args.camera, since=args.since, until=args.until,
                               only_missing=args.only_missing, limit=args.limit)
    if args.dry_run:
        print(f"{await count_frames(settings, selection)} archived frames of camera {args.camera!r} selected; "
              "dry run, nothing sent")
        return 0
    started = time.perf_counter()
    sent = await replay_frames(settings, selection, progress=not args.no_progress)
    elapsed = time.perf_counter() - started
    print(f"replayed {sent} frames of camera {args.camera!r} to {settings.frame_replay_topic} in {elapsed:.1f}s "
          f"({per_second(sent, elapsed):,.0f} frames/s); workers consuming {settings.frame_replay_topic} in archive "
          "mode write their faces to frame_faces under their own detector version")
    return 0
