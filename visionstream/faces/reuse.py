"""Embed only what is new: a face that continues a visit already identified, or whose visit already has its
faces for distinct visitors, is not embedded again.

The identify step tracks the frames it is given with a tracker of its own (faces/tracking.py, the same rule as
the tracking sink's, on the same frames in the same order; it needs no stored frames: a camera it does not know
starts with no tracks, so its faces are embedded). A face continuing a track checked within the last
``recheck_frames`` frames, whose box still overlaps the box of that check by ``recheck_iou``, takes the
identity of that check (its person and similarity) instead of a new embedding, when that identity is an
enrolled person. A track whose last check matched nobody carries "nobody" the same way for
``recheck_unknown_frames`` frames (1: embedded every frame; an enrolled person first seen turned away is
named up to that many frames late); with distinct visitors on, only once the track has had its
``visitor_faces`` embeddings matching nobody (its visitor is decided from those, faces/visitors.py), and then
for at least ``recheck_frames``. Anything else is embedded: a new track, a box that changed a lot, an S3 image
(no camera, no tracks), and, with face history kept, every face (history promises each face's embedding). So whether a face carries an identity depends only on this
tracker's continuity, not on the sink's visit ids (which a seed from another worker's frames may change).
Plain class, run on the model thread; bounded (least recently checked tracks forgotten first).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from visionstream.faces.detector import DetectedFace, PreparedFrame
from visionstream.faces.identifier import FaceIdentifier, Identified
from visionstream.faces.identities import Match
from visionstream.faces.tracking import Box, FaceTracker, iou
from visionstream.settings import Settings


@dataclass(slots=True)
class VisitCheck:
    match: Match | None  # who the visit's last embedded face was
    box: Box  # that face's box
    seq: int  # its frame
    unmatched: int  # embeddings of the visit that matched nobody (what distinct visitors collect)


class EmbeddingReuse:
    def __init__(self, tracker: FaceTracker, recheck_frames: int, recheck_iou: float,
                 visitor_faces: int | None, recheck_unknown_frames: int, max_visits: int = 10_000) -> None:
        self.tracker = tracker
        self.recheck_frames = recheck_frames
        self.recheck_unknown_frames = recheck_unknown_frames
        self.recheck_iou = recheck_iou
        self.visitor_faces = visitor_faces  # None: distinct visitors off
        self._max_visits = max_visits
        self._checks: OrderedDict[str, VisitCheck] = OrderedDict()

    @classmethod
    def from_settings(cls, settings: Settings) -> EmbeddingReuse | None:
        """None where nothing may be reused: tracking off, face history kept, or a re-check every frame."""
        if not settings.face_tracking or settings.store_face_embeddings or settings.face_reembed_frames <= 1:
            return None
        return cls(FaceTracker.from_settings(settings), settings.face_reembed_frames, settings.face_reembed_min_iou,
                   settings.face_visitor_faces if settings.face_distinct_visitors else None,
                   settings.face_recheck_unknown_frames)

    def __len__(self) -> int:
        return len(self._checks)

    def reused(self, visit: str | None, seq: int, box: Box) -> VisitCheck | None:
        """The check whose identity this face takes instead of an embedding, or None: embed it."""
        check = self._checks.get(visit) if visit is not None else None
        if check is None or iou(check.box, box) < self.recheck_iou:
            return None
        if check.match is not None:
            window = self.recheck_frames
        elif self.visitor_faces is None:
            window = self.recheck_unknown_frames
        elif check.unmatched >= self.visitor_faces:
            window = max(self.recheck_frames, self.recheck_unknown_frames)
        else:
            return None
        return check if seq - check.seq < window else None

    def checked(self, visit: str, seq: int, box: Box, match: Match | None) -> None:
        """A face of the visit was embedded and matched (or not)."""
        previous = self._checks.pop(visit, None)
        unmatched = (previous.unmatched if previous else 0) + (match is None)
        self._checks[visit] = VisitCheck(match, box, seq, unmatched)
        while len(self._checks) > self._max_visits:
            self._checks.popitem(last=False)

    def needed(self, visit: str) -> int:
        """How many of the visit's undecided faces to embed next: what distinct visitors still collect; else
        one (the rest may then carry what it gave), or all once one matched nobody and nobody is carried."""
        check = self._checks.get(visit)
        if self.visitor_faces is not None and (check is None or check.match is None):
            return max(1, self.visitor_faces - (check.unmatched if check else 0))
        unknown_carried = self.recheck_unknown_frames > 1
        return 1 if check is None or check.match is not None or unknown_carried else 1 << 30

    def identify(self, identifier: FaceIdentifier, frames: Sequence[PreparedFrame],
                 faces: Sequence[Sequence[DetectedFace]], where: Sequence[tuple[str, int, float] | None]
                 ) -> list[Identified]:
        """``identifier(frames, faces)`` for the faces that need an embedding; ``where``: each frame's (camera,
        seq, captured_at), None for an S3 image. In rounds, each one embedder call over the batch: a visit's
        first undecided faces are embedded, then its later faces in the batch decided again on what they gave
        (one face, then the rest, or the faces distinct visitors still need; a further round for each face
        whose box moved off its track's last check)."""
        visits = self.plan([(w[0], w[1], w[2], [f.box for f in found]) if w else None
                            for w, found in zip(where, faces, strict=True)])
        matches: list[list[Match | None]] = [[None] * len(found) for found in faces]
        vectors: list[list[np.ndarray | None]] = [[None] * len(found) for found in faces]
        undecided = [(i, j) for i, found in enumerate(faces) for j in range(len(found))]
        while undecided:
            now, later, taken = [], [], dict[str, int]()
            for i, j in undecided:
                visit = visits[i][j] if visits[i] is not None else None  # type: ignore[index]
                if visit is None:
                    now.append((i, j))
                elif (check := self.reused(visit, where[i][1], faces[i][j].box)) is not None:  # type: ignore[index]
                    matches[i][j] = check.match
                elif taken.get(visit, 0) < self.needed(visit):
                    taken[visit] = taken.get(visit, 0) + 1
                    now.append((i, j))
                else:
                    later.append((i, j))
            rows = sorted({i for i, _ in now})
            picked = {i: [j for k, j in now if k == i] for i in rows}
            done = identifier([frames[i] for i in rows], [[faces[i][j] for j in picked[i]] for i in rows]) if now else []
            for i, result in zip(rows, done, strict=True):
                for j, vector, match in zip(picked[i], result.embeddings, result.matches, strict=True):
                    vectors[i][j], matches[i][j] = vector, match
                    if visits[i] is not None:
                        self.checked(visits[i][j], where[i][1], faces[i][j].box, match)  # type: ignore[index]
            undecided = later
        dimension = next((len(v) for row in vectors for v in row if v is not None), 0)
        return [Identified(np.array([v if v is not None else np.zeros(dimension, np.float32) for v in row],
                                    np.float32).reshape(len(row), dimension),
                           matches[i], tuple(v is None for v in row))
                for i, row in enumerate(vectors)]

    def plan(self, frames: Sequence[tuple[str, int, float, Sequence[Box]] | None]) -> list[list[str] | None]:
        """Each frame's track ids (None: untracked, every face embedded); frames of a camera come in order."""
        return [self.tracker.assign(*frame) if frame is not None else None for frame in frames]
