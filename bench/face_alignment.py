"""Which alignment makes dlib's embeddings agree better, and what threshold separates people.

    .venv/bin/python bench/face_alignment.py [ASSETS]

For each shared portrait: distances between the photo and augmented copies of it (mirrored, rotated,
rescaled, darker, recompressed) under both alignments; distances between the portraits, and from each
portrait to every face MTCNN finds in the arcade clip (strangers). Prints the embedding cost per face.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import cv2
import numpy as np

from visionstream.faces.detector import FaceDetector
from visionstream.faces.dlib_embedder import DlibEmbedder
from visionstream.settings import load_settings

AUGMENTS = {
    "mirror": lambda im: cv2.flip(im, 1),
    "rotate+12": lambda im: _rotate(im, 12),
    "rotate-12": lambda im: _rotate(im, -12),
    "half size": lambda im: cv2.resize(im, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA),
    "quarter size": lambda im: cv2.resize(im, None, fx=0.25, fy=0.25, interpolation=cv2.INTER_AREA),
    "darker": lambda im: cv2.convertScaleAbs(im, alpha=0.6, beta=-10),
    "jpeg q30": lambda im: cv2.imdecode(cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, 30])[1], 1),
}


def _rotate(image: np.ndarray, degrees: float) -> np.ndarray:
    h, w = image.shape[:2]
    return cv2.warpAffine(image, cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0), (w, h),
                          borderMode=cv2.BORDER_REFLECT)


def _jpeg(bgr: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def _best_face(detector, embedder, jpeg):
    frame = detector.prepare(jpeg)
    faces = detector.detect([frame])[0]
    best = max(faces, key=lambda f: f.probability)
    return embedder.embed_faces(frame, [best])[0]


def main(assets: Path) -> None:
    detector = FaceDetector.from_settings(load_settings(device="cpu"))
    portraits = sorted((assets / "media" / "faces").glob("*/1.jpg"))
    capture = cv2.VideoCapture(str(assets / "media" / "arcade_pedestrians_1080p.mp4"))
    arcade = []
    for index in range(105):
        ok, bgr = capture.read()
        if ok and index % 10 == 0:
            arcade.append(detector.prepare(_jpeg(bgr)))
    arcade_faces = detector.detect(arcade)
    for alignment in ("predictor", "landmarks"):
        embedder = DlibEmbedder(alignment)
        same, reference = [], {}
        for photo in portraits:
            image = cv2.imread(str(photo))
            reference[photo.parent.name] = _best_face(detector, embedder, _jpeg(image))
            for name, augment in AUGMENTS.items():
                copy = _best_face(detector, embedder, _jpeg(augment(image)))
                same.append((float(np.linalg.norm(copy - reference[photo.parent.name])), photo.parent.name, name))
        started = time.perf_counter()
        strangers = np.concatenate([embedder.embed_faces(f, found) for f, found in zip(arcade, arcade_faces)])
        per_face = (time.perf_counter() - started) / len(strangers)
        names = list(reference)
        between = [float(np.linalg.norm(reference[a] - reference[b])) for i, a in enumerate(names) for b in names[i + 1:]]
        to_strangers = np.linalg.norm(strangers[:, None] - np.stack(list(reference.values()))[None], axis=2)
        print(f"\n{alignment}: {embedder.model_id}")
        print(f"  same person, augmented copies: {min(s[0] for s in same):.3f}-{max(s[0] for s in same):.3f} "
              f"(mean {np.mean([s[0] for s in same]):.3f}); worst: {max(same)}")
        print(f"  portrait vs portrait: {', '.join(f'{d:.3f}' for d in between)}")
        print(f"  portrait vs {len(strangers)} arcade faces: closest {to_strangers.min():.3f}, "
              f"mean {to_strangers.mean():.3f}")
        print(f"  embedding cost: {per_face * 1000:.1f} ms per face ({len(strangers)} faces, 960-px frames, 1 thread)")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "shared" / "assets")
