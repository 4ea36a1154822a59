"""Face embeddings with facenet-pytorch's InceptionResnetV1 (VGGFace2), from local or hub-cached weights.

Nothing is downloaded: the weights come from ``face_embedding_weights`` or the file facenet-pytorch
itself caches under the torch hub folder; without either, identification is disabled.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from facenet_pytorch import InceptionResnetV1

from visionstream.identities import IdentityMatcher, Match
from visionstream.models.face_detector import DetectedFace, FaceDetector, PreparedFrame, resolve_device
from visionstream.settings import Settings, env_name

# The file name facenet-pytorch's own download (pretrained="vggface2") caches under <torch hub>/checkpoints.
HUB_CACHE_FILE = "20180402-114759-vggface2.pt"


class EmbeddingWeightsMissing(RuntimeError):
    """No face-embedding weights are available offline; the message says how to provide them."""


def embedding_weights_path(settings: Settings) -> Path:
    if settings.face_embedding_weights is not None:
        return settings.face_embedding_weights
    cached = Path(torch.hub.get_dir()) / "checkpoints" / HUB_CACHE_FILE
    if cached.is_file():
        return cached
    raise EmbeddingWeightsMissing(
        f"no face-embedding weights: set {env_name('face_embedding_weights')} to an InceptionResnetV1 "
        f"(VGGFace2) state_dict file, or place {HUB_CACHE_FILE} in {cached.parent}; "
        "face identification is disabled until then"
    )


class FaceEmbedder:
    """Maps standardised 160x160 face crops to L2-normalised 512-d embeddings."""

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self._model = model
        self.device = device

    @classmethod
    def from_settings(cls, settings: Settings) -> FaceEmbedder:
        """Raise EmbeddingWeightsMissing when no weights exist."""
        path = embedding_weights_path(settings)
        device = resolve_device(settings.device)
        state = torch.load(path, map_location="cpu", weights_only=True)
        # The published file also holds the VGGFace2 classifier head, which embeddings do not use.
        state = {k: v for k, v in state.items() if not k.startswith("logits.")}
        model = InceptionResnetV1(classify=False)
        model.load_state_dict(state)
        return cls(model.eval().to(device), device)

    def embed(self, crops: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return self._model(crops.to(self.device)).float().cpu().numpy()


class FaceIdentifier:
    """Embeds every detected face of a batch in one model call and matches it to the enrolled people."""

    def __init__(self, detector: FaceDetector, embedder: FaceEmbedder, matcher: IdentityMatcher) -> None:
        self._detector = detector
        self._embedder = embedder
        self._matcher = matcher

    def __call__(self, frames: Sequence[PreparedFrame], faces: Sequence[Sequence[DetectedFace]]
                 ) -> list[list[Match | None]]:
        crops = [self._detector.face_crops(frame, found) for frame, found in zip(frames, faces, strict=True) if found]
        matches = iter(self._matcher.match(self._embedder.embed(torch.cat(crops))) if crops else [])
        return [[next(matches) for _ in found] for found in faces]
