"""The classifier on the real SqueezeNet weights: reference labels through the imaging path, on each precision."""

from __future__ import annotations

import hashlib
import io
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data
from torchvision.models import SqueezeNet1_1_Weights

from visionstream.classification.model import (
    Classifier,
    WeightsUnavailable,
    cpu_has_fast,
    resolve_precision,
)
from visionstream.settings import load_settings

from ..media import media_file

# The shared README's reference top-1 for scikit-image's photos.
EXPECTED = {"chelsea": "Egyptian cat", "coffee": "espresso", "stereo_motorcycle": "moped"}


def photo(name: str) -> np.ndarray:
    pixels = getattr(data, name)()
    return pixels[0] if isinstance(pixels, tuple) else pixels  # stereo_motorcycle is (left, right, disparity)


def jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def weights() -> Path:
    return media_file("models", "squeezenet1_1_imagenet.pth")


# torch.compile takes ~16 s: the compiled variant runs with the slow tests.
@pytest.fixture(scope="module", params=["fp32", "auto", "bf16",
                                        pytest.param("auto, compiled", marks=pytest.mark.integration)])
def classifier(request: pytest.FixtureRequest, weights: Path) -> Classifier:
    # auto is the production fast path (bf16 on CPUs with native bf16, else fp32), compiled as a worker does;
    # bf16 is forced too, so its numerics are checked even on CPUs that only emulate it.
    precision, _, compiled = request.param.partition(", ")
    classifier = Classifier("squeezenet1_1", weights, device="cpu", precision=precision, top_k=5,
                            compile_for_batch=len(EXPECTED) if compiled else None)
    assert classifier.compiled == bool(compiled)
    return classifier


@pytest.fixture(scope="module")
def photo_batch(classifier: Classifier) -> np.ndarray:
    preprocess = classifier.preprocessor(max_image_pixels=10_000_000)
    return np.stack([preprocess(jpeg(photo(name))) for name in EXPECTED])


def test_reference_labels_through_the_imaging_path(classifier: Classifier, photo_batch: np.ndarray) -> None:
    top1 = [top_k[0][1] for top_k in classifier(photo_batch)]
    assert top1 == list(EXPECTED.values())


def test_top_k_sorted_with_probabilities(classifier: Classifier, photo_batch: np.ndarray) -> None:
    categories = SqueezeNet1_1_Weights.IMAGENET1K_V1.meta["categories"]
    for top_k in classifier(list(photo_batch)):  # a list of images works as well as a stacked array
        confidences = [confidence for _, _, confidence in top_k]
        assert len(top_k) == 5
        assert confidences == sorted(confidences, reverse=True)
        assert all(0 <= c <= 1 for c in confidences) and sum(confidences) <= 1 + 1e-5
        assert all(categories[index] == category for index, category, _ in top_k)


def test_channels_first_input_gives_the_same_answer(classifier: Classifier, photo_batch: np.ndarray) -> None:
    nhwc = classifier(photo_batch)
    nchw = classifier(photo_batch.transpose(0, 3, 1, 2))
    for a, b in zip(nhwc, nchw, strict=True):
        assert [i for i, _, _ in a] == [i for i, _, _ in b]
        assert all(math.isclose(x, y, abs_tol=1e-3) for (_, _, x), (_, _, y) in zip(a, b, strict=True))


def test_rejects_float_or_misshapen_batches(classifier: Classifier, photo_batch: np.ndarray) -> None:
    with pytest.raises(ValueError, match="uint8"):
        classifier(photo_batch.astype(np.float32))
    with pytest.raises(ValueError, match="3 colour channels"):
        classifier(photo_batch[..., :2])


def test_from_settings_reports_its_setup(weights: Path) -> None:
    classifier = Classifier.from_settings(
        load_settings(model_weights=str(weights), device="cpu", precision="fp32", top_k=2, compile_model=False,
                      inference_backend="torch")  # auto would measure backends for seconds, writing to ~/.cache
    )
    assert (classifier.name, classifier.device.type, classifier.precision) == ("squeezenet1_1", "cpu", "fp32")
    assert classifier.backend == "torch"
    assert classifier.weights_source == f"file:{weights}"
    assert classifier.top_k == 2 and not classifier.compiled
    if weights.name == "squeezenet1_1_imagenet.pth":  # the shared file: sha256 3ea84be0bf4c... (shared/README)
        assert classifier.model_id == "squeezenet1_1@file-3ea84be0bf4c"
    assert classifier.model_id == f"squeezenet1_1@file-{hashlib.sha256(weights.read_bytes()).hexdigest()[:12]}"


def _cpu_capabilities(monkeypatch: pytest.MonkeyPatch, avx512_bf16: bool, amx_tile: bool) -> None:
    """The CPU torch reports: native bf16 through AVX512-BF16 or AMX tiles (AMX-FP16 present, never chosen)."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx_tile)
    monkeypatch.setattr(torch.cpu, "_is_amx_fp16_supported", lambda: True)


@pytest.mark.parametrize(("avx512_bf16", "amx_tile", "expected"), [
    (False, False, "fp32"), (True, False, "bf16"), (False, True, "bf16"), (True, True, "bf16")])
def test_auto_precision(monkeypatch: pytest.MonkeyPatch, avx512_bf16: bool, amx_tile: bool, expected: str) -> None:
    _cpu_capabilities(monkeypatch, avx512_bf16, amx_tile)
    assert cpu_has_fast("bf16") == (expected == "bf16")
    assert resolve_precision("auto", torch.device("cpu")) == expected
    assert resolve_precision("auto", torch.device("cuda")) == "fp16"
    for explicit in ("fp32", "bf16", "fp16"):  # an explicit precision is kept whatever the device
        assert resolve_precision(explicit, torch.device("cpu")) == explicit
        assert resolve_precision(explicit, torch.device("cuda")) == explicit


@pytest.mark.usefixtures("offline_hub")
@pytest.mark.parametrize(("avx512_bf16", "expected"), [(False, "fp32"), (True, "bf16")])
def test_auto_precision_reaches_the_model(monkeypatch: pytest.MonkeyPatch, avx512_bf16: bool, expected: str) -> None:
    _cpu_capabilities(monkeypatch, avx512_bf16, amx_tile=False)
    classifier = Classifier(device="cpu", precision="auto", top_k=1, allow_random_weights=True)
    assert classifier.precision == expected
    # bf16: the body in bf16, the first convolution and the classifier kept in fp32 (ReducedPrecision).
    dtypes = {parameter.dtype for parameter in classifier._model.parameters()}
    assert dtypes == ({torch.float32, torch.bfloat16} if expected == "bf16" else {torch.float32})


@pytest.fixture
def offline_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision's weights API fails as it does with no hub cache and no network."""
    def unreachable(*args: object, **kwargs: object) -> None:
        raise OSError("<urlopen error [Errno -2] Name or service not known>")

    monkeypatch.setattr(type(SqueezeNet1_1_Weights.IMAGENET1K_V1), "get_state_dict", unreachable)


@pytest.mark.usefixtures("offline_hub")
def test_no_weights_is_a_clear_error() -> None:
    with pytest.raises(WeightsUnavailable, match="VISIONSTREAM_MODEL_WEIGHTS"):
        Classifier(device="cpu", precision="fp32")


@pytest.mark.usefixtures("offline_hub")
def test_random_weights_only_on_request_and_loudly(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        classifier = Classifier(device="cpu", precision="fp32", top_k=3, allow_random_weights=True)
    assert classifier.weights_source == "random"
    assert "RANDOM weights" in caplog.text and "meaningless" in caplog.text
    results = classifier(np.zeros((2, 224, 224, 3), np.uint8))
    assert [len(top_k) for top_k in results] == [3, 3]


@pytest.mark.parametrize("content", [b"not a torch file", "wrong architecture"])
def test_invalid_weights_file_is_a_clear_error(tmp_path: Path, content: bytes | str) -> None:
    path = tmp_path / "weights.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(WeightsUnavailable, match=f"weights file {path} is not a usable state_dict"):
        Classifier(weights_path=path, device="cpu", precision="fp32", allow_random_weights=True)


@pytest.mark.cuda
def test_cuda_fp16_reference_labels(weights: Path) -> None:
    classifier = Classifier(weights_path=weights, device="cuda", precision="auto")
    assert (classifier.device.type, classifier.precision) == ("cuda", "fp16")
    preprocess = classifier.preprocessor(max_image_pixels=10_000_000)
    results = classifier([preprocess(jpeg(photo(name))) for name in EXPECTED])
    assert [top_k[0][1] for top_k in results] == list(EXPECTED.values())
