"""Cameras and video files -> JPEG frames -> the frames topic (`visionstream produce video`, cli/produce.py).

Each source is read by OpenCV in its own thread (capture and JPEG encoding never run on the event loop).
Frames are keyed by camera id, so one camera's frames stay in order in one partition; the wire format is in
frames/records.py. A frame larger than ``max_message_bytes`` is put in S3 and sent as a reference (claim
check); the faces agent fetches it transparently. Live sources (device indexes, URLs) that drop are
reopened with backoff; a live source whose frames are not sent fast enough drops its oldest-waiting frames
instead of delaying new ones, while a file simply waits (back-pressure).

``seq`` starts at the producer's start time in milliseconds and counts up per frame, so it keeps
increasing across producer restarts (well below 1000 frames/s) and (camera_id, seq) stays unique.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import numpy as np
from aiokafka import AIOKafkaProducer

from visionstream.core.kafka_client import kafka_client_kwargs
from visionstream.core.retry import Backoff, Delays
from visionstream.core.s3 import TRANSIENT_S3_ERRORS, put_if_absent, s3_client
from visionstream.frames.archive import claim_check_key
from visionstream.frames.records import frame_headers
from visionstream.settings import Settings
from visionstream.topics import ensure_topics

log = logging.getLogger(__name__)

LIVE_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
QUEUE_FRAMES = 16  # frames waiting between the capture threads and the sender
IN_FLIGHT = 64  # sends awaited together
REQUEST_HEADROOM = 64 * 1024  # Kafka request overhead above the largest value we send inline
RECONNECT_INITIAL, RECONNECT_MAX = 0.5, 10.0


@dataclass(frozen=True, slots=True)
class VideoSource:
    uri: str  # a file path, a device index ("0") or a stream URL
    camera_id: str

    @property
    def live(self) -> bool:
        return self.uri.isdigit() or self.uri.lower().startswith(LIVE_SCHEMES)

    def open(self) -> cv2.VideoCapture:
        return cv2.VideoCapture(int(self.uri) if self.uri.isdigit() else self.uri)


@dataclass(frozen=True, slots=True)
class CaptureOptions:
    fps: float | None = None  # emit at most this rate (files: the playback rate when realtime)
    max_side: int | None = None  # scale frames down to this longest side before encoding
    jpeg_quality: int = 85
    loop: bool = False  # files: start again at the end
    realtime: bool = True  # files: play at their own (or --fps) rate; False: as fast as possible
    limit: int | None = None  # frames per source


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    camera_id: str
    seq: int
    captured_at: float
    width: int
    height: int
    jpeg: bytes


def without_credentials(uri: str) -> str:
    """A stream URL as it may be shown: scheme, host, port and path; no user, password, query or fragment
    (cameras take credentials in either)."""
    if not uri.lower().startswith(LIVE_SCHEMES):
        return uri
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:
        return f"{uri.split(':', 1)[0]}://(unparsable URL)"
    host = f"[{parts.hostname}]" if parts.hostname and ":" in parts.hostname else (parts.hostname or "")
    return f"{parts.scheme}://{host}{f':{port}' if port else ''}{parts.path}"


def default_camera_id(uri: str) -> str:
    """The camera id of a source without --camera-id: a file's name, deviceN, or a URL's host, port and path
    (never its user, password or query: the id is in Kafka keys, rows, S3 keys, metrics and pages)."""
    if uri.isdigit():
        return f"device{uri}"
    if uri.lower().startswith(LIVE_SCHEMES):
        camera_id = re.sub(r"[^A-Za-z0-9._-]+", "-", without_credentials(uri).split("://", 1)[1]).strip("-")
        if not camera_id:
            raise ValueError(f"{without_credentials(uri)} names no host: give it a --camera-id")
        return camera_id
    return Path(uri).stem


def video_sources(uris: Sequence[str], camera_ids: Sequence[str] | None) -> list[VideoSource]:
    if camera_ids and len(camera_ids) != len(uris):
        raise ValueError(f"{len(camera_ids)} --camera-id for {len(uris)} sources: give one per source or none")
    ids = list(camera_ids) if camera_ids else [default_camera_id(uri) for uri in uris]
    duplicated = sorted(name for name, n in Counter(ids).items() if n > 1)
    if duplicated:
        raise ValueError(f"camera ids must be unique, repeated: {', '.join(duplicated)} (use --camera-id)")
    return [VideoSource(uri, camera_id) for uri, camera_id in zip(uris, ids, strict=True)]


def encode_jpeg(bgr: np.ndarray, max_side: int | None, quality: int) -> tuple[bytes, int, int]:
    height, width = bgr.shape[:2]
    if max_side and max(height, width) > max_side:
        factor = max_side / max(height, width)
        bgr = cv2.resize(bgr, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
        height, width = bgr.shape[:2]
    ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return data.tobytes(), width, height


class _Capture:
    """One source read in its own thread; frames reach the event loop through an asyncio queue."""

    def __init__(self, source: VideoSource, options: CaptureOptions, first_seq: int,
                 queue: asyncio.Queue, loop: asyncio.AbstractEventLoop, stop: threading.Event,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], object] | None = None) -> None:
        self.source = source
        self.dropped = 0  # live frames dropped because the sender fell behind
        self._options = options
        self._seq = first_seq
        self._queue = queue
        self._loop = loop
        self._stop = stop
        self._clock = clock
        self._sleep = sleep or stop.wait  # pacing waits; a stop ends them early

    def run(self) -> None:
        try:
            self._read_all()
            self._hand_over(None)
        except BaseException as exc:  # noqa: BLE001 - the sender re-raises it on the event loop
            self._hand_over(exc)

    def _read_all(self) -> None:
        options, source = self._options, self.source
        capture = self._open()
        # Live sources come at their own pace and are only decimated to --fps; files are paced by us.
        interval = None
        if source.live:
            interval = 1.0 / options.fps if options.fps else None
        elif options.realtime:
            interval = 1.0 / (options.fps or capture.get(cv2.CAP_PROP_FPS) or 25.0)
        sent, next_at = 0, self._clock()
        try:
            while not self._stop.is_set() and (options.limit is None or sent < options.limit):
                ok, bgr = capture.read()
                if not ok:
                    capture.release()
                    if not (source.live or options.loop):
                        return
                    capture = self._open(reconnect=source.live)
                    continue
                if interval is not None:
                    now = self._clock()
                    if source.live:
                        if now < next_at:
                            continue
                        next_at = now + interval
                    else:
                        self._sleep(max(next_at - now, 0.0))
                        next_at += interval
                captured_at = time.time()
                jpeg, width, height = encode_jpeg(bgr, options.max_side, options.jpeg_quality)
                self._hand_over(EncodedFrame(source.camera_id, self._seq, captured_at, width, height, jpeg))
                self._seq += 1
                sent += 1
        finally:
            capture.release()

    def _open(self, reconnect: bool = False) -> cv2.VideoCapture:
        delays = iter(Delays(RECONNECT_INITIAL, RECONNECT_MAX))
        while True:
            if reconnect:
                delay = next(delays)
                log.warning("%s: source dropped; reconnecting in %.1fs", self.source.camera_id, delay)
                if self._stop.wait(delay):
                    raise _Stopped
            capture = self.source.open()
            if capture.isOpened():
                return capture
            capture.release()
            if not self.source.live:
                raise OSError(f"cannot open video {without_credentials(self.source.uri)!r}")
            reconnect = True

    def _hand_over(self, item: EncodedFrame | BaseException | None) -> None:
        if isinstance(item, EncodedFrame) and self.source.live:
            if asyncio.run_coroutine_threadsafe(self._offer(item), self._loop).result():
                return
            self.dropped += 1
            return
        # Files (and end-of-source markers) wait for room: that is the producer's back-pressure.
        asyncio.run_coroutine_threadsafe(self._queue.put((self, item)), self._loop).result()

    async def _offer(self, item: EncodedFrame) -> bool:
        if self._queue.full():
            return False
        self._queue.put_nowait((self, item))
        return True


class _Stopped(Exception):
    """The producer is stopping while a source waits to reconnect."""


async def capture_frames(sources: Sequence[VideoSource], options: CaptureOptions,
                         first_seq: int | None = None, *, clock: Callable[[], float] = time.monotonic,
                         sleep: Callable[[float], object] | None = None) -> AsyncIterator[EncodedFrame]:
    """Frames of every source as they are captured, interleaved; ends when every source has ended.

    ``clock`` and ``sleep`` pace the capture threads (tests inject a fake clock; ``sleep`` defaults to a wait
    that a stop ends early)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue(QUEUE_FRAMES)
    stop = threading.Event()
    first_seq = int(time.time() * 1000) if first_seq is None else first_seq
    captures = [_Capture(source, options, first_seq, queue, loop, stop, clock, sleep) for source in sources]
    threads = [threading.Thread(target=c.run, name=f"vs-capture-{c.source.camera_id}", daemon=True)
               for c in captures]
    for thread in threads:
        thread.start()
    running = len(captures)
    try:
        while running:
            capture, item = await queue.get()
            if isinstance(item, EncodedFrame):
                yield item
            elif item is None or isinstance(item, _Stopped):
                running -= 1
                if capture.dropped:
                    log.warning("%s: %d frames dropped while the sender was behind",
                                capture.source.camera_id, capture.dropped)
            else:
                raise item
    finally:
        stop.set()
        while any(t.is_alive() for t in threads):  # unblock threads waiting on a full queue
            while not queue.empty():
                queue.get_nowait()
            await asyncio.sleep(0.01)


async def produce_frames(settings: Settings, frames: AsyncIterator[EncodedFrame]) -> Counter[str]:
    """Send frames to the frames topic (S3 claim check above max_message_bytes); count per outcome."""
    await ensure_topics(settings)
    producer = AIOKafkaProducer(
        **kafka_client_kwargs(settings),
        client_id=f"{settings.app_id}-video",
        acks="all",
        linger_ms=5,
        max_request_size=settings.max_message_bytes + REQUEST_HEADROOM,
    )
    counts: Counter[str] = Counter()
    backoff = Backoff()
    pending: list[asyncio.Future] = []
    await producer.start()
    try:
        async with s3_client(settings) as client:
            async for frame in frames:
                value, s3_key = frame.jpeg, None
                if len(frame.jpeg) > settings.max_message_bytes:
                    s3_key = claim_check_key(frame.camera_id, frame.seq)

                    async def upload(key: str = s3_key, body: bytes = frame.jpeg) -> None:
                        # Never replaces an object: a claim check is also the frame's archived copy.
                        await put_if_absent(client, settings.s3_bucket, key, body, "image/jpeg")

                    await backoff.run(f"S3 PUT {s3_key}", upload, TRANSIENT_S3_ERRORS)
                    value = b""
                    counts["claim_checked"] += 1
                headers = frame_headers(frame.seq, frame.captured_at, frame.width, frame.height, s3_key)
                pending.append(await producer.send(
                    settings.frames_topic, value, key=frame.camera_id.encode(), headers=headers))
                counts[frame.camera_id] += 1
                if len(pending) >= IN_FLIGHT:
                    await asyncio.gather(*pending)
                    pending.clear()
            await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return counts
