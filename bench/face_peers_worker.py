"""The peer face detectors that cannot share the package's venv, run by bench/face_peers.py in its own venv
(bench/face_peers_requirements.txt): MediaPipe 0.10.21 pins numpy<2 and protobuf<5, and OpenCV 5 (the package's)
dropped the Haar CascadeClassifier, so both run here on OpenCV 4.11. Every model ships in a wheel:

- BlazeFace full-range and short-range: mediapipe/modules/face_detection/*.tflite, through the legacy
  `mp.solutions.face_detection` (min_detection_confidence 0.5, its default);
- Haar: cv2.data.haarcascades/haarcascade_frontalface_default.xml (scaleFactor 1.1, minNeighbors 5, faces from
  20 px, MTCNN's minimum face size).

Protocol, one JSON object per line: argv[1] is a .npy of RGB frames (N x H x W x 3, the detection scale); each
request {"detector": name, "start": i, "stop": j} is answered with {"seconds": detection time of those frames
(this process's own clock, no pipe time), "cpu_seconds": the CPU time of all its threads meanwhile, "boxes":
per frame [[x1, y1, x2, y2(, score)], ...] in detection pixels}.
"""

import json
import math
import sys
import time

import cv2
import mediapipe as mp
import numpy as np
from face_peers import iou  # bench/ is this script's folder; face_peers imports nothing the venv lacks

TILE_OVERLAP = 60  # px at detection scale: the clip's largest faces there are ~50 px


def tile_origins(size: int, tile: int) -> list[int]:
    """Tile starts covering `size`, evenly spread, overlapping by at least TILE_OVERLAP."""
    if size <= tile:
        return [0]
    count = math.ceil((size - tile) / (tile - TILE_OVERLAP)) + 1
    return [round(i * (size - tile) / (count - 1)) for i in range(count)]


def blazeface(model_selection: int, tile: int | None = None):
    """BlazeFace on the whole frame (its graph letterboxes it into 192 px full-range, 128 px short-range), or on
    square tiles of `tile` px (each letterboxed the same way, so small faces get more of the model's input),
    the tiles' boxes merged by keeping the highest score of those overlapping at IoU >= 0.3."""
    solution = mp.solutions.face_detection.FaceDetection(model_selection=model_selection)

    def detect(rgb: np.ndarray) -> list[list[float]]:
        height, width = rgb.shape[:2]
        side = tile or max(height, width)
        scored = []
        for y in tile_origins(height, side):
            for x in tile_origins(width, side):
                part = np.ascontiguousarray(rgb[y:y + side, x:x + side])
                h, w = part.shape[:2]
                for detection in solution.process(part).detections or ():
                    box = detection.location_data.relative_bounding_box
                    x1, y1 = x + box.xmin * w, y + box.ymin * h
                    scored.append([x1, y1, x1 + box.width * w, y1 + box.height * h, detection.score[0]])
        kept: list[list[float]] = []
        for box in sorted(scored, key=lambda s: -s[4]):
            if all(iou(box, other) < 0.3 for other in kept):
                kept.append(box)
        return kept

    return detect


def haar():
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")

    def detect(rgb: np.ndarray) -> list[list[float]]:
        found = cascade.detectMultiScale(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), scaleFactor=1.1, minNeighbors=5,
                                         minSize=(20, 20))
        return [[float(x), float(y), float(x + w), float(y + h)] for x, y, w, h in found]

    return detect


DETECTORS = {"blazeface-full": lambda: blazeface(1), "blazeface-short": lambda: blazeface(0),
             "blazeface-full-tiles360": lambda: blazeface(1, 360),
             "blazeface-short-tiles192": lambda: blazeface(0, 192), "haar": haar}


def main() -> None:
    frames = np.load(sys.argv[1], mmap_mode="r")
    detectors = {name: make() for name, make in DETECTORS.items()}
    for detect in detectors.values():  # first call builds the graph / XNNPACK delegate: not timed
        detect(np.ascontiguousarray(frames[0]))
    print(json.dumps({"ready": list(detectors)}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        detect = detectors[request["detector"]]
        chunk = [np.ascontiguousarray(frame) for frame in frames[request["start"]:request["stop"]]]
        began, cpu_began = time.perf_counter(), time.process_time()
        boxes = [detect(frame) for frame in chunk]
        print(json.dumps({"seconds": time.perf_counter() - began, "cpu_seconds": time.process_time() - cpu_began,
                          "boxes": boxes}), flush=True)


if __name__ == "__main__":
    main()
