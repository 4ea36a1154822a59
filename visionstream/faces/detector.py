"""MTCNN face detection (facenet-pytorch): frames of one size run as one batch, results in original pixels.

``prepare`` (JPEG -> RGB at detection scale) runs in decode threads; ``detect`` and ``face_crops`` run on
the one model thread. Large frames are detected at ``face_detect_max_side``: MTCNN's cost grows with the
pixel count, and faces big enough to matter survive the scaling; boxes and landmarks are scaled back.
"""

from __future__ import annotations

import importlib.metadata
import io
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from facenet_pytorch import MTCNN
from PIL import Image

from visionstream.core.device import resolve_device
from visionstream.core.imaging import ImageDecodeError
from visionstream.settings import Settings

# cv2 decodes a JPEG at 1/2, 1/4 or 1/8 size almost for free (DCT scaling): far cheaper than decoding a
# 1080p frame in full and then shrinking it.
_REDUCED_DECODE = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2))


@dataclass(frozen=True, slots=True)
class DetectedFace:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in original pixels
    probability: float
    landmarks: tuple[tuple[float, float], ...]  # 5 points in original pixels


@dataclass(frozen=True, slots=True)
class PreparedFrame:
    pixels: np.ndarray  # RGB uint8, H x W x 3, at detection scale
    scale: float  # original pixels per detection pixel
    width: int  # the JPEG's own size
    height: int



class FaceDetector:
    def __init__(self, mtcnn: MTCNN, max_side: int, max_pixels: int) -> None:
        self._mtcnn = mtcnn
        self.max_side = max_side
        self.max_pixels = max_pixels
        self.device = mtcnn.device
        # The weights ship in the wheel, so its version names them; the detection scale changes results too.
        self.model_id = f"mtcnn@facenet-pytorch-{importlib.metadata.version('facenet-pytorch')}-side{max_side}"

    @classmethod
    def from_settings(cls, settings: Settings) -> FaceDetector:
        # keep_all: every face in the frame, not only the most likely one. The weights ship in the wheel.
        mtcnn = MTCNN(keep_all=True, device=resolve_device(settings.device)).eval()
        return cls(mtcnn, settings.face_detect_max_side, settings.max_image_pixels)

    def prepare(self, jpeg: bytes) -> PreparedFrame:
        """Decode a JPEG to RGB no larger than max_side; raise ImageDecodeError when it cannot be read."""
        try:
            with Image.open(io.BytesIO(jpeg)) as header:  # reads the size only, not the pixels
                width, height = header.size
        except Exception as exc:  # PIL raises many types for bytes that are not an image
            raise ImageDecodeError(f"not a readable image: {exc}") from None
        if width * height > self.max_pixels:
            raise ImageDecodeError(f"{width}x{height} exceeds {self.max_pixels} pixels")
        longest = max(width, height)
        flag = next((f for factor, f in _REDUCED_DECODE if longest >= factor * self.max_side), cv2.IMREAD_COLOR)
        bgr = cv2.imdecode(np.frombuffer(jpeg, np.uint8), flag)
        if bgr is None:
            raise ImageDecodeError("JPEG data could not be decoded")
        if max(bgr.shape[:2]) > self.max_side:
            factor = self.max_side / max(bgr.shape[:2])
            bgr = cv2.resize(bgr, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
        return PreparedFrame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), width / bgr.shape[1], width, height)

    def detect(self, frames: Sequence[PreparedFrame]) -> list[list[DetectedFace]]:
        """Faces of every frame, in input order; frames of the same size share one MTCNN batch."""
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for index, frame in enumerate(frames):
            # MTCNN's image pyramid is empty below its minimum face size, and it then fails on torch.cat([]):
            # no face that size fits, so such a frame has none.
            if min(frame.pixels.shape[:2]) >= self._mtcnn.min_face_size:
                by_shape.setdefault(frame.pixels.shape, []).append(index)
        results: list[list[DetectedFace]] = [[] for _ in frames]
        with torch.inference_mode():
            for indexes in by_shape.values():
                batch = np.stack([frames[i].pixels for i in indexes])
                boxes, probs, points = self._mtcnn.detect(batch, landmarks=True)
                for i, frame_boxes, frame_probs, frame_points in zip(indexes, boxes, probs, points, strict=True):
                    results[i] = _faces(frame_boxes, frame_probs, frame_points, frames[i].scale)
        return results

    def face_crops(self, frame: PreparedFrame, faces: Sequence[DetectedFace]) -> torch.Tensor:
        """Standardised 160x160 crops of the faces (InceptionResnetV1's input), N x 3 x 160 x 160."""
        boxes = np.array([[c / frame.scale for c in face.box] for face in faces], dtype=np.float32)
        return self._mtcnn.extract(frame.pixels, boxes, None)


def _faces(boxes: np.ndarray | None, probs: np.ndarray | None, points: np.ndarray | None,
           scale: float) -> list[DetectedFace]:
    if boxes is None or probs is None or points is None:
        return []
    return [
        DetectedFace(
            box=tuple(float(c) * scale for c in box),  # type: ignore[arg-type]
            probability=float(prob),
            landmarks=tuple((float(x) * scale, float(y) * scale) for x, y in landmarks),
        )
        for box, prob, landmarks in zip(boxes, probs, points, strict=True)
    ]
