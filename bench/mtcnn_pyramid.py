"""MTCNN's pyramid (minimum face size, scale factor) on the arcade clip: MTCNN's frames/s at 960 px (frames decoded
beforehand, batches of 8, configurations interleaved batch by batch) and recall of the default's accepted faces
(a box of the default matched at IoU >= 0.5). Issue 26 point 2, measured only:

    .venv/bin/python bench/mtcnn_pyramid.py
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from facenet_pytorch import MTCNN  # noqa: E402
from pipeline_targets import arcade_jpegs  # noqa: E402

from visionstream.faces.detector import FaceDetector, FaceFloor  # noqa: E402
from visionstream.settings import load_settings  # noqa: E402


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    x1, y1, x2, y2 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def main() -> None:
    settings = load_settings(device="cpu")
    configs = {"default (min 20, factor 0.709)": (20, 0.709), "min 40": (40, 0.709), "factor 0.6": (20, 0.6),
               "min 40, factor 0.6": (40, 0.6)}
    detectors = {}
    for name, (min_face, factor) in configs.items():
        m = MTCNN(keep_all=True, device="cpu", min_face_size=min_face, factor=factor).eval()
        detectors[name] = FaceDetector(m, 960, settings.max_image_pixels, FaceFloor(settings.face_min_probability))
    jpegs = arcade_jpegs()
    base = next(iter(detectors.values()))
    frames = [base.prepare(j) for j in jpegs]
    seconds = dict.fromkeys(configs, 0.0)
    found = {name: [] for name in configs}
    for start in range(0, len(frames), 8):
        chunk = frames[start:start + 8]
        for name, d in detectors.items():
            t = time.perf_counter()
            faces = d.detect(chunk)
            seconds[name] += time.perf_counter() - t
            found[name] += [[f.box for f in fs] for fs in faces]

    ref = found["default (min 20, factor 0.709)"]
    total = sum(map(len, ref))
    print("| MTCNN pyramid | frames/s | accepted faces | default's faces found |\n|---|---|---|---|")
    for name in configs:
        hit = sum(any(iou(r, g) >= 0.5 for g in got) for rs, got in zip(ref, found[name]) for r in rs)
        print(f"| {name} | {len(frames) / seconds[name]:.2f} | {sum(map(len, found[name]))} | {hit}/{total} = "
              f"{hit / total:.1%} |")


if __name__ == "__main__":
    main()
