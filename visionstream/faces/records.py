"""The face records every input publishes: a face (with who it is), an S3 image's faces, an identified face."""

from __future__ import annotations

import faust

from visionstream.core.records import MAX_KEY_BYTES, check_names, check_source

RECORD_VERSION = 1
# The analyzers' names, the keys of their outputs (faces/analyzer.py): the detector and identification after it.
FACES = "faces"
IDENTIFY = "identify"


class Face(faust.Record, serializer="json"):
    box: list[float]  # x1, y1, x2, y2 in the original frame's pixels
    probability: float
    landmarks: list[list[float]]  # 5 (x, y): eyes, nose, mouth corners
    person: str | None = None  # the enrolled person it matched, if any
    similarity: float | None = None
    embedder: str | None = None  # name@version of the embedding model that matched
    # False: a candidate below the detection floor, stored in the faces jsonb only (a lower floor stays a query)
    accepted: bool = True
    visit: str | None = None  # the camera's track this face belongs to (faces/tracking.py), frames only
    visitor: str | None = None  # its anonymous visitor id (faces/visitors.py), with distinct visitors on


class ImageFaces(faust.Record, serializer="json"):
    """Image-faces topic value, keyed by image_key: the faces MTCNN found in an S3 image."""

    image_key: str
    model: str  # name@version of the detector
    face_count: int
    faces: list[Face]
    hostname: str
    time: float  # epoch seconds when the result was computed
    v: int = RECORD_VERSION
    source: list[int] | None = None  # core/records.py source_of the input; None in records from before it

    def __post_init__(self) -> None:  # the live table keys by model (core/records.py)
        check_names(self, "model")
        check_source(self)


class IdentifiedFace(faust.Record, serializer="json"):
    """Identified-faces topic value, keyed by person name so consumers can filter by key. A face in a camera
    frame has camera_id, seq and captured_at; a face in an S3 image has image_key (and those three null)."""

    person: str
    similarity: float
    box: list[float]
    hostname: str
    camera_id: str | None = None
    seq: int | None = None
    captured_at: float | None = None
    image_key: str | None = None
    embedder: str | None = None  # name@version of the embedding model that matched
    v: int = RECORD_VERSION
    source: list[int] | None = None  # core/records.py source_of the input (place: among its identified faces)

    def __post_init__(self) -> None:  # the live table keys by person (core/records.py); names are not
        check_names(self, "person", longest=MAX_KEY_BYTES)  # bounded at enrolment: a generous bound here
        check_source(self)
