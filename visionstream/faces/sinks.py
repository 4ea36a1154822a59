"""What face detection stores and publishes, for every input: the face records (boxes in original pixels,
who each face is when identified), image_faces rows and ImageFaces records for S3 images, and identified
faces by person. A frame's faces are stored in its frame_results row (frames/sinks.py) with these records.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from visionstream.faces.tracking import VISITS
from visionstream.faces.visitors import VISITORS
from visionstream.core.pipeline import AnalyzedImage, Outcome
from visionstream.core.records import source_of
from visionstream.core.sinks import Records, ResultTable, columns_of, utc
from visionstream.faces.records import FACES, IDENTIFY, Face, IdentifiedFace, ImageFaces

INSERT_IMAGE_FACES = """
INSERT INTO image_faces (image_key, model, face_count, faces, hostname, time, topic, "partition", "offset",
                         backend)
SELECT k, m, n, f::jsonb, h, t, tp, p, o, b FROM unnest(
    $1::text[], $2::text[], $3::smallint[], $4::text[], $5::text[], $6::timestamptz[], $7::text[],
    $8::integer[], $9::bigint[], $10::text[]) AS u(k, m, n, f, h, t, tp, p, o, b)
ON CONFLICT (image_key, model) DO NOTHING
"""


def face_records(faces: Sequence[Any], matches: Sequence[Any] | None = None) -> list[Face]:
    """Face records of detected faces (boxes in original pixels), with who they are when identified."""
    return [
        Face(
            box=[round(c, 1) for c in face.box], probability=face.probability,
            landmarks=[[round(x, 1), round(y, 1)] for x, y in face.landmarks],
            person=match.person if match else None, similarity=match.similarity if match else None,
            embedder=match.embedder if match else None,
        )
        for face, match in zip(faces, matches or [None] * len(faces), strict=True)
    ]


def faces_of(item: AnalyzedImage) -> list[Face] | None:
    """An image's accepted face records with their matches (and visits, when tracked); None when the faces
    analyzer did not run on it."""
    if FACES not in item.outputs:
        return None
    identified = item.outputs.get(IDENTIFY)
    faces = face_records(item.outputs[FACES], identified.matches if identified else None)
    for face, visit in zip(faces, item.outputs.get(VISITS, ()), strict=False):
        face.visit = visit
    for face, visitor in zip(faces, item.outputs.get(VISITORS, ()), strict=False):
        face.visitor = visitor
    return faces


def stored_faces_json(item: AnalyzedImage, faces: list[Face]) -> str:
    """The faces jsonb: the accepted faces, then the candidates below the floor flagged accepted=false, so
    "how many at 0.9 instead of 0.97" is a query on the stored probabilities, not a rerun."""
    below = face_records(getattr(item.outputs.get(FACES), "below_floor", ()))
    for face in below:
        face.accepted = False
    return json.dumps([face.asdict() for face in [*faces, *below]])


def identified_faces(faces: Sequence[Face], hostname: str, source: list[int], **where: Any
                     ) -> list[IdentifiedFace]:
    """The faces matched to an enrolled person; ``source``: the input's (core/records.py source_of, each face
    gets its own place); ``where``: camera_id, seq, captured_at or image_key."""
    partition, offset, _ = source
    return [
        IdentifiedFace(person=face.person, similarity=face.similarity, box=face.box, hostname=hostname,
                       embedder=face.embedder, source=[partition, offset, place], **where)
        for place, face in enumerate(face for face in faces if face.person is not None)
    ]


def image_face_columns(results: Sequence[AnalyzedImage], computed_at: float, model: str,
                       hostname: str, backend: str) -> list[list[Any]]:
    at = utc(computed_at)
    return columns_of([
        (item.image_key, model, len(faces), stored_faces_json(item, faces), hostname, at,
         item.ref.topic, item.ref.partition, item.ref.offset, backend)
        for item in results if (faces := faces_of(item)) is not None
    ])


def image_face_table(model: str, hostname: str, backend: str) -> ResultTable[AnalyzedImage]:
    """image_faces rows; ``backend``: what ran the detector's nets (migration 0016), not part of the key."""
    return ResultTable(INSERT_IMAGE_FACES,
                       lambda results, at: image_face_columns(results, at, model, hostname, backend))


def image_face_topics(image_faces_topic: Any, identified_topic: Any, model: str, hostname: str) -> Records:
    """ImageFaces by image key; each identified face by person (with its image_key), like a frame's."""
    def records(outcome: Outcome[Any]) -> list[tuple[Any, str, Any]]:
        out: list[tuple[Any, str, Any]] = []
        for item in outcome.results:
            if (faces := faces_of(item)) is None:
                continue
            out.append((image_faces_topic, item.image_key, ImageFaces(
                image_key=item.image_key, model=model, face_count=len(faces), faces=faces, hostname=hostname,
                time=outcome.computed_at, source=source_of(item.ref))))
            out += [(identified_topic, face.person, face)
                    for face in identified_faces(faces, hostname, source_of(item.ref), image_key=item.image_key)]
        return out

    return records
