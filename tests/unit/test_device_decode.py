"""JPEG decode on the model's device: which analyzer gets encoded JPEGs and which gets pixels (core/pipeline.py's
Prepare, imaging.device_jpeg), the classifier's batched decode (classification/model.py) and the pipeline's CPU
fallback per image. The same code runs with device="cpu" and decode_on_device=True (torchvision's CPU decoder),
so every branch but nvJPEG is checked without a GPU; the tests marked ``cuda`` repeat the checks on the GPU."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from visionstream import metrics
from visionstream.classification.analyzer import build, classify_analyzer
from visionstream.classification.model import Classifier, _chunks
from visionstream.core import pipeline as pipeline_module
from visionstream.core.analyzers import Analyzer
from visionstream.core.imaging import DecodedImage, DecodeLimits, EncodedJpeg, ImageDecodeError, device_jpeg
from visionstream.core.pipeline import AnalysisPipeline, InboundMessage, Input, OnDevice, Prepare
from visionstream.core.records import SourceRef
from visionstream.settings import load_settings

from .test_classifier import EXPECTED, jpeg, photo, weights  # noqa: F401  (weights: a fixture)

LIMITS = DecodeLimits(10_000_000, memory_bytes=256 << 20)


def encoded(pixels: np.ndarray, fmt: str = "JPEG", **save: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt, **save)
    return buffer.getvalue()


def rotated_jpeg(pixels: np.ndarray) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 270 to show upright
    return encoded(pixels, exif=exif.tobytes())


def cmyk_jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert("CMYK").save(buffer, "JPEG")
    return buffer.getvalue()


def corrupt_scan(data: bytes) -> bytes:
    """Markers sprinkled into the scan data, EOI kept: libjpeg-turbo (torchvision's and Pillow's) refuses it."""
    corrupt = bytearray(data)
    for k in range(len(corrupt) // 2, len(corrupt) // 2 + 200, 7):
        corrupt[k] = 0xFF
    return bytes(corrupt)


def test_device_jpeg_takes_what_a_device_decodes_as_pillow_does():
    cat = photo("chelsea")
    plain = device_jpeg(jpeg(cat), LIMITS)
    assert plain is not None and (plain.width, plain.height) == (451, 300)
    assert device_jpeg(encoded(cat[..., 0]), LIMITS) is not None  # greyscale: nvJPEG gives RGB as Pillow does
    assert device_jpeg(encoded(cat, progressive=True), LIMITS) is not None
    # PNG, EXIF-rotated, CMYK, and a truncated file (no EOI: Pillow calls it corrupt, nvJPEG may not): the CPU's.
    for cpu in (encoded(cat, "PNG"), rotated_jpeg(cat), cmyk_jpeg(cat), jpeg(cat)[:-2000]):
        assert device_jpeg(cpu, LIMITS) is None
    # A full-size decode over the memory bound goes to the CPU, which decodes it at a DCT scale.
    assert device_jpeg(jpeg(cat), DecodeLimits(10_000_000, memory_bytes=451 * 300 * 4 - 1)) is None
    # What no decoder may take fails from the header, before any pixel memory is spent anywhere.
    with pytest.raises(ImageDecodeError, match="VISIONSTREAM_MAX_IMAGE_PIXELS"):
        device_jpeg(jpeg(cat), DecodeLimits(1000))
    with pytest.raises(ImageDecodeError):
        device_jpeg(b"not an image", LIMITS)


class Recorder:
    """A fake analyzer's hooks: what it was handed (pure selection logic, no model)."""

    def __init__(self, name: str, side: int, on_device: bool, refuse: Sequence[int] = ()) -> None:
        self.name, self.side, self.refuse = name, side, set(refuse)
        self.decoded_sizes: list[tuple[int, int]] = []
        self.device_batches: list[list[EncodedJpeg]] = []
        self.analyzer = Analyzer(name, name, f"{name}@1", self.decode_size, self.prepare, self.run,
                                 decode_encoded=self.decode if on_device else None)

    def decode_size(self, width: int, height: int) -> tuple[int, int]:
        return self.side, self.side

    def prepare(self, image: DecodedImage) -> tuple[str, tuple[int, int]]:
        self.decoded_sizes.append(image.pixels.size)
        return "cpu", image.pixels.size

    def decode(self, jpegs: Sequence[EncodedJpeg]) -> list[Any]:
        self.device_batches.append(list(jpegs))
        return [None if jpeg.width in self.refuse else ("device", (jpeg.width, jpeg.height)) for jpeg in jpegs]

    def run(self, batch: Sequence[Any]) -> list[Any]:
        return list(batch)


@pytest.fixture
def cpu_decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = pipeline_module.decode_image

    def counted(*args: Any) -> Any:
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(pipeline_module, "decode_image", counted)
    return calls


def test_prepare_decodes_on_the_cpu_only_for_the_analyzers_that_need_pixels(cpu_decodes: list[int]):
    big = jpeg(np.full((800, 1600, 3), 128, np.uint8))
    pixels, device = Recorder("pixels", 100, False), Recorder("device", 800, True)
    size, (for_pixels, for_device) = Prepare([pixels.analyzer, device.analyzer], LIMITS)(big)
    assert size == (1600, 800) and isinstance(for_device, OnDevice) and for_device.jpeg.data == big
    # One CPU decode, at the pixel analyzer's DCT scale (1/8: 200x100), not at the device analyzer's (full).
    assert for_pixels == ("cpu", (200, 100)) and len(cpu_decodes) == 1
    # Every analyzer decodes on its device: no CPU decode at all.
    _, [alone] = Prepare([device.analyzer], LIMITS)(big)
    assert isinstance(alone, OnDevice) and len(cpu_decodes) == 1
    # A PNG is no JPEG: both get pixels, from one decode at the scale both accept.
    _, inputs = Prepare([pixels.analyzer, device.analyzer], LIMITS)(encoded(np.zeros((80, 160, 3), np.uint8), "PNG"))
    assert [i[0] for i in inputs] == ["cpu", "cpu"] and len(cpu_decodes) == 2


def test_prepare_without_device_analyzers_never_probes_for_one(monkeypatch: pytest.MonkeyPatch):
    def probe(*_: Any) -> None:
        raise AssertionError("a header probe for device decoding with no analyzer decoding on a device")

    monkeypatch.setattr(pipeline_module, "device_jpeg", probe)
    _, [only] = Prepare([Recorder("pixels", 100, False).analyzer], LIMITS)(jpeg(photo("chelsea")))
    assert only[0] == "cpu"


class InlineStore:
    async def get_many(self, requests: list) -> list:
        assert not requests, "the test's messages carry their bytes"
        return []


def run_pipeline(analyzers: list[Analyzer], blobs: list[bytes], limits: DecodeLimits = LIMITS):
    messages = [InboundMessage(SourceRef("images", 0, i), f"k{i}".encode(), blob) for i, blob in enumerate(blobs)]

    async def go():
        with ThreadPoolExecutor(2) as decode, ThreadPoolExecutor(1) as model:
            pipeline = AnalysisPipeline(lambda m, now: Input(m.key.decode(), None, data=m.value), InlineStore(),
                                        analyzers, Prepare(analyzers, limits), decode, model, decode_chunks=2)
            return await pipeline.run(messages)

    outcome = asyncio.run(go())
    return {r.image_key: r for r in outcome.results}, {f.image_key: f for f in outcome.failed}


def test_refused_jpegs_are_decoded_on_the_cpu_and_undecodable_ones_dead_lettered():
    good = jpeg(photo("chelsea"))  # 451 wide
    odd = jpeg(photo("coffee"))  # 600 wide: the fake device decoder refuses it
    bad = corrupt_scan(jpeg(photo("astronaut")))  # 512 wide: refused, and Pillow cannot decode it either
    device = Recorder("device", 256, True, refuse=(600, 512))
    results, failed = run_pipeline([device.analyzer], [good, odd, bad])
    assert [[j.width for j in b] for b in device.device_batches] == [[451, 600, 512]]  # one batched call
    assert results["k0"].outputs["device"] == ("device", (451, 300))
    assert results["k1"].outputs["device"][0] == "cpu" and results["k1"].size == (600, 400)
    assert set(results) == {"k0", "k1"} and failed["k2"].stage == "decode"
    assert "corrupt JPEG" in failed["k2"].reason
    # Beside a pixel analyzer, the CPU decode for it finds the bad JPEG first: the device never sees it.
    pixels, device = Recorder("pixels", 64, False), Recorder("device", 256, True, refuse=(600,))
    results, failed = run_pipeline([pixels.analyzer, device.analyzer], [good, odd, bad])
    assert [[j.width for j in b] for b in device.device_batches] == [[451, 600]]
    assert [results[k].outputs["device"][0] for k in ("k0", "k1")] == ["device", "cpu"]
    assert [results[k].outputs["pixels"][0] for k in ("k0", "k1")] == ["cpu", "cpu"]
    assert list(failed) == ["k2"] and failed["k2"].stage == "decode"


def test_a_device_decoder_that_raises_sends_its_batch_to_the_cpu(caplog: pytest.LogCaptureFixture):
    device = Recorder("device", 256, True)

    def broken(jpegs: Sequence[EncodedJpeg]) -> list[Any]:
        raise RuntimeError("CUDA error: out of memory")

    analyzer = Analyzer("device", "device", "device@1", device.decode_size, device.prepare, device.run,
                        decode_encoded=broken)
    results, failed = run_pipeline([analyzer], [jpeg(photo("chelsea")), jpeg(photo("coffee"))])
    assert not failed and [r.outputs["device"][0] for r in results.values()] == ["cpu", "cpu"]
    assert "out of memory" in caplog.text


def test_a_workers_device_decodes_are_timed_and_counted():
    device = Recorder("device", 256, True, refuse=(600,))
    [observed] = metrics.observed_analyzers("device-test", [device.analyzer])
    observed.decode_encoded([device_jpeg(jpeg(photo(name)), LIMITS) for name in ("chelsea", "coffee")])

    def sample(name: str, **labels: str) -> float | None:
        return metrics.REGISTRY.get_sample_value(name, {"agent": "device-test", **labels})

    assert sample("visionstream_device_decoded_images_total", analyzer="device", outcome="decoded") == 1
    assert sample("visionstream_device_decoded_images_total", analyzer="device", outcome="refused") == 1
    assert sample("visionstream_stage_seconds_count", stage="device_decode:device") == 1


def test_device_decode_calls_hold_at_most_the_memory_bound():
    costs = [5, 5, 3, 9, 1, 12]
    assert [list(run) for run in _chunks(costs, lambda c: c, 10)] == [[5, 5], [3], [9, 1], [12]]
    assert [list(run) for run in _chunks(costs, lambda c: c, None)] == [costs]
    assert _chunks([], lambda c: c, 10) == []


def test_the_classify_analyzer_decodes_on_the_cpu_when_the_device_is_the_cpu(weights: Path):  # noqa: F811
    analyzer = build(load_settings(model_weights=str(weights), device="cpu", inference_backend="torch",
                                   precision="fp32", compile_model=False))
    assert analyzer.decode_encoded is None  # nothing probed, nothing changed: the feature costs nothing here


def check_classify_in_pipeline(classifier: Classifier) -> None:
    """The classify analyzer on device decode in the real pipeline: reference labels for plain JPEGs (device),
    a PNG, an EXIF-rotated and a CMYK JPEG (CPU), and a JPEG no decoder reads dead-lettered alone, at decode."""
    assert classifier.decode_on_device
    analyzer = classify_analyzer(classifier, 10_000_000)
    names = list(EXPECTED)
    upright = photo("chelsea")
    blobs = [jpeg(photo(name)) for name in names]
    blobs += [encoded(photo("coffee"), "PNG"), rotated_jpeg(np.rot90(upright, 1).copy()), cmyk_jpeg(upright),
              corrupt_scan(jpeg(photo("coffee")))]
    results, failed = run_pipeline([analyzer], blobs)
    labels = [results[f"k{i}"].outputs["classify"][0][1] for i in range(len(blobs) - 1)]
    assert labels == [*EXPECTED.values(), "espresso", "Egyptian cat", "Egyptian cat"]
    assert list(failed) == [f"k{len(blobs) - 1}"] and failed[f"k{len(blobs) - 1}"].stage == "decode"
    # The device's crop matches the CPU's closely (different resamplers, same geometry).
    [on_device] = classifier.decode_jpegs([device_jpeg(blobs[0], LIMITS)])
    cpu = classifier.preprocessor(10_000_000)(blobs[0])
    assert np.abs(on_device.permute(1, 2, 0).cpu().numpy().astype(int) - cpu.astype(int)).mean() < 6


def test_device_decode_path_on_cpu(weights: Path):  # noqa: F811
    check_classify_in_pipeline(Classifier(weights_path=weights, device="cpu", precision="fp32",
                                          decode_on_device=True))


@pytest.mark.cuda
def test_device_decode_path_on_cuda(weights: Path):  # noqa: F811
    classifier = Classifier(weights_path=weights, device="cuda", precision="auto", device_decode_bytes=256 << 20)
    assert classifier.precision == "fp16"
    check_classify_in_pipeline(classifier)


@pytest.mark.cuda
def test_the_classify_analyzer_decodes_on_cuda_by_default(weights: Path):  # noqa: F811
    analyzer = build(load_settings(model_weights=str(weights), device="cuda", compile_model=False))
    assert analyzer.decode_encoded is not None and analyzer.model.device.type == "cuda"


@pytest.mark.cuda
def test_cuda_pinned_staging_buffer_is_reused(weights: Path):  # noqa: F811
    classifier = Classifier(weights_path=weights, device="cuda", precision="auto")
    preprocess = classifier.preprocessor(10_000_000)
    batch = np.stack([preprocess(jpeg(photo(name))) for name in EXPECTED])
    first = classifier(batch)
    buffer = classifier._pinned
    assert buffer is not None and buffer.is_pinned()
    assert classifier(batch) == first and classifier._pinned is buffer
    assert [top_k[0][1] for top_k in first] == list(EXPECTED.values())
