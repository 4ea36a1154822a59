"""The classifier's CPU backends: the choice among measured candidates, the agreement check, the ONNX export
cache, the start-up record, and the settings that select them."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from visionstream.classification import model
from visionstream.classification.backends import Logits, top1_agreement
from visionstream.core import backends
from visionstream.core.backends import MIN_AGREEMENT, Trial, choose, images_per_second, load_trials, save_trials
from visionstream.classification.model import Classifier
from visionstream.dev.samples import sample_images
from visionstream.settings import SettingsError, load_settings

from ..clock import Clock
from ..media import media_file


def test_choose_takes_the_fastest_that_agrees() -> None:
    trials = [Trial("torch", "bf16", 0.990, 400.0),  # fastest, but one image in 100 changes label: not allowed
              Trial("onnxruntime", "fp32", 1.0, 220.0),
              Trial("openvino", "fp32", MIN_AGREEMENT, 240.0)]  # exactly at the bound: allowed
    assert choose(trials) == trials[2]
    assert choose(trials, minimum=0.98) == trials[0]


def test_choose_none_when_nothing_agrees() -> None:
    assert choose([Trial("torch", "bf16", 0.97, 400.0), Trial("openvino", "bf16", 0.99, 500.0)]) is None
    assert choose([]) is None


def test_top1_agreement_counts_arg_max_matches() -> None:
    reference = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.3, 0.3, 0.4], [0.0, 0.0, 1.0]])
    candidate = reference.copy()
    candidate[2] = [0.5, 0.2, 0.3]  # a near tie flipped
    assert top1_agreement(reference, reference) == 1.0
    assert top1_agreement(reference, candidate) == 0.75
    with pytest.raises(ValueError, match="cannot compare"):
        top1_agreement(reference, candidate[:3])


def test_images_per_second_interleaves_and_keeps_the_best_round() -> None:
    clock = Clock(0.0)
    slow_costs = [0.25, 0.25, 0.25, 0.5, 0.5]  # warm-up and the first round, then a neighbour's burst
    order: list[str] = []

    def slow() -> None:
        order.append("slow")
        clock.now += slow_costs.pop(0)

    def fast() -> None:
        order.append("fast")
        clock.now += 0.125

    speeds = images_per_second({"slow": slow, "fast": fast}, batch_size=32, rounds=3, seconds=0.5, clock=clock)
    assert order[:4] == ["slow", "fast", "slow", "slow"]  # one warm-up call each, then the rounds in turn
    assert order[4:8] == ["fast"] * 4 and order[8] == "slow"
    assert speeds["fast"] == 256.0  # 32 images per 0.125 s (binary fractions: exact sums)
    assert speeds["slow"] == 128.0  # its best round, before the slowdown (64 after)


def test_trials_round_trip_and_unreadable_record(tmp_path: Path) -> None:
    record = tmp_path / "choice.json"
    assert load_trials(record) is None
    trials = [Trial("torch", "fp32", 1.0, 100.0), Trial("openvino", "bf16", 0.99, 0.0)]
    save_trials(record, trials)
    assert load_trials(record) == trials
    record.write_text('{"trials": [{"backend": "torch"}]}')  # written by another version: measured again
    assert load_trials(record) is None
    record.write_text("{half a")
    assert load_trials(record) is None


@pytest.mark.parametrize(("overrides", "named"), [
    ({"inference_backend": "tensorrt"}, "VISIONSTREAM_INFERENCE_BACKEND='tensorrt'"),
    ({"inference_backend": "onnxruntime", "device": "cuda"}, "VISIONSTREAM_INFERENCE_BACKEND=onnxruntime runs "
                                                               "on the CPU only"),
    ({"inference_backend": "onnxruntime", "precision": "bf16"}, "cannot run VISIONSTREAM_PRECISION=bf16"),
    ({"inference_backend": "openvino", "precision": "fp16"}, "cannot run VISIONSTREAM_PRECISION=fp16"),
])
def test_settings_reject_a_backend_that_cannot_run(overrides: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named.replace("(", r"\(")):
        load_settings(**overrides)


def test_settings_default_to_auto() -> None:
    settings = load_settings(inference_backend="openvino", precision="bf16", model_cache_dir="")
    assert (settings.inference_backend, settings.model_cache_dir) == ("openvino", None)
    assert load_settings().inference_backend == "auto"


@pytest.fixture(scope="module")
def weights() -> Path:
    return media_file("models", "squeezenet1_1_imagenet.pth")


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    preprocess = Classifier(device="cpu", allow_random_weights=True).preprocessor(1 << 30)
    return np.stack([preprocess(data) for _, _, data in sample_images(48)])


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_exported_backend_matches_fp32_torch(backend: str, weights: Path, photos: np.ndarray,
                                             tmp_path: Path) -> None:
    reference = Classifier(weights_path=weights, device="cpu", precision="fp32", top_k=3)
    exported = Classifier(weights_path=weights, device="cpu", top_k=3, backend=backend, cache_dir=tmp_path)
    assert (exported.backend, exported.precision) == (backend, "fp32")
    assert exported.model_id == reference.model_id  # the rows' key does not depend on what runs the model
    expected, got = reference(photos), exported(photos)
    assert [row[0][1] for row in got] == [row[0][1] for row in expected]
    assert np.allclose([[c for _, _, c in row] for row in got], [[c for _, _, c in row] for row in expected],
                       atol=1e-4)
    assert exported(photos.transpose(0, 3, 1, 2))[0] == got[0]  # N x 3 x H x W is accepted as by torch
    graph, = tmp_path.glob("squeezenet1_1-*.onnx")
    exported_at = graph.stat().st_mtime_ns
    Classifier(weights_path=weights, device="cpu", backend=backend, cache_dir=tmp_path)
    assert graph.stat().st_mtime_ns == exported_at  # the second start reuses the export


# Measures four backends on 200 photos (~20 s, a minute on a busy machine): with the slow tests.
@pytest.mark.integration
def test_auto_measures_once_then_follows_the_record(weights: Path, photos: np.ndarray, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    first = Classifier(weights_path=weights, device="cpu", precision="fp32", backend="auto", cache_dir=tmp_path,
                       batch_size=16)
    record, = tmp_path.glob("squeezenet1_1-choice-*.json")
    trials = load_trials(record)
    assert {(t.backend, t.precision) for t in trials} == {("torch", "fp32"), ("onnxruntime", "fp32"),
                                                          ("openvino", "fp32")}
    assert all(t.agreement == 1.0 and t.images_per_second > 0 for t in trials)  # fp32 everywhere: all agree
    assert (first.backend, first.precision) == (choose(trials).backend, "fp32")

    def no_measuring(*args: object) -> None:
        raise AssertionError("measured again although the record was there")

    monkeypatch.setattr(Classifier, "_measure_backends", no_measuring)
    for chosen in ("onnxruntime", "openvino", "torch"):
        save_trials(record, [Trial(t.backend, t.precision, t.agreement, 999.0 if t.backend == chosen else 1.0)
                             for t in trials])
        again = Classifier(weights_path=weights, device="cpu", precision="fp32", backend="auto", cache_dir=tmp_path,
                           batch_size=16)
        assert again.backend == chosen
        assert [row[0][:2] for row in again(photos)] == [row[0][:2] for row in first(photos)]
    # Nothing agreed (e.g. reduced precision on a CPU that rounds differently): fp32 torch, the reference itself.
    record.write_text(json.dumps({"trials": [{"backend": "openvino", "precision": "fp32", "agreement": 0.9,
                                              "images_per_second": 999.0}]}))
    fallback = Classifier(weights_path=weights, device="cpu", precision="fp32", backend="auto", cache_dir=tmp_path,
                          batch_size=16)
    assert (fallback.backend, fallback.precision) == ("torch", "fp32")


def test_a_missing_runtime_names_the_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)  # as if it were not installed
    with pytest.raises(backends.MissingBackend, match="VISIONSTREAM_INFERENCE_BACKEND=onnxruntime needs"):
        Classifier(device="cpu", allow_random_weights=True, backend="onnxruntime", cache_dir=tmp_path)


def unwritable(tmp_path: Path) -> Path:
    """A cache folder that cannot be created, even by root (as ~/.cache on a read-only root filesystem)."""
    (tmp_path / "a-file").write_text("")
    return tmp_path / "a-file" / "models"


def test_auto_runs_torch_when_the_cache_cannot_be_written(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=model.__name__):
        classifier = Classifier(device="cpu", precision="fp32", allow_random_weights=True, backend="auto",
                                cache_dir=unwritable(tmp_path))
    assert (classifier.backend, classifier.precision) == ("torch", "fp32")
    assert len(classifier(np.zeros((2, 224, 224, 3), np.uint8))) == 2
    warning, = (record.getMessage() for record in caplog.records
                if record.levelno == logging.WARNING and "MODEL_CACHE_DIR" in record.getMessage())
    assert "VISIONSTREAM_INFERENCE_BACKEND=auto runs torch as configured" in warning
    assert f"VISIONSTREAM_MODEL_CACHE_DIR={unwritable(tmp_path)}" in warning
    assert "VISIONSTREAM_INFERENCE_BACKEND=torch" in warning  # the fix, besides a writable folder


def test_an_exported_backend_names_the_cache_setting_it_cannot_write(tmp_path: Path) -> None:
    with pytest.raises(backends.CacheNotWritable, match="VISIONSTREAM_MODEL_CACHE_DIR=.*a writable folder"):
        Classifier(device="cpu", allow_random_weights=True, backend="onnxruntime", cache_dir=unwritable(tmp_path))


def test_concurrent_writers_never_share_a_temporary_file(tmp_path: Path) -> None:
    # Containers sharing a cache volume all run the worker as pid 1: a temporary name from the pid was shared.
    target, partials = tmp_path / "graph.onnx", []

    def other_writer(partial: Path) -> None:
        partials.append(partial)
        partial.write_text("other")

    def writer(partial: Path) -> None:
        partials.append(partial)
        partial.write_text("first")
        backends.atomic_write(target, other_writer)  # another process, same pid, finishing meanwhile

    backends.atomic_write(target, writer)
    assert len(set(partials)) == 2 and all(p.parent == tmp_path for p in partials)
    assert target.read_text() == "first"  # whole files only: the last rename wins
    assert [p.name for p in tmp_path.iterdir()] == ["graph.onnx"]


def test_auto_measures_again_when_the_recorded_choice_cannot_load_its_graph(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    measured: list[Path] = []

    def onnxruntime_wins(self: Classifier, fp32: object, graph: Path, *args: object) -> list[Trial]:
        measured.append(graph)
        return [Trial("torch", "fp32", 1.0, 1.0), Trial("onnxruntime", "fp32", 1.0, 999.0)]

    monkeypatch.setattr(Classifier, "_measure_backends", onnxruntime_wins)

    def start() -> Classifier:
        return Classifier(device="cpu", precision="fp32", allow_random_weights=True, backend="auto",
                          cache_dir=tmp_path, batch_size=4)

    assert start().backend == "onnxruntime" and len(measured) == 1
    graph = measured[0]
    graph.write_bytes(b"half a graph")  # damaged on disk after it was measured
    with caplog.at_level(logging.WARNING, logger=model.__name__):
        again = start()
    assert "onnxruntime cannot load" in caplog.text and len(measured) == 2
    assert again.backend == "onnxruntime" and len(again(np.zeros((1, 224, 224, 3), np.uint8))) == 1
    assert start().backend == "onnxruntime" and len(measured) == 2  # the fresh export and record are used


@pytest.mark.parametrize(("photos", "bf16_measured"), [(True, True), (False, False)])
def test_bf16_is_measured_only_on_photos(photos: bool, bf16_measured: bool,
                                         monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    torch_fp32 = Classifier(device="cpu", precision="fp32", allow_random_weights=True)
    asked: list[tuple[str, str]] = []

    def not_installed(backend: str, precision: str, *args: object) -> Logits:
        asked.append((backend, precision))
        raise backends.MissingBackend(backend)

    monkeypatch.setattr(model, "cpu_has_fast", lambda precision: True)  # a CPU with bf16 math
    monkeypatch.setattr(model, "agreement_images", lambda *args: (np.zeros((4, 224, 224, 3), np.uint8), photos))
    monkeypatch.setattr(model, "exported_logits", not_installed)
    monkeypatch.setattr(model, "images_per_second", lambda runs, *args: dict.fromkeys(runs, 1.0))
    trials = torch_fp32._measure_backends(torch_fp32._model, tmp_path / "unused.onnx", "auto", 4)
    assert asked == [("onnxruntime", "fp32"), ("openvino", "fp32")] + [("openvino", "bf16")] * bf16_measured
    assert [(t.backend, t.agreement) for t in trials] == [("torch", 1.0)]
