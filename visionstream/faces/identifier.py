"""Who the detected faces are: the configured embedder, then the enrolled people of that embedder.

Takes the detector's own output (prepared pixels and their faces), so frames and S3 images share it:
``FaceIdentifier(frames, faces)`` returns, per frame, each face's embedding and its match (or None).
Runs on the model thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from visionstream.faces.detector import DetectedFace, FaceDetector, PreparedFrame
from visionstream.faces.identities import IdentityMatcher, Match, normalise
from visionstream.settings import Settings

# Cosine similarity from which a face is the enrolled person, per embedder (distance 0.40 on unit vectors
# for dlib: measured on the shared portraits and arcade clip, see README "Identifying people").
DEFAULT_THRESHOLDS = {"dlib": 0.92, "inception_resnet_v1": 0.7}


class Embedder(Protocol):
    model_id: str  # name@version, stored with every match and embedding

    def embed_faces(self, frame: PreparedFrame, faces: Sequence[DetectedFace]) -> np.ndarray: ...

    def embed_batch(self, frames: Sequence[PreparedFrame], faces: Sequence[Sequence[DetectedFace]]
                    ) -> list[np.ndarray]: ...


def load_embedder(settings: Settings, detector: FaceDetector) -> Embedder:
    """The configured embedder; raises EmbeddingWeightsMissing for InceptionResnetV1 without weights."""
    if settings.face_embedder == "dlib":
        from visionstream.faces.dlib_embedder import DlibEmbedder

        return DlibEmbedder(runtime=settings.face_embedder_runtime)
    from visionstream.faces.embedder import FaceEmbedder

    return FaceEmbedder.from_settings(settings, detector)


def match_threshold(settings: Settings) -> float:
    if settings.face_match_threshold is not None:
        return settings.face_match_threshold
    return DEFAULT_THRESHOLDS[settings.face_embedder]


@dataclass(frozen=True, slots=True)
class Identified:
    embeddings: np.ndarray  # faces x dimension, unit length (a reused face's row: zeros)
    matches: list[Match | None]
    reused: tuple[bool, ...] = ()  # per face: not embedded, its match carried from its visit (faces/reuse.py)


class FaceIdentifier:
    def __init__(self, embedder: Embedder, matcher: IdentityMatcher) -> None:
        self.embedder = embedder
        self.matcher = matcher

    def __call__(self, frames: Sequence[PreparedFrame], faces: Sequence[Sequence[DetectedFace]]) -> list[Identified]:
        """Every face of the batch through one embedder call (dlib's batch overload; one torch batch)."""
        identified = []
        for vectors in self.embedder.embed_batch(frames, faces):
            embeddings = normalise(vectors)
            identified.append(Identified(embeddings, self.matcher.match(embeddings)))
        return identified
