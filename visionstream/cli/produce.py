"""`visionstream produce keys`, `produce video` and `replay`: the command line of the producers
(images/producer.py, frames/producer.py) and of the replays (images/replay.py, frames/replay.py)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Awaitable, Callable

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
    return await _replay_selected(
        args, lambda: count_selected(settings, selection), lambda bar: replay(settings, selection, progress=bar),
        "images", "images", settings.replay_topic, "keys/s", "write them under their own model version")


async def _replay_frames_command(settings: Settings, args: argparse.Namespace) -> int:
    from visionstream.frames.replay import FrameSelection, count_frames, replay_frames

    given = [f"--{name}" for name in IMAGE_ONLY if getattr(args, name) is not None]
    if given:
        print(f"visionstream replay: {', '.join(given)} select images, not the frames of --camera")
        return 2
    selection = FrameSelection(camera=args.camera, since=args.since, until=args.until,
                               only_missing=args.only_missing, limit=args.limit)
    return await _replay_selected(
        args, lambda: count_frames(settings, selection), lambda bar: replay_frames(settings, selection, progress=bar),
        f"archived frames of camera {args.camera!r}", f"frames of camera {args.camera!r}",
        settings.frame_replay_topic, "frames/s",
        "in archive mode write their faces to frame_faces under their own detector version")


async def _replay_selected(args: argparse.Namespace, count: Callable[[], Awaitable[int]],
                           send: Callable[[bool], Awaitable[int]], selected: str, sent_what: str, topic: str,
                           rate: str, then: str) -> int:
    """A dry run counts what the selection holds; a replay sends it and says how fast."""
    if args.dry_run:
        print(f"{await count()} {selected} selected; dry run, nothing sent")
        return 0
    started = time.perf_counter()
    sent = await send(not args.no_progress)
    elapsed = time.perf_counter() - started
    print(f"replayed {sent} {sent_what} to {topic} in {elapsed:.1f}s ({per_second(sent, elapsed):,.0f} {rate}); "
          f"workers consuming {topic} {then}")
    return 0
