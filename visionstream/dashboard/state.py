"""What the dashboard knows, fed by the Kafka tails and PostgreSQL, with no I/O of its own (unit-testable).

Every record is checked before it is kept (``processed_frame``, ``prediction``, ``identified``): whoever can
write to a topic the dashboard reads must not be able to stop it, so a record that is not what its writer
sends raises :class:`BadRecord`, which the server counts and logs. What is kept is bounded: frames per camera
by time, count and bytes, cameras by number and idleness, every window and list by length.
"""

from __future__ import annotations

import bisect
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from visionstream.frames.records import MAX_CAMERA_ID, Frame

RATE_WINDOW = 10.0  # seconds: images/s and frames/s
STATS_WINDOW = 60.0  # seconds: latency percentiles, drop rate, faces per minute
WINDOW_EVENTS_KEPT = 100_000  # per window: at most this many events count (a flood skews rates, not memory)
IDENTIFIED_KEPT = 20
# A camera's video is shown this much behind its newest frame at most: the frames kept for it (about 35 MB
# at 25 fps of 1080p JPEGs), and the longest analysis latency whose boxes still land on their faces.
MAX_DELAY_SECONDS = 6.0
# Also bounded by count and bytes: frames whose capture time stands still or steps back are never "older".
FRAMES_KEPT = 300  # 6 s at 50 fps
FRAME_BYTES_KEPT = 16 * 1024 * 1024  # per camera: 3 s of 1080p, all of 720p and below
MAX_CAMERAS = 32  # shown at once (32 x 16 MiB of frames at most); a camera beyond them waits for an idle one
CAMERA_IDLE_SECONDS = 60.0  # a camera with no frame or result for this long is dropped
RESULTS_KEPT = 256
FACES_KEPT = 64  # per result: the boxes drawn
MAX_NAME = 200  # person names, image keys and statuses longer than this are bad records
MAX_IMAGE_KEY = 1024  # S3's key limit


class BadRecord(ValueError):
    """A record of a topic the dashboard reads that is not what that topic's writer sends."""


def _number(record: Mapping[str, Any], name: str, optional: bool = False) -> float | None:
    value = record.get(name)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRecord(f"{name} is not a finite number")
    return float(value)


def _integer(record: Mapping[str, Any], name: str, optional: bool = False, minimum: int = 0) -> int | None:
    value = record.get(name)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value < 2**63:
        raise BadRecord(f"{name} is not an integer from {minimum}")
    return value


def _text(record: Mapping[str, Any], name: str, longest: int = MAX_NAME, optional: bool = False) -> str | None:
    value = record.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= longest:
        raise BadRecord(f"{name} is not a string of 1-{longest} characters")
    return value


def _mapping(record: object) -> Mapping[str, Any]:
    if not isinstance(record, Mapping):
        raise BadRecord(f"a {type(record).__name__}, not a JSON object")
    return record


def _face(face: object) -> dict[str, Any]:
    face = _mapping(face)
    box = face.get("box")
    if not isinstance(box, list) or len(box) != 4:
        raise BadRecord("a face's box is not 4 numbers")
    return {"box": [_number({"x": v}, "x") for v in box], "probability": _number(face, "probability"),
            "person": _text(face, "person", optional=True)}


def processed_frame(record: object) -> dict[str, Any]:
    """A processed-frames record as the dashboard keeps it: status and camera, and for a processed frame its
    result (at most FACES_KEPT faces); BadRecord if a field has the wrong type or size."""
    record = _mapping(record)
    checked: dict[str, Any] = {"camera_id": _text(record, "camera_id", MAX_CAMERA_ID),
                               "status": _text(record, "status")}
    if checked["status"] != "processed":
        return checked
    faces = record.get("faces")
    if not isinstance(faces, list):
        raise BadRecord("faces is not a list")
    return {**checked, "seq": _integer(record, "seq"), "captured_at": _number(record, "captured_at"),
            "latency": _number(record, "latency"), "width": _integer(record, "width", minimum=1),
            "height": _integer(record, "height", minimum=1),
            "face_count": _integer(record, "face_count", optional=True),
            "faces": [_face(face) for face in faces[:FACES_KEPT]]}


def prediction(record: object) -> tuple[str, float]:
    """A predictions record's image key and result time."""
    record = _mapping(record)
    return _text(record, "image_key", MAX_IMAGE_KEY), _number(record, "time")  # type: ignore[return-value]


def identified(record: object) -> dict[str, Any]:
    """An identified-faces record as the panel shows it."""
    record = _mapping(record)
    return {"person": _text(record, "person"), "similarity": _number(record, "similarity"),
            "camera_id": _text(record, "camera_id", MAX_CAMERA_ID, optional=True),
            "captured_at": _number(record, "captured_at", optional=True)}


@dataclass(slots=True)
class CameraView:
    """A camera's recent frames (JPEG inline; claim-checked frames are not shown) and processed results.

    The tile shows the frame captured ``delay`` before the newest one, where the delay is the camera's
    latest capture -> result latency: by then its result is in, so boxes are drawn on the frame they were
    found in (or on a later one, from the newest result before it) instead of lagging behind moving faces.
    """

    frames: deque[Frame] = field(default_factory=deque)
    results: list[dict[str, Any]] = field(default_factory=list)  # by seq, the newest RESULTS_KEPT
    delay: float = 0.0
    frame_bytes: int = 0  # JPEG bytes of ``frames``
    last_seen: float = 0.0  # the dashboard's clock at the last frame or result

    def add_frame(self, frame: Frame) -> None:
        if self.frames and frame.seq <= self.frames[-1].seq:  # seq grows across producer restarts too
            return
        self.frames.append(frame)
        self.frame_bytes += len(frame.jpeg or b"")
        while len(self.frames) > 1 and (
                self.frames[0].captured_at < frame.captured_at - MAX_DELAY_SECONDS
                or len(self.frames) > FRAMES_KEPT or self.frame_bytes > FRAME_BYTES_KEPT):
            self.frame_bytes -= len(self.frames.popleft().jpeg or b"")

    def add_result(self, result: dict[str, Any]) -> None:
        index = bisect.bisect_left(self.results, result["seq"], key=lambda r: r["seq"])
        if index < len(self.results) and self.results[index]["seq"] == result["seq"]:
            return  # redelivered
        self.results.insert(index, result)
        del self.results[:-RESULTS_KEPT]
        if result is self.results[-1]:
            self.delay = min(max(result["latency"], 0.0), MAX_DELAY_SECONDS)

    def shown(self) -> tuple[Frame, dict[str, Any] | None] | None:
        """The frame to show now and the newest result at or before it."""
        if not self.frames:
            return None
        due = self.frames[-1].captured_at - self.delay
        index = bisect.bisect_right(self.frames, due, key=lambda f: f.captured_at)
        frame = self.frames[max(index - 1, 0)]
        before = bisect.bisect_right(self.results, frame.seq, key=lambda r: r["seq"])
        return frame, self.results[before - 1] if before else None


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of unsorted values (None when empty)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


class Window:
    """(time, value) events of the last ``seconds``."""

    def __init__(self, seconds: float, clock: Callable[[], float]) -> None:
        self._seconds = seconds
        self._clock = clock
        self._events: deque[tuple[float, float]] = deque(maxlen=WINDOW_EVENTS_KEPT)

    def add(self, value: float = 1.0) -> None:
        self._events.append((self._clock(), value))

    def values(self) -> list[float]:
        horizon = self._clock() - self._seconds
        while self._events and self._events[0][0] < horizon:
            self._events.popleft()
        return [v for _, v in self._events]

    def rate(self) -> float:
        return sum(self.values()) / self._seconds


@dataclass
class DashboardState:
    clock: Callable[[], float] = time.time
    cameras: dict[str, CameraView] = field(default_factory=dict)
    totals: dict[str, Any] = field(default_factory=dict)  # from PostgreSQL
    identified: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=IDENTIFIED_KEPT))
    bad_records: Counter[str] = field(default_factory=Counter)  # by topic, counted by the server
    cameras_refused: int = 0  # frames and results of cameras beyond MAX_CAMERAS

    def __post_init__(self) -> None:
        self.images = Window(RATE_WINDOW, self.clock)
        self.frames = Window(RATE_WINDOW, self.clock)
        self.image_latency = Window(STATS_WINDOW, self.clock)
        self.frame_latency = Window(STATS_WINDOW, self.clock)
        self.frame_outcomes = Window(STATS_WINDOW, self.clock)  # 1 skipped, 0 processed
        self.faces = Window(STATS_WINDOW, self.clock)
        self.faces_by_camera: dict[str, Window] = {}

    def camera(self, camera_id: str) -> CameraView | None:
        """The camera's view, made if there is room (after dropping idle cameras); None if there is none."""
        view = self.cameras.get(camera_id)
        if view is None:
            if len(self.cameras) >= MAX_CAMERAS:
                self.evict_idle()
            if len(self.cameras) >= MAX_CAMERAS:
                self.cameras_refused += 1
                return None
            view = self.cameras[camera_id] = CameraView()
        view.last_seen = self.clock()
        return view

    def evict_idle(self) -> None:
        horizon = self.clock() - CAMERA_IDLE_SECONDS
        for camera in [c for c, view in self.cameras.items() if view.last_seen < horizon]:
            del self.cameras[camera]
            self.faces_by_camera.pop(camera, None)

    def on_frame(self, frame: Frame) -> None:
        if (view := self.camera(frame.camera_id)) is not None:
            view.add_frame(frame)

    def on_processed_frame(self, record: object) -> None:
        record = processed_frame(record)
        self.frames.add()
        skipped = record["status"] != "processed"
        self.frame_outcomes.add(1.0 if skipped else 0.0)
        if skipped:
            return
        camera = record["camera_id"]
        self.frame_latency.add(record["latency"])
        faces = record["face_count"] or 0  # None: the worker looks for no faces in frames
        self.faces.add(faces)
        view = self.camera(camera)
        if view is None:
            return
        self.faces_by_camera.setdefault(camera, Window(STATS_WINDOW, self.clock)).add(faces)
        view.add_result({key: record[key] for key in
                         ("seq", "captured_at", "latency", "width", "height", "face_count", "faces")})

    def on_prediction(self, record: object, requested_at: Callable[[str], float | None]) -> None:
        """A prediction; ``requested_at`` gives its image key's request time (None if not seen)."""
        image_key, result_time = prediction(record)
        self.images.add()
        if (requested := requested_at(image_key)) is not None:
            self.image_latency.add(max(result_time - requested, 0.0))

    def on_identified(self, record: object) -> None:
        self.identified.appendleft(identified(record))

    def panels(self) -> dict[str, Any]:
        """The live numbers every page shows, and the PostgreSQL totals."""
        self.evict_idle()
        frame_latency, image_latency = self.frame_latency.values(), self.image_latency.values()
        outcomes = self.frame_outcomes.values()
        return {
            "type": "panels",
            "at": self.clock(),
            "images_per_second": self.images.rate(),
            "frames_per_second": self.frames.rate(),
            "drop_rate": sum(outcomes) / len(outcomes) if outcomes else None,
            "latency": {
                "frames": {"p50": percentile(frame_latency, 0.5), "p99": percentile(frame_latency, 0.99)},
                "images": {"p50": percentile(image_latency, 0.5), "p99": percentile(image_latency, 0.99)},
            },
            "faces_per_minute": sum(self.faces.values()) * 60.0 / STATS_WINDOW,
            "faces_per_minute_by_camera": {c: sum(w.values()) * 60.0 / STATS_WINDOW
                                           for c, w in sorted(self.faces_by_camera.items())},
            "identified": list(self.identified),
            "cameras": sorted(self.cameras),
            "bad_records": dict(self.bad_records),
            "cameras_refused": self.cameras_refused,
            "totals": self.totals,
        }
