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

from visionstream.classification.model import weights_file_version
from visionstream.core.device import resolve_device
from visionstream.faces.detector import DetectedFace, FaceDetector, PreparedFrame
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
    """Maps MTCNN's standardised 160x160 face crops to L2-normalised 512-d embeddings."""

    def __init__(self, model: torch.nn.Module, device: torch.device, detector: FaceDetector, model_id: str) -> None:
        self._model = model
        self._detector = detector
        self.device = device
        self.model_id = model_id

    @classmethod
    def from_settings(cls, settings: Settings, detector: FaceDetector) -> FaceEmbedder:
        """Raise EmbeddingWeightsMissing when no weights exist."""
        path = embedding_weights_path(settings)
        device = resolve_device(settings.device)
        state = torch.load(path, map_location="cpu", weights_only=True)
        # The published file also holds the VGGFace2 classifier head, which embeddings do not use.
        state = {k: v for k, v in state.items() if not k.startswith("logits.")}
        model = InceptionResnetV1(classify=False)
        model.load_state_dict(state)
        return cls(model.eval().to(device), device, detector, f"inception_resnet_v1@{weights_file_version(path)}")

    def embed_faces(self, frame: PreparedFrame, faces: Sequence[DetectedFace]) -> np.ndarray:
        return self.embed_batch([frame], [faces])[0]

    def embed_batch(self, frames: Sequence[PreparedFrame], faces: Sequence[Sequence[DetectedFace]]) -> list[np.ndarray]:
        """The faces of several frames through the network in one batch: one N x 512 array per frame."""
        crops = [self._detector.face_crops(frame, found) for frame, found in zip(frames, faces, strict=True) if found]
        if not crops:
            return [np.zeros((0, 512), np.float32) for _ in frames]
        with torch.inference_mode():
            vectors = self._model(torch.cat(crops).to(self.device)).float().cpu().numpy()
        bounds = np.cumsum([0, *(len(found) for found in faces)])
        return [vectors[bounds[i]:bounds[i + 1]] for i in range(len(frames))]
