"""What the dashboard knows, fed by the Kafka tails and PostgreSQL, with no I/O of its own (unit-testable)."""

from __future__ import annotations

import bisect
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from visionstream.frames.records import Frame

RATE_WINDOW = 10.0  # seconds: images/s and frames/s
STATS_WINDOW = 60.0  # seconds: latency percentiles, drop rate, faces per minute
IDENTIFIED_KEPT = 20
# A camera's video is shown this much behind its newest frame at most: the frames kept for it (about 35 MB
# at 25 fps of 1080p JPEGs), and the longest analysis latency whose boxes still land on their faces.
MAX_DELAY_SECONDS = 6.0
RESULTS_KEPT = 256


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

    def add_frame(self, frame: Frame) -> None:
        if self.frames and frame.seq <= self.frames[-1].seq:  # seq grows across producer restarts too
            return
        self.frames.append(frame)
        while self.frames[0].captured_at < frame.captured_at - MAX_DELAY_SECONDS:
            self.frames.popleft()

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
        self._events: deque[tuple[float, float]] = deque()

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

    def __post_init__(self) -> None:
        self.images = Window(RATE_WINDOW, self.clock)
        self.frames = Window(RATE_WINDOW, self.clock)
        self.image_latency = Window(STATS_WINDOW, self.clock)
        self.frame_latency = Window(STATS_WINDOW, self.clock)
        self.frame_outcomes = Window(STATS_WINDOW, self.clock)  # 1 skipped, 0 processed
        self.faces = Window(STATS_WINDOW, self.clock)
        self.faces_by_camera: dict[str, Window] = {}

    def camera(self, camera_id: str) -> CameraView:
        return self.cameras.setdefault(camera_id, CameraView())

    def on_frame(self, frame: Frame) -> None:
        self.camera(frame.camera_id).add_frame(frame)

    def on_processed_frame(self, record: dict[str, Any]) -> None:
        self.frames.add()
        skipped = record.get("status") != "processed"
        self.frame_outcomes.add(1.0 if skipped else 0.0)
        if skipped:
            return
        camera = record["camera_id"]
        self.frame_latency.add(record["latency"])
        faces = record["face_count"] or 0  # None: the worker looks for no faces in frames
        self.faces.add(faces)
        self.faces_by_camera.setdefault(camera, Window(STATS_WINDOW, self.clock)).add(faces)
        result = {key: record[key] for key in ("seq", "captured_at", "latency", "width", "height", "face_count")}
        result["faces"] = [{"box": f["box"], "probability": f["probability"], "person": f.get("person")}
                           for f in record["faces"]]
        self.camera(camera).add_result(result)

    def on_prediction(self, record: dict[str, Any], requested_at: float | None) -> None:
        self.images.add()
        if requested_at is not None:
            self.image_latency.add(max(record["time"] - requested_at, 0.0))

    def on_identified(self, record: dict[str, Any]) -> None:
        self.identified.appendleft({k: record[k] for k in ("person", "similarity", "camera_id", "captured_at")})

    def panels(self) -> dict[str, Any]:
        """The live numbers every page shows, and the PostgreSQL totals."""
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
            "totals": self.totals,
        }
