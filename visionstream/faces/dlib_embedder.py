"""dlib's ResNet face embeddings (128-d, from the face-recognition-models wheel), aligned from MTCNN's faces.

dlib embeds a 150x150 chip cut along five landmarks (two corners per eye, the base of the nose). Those
come from dlib's 5-point shape predictor run inside the MTCNN box ("predictor", the default), or are
derived from MTCNN's own five landmarks ("landmarks"); bench/face_alignment.py compares the two on the
shared portraits. Runs on the one model thread, like MTCNN; dlib's CPU build releases no GIL-bound work
to the event loop.

The network itself runs on OpenVINO (faces/dlib_resnet.py: dlib's weights, 5-7x faster here) when a start-up
check finds it agrees with dlib's own run, else on dlib (``runtime``): the embeddings, and so the model id,
are the same either way.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import dlib
import numpy as np

from visionstream.classification.model import weights_file_version
from visionstream.faces.detector import DetectedFace, PreparedFrame
from visionstream.faces.dlib_resnet import CHIP_PADDING, CHIP_SIZE, ResnetRunner

log = logging.getLogger(__name__)

RECOGNITION_FILE = "dlib_face_recognition_resnet_model_v1.dat"
SHAPE_FILE = "shape_predictor_5_face_landmarks.dat"
Alignment = Literal["predictor", "landmarks"]
Runtime = Literal["auto", "dlib", "openvino"]
# Cosine distance to dlib's own embedding above which OpenVINO's run is refused: fp32 measured <= 1e-7 on the
# arcade clip's 495 faces (summation order), 0 on the check's chips; bf16 came to 1e-4 and flipped 0.12% of
# the clip's pairwise match decisions at dlib's 0.92, so it is not allowed.
MAX_RUNTIME_DISTANCE = 1e-5

# Where dlib's 5-point predictor puts each of its points relative to an MTCNN landmark (0: image-left eye,
# 1: image-right eye, 2: nose tip), in eye distances along and across the eye line: the mean over the
# shared portraits.
_FROM_MTCNN = ((1, 0.143, 0.036), (1, -0.217, 0.038), (0, -0.159, 0.048), (0, 0.192, 0.050), (2, -0.02, 0.184))


def models_folder() -> Path:
    """The wheel's models folder, found without importing the package (its __init__ needs pkg_resources)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("face-recognition-models is not installed (pip install face-recognition-models)")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


class DlibEmbedder:
    """Maps MTCNN-detected faces to L2-normalised 128-d embeddings (same person: distance below ~0.6)."""

    dimension = 128

    def __init__(self, alignment: Alignment = "predictor", jitter: int = 0, runtime: Runtime = "auto") -> None:
        """``jitter``: dlib's randomly jittered copies averaged (dlib's run only); ``runtime``: what runs the
        network: openvino, dlib, or auto (OpenVINO when it agrees with dlib at start, else dlib)."""
        folder = models_folder()
        self._recognition = dlib.face_recognition_model_v1(str(folder / RECOGNITION_FILE))
        self._shape = dlib.shape_predictor(str(folder / SHAPE_FILE))
        self.alignment = alignment
        self._jitter = jitter
        self.model_id = f"dlib_resnet_v1@{weights_file_version(folder / RECOGNITION_FILE)}"
        self._network: ResnetRunner | None = None
        if runtime != "dlib" and not jitter:
            self._network = agreeing_network(self._recognition, folder / RECOGNITION_FILE,
                                             required=runtime == "openvino")
        self.runtime = "openvino" if self._network is not None else "dlib"

    def shapes(self, frame: PreparedFrame, faces: Sequence[DetectedFace]) -> dlib.full_object_detections:
        """The five alignment points of each face, in detection pixels."""
        shapes = dlib.full_object_detections()
        for face in faces:
            x1, y1, x2, y2 = (round(c / frame.scale) for c in face.box)
            box = dlib.rectangle(x1, y1, x2, y2)
            if self.alignment == "predictor":
                shapes.append(self._shape(frame.pixels, box))
            else:
                shapes.append(dlib.full_object_detection(box, _points_from_landmarks(face, frame.scale)))
        return shapes

    def embed_faces(self, frame: PreparedFrame, faces: Sequence[DetectedFace]) -> np.ndarray:
        """One embedding per face, N x 128 (float32, unit length)."""
        return self.embed_batch([frame], [faces])[0]

    def embed_batch(self, frames: Sequence[PreparedFrame], faces: Sequence[Sequence[DetectedFace]]) -> list[np.ndarray]:
        """``embed_faces`` of several frames in one dlib call (its batch overload): one N x 128 array each."""
        wanted = [i for i, found in enumerate(faces) if found]
        out = [np.zeros((0, self.dimension), np.float32) for _ in frames]
        if not wanted:
            return out
        if self._network is not None:
            chips = [dlib.get_face_chips(np.ascontiguousarray(frames[i].pixels), self.shapes(frames[i], faces[i]),
                                         size=CHIP_SIZE, padding=CHIP_PADDING) for i in wanted]
            vectors = _unit(self._network(np.stack([chip for frame_chips in chips for chip in frame_chips])))
            bounds = np.cumsum([0, *map(len, chips)])
            for k, i in enumerate(wanted):
                out[i] = vectors[bounds[k]:bounds[k + 1]]
            return out
        batch = self._recognition.compute_face_descriptor(
            [np.ascontiguousarray(frames[i].pixels) for i in wanted],
            [self.shapes(frames[i], faces[i]) for i in wanted], self._jitter)
        for i, descriptors in zip(wanted, batch, strict=True):
            out[i] = _unit(np.array([np.asarray(d) for d in descriptors], dtype=np.float32))
        return out


def agreeing_network(recognition: dlib.face_recognition_model_v1, path: Path, required: bool
                     ) -> ResnetRunner | None:
    """OpenVINO's run of the network in ``path`` when it embeds two fixed chips as ``recognition`` (dlib's own
    run) does; else None (auto: dlib runs it) or an error (openvino required)."""
    try:
        network = ResnetRunner(path)
        chips = np.random.default_rng(26).integers(0, 256, (2, CHIP_SIZE, CHIP_SIZE, 3), np.uint8)
        theirs = np.array([np.asarray(d) for d in recognition.compute_face_descriptor(list(chips))], np.float32)
        distance = float(np.max(1 - np.sum(_unit(network(chips)) * _unit(theirs), axis=1)))
        if not distance <= MAX_RUNTIME_DISTANCE:  # NaN included
            raise ValueError(f"its embeddings differ from dlib's (cosine distance {distance:.2g} > "
                             f"{MAX_RUNTIME_DISTANCE})")
    except (ImportError, RuntimeError, ValueError) as exc:
        if required:
            raise RuntimeError(f"VISIONSTREAM_FACE_EMBEDDER_RUNTIME=openvino: {exc}; set it to auto or dlib") from exc
        log.warning("faces: dlib's network runs on dlib, not OpenVINO: %s", exc)
        return None
    return network


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _points_from_landmarks(face: DetectedFace, scale: float) -> list[dlib.point]:
    """dlib's five points (image-right eye outer, inner; image-left eye outer, inner; nose base) placed
    from MTCNN's eyes and nose tip."""
    marks = [np.array(p) / scale for p in face.landmarks[:3]]
    along = marks[1] - marks[0]
    across = np.array([-along[1], along[0]])  # perpendicular, pointing down the face
    points = [marks[i] + a * along + c * across for i, a, c in _FROM_MTCNN]
    return [dlib.point(round(float(x)), round(float(y))) for x, y in points]
