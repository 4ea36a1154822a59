"""MTCNN on the arcade clip by backend (torch, ONNX Runtime, OpenVINO: faces/mtcnn_backends.py) and pyramid
(minimum face size, scale factor): frames/s at 960 px (frames decoded beforehand, batches of 8, configurations
interleaved batch by batch), agreement of every candidate with torch's (IoU >= 0.9, probability within 0.01,
faces either run alone count against) and recall of torch's accepted faces (IoU >= 0.5). Issue 26 point 2:

    .venv/bin/python bench/mtcnn_pyramid.py
"""
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from facenet_pytorch import MTCNN  # noqa: E402
from pipeline_targets import arcade_jpegs  # noqa: E402

from visionstream.faces.detector import FaceDetector, FaceFloor  # noqa: E402
from visionstream.faces.mtcnn_backends import export_nets, face_agreement, iou, on_backend  # noqa: E402
from visionstream.settings import load_settings  # noqa: E402

CONFIGS = {  # name: backend, min face, factor
    "torch (facenet-pytorch's default pyramid: min 20, factor 0.709)": ("torch", 20, 0.709),
    "ONNX Runtime": ("onnxruntime", 20, 0.709),
    "OpenVINO": ("openvino", 20, 0.709),
    "OpenVINO, factor 0.6": ("openvino", 20, 0.6),
    "OpenVINO, min 40": ("openvino", 40, 0.709),
    "OpenVINO, min 40, factor 0.6": ("openvino", 40, 0.6),
}


def main() -> None:
    settings = load_settings(device="cpu")
    floor = FaceFloor(settings.face_min_probability)
    detectors = {}
    with tempfile.TemporaryDirectory(prefix="vs-mtcnn-") as cache:
        for name, (backend, min_face, factor) in CONFIGS.items():
            mtcnn = MTCNN(keep_all=True, device="cpu", min_face_size=min_face, factor=factor).eval()
            if backend != "torch":
                on_backend(mtcnn, backend, export_nets(mtcnn, Path(cache)), torch.get_num_threads())
            detectors[name] = FaceDetector(mtcnn, 960, settings.max_image_pixels, floor, backend)
        jpegs = arcade_jpegs()
        reference_name = next(iter(CONFIGS))
        frames = [detectors[reference_name].prepare(j) for j in jpegs]
        seconds = dict.fromkeys(CONFIGS, 0.0)
        accepted = {name: [] for name in CONFIGS}
        candidates = {name: [] for name in CONFIGS}  # accepted and below the floor: (boxes, probabilities)
        for start in range(0, len(frames), 8):
            chunk = frames[start:start + 8]
            for name, detector in detectors.items():
                began = time.perf_counter()
                results = detector.detect(chunk)
                seconds[name] += time.perf_counter() - began
                accepted[name] += [[f.box for f in faces] for faces in results]
                candidates[name] += [([f.box for f in [*faces, *faces.below_floor]],
                                      [f.probability for f in [*faces, *faces.below_floor]]) for faces in results]

    def arrays(name: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
        return ([np.array(b).reshape(-1, 4) for b, _ in candidates[name]],
                [np.array(p) for _, p in candidates[name]])

    reference = accepted[reference_name]
    total = sum(map(len, reference))
    print(f"{len(frames)} arcade frames at 960 px, batches of 8, {torch.get_num_threads()} threads\n")
    print("| MTCNN | frames/s | vs torch | candidates agreeing with torch's | accepted faces | torch's faces found |")
    print("|---|---|---|---|---|---|")
    for name in CONFIGS:
        hit = sum(any(iou(r, g) >= 0.5 for g in got) for rs, got in zip(reference, accepted[name]) for r in rs)
        fps = len(frames) / seconds[name]
        print(f"| {name} | {fps:.2f} | {seconds[reference_name] / seconds[name]:.2f}x | "
              f"{face_agreement(*arrays(reference_name), *arrays(name)):.1%} | {sum(map(len, accepted[name]))} | "
              f"{hit}/{total} = {hit / total:.1%} |")


if __name__ == "__main__":
    main()
