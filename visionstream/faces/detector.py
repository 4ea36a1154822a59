"""MTCNN face detection (facenet-pytorch): frames of one size run as one batch, results in original pixels.

``prepare_decoded`` (a decoded image -> RGB at detection scale) runs in decode threads; ``detect`` and
``face_crops`` run on the one model thread. Large frames are detected at ``face_detect_max_side`` (decoded at
the JPEG DCT scale that reaches it, core/imaging.py, then area-resized): MTCNN's cost grows with the pixel
count, and faces big enough to matter survive the scaling; boxes and landmarks are scaled back.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

# facenet-pytorch is not in install_requires: its 2.6.0 pins torch<2.3 and numpy<2, which pip would honour by
# downgrading both (or refuse). It is installed alone; building the faces analyzer without it says how.
FACENET_STEP = "pip install --no-deps facenet-pytorch==2.6.0"
try:
    from facenet_pytorch import MTCNN
except ModuleNotFoundError as exc:
    if exc.name != "facenet_pytorch":  # installed, but one of its own imports is missing: that is the cause
        raise
    raise ModuleNotFoundError(
        f"the faces analyzer needs facenet-pytorch, installed without its obsolete pins (torch<2.3, numpy<2): "
        f"run `{FACENET_STEP}`, or leave faces out of VISIONSTREAM_IMAGE_ANALYZERS and "
        f"VISIONSTREAM_FRAME_ANALYZERS", name=exc.name) from None

from visionstream.core.backends import default_cache_dir
from visionstream.core.device import resolve_device
from visionstream.core.imaging import DecodedImage, decode_image
from visionstream.faces.mtcnn_backends import detect, place_nets
from visionstream.metrics import FACES_OVER_LIMIT
from visionstream.settings import Settings

# facenet-pytorch's own pyramid: smallest face searched (pixels at detection scale) and scale factor.
PYRAMID_DEFAULTS = {name: inspect.signature(MTCNN).parameters[name].default for name in ("min_face_size", "factor")}


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


class Faces(list[DetectedFace]):
    """A frame's accepted faces (what every consumer sees: identification, counts, topics, tracks), with the
    candidates below the floor beside them, kept only for the faces jsonb (flagged accepted=false)."""

    def __init__(self, accepted: Sequence[DetectedFace] = (), below_floor: Sequence[DetectedFace] = ()) -> None:
        super().__init__(accepted)
        self.below_floor = list(below_floor)


@dataclass(frozen=True, slots=True)
class FaceFloor:
    """What a candidate must reach to be a face: MTCNN's probability and the box's shortest side in original
    pixels. Measured on the sample views and the arcade clip (BENCHMARKS.md "Faces you can count on"): false
    faces on non-face photos scored up to 0.957, while 94% of the clip's real faces score 0.97 or more."""

    min_probability: float = 0.0
    min_size: float = 0.0
    max_faces: int = 1 << 30  # per frame: the most probable are kept

    def accepts(self, face: DetectedFace) -> bool:
        x1, y1, x2, y2 = face.box
        return face.probability >= self.min_probability and min(x2 - x1, y2 - y1) >= self.min_size

    def split(self, candidates: Sequence[DetectedFace]) -> Faces:
        accepted: list[DetectedFace] = []
        below_floor: list[DetectedFace] = []
        for face in candidates:
            (accepted if self.accepts(face) else below_floor).append(face)
        if len(accepted) > self.max_faces:
            FACES_OVER_LIMIT.inc(len(accepted) - self.max_faces)
            kept = set(sorted(range(len(accepted)), key=lambda i: -accepted[i].probability)[:self.max_faces])
            accepted = [face for i, face in enumerate(accepted) if i in kept]  # in MTCNN's order
        return Faces(accepted, below_floor)


class FaceDetector:
    """``backend``: what runs MTCNN's nets (torch, onnxruntime, openvino: mtcnn_backends.py); the model id never
    depends on it, as the same faces come out (agreement measured before a backend is allowed)."""

    def __init__(self, mtcnn: MTCNN, max_side: int, max_pixels: int, floor: FaceFloor = FaceFloor(),
                 backend: str = "torch") -> None:
        self._mtcnn = mtcnn
        self.max_side = max_side
        self.max_pixels = max_pixels
        self.floor = floor
        self.device = mtcnn.device
        self.backend = backend
        # The weights ship in the wheel, so its version names them; the detection scale and a pyramid other
        # than facenet-pytorch's change results too.
        pyramid = "".join(f"-{label}{value:g}" for label, name in (("min", "min_face_size"), ("factor", "factor"))
                          if (value := getattr(mtcnn, name)) != PYRAMID_DEFAULTS[name])
        self.model_id = (f"mtcnn@facenet-pytorch-{importlib.metadata.version('facenet-pytorch')}-side{max_side}"
                         f"{pyramid}")

    @classmethod
    def from_settings(cls, settings: Settings) -> FaceDetector:
        # keep_all: every face in the frame, not only the most likely one. The weights ship in the wheel.
        mtcnn = MTCNN(keep_all=True, device=resolve_device(settings.device),
                      min_face_size=settings.face_pyramid_min_face, factor=settings.face_pyramid_factor).eval()
        backend = place_nets(mtcnn, settings.inference_backend, settings.model_cache_dir or default_cache_dir(),
                             {"side": settings.face_detect_max_side, "batch": settings.face_batch_size})
        return cls(mtcnn, settings.face_detect_max_side, settings.max_image_pixels,
                   FaceFloor(settings.face_min_probability, settings.face_min_size,
                             settings.face_max_per_frame), backend)

    def decode_size(self, width: int, height: int) -> tuple[int, int]:
        """Decoded no smaller than max_side on the longer side (the JPEG's DCT scaling does the rest)."""
        factor = min(1.0, self.max_side / max(width, height))
        return math.ceil(width * factor), math.ceil(height * factor)

    def prepare(self, data: bytes) -> PreparedFrame:
        """Bytes -> the detector's input, decoding for this need alone (enrolment, benchmarks)."""
        return self.prepare_decoded(decode_image(data, self.max_pixels, [self.decode_size]))

    def prepare_decoded(self, image: DecodedImage) -> PreparedFrame:
        """RGB no larger than max_side from a decoded image."""
        pixels = np.asarray(image.pixels)
        if max(pixels.shape[:2]) > self.max_side:
            factor = self.max_side / max(pixels.shape[:2])
            pixels = cv2.resize(pixels, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
        return PreparedFrame(pixels, image.width / pixels.shape[1], image.width, image.height)

    def detect(self, frames: Sequence[PreparedFrame]) -> list[Faces]:
        """Faces of every frame, in input order, split at the floor; frames of the same size share one MTCNN
        batch."""
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for index, frame in enumerate(frames):
            # MTCNN's image pyramid is empty below its minimum face size, and it then fails on torch.cat([]):
            # no face that size fits, so such a frame has none.
            if min(frame.pixels.shape[:2]) >= self._mtcnn.min_face_size:
                by_shape.setdefault(frame.pixels.shape, []).append(index)
        results = [Faces() for _ in frames]
        with torch.inference_mode():
            for indexes in by_shape.values():
                batch = np.stack([frames[i].pixels for i in indexes])
                boxes, probs, points = detect(self._mtcnn, batch)
                for i, frame_boxes, frame_probs, frame_points in zip(indexes, boxes, probs, points, strict=True):
                    results[i] = self.floor.split(_faces(frame_boxes, frame_probs, frame_points, frames[i].scale))
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
