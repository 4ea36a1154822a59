"""JPEG decode on the model's device (classification/model.py): header checks in the decode threads, one
batched decode in the model thread, a CPU fallback per image. The same code runs with device="cpu" and
decode_on_device=True (torchvision's CPU decoder), so every branch but nvJPEG is checked without a GPU;
the tests marked ``cuda`` repeat the checks on the GPU."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visionstream.classification.model import Classifier, DevicePreparer, EncodedJpeg
from visionstream.core.imaging import ImageDecodeError

from .test_classifier import EXPECTED, jpeg, photo, weights  # noqa: F401  (weights: a fixture)


def encoded(pixels: np.ndarray, fmt: str = "JPEG", **save: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt, **save)
    return buffer.getvalue()


def rotated_jpeg(pixels: np.ndarray) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 270 to show upright
    return encoded(pixels, exif=exif.tobytes())


def truncated_body(data: bytes) -> bytes:
    return data[: len(data) // 2]  # the header parses, the scan data ends early




def test_preparer_keeps_plain_jpegs_encoded_and_decodes_the_rest():
    preparer = DevicePreparer(Classifier(device="cpu", precision="fp32", allow_random_weights=True)
                              .preprocessor(10_000_000))
    cat = photo("chelsea")
    assert isinstance(preparer(jpeg(cat)), EncodedJpeg)
    assert isinstance(preparer(encoded(cat[..., 0])), EncodedJpeg)  # greyscale: nvJPEG gives RGB as Pillow does
    cmyk = io.BytesIO()
    Image.fromarray(cat).convert("CMYK").save(cmyk, "JPEG")
    for fallback in (encoded(cat, "PNG"), rotated_jpeg(cat), cmyk.getvalue()):
        item = preparer(fallback)
        assert isinstance(item, np.ndarray) and item.shape == (224, 224, 3)
    with pytest.raises(ImageDecodeError, match="exceeds"):
        DevicePreparer(Classifier(device="cpu", precision="fp32", allow_random_weights=True)
                       .preprocessor(1000))(jpeg(cat))
    with pytest.raises(ImageDecodeError):
        preparer(b"not an image")


def test_cpu_defaults_to_pillow_decode():
    classifier = Classifier(device="cpu", precision="fp32", allow_random_weights=True)
    assert not classifier.decode_on_device
    assert not isinstance(classifier.preparer(10_000_000), DevicePreparer)


def check_device_batch(classifier: Classifier, corrupt_must_raise: bool) -> None:
    """Reference labels for a mixed batch: plain JPEGs (device decode), a PNG and an EXIF-rotated JPEG
    (CPU fallback); a JPEG whose pixel data is corrupt fails as a decode error (the pipeline's isolation
    then dead-letters it alone)."""
    preparer = classifier.preparer(10_000_000)
    names = list(EXPECTED)
    blobs = [jpeg(photo(name)) for name in names]
    blobs.append(encoded(photo("coffee"), "PNG"))
    upright = photo("chelsea")
    blobs.append(rotated_jpeg(np.rot90(upright, 1).copy()))  # stored sideways, EXIF turns it upright
    items = [preparer(blob) for blob in blobs]
    assert [isinstance(item, EncodedJpeg) for item in items] == [True] * len(names) + [False, False]
    labels = [top_k[0][1] for top_k in classifier.classify_prepared(items)]
    assert labels == [*EXPECTED.values(), "espresso", "Egyptian cat"]
    # The device path's pixels match the CPU path's closely (different resamplers, same geometry).
    cpu = classifier.preprocessor(10_000_000)
    on_device = classifier._device_batch([items[0]]).permute(0, 2, 3, 1)[0].cpu().numpy().astype(int)
    assert np.abs(on_device - cpu(blobs[0]).astype(int)).mean() < 6
    bad = preparer(truncated_body(jpeg(photo("coffee"))))
    assert isinstance(bad, EncodedJpeg)  # its header is fine
    if corrupt_must_raise:  # libjpeg-turbo refuses it, then Pillow calls it corrupt
        with pytest.raises(ImageDecodeError, match="corrupt JPEG"):
            classifier.classify_prepared([items[0], bad])
        return
    try:  # nvJPEG may decode what it can: then one result per image, the good one still right
        results = classifier.classify_prepared([items[0], bad])
    except ImageDecodeError:
        return
    assert len(results) == 2 and results[0][0][1] == EXPECTED[names[0]]


def test_device_decode_path_on_cpu(weights: Path):  # noqa: F811
    check_device_batch(Classifier(weights_path=weights, device="cpu", precision="fp32", decode_on_device=True),
                       corrupt_must_raise=True)


@pytest.mark.cuda
def test_device_decode_path_on_cuda(weights: Path):  # noqa: F811
    classifier = Classifier(weights_path=weights, device="cuda", precision="auto")
    assert classifier.decode_on_device and classifier.precision == "fp16"
    check_device_batch(classifier, corrupt_must_raise=False)


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
