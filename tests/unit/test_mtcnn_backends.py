"""MTCNN's nets on ONNX Runtime and OpenVINO: the same faces as torch on real frames, the agreement measure,
auto's record, and the pyramid settings in the detector's model id."""

from __future__ import annotations

import copy
import json
import logging
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from facenet_pytorch import MTCNN

from visionstream.core.backends import CacheNotWritable
from visionstream.faces import mtcnn_backends
from visionstream.faces.detector import FaceDetector
from visionstream.faces.mtcnn_backends import ExportedNet, face_agreement
from visionstream.settings import SettingsError, load_settings

from ..media import arcade_jpegs, portraits


def arcade_frames(count: int) -> list[bytes]:
    return arcade_jpegs(count, 12)  # spread over the clip's start: people near and far


def detector(backend: str, cache: Path, **settings: object) -> FaceDetector:
    return FaceDetector.from_settings(load_settings(device="cpu", inference_backend=backend, model_cache_dir=str(cache),
                                                    **settings))


def all_faces(found: FaceDetector, jpegs: list[bytes]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Boxes and probabilities per frame, accepted and below the floor alike."""
    results = found.detect([found.prepare(jpeg) for jpeg in jpegs])
    boxes = [np.array([face.box for face in [*faces, *faces.below_floor]]).reshape(-1, 4) for faces in results]
    probs = [np.array([face.probability for face in [*faces, *faces.below_floor]]) for faces in results]
    return boxes, probs


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_exported_nets_find_the_faces_torch_finds(backend: str, tmp_path: Path) -> None:
    jpegs = arcade_frames(6) + [path.read_bytes() for path in portraits()[:4]]
    reference = all_faces(detector("torch", tmp_path), jpegs)
    exported = detector(backend, tmp_path)
    assert exported.backend == backend
    found = all_faces(exported, jpegs)
    assert sum(len(b) for b in reference[0]) >= 20  # the clip's crowd and one face per portrait
    assert face_agreement(*reference, *found) >= 0.995
    for ref_probs, probs in zip(reference[1], found[1], strict=True):
        assert np.allclose(np.sort(ref_probs), np.sort(probs), atol=1e-4)


def test_detect_limits_only_the_calling_threads_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch runs on one thread inside detect beside exported nets, in the calling thread only: a thread that
    first uses torch meanwhile (a decode pool growing, another agent loading) starts with the process's count."""
    seen: dict[str, int] = {}

    def fake_detect(frames: object, landmarks: bool) -> tuple[None, None, None]:
        def newcomer() -> None:
            seen["new thread"] = torch.get_num_threads()
        thread = threading.Thread(target=newcomer)
        thread.start()
        thread.join()
        seen["inside"] = torch.get_num_threads()
        return None, None, None

    mtcnn = MTCNN(device="cpu")
    monkeypatch.setattr(mtcnn, "pnet", ExportedNet(lambda values: [values]))
    monkeypatch.setattr(mtcnn, "detect", fake_detect)
    process = torch.get_num_threads()
    torch.set_num_threads(max(2, process))  # the process-wide count every new thread starts with
    try:
        # a thread whose first torch use is detect: torch's own per-thread start-up must not undo the limit
        caller = threading.Thread(target=lambda: mtcnn_backends.detect(mtcnn, np.zeros((1, 8, 8, 3), np.uint8)))
        caller.start()
        caller.join()
        assert seen == {"inside": 1, "new thread": max(2, process)}
        assert torch.get_num_threads() == max(2, process)
    finally:
        torch.set_num_threads(process)


def test_face_agreement_counts_faces_either_run_missed() -> None:
    face, other = np.array([[10.0, 10.0, 50.0, 50.0]]), np.array([[100.0, 100.0, 140.0, 140.0]])
    same = face_agreement([face], [np.array([0.99])], [face + 0.5], [np.array([0.995])])
    assert same == 1.0  # IoU 0.95, probability 0.005 apart
    assert face_agreement([face], [np.array([0.99])], [face], [np.array([0.97])]) == 0.0  # probability 0.02 apart
    assert face_agreement([face], [np.array([0.99])], [face + 4], [np.array([0.99])]) == 0.0  # IoU 0.67
    two = np.concatenate([face, other])
    assert face_agreement([face], [np.array([0.99])], [two], [np.array([0.99, 0.9])]) == 0.5  # an extra face
    assert face_agreement([two], [np.array([0.99, 0.9])], [None], [None]) == 0.0  # all missed
    assert face_agreement([None, None], [None, None], [None, None], [None, None]) == 1.0


def test_the_model_id_names_the_pyramid_not_the_backend(tmp_path: Path) -> None:
    torch_ids = {detector(backend, tmp_path).model_id for backend in ("torch", "onnxruntime", "openvino")}
    assert torch_ids == {"mtcnn@facenet-pytorch-2.6.0-side960"}
    assert detector("torch", tmp_path, face_pyramid_min_face=40).model_id == "mtcnn@facenet-pytorch-2.6.0-side960-min40"
    assert detector("torch", tmp_path, face_pyramid_factor=0.6, face_pyramid_min_face=40).model_id == (
        "mtcnn@facenet-pytorch-2.6.0-side960-min40-factor0.6")


@pytest.mark.parametrize(("name", "value"), [("face_pyramid_factor", 0.95), ("face_pyramid_factor", 0.2),
                                             ("face_pyramid_min_face", 8)])
def test_pyramid_settings_are_bounded(name: str, value: float) -> None:
    with pytest.raises(SettingsError, match=f"VISIONSTREAM_{name.upper()}"):
        load_settings(**{name: value})


def test_a_coarser_pyramid_takes_effect(tmp_path: Path) -> None:
    jpegs = arcade_frames(3)
    default, coarse = detector("torch", tmp_path), detector("torch", tmp_path, face_pyramid_min_face=200)
    assert sum(map(len, all_faces(default, jpegs)[0])) > 0
    assert sum(map(len, all_faces(coarse, jpegs)[0])) == 0  # nobody in the clip is 200 px tall at 960 px


def test_auto_measures_once_and_keeps_the_choice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    measured = []
    real = mtcnn_backends.measure_backends

    def counted(*args: object) -> list:
        measured.append(measured[0] if measured else real(*args))  # measured for real once: ~30 s here
        return measured[-1]

    monkeypatch.setattr(mtcnn_backends, "measure_backends", counted)
    first = detector("auto", tmp_path)
    trials, = measured
    assert [t.backend for t in trials] == ["torch", "onnxruntime", "openvino"]
    assert all(t.agreement >= 0.995 and t.images_per_second > 0 for t in trials)
    assert first.backend == max(trials, key=lambda t: t.images_per_second).backend
    record, = tmp_path.glob("mtcnn-choice-*.json")
    # Another machine's record said torch was fastest: auto follows the record, without measuring again.
    rows = json.loads(record.read_text())["trials"]
    record.write_text(json.dumps({"trials": [{**row, "images_per_second": 9.0 if row["backend"] == "torch" else 1.0}
                                             for row in rows]}))
    assert detector("auto", tmp_path).backend == "torch" and len(measured) == 1
    # A backend that disagreed is never chosen, however fast.
    record.write_text(json.dumps({"trials": [{**row, "agreement": 0.99 if row["backend"] != "torch" else 1.0,
                                              "images_per_second": 1.0 if row["backend"] == "torch" else 99.0}
                                             for row in rows]}))
    assert detector("auto", tmp_path).backend == "torch"
    # A damaged graph behind a recorded choice: exported and measured again.
    record.write_text(json.dumps({"trials": [{**row, "images_per_second": 99.0 if row["backend"] == "openvino"
                                              else 1.0} for row in rows]}))
    next(tmp_path.glob("mtcnn-pnet-*.onnx")).write_bytes(b"half a graph")
    with caplog.at_level(logging.WARNING, logger=mtcnn_backends.__name__):
        again = detector("auto", tmp_path)
    assert "openvino cannot load MTCNN's graphs" in caplog.text and len(measured) == 2
    assert again.backend in ("torch", "onnxruntime", "openvino")


def unwritable(tmp_path: Path) -> Path:
    (tmp_path / "a-file").write_text("")
    return tmp_path / "a-file" / "models"


def test_a_cache_that_cannot_be_written(tmp_path: Path) -> None:
    assert detector("auto", unwritable(tmp_path)).backend == "torch"
    with pytest.raises(CacheNotWritable, match="VISIONSTREAM_MODEL_CACHE_DIR=.*a writable folder"):
        detector("onnxruntime", unwritable(tmp_path))


def test_auto_refuses_nets_with_one_wrong_output_row(caplog: pytest.LogCaptureFixture) -> None:
    """One ONet landmark row off by 1e-3 (0.2% of the values; the faces' boxes and probabilities unchanged) is a
    broken export: refused, though more than 99.5% of the values agree."""
    mtcnn = MTCNN(keep_all=True, device="cpu").eval()
    frames = mtcnn_backends.sample_frames()

    class OneRowOff(torch.nn.Module):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, values: torch.Tensor) -> tuple[torch.Tensor, ...]:
            box, landmarks, prob = self.net(values)
            landmarks = landmarks.clone()
            landmarks[0] += 1e-3
            return box, landmarks, prob

    with torch.inference_mode():
        reference = mtcnn_backends.Reference(mtcnn.detect(frames)[:2], mtcnn_backends.net_outputs(mtcnn, frames))
        same = copy.deepcopy(mtcnn)
        broken = copy.deepcopy(mtcnn)
        broken.onet = OneRowOff(broken.onet)
        with caplog.at_level(logging.INFO, logger=mtcnn_backends.__name__):
            assert mtcnn_backends.backend_agreement("same", reference, same, frames) == 1.0
            assert mtcnn_backends.backend_agreement("broken", reference, broken, frames) == 0.0
    assert "MTCNN on broken: nets' outputs within 0.001" in caplog.text
    assert "faces compared" in caplog.text  # how many, or that none was
