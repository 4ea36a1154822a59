"""Visits without biometrics: each camera's accepted faces grouped into tracks, one track a visit.

A face continues the open track whose last box it overlaps most (IoU at least ``min_iou``, or, for a face
that moved fast, a centre within half the track's box width); a track missing for up to ``max_gap_frames``
frames and ``max_gap_seconds`` (missed detections, skipped frames) goes on. Nothing is embedded.

Visit ids are deterministic, ``<camera>/<first seq>/<face index>``: a frame redelivered after a worker crash
gets the ids it got the first time, so its writes hit the same keys (frame_results' jsonb and the visits
table, migration 0011). For that, the tracker of a camera it has no state for (a new worker, an evicted
camera) is seeded with the visits already stored for the frames just before the first one it sees
(``seed``): the state at a frame depends only on the frames in the gap window before it.

State is bounded: ``max_tracks`` open tracks per camera (the least recently seen close first), ``max_cameras``
cameras (the longest idle is forgotten, and seeded again if it comes back), recent assignments per camera up to
the gap window (a frame redelivered to a warm tracker gets its ids back). Plain class, injectable clock.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from visionstream.settings import Settings

VISITS = "visits"  # the AnalyzedImage output the tracking sink sets: a visit id per accepted face

Box = tuple[float, float, float, float]  # x1, y1, x2, y2


def iou(a: Box, b: Box) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def centre_shift(track: Box, face: Box) -> float:
    """Distance between the centres, in widths of the track's box."""
    dx = (track[0] + track[2] - face[0] - face[2]) / 2
    dy = (track[1] + track[3] - face[1] - face[3]) / 2
    return float((dx * dx + dy * dy) ** 0.5 / max(track[2] - track[0], 1.0))


def visit_id(camera_id: str, seq: int, index: int) -> str:
    return f"{camera_id}/{seq}/{index}"


@dataclass(slots=True)
class Track:
    visit: str
    box: Box
    seq: int
    captured_at: float


@dataclass(slots=True)
class CameraTracks:
    tracks: list[Track] = field(default_factory=list)
    last_seq: int | None = None
    active_at: float = 0.0  # the clock's time of its last frame
    recent: OrderedDict[int, list[str]] = field(default_factory=OrderedDict)  # seq -> its visit ids


@dataclass(frozen=True, slots=True)
class TrackerLimits:
    min_iou: float = 0.2
    max_centre_shift: float = 0.5
    max_gap_frames: int = 25
    max_gap_seconds: float = 1.0
    max_tracks: int = 64
    max_cameras: int = 1000
    idle_seconds: float = 300.0  # by the clock: a camera silent this long is forgotten (its tracks long closed)


class FaceTracker:
    @classmethod
    def from_settings(cls, settings: Settings, clock: Callable[[], float] = time.monotonic) -> FaceTracker:
        return cls(TrackerLimits(settings.face_track_min_iou, 0.5, settings.face_track_max_gap_frames,
                                 settings.face_track_max_gap_seconds, settings.face_tracker_max_tracks,
                                 settings.face_tracker_max_cameras), clock)

    def __init__(self, limits: TrackerLimits = TrackerLimits(), clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self._cameras: OrderedDict[str, CameraTracks] = OrderedDict()  # least recently active first

    def __len__(self) -> int:
        return len(self._cameras)

    def open_tracks(self, camera_id: str) -> int:
        state = self._cameras.get(camera_id)
        return len(state.tracks) if state else 0

    def open_visits(self, camera_id: str) -> set[str]:
        state = self._cameras.get(camera_id)
        return {t.visit for t in state.tracks} if state else set()

    def knows(self, camera_id: str) -> bool:
        return camera_id in self._cameras

    def missed_frames_before(self, camera_id: str, seq: int) -> bool:
        """Whether frames came between the camera's last one here and ``seq``: another worker may have tracked
        them (a rebalance moved the camera away and back), so what this tracker holds is stale."""
        state = self._cameras.get(camera_id)
        return state is not None and state.last_seq is not None and seq > state.last_seq + 1

    def forget(self, camera_id: str) -> None:
        self._cameras.pop(camera_id, None)

    def seed(self, camera_id: str, frames: Iterable[tuple[int, float, Sequence[Box], Sequence[str]]]) -> None:
        """State of a camera it does not know from stored frames before the next one: (seq, captured_at,
        boxes, visit ids), in any order."""
        state = self._camera(camera_id)
        for seq, captured_at, boxes, visits in sorted(frames, key=lambda frame: frame[0]):
            self._update(state, seq, captured_at, list(zip(visits, boxes, strict=True)))

    def assign(self, camera_id: str, seq: int, captured_at: float, boxes: Sequence[Box]) -> list[str]:
        """The visit id of each face of frame ``seq``; frames of a camera come in order (one partition)."""
        state = self._camera(camera_id)
        if state.last_seq is not None and seq <= state.last_seq:
            # Redelivered: the ids it got the first time if remembered; else fresh ones, and the stored row
            # (written the first time, its key unchanged) keeps the originals.
            remembered = state.recent.get(seq)
            if remembered is not None and len(remembered) == len(boxes):
                return list(remembered)
            return [visit_id(camera_id, seq, i) for i in range(len(boxes))]
        live = [t for t in state.tracks if self._continues(t, seq, captured_at)]
        pairs = sorted(
            ((iou(t.box, box), centre_shift(t.box, box), ti, fi)
             for ti, t in enumerate(live) for fi, box in enumerate(boxes)),
            key=lambda pair: (-pair[0], pair[1]))
        visits: list[str | None] = [None] * len(boxes)
        taken: set[int] = set()
        for overlap, shift, ti, fi in pairs:
            if ti in taken or visits[fi] is not None:
                continue
            if overlap >= self.limits.min_iou or shift <= self.limits.max_centre_shift:
                visits[fi] = live[ti].visit
                taken.add(ti)
        assigned = [v if v is not None else visit_id(camera_id, seq, i) for i, v in enumerate(visits)]
        self._update(state, seq, captured_at, list(zip(assigned, boxes, strict=True)))
        return assigned

    def _continues(self, track: Track, seq: int, captured_at: float) -> bool:
        return (seq - track.seq <= self.limits.max_gap_frames + 1
                and captured_at - track.captured_at <= self.limits.max_gap_seconds)

    def _camera(self, camera_id: str) -> CameraTracks:
        now = self._clock()
        while self._cameras:
            oldest = next(iter(self._cameras))
            if now - self._cameras[oldest].active_at <= self.limits.idle_seconds:
                break
            del self._cameras[oldest]
        state = self._cameras.get(camera_id)
        if state is None:
            state = self._cameras[camera_id] = CameraTracks()
            while len(self._cameras) > self.limits.max_cameras:
                self._cameras.popitem(last=False)  # the longest idle camera: seeded again if it comes back
        self._cameras.move_to_end(camera_id)
        state.active_at = now
        return state

    def _update(self, state: CameraTracks, seq: int, captured_at: float, faces: list[tuple[str, Box]]) -> None:
        seen = {visit: Track(visit, box, seq, captured_at) for visit, box in faces}
        kept = [t for t in state.tracks if t.visit not in seen and self._continues(t, seq + 1, captured_at)]
        # Most recently seen last; beyond the cap the least recently seen close.
        state.tracks = (kept + list(seen.values()))[-self.limits.max_tracks:]
        state.last_seq = seq if state.last_seq is None else max(state.last_seq, seq)
        state.recent[seq] = [visit for visit, _ in faces]
        while len(state.recent) > self.limits.max_gap_frames + 2:
            state.recent.popitem(last=False)
