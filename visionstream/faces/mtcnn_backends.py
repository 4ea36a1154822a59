"""MTCNN's three nets on ONNX Runtime or OpenVINO, behind facenet-pytorch's own detection code.

facenet-pytorch's ``detect_face`` (the image pyramid, the crops between stages, the NMS, the box regression)
stays as it is; only ``mtcnn.pnet``, ``rnet`` and ``onet`` are replaced by :class:`ExportedNet`, which takes and
returns the same tensors. The nets are exported from the weights in the facenet-pytorch wheel at start (never
downloaded), PNet with dynamic height and width for the pyramid, and cached with the classifier's graphs
(core/backends.py: same setting, same cache, same start-up measurement). On this 2-core EPYC OpenVINO ran the
nets 4-5x and ONNX Runtime 2-3x faster than torch, with outputs within 2e-6 (bench/mtcnn_pyramid.py).

``auto`` allows a backend only when every output value of the three nets is within ``NET_TOLERANCE`` of torch
fp32's, and it matches at least 99.5% of the faces MTCNN finds on the sample images (IoU >= ``FACE_MIN_IOU``,
probability within ``FACE_MAX_PROBABILITY_DIFF``). The nets' outputs show a broken export on any image, photo
or not; the faces are compared only where the sample photos are installed (scikit-image, local/test extras):
the generated images hold none, and the log says so.
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
import torch
from facenet_pytorch import MTCNN
from threadpoolctl import ThreadpoolController
from torch import nn

from visionstream.core.backends import (
    MIN_AGREEMENT,
    CacheNotWritable,
    Run,
    Trial,
    agreement_images,
    cache_not_writable,
    chosen_backend,
    export_onnx,
    exported_run,
    images_per_second,
    machine_key,
    runtime_threads,
    weights_digest,
)

log = logging.getLogger(__name__)

NET_NAMES = ("pnet", "rnet", "onet")
NET_TOLERANCE = 1e-4  # |torch - backend| an output value may differ by (measured: <= 2e-6 for both runtimes)
FACE_MIN_IOU = 0.9
FACE_MAX_PROBABILITY_DIFF = 0.01
# Sample images the agreement is measured on and timed on, all of them: 4 photos with few faces let torch's
# per-call cost decide (it was chosen at 31 frames/s against OpenVINO's 29, on images where MTCNN found
# little), while the textured ones, with hundreds of candidates for RNet and ONet as a crowd has, are where the
# nets' speed shows (1.3 vs 4.8 frames/s); 16 images made a first start take 75 s on this loaded machine.
AGREEMENT_FRAMES = 8
TIMED_ROUNDS = 3
_SIZE = (500, 375)  # the sample views' size: the originals are resized to it, so all are one batch


class ExportedNet(nn.Module):
    """One of MTCNN's nets run by ONNX Runtime or OpenVINO: tensors in, a tuple of tensors out, as the torch
    net. ``detect_face`` reads the input dtype from the net's first parameter: hence the empty one."""

    def __init__(self, run: Run) -> None:
        super().__init__()
        self.dtype_probe = nn.Parameter(torch.empty(0), requires_grad=False)
        self._run = run

    def forward(self, values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(torch.from_numpy(out) for out in self._run(values.contiguous().numpy()))


def detect(mtcnn: MTCNN, frames: np.ndarray) -> tuple[Any, Any, Any]:
    """MTCNN.detect's boxes, probabilities and landmarks; with exported nets, torch's own share (the crops
    between stages, one small resize per candidate, and the NMS) on one thread: beside other work on the cores
    (a worker's decode threads, a neighbour) its 2 OpenMP threads waited on each other and the runtime's, 1 ms
    per tiny resize. Arcade clip at 960 px, OpenVINO nets, interleaved: 6.45 frames/s with torch on 1 thread
    against 3.08 on 2 at load ~3; on an idle machine 10.39 against 11.53 (load 1.1)."""
    if not isinstance(mtcnn.pnet, ExportedNet):
        return mtcnn.detect(frames, landmarks=True)
    # The calling thread's OpenMP limit only (omp_set_num_threads is per thread; ATen's parallel_for reads it):
    # torch.set_num_threads would also set the count every thread that first uses torch meanwhile starts with,
    # for good. torch's own per-thread start-up comes first, or its first op here would undo the limit.
    torch.get_num_threads()
    with _openmp().limit(limits=1, user_api="openmp"):
        return mtcnn.detect(frames, landmarks=True)


@functools.cache
def _openmp() -> ThreadpoolController:
    """The loaded thread pools, found once: a search of the process's libraries per call would cost each frame."""
    return ThreadpoolController()


def _examples() -> dict[str, tuple[torch.Tensor, dict[int, str]]]:
    return {"pnet": (torch.zeros((1, 3, 40, 50)), {0: "batch", 2: "height", 3: "width"}),
            "rnet": (torch.zeros((2, 3, 24, 24)), {0: "batch"}),
            "onet": (torch.zeros((2, 3, 48, 48)), {0: "batch"})}


def export_nets(mtcnn: MTCNN, cache_dir: Path, again: bool = False) -> dict[str, Path]:
    """Each net's ONNX graph in ``cache_dir``, named by its weights' digest, exported unless already there."""
    graphs = {}
    for name, (example, dynamic) in _examples().items():
        net = getattr(mtcnn, name)
        with torch.no_grad():
            outputs = [f"out{i}" for i in range(len(net(example)))]
        graphs[name] = export_onnx(net, example, cache_dir / f"mtcnn-{name}-{weights_digest(net)}.onnx", outputs,
                                   dynamic, again)
    return graphs


def on_backend(mtcnn: MTCNN, backend: str, graphs: dict[str, Path], threads: int) -> MTCNN:
    """``mtcnn`` with its nets replaced by ``backend`` (onnxruntime or openvino) running ``graphs``."""
    for name in NET_NAMES:
        setattr(mtcnn, name, ExportedNet(exported_run(backend, "fp32", graphs[name], threads)))
    return mtcnn


def place_nets(mtcnn: MTCNN, backend: str, cache_dir: Path, record_key: dict[str, object]) -> str:
    """Runs ``mtcnn``'s nets on ``backend`` and returns which backend runs them: onnxruntime or openvino as
    asked (CPU only), torch as asked or on another device, or for ``auto`` on a CPU the fastest that agrees,
    measured at this machine's first start and read from the record after that (``record_key``: what else the
    measurement depends on). A cache that cannot be written leaves ``auto`` on torch."""
    if mtcnn.device.type != "cpu" or backend == "torch":
        if backend in ("onnxruntime", "openvino"):
            raise ValueError(f"VISIONSTREAM_INFERENCE_BACKEND={backend} runs on the CPU only: set "
                             "VISIONSTREAM_DEVICE=cpu, or the backend to torch or auto")
        return "torch"
    threads = runtime_threads()
    if backend != "auto":
        try:
            graphs = export_nets(mtcnn, cache_dir)
        except OSError as exc:
            raise CacheNotWritable(cache_not_writable(cache_dir, exc)) from exc
        on_backend(mtcnn, backend, graphs, threads)
        return backend
    return _choose(mtcnn, cache_dir, record_key, threads)


def _choose(mtcnn: MTCNN, cache_dir: Path, record_key: dict[str, object], threads: int) -> str:
    digests = [weights_digest(getattr(mtcnn, name)) for name in NET_NAMES]
    key = machine_key({"mtcnn": digests, "min_face": mtcnn.min_face_size, "factor": mtcnn.factor,
                       "threads": threads, "frames": AGREEMENT_FRAMES, "rounds": TIMED_ROUNDS,
                       "torch_threads_beside_exported_nets": 1, **record_key})
    try:
        chosen, _ = chosen_backend(
            cache_dir / f"mtcnn-choice-{key}.json", lambda again: export_nets(mtcnn, cache_dir, again),
            lambda graphs: measure_backends(mtcnn, graphs, threads),
            lambda trial, graphs: on_backend(mtcnn, trial.backend, graphs, threads), "MTCNN")
    except CacheNotWritable as exc:
        log.warning("VISIONSTREAM_INFERENCE_BACKEND=auto runs MTCNN on torch: %s", exc)
        return "torch"
    return chosen.backend if chosen is not None else "torch"


def sample_frames() -> np.ndarray:
    """AGREEMENT_FRAMES RGB images, one size: the sample photos, else generated fields (core/backends.py)."""

    def to_rgb(jpeg: bytes) -> np.ndarray:
        pixels = cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        return cv2.resize(pixels, _SIZE, interpolation=cv2.INTER_AREA)

    return agreement_images(to_rgb, AGREEMENT_FRAMES)[0]


def measure_backends(mtcnn: MTCNN, graphs: dict[str, Path], threads: int) -> list[Trial]:
    """Agreement with torch fp32 of each installed exported backend (``agreement``), and frames/s of torch and
    of those that agree (best of TIMED_ROUNDS interleaved calls), MTCNN's whole detection on the sample frames."""
    frames = sample_frames()
    candidates = {"torch": mtcnn}
    for backend in ("onnxruntime", "openvino"):
        try:
            candidates[backend] = on_backend(copy.deepcopy(mtcnn), backend, graphs, threads)
        except Exception as exc:  # not installed, or the runtime cannot load the graph on this CPU
            log.info("MTCNN backend %s not measured: %s", backend, exc)
    with torch.inference_mode():
        reference = Reference(detect(mtcnn, frames)[:2], net_outputs(mtcnn, frames))
        agreement = {"torch": 1.0}
        for backend, candidate in list(candidates.items())[1:]:
            agreement[backend] = backend_agreement(backend, reference, candidate, frames)
        speeds = images_per_second({backend: (lambda m=candidate: detect(m, frames)) for backend, candidate
                                    in candidates.items() if agreement[backend] >= MIN_AGREEMENT}, len(frames),
                                   rounds=TIMED_ROUNDS, seconds=0.0)
    return [Trial(backend, "fp32", agreement[backend], speeds.get(backend, 0.0)) for backend in candidates]


def net_outputs(mtcnn: MTCNN, frames: np.ndarray) -> list[np.ndarray]:
    """Every output of the three nets on inputs made from ``frames`` as detect_face makes them (normalised
    pixels): PNet on the frames at two scales, RNet and ONet on the frames resized to their input sizes."""
    pixels = (torch.from_numpy(frames).permute(0, 3, 1, 2).float() - 127.5) * 0.0078125
    inputs = {"pnet": [pixels, nn.functional.interpolate(pixels, scale_factor=0.3, mode="area")],
              "rnet": [nn.functional.interpolate(pixels, size=(24, 24), mode="area")],
              "onet": [nn.functional.interpolate(pixels, size=(48, 48), mode="area")]}
    return [out.numpy() for name, values in inputs.items() for value in values
            for out in getattr(mtcnn, name)(value)]


class Reference(NamedTuple):
    """torch fp32's run on the sample frames: MTCNN.detect's boxes and probabilities, and the nets' outputs."""

    faces: tuple[Any, Any]
    outputs: list[np.ndarray]


def backend_agreement(backend: str, reference: Reference, candidate: MTCNN, frames: np.ndarray) -> float:
    """0 when any output value of ``candidate``'s nets is further than NET_TOLERANCE from the reference's (a
    wrong row is a wrong face somewhere), else the share of the reference's faces it finds (face_agreement)."""
    difference = max(float(np.max(np.abs(r - o), initial=0.0))
                     for r, o in zip(reference.outputs, net_outputs(candidate, frames), strict=True))
    faces = sum(len(boxes) for boxes in reference.faces[0] if boxes is not None)
    log.info("MTCNN on %s: nets' outputs within %.2g of torch's (allowed %g); %s", backend, difference,
             NET_TOLERANCE, f"{faces} faces compared" if faces else
             "no face compared: the sample frames hold none (the sample photos need scikit-image)")
    if not difference <= NET_TOLERANCE:  # NaN included
        return 0.0
    return face_agreement(*reference.faces, *detect(candidate, frames)[:2])


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    x1, y1, x2, y2 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def face_agreement(reference_boxes: Sequence[np.ndarray | None], reference_probs: Sequence[np.ndarray | None],
                   boxes: Sequence[np.ndarray | None], probs: Sequence[np.ndarray | None]) -> float:
    """Faces of two runs over the same frames (MTCNN.detect's boxes and probabilities per frame) that match
    (IoU >= FACE_MIN_IOU, probability within FACE_MAX_PROBABILITY_DIFF), as a share of the larger run's faces:
    a face found by one run only counts against, either way. 1.0 when neither found any."""
    matched = total_reference = total = 0
    for ref_b, ref_p, got_b, got_p in zip(reference_boxes, reference_probs, boxes, probs, strict=True):
        reference = list(zip([] if ref_b is None else ref_b, [] if ref_p is None else ref_p))
        found = list(zip([] if got_b is None else got_b, [] if got_p is None else got_p))
        total_reference, total = total_reference + len(reference), total + len(found)
        for box, prob in reference:
            match = next((i for i, (other, other_prob) in enumerate(found) if iou(box, other) >= FACE_MIN_IOU
                          and abs(prob - other_prob) <= FACE_MAX_PROBABILITY_DIFF), None)
            if match is not None:
                found.pop(match)
                matched += 1
    return matched / max(total_reference, total) if max(total_reference, total) else 1.0
