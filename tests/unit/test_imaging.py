"""Decoding and preprocessing: parity with torchvision's transform, and a typed error for every bad input."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from skimage import data
from torchvision.models import SqueezeNet1_1_Weights

from visionstream.core.imaging import ImageDecodeError, Preprocessing, probe_image

PREPROCESS = Preprocessing(max_pixels=50_000_000)


def encode(pixels: np.ndarray, fmt: str = "JPEG", **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt, **options)
    return buffer.getvalue()


def torchvision_reference(data_: bytes) -> np.ndarray:
    """What SqueezeNet's published transform makes of the image, un-normalised back to 0..255, H x W x C."""
    transform = SqueezeNet1_1_Weights.IMAGENET1K_V1.transforms()
    tensor = transform(Image.open(io.BytesIO(data_)).convert("RGB"))
    mean, std = torch.tensor(transform.mean).view(3, 1, 1), torch.tensor(transform.std).view(3, 1, 1)
    return ((tensor * std + mean) * 255).permute(1, 2, 0).numpy()


@pytest.mark.parametrize("photo", ["chelsea", "coffee", "astronaut"])
def test_matches_torchvision_transform(photo: str) -> None:
    jpeg = encode(getattr(data, photo)(), quality=90)
    pixels = PREPROCESS(jpeg)
    assert pixels.shape == (224, 224, 3) and pixels.dtype == np.uint8
    assert np.abs(pixels - torchvision_reference(jpeg)).max() <= 1.01  # uint8 rounding only


def test_large_jpeg_decoded_at_reduced_scale_stays_close() -> None:
    # 2400x1600 takes the DCT-domain downscaling path (1/2 scale), then the bilinear resize.
    jpeg = encode(np.asarray(Image.fromarray(data.chelsea()).resize((2400, 1600))), quality=90)
    difference = np.abs(PREPROCESS(jpeg) - torchvision_reference(jpeg))
    assert difference.mean() < 0.5 and difference.max() <= 8


def test_png_with_alpha_and_greyscale_jpeg_become_rgb() -> None:
    rgba = np.dstack([data.coffee(), np.full(data.coffee().shape[:2], 255, np.uint8)])
    assert PREPROCESS(encode(rgba, "PNG")).shape == (224, 224, 3)
    grey = PREPROCESS(encode(data.camera()))
    assert grey.shape == (224, 224, 3) and (grey[..., 0] == grey[..., 2]).all()


def test_exif_orientation_is_applied() -> None:
    upright = data.chelsea()  # 451 x 300, landscape
    stored = np.ascontiguousarray(np.rot90(upright))  # what a camera held sideways writes
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    rotated = PREPROCESS(encode(stored, quality=95, exif=exif))
    assert np.abs(rotated.astype(int) - PREPROCESS(encode(upright, quality=95))).mean() < 3


def test_probe_reads_the_header_only() -> None:
    jpeg = encode(data.coffee())
    assert probe_image(jpeg) == ("JPEG", 600, 400)
    assert probe_image(jpeg[:1024]) == ("JPEG", 600, 400)  # no pixel data needed
    assert probe_image(encode(data.coffee(), "PNG")) == ("PNG", 600, 400)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "empty"),
        (b"this is not an image" * 10, "not a JPEG/PNG image"),
        (encode(data.chelsea(), "GIF"), "not a JPEG/PNG image"),
    ],
)
def test_unreadable_bytes_raise_decode_error(payload: bytes, reason: str) -> None:
    with pytest.raises(ImageDecodeError) as caught:
        PREPROCESS(payload)
    assert reason in caught.value.reason
    with pytest.raises(ImageDecodeError):
        probe_image(payload)


def test_truncated_jpeg_is_an_error_not_a_grey_image() -> None:
    jpeg = encode(data.coffee())
    with pytest.raises(ImageDecodeError, match="corrupt JPEG"):
        PREPROCESS(jpeg[: len(jpeg) // 2])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_oversize_image_rejected_from_header() -> None:
    jpeg = encode(data.coffee())
    with pytest.raises(ImageDecodeError, match="600x400 exceeds 100000 pixels"):
        Preprocessing(max_pixels=100_000)(jpeg[:1024])  # rejected before the (missing) pixel data is read


def test_one_decode_at_the_smallest_dct_scale_every_analyzer_accepts():
    from visionstream.core.imaging import decode_image

    big = Image.fromarray(data.astronaut()).resize((4000, 3000))
    buffer = io.BytesIO()
    big.save(buffer, "JPEG", quality=90)
    jpeg = buffer.getvalue()
    crop = Preprocessing(max_pixels=50_000_000)  # needs the shorter side >= 512: 1/4 scale (1000x750)

    def longer_side(side):
        return lambda w, h: (math.ceil(w * side / max(w, h)), math.ceil(h * side / max(w, h)))

    assert decode_image(jpeg, 50_000_000, [crop.decode_size]).pixels.size == (1000, 750)
    assert decode_image(jpeg, 50_000_000, [crop.decode_size, longer_side(960)]).pixels.size == (1000, 750)
    both = decode_image(jpeg, 50_000_000, [crop.decode_size, longer_side(1800)])  # the detector needs 1/2
    assert both.pixels.size == (2000, 1500) and (both.width, both.height, both.scale) == (4000, 3000, 2.0)
    assert decode_image(jpeg, 50_000_000).pixels.size == (4000, 3000)  # no need named: full size
    # The crop made from the shared decode is the crop made from its own.
    assert np.array_equal(crop.from_decoded(decode_image(jpeg, 50_000_000, [crop.decode_size])), crop(jpeg))
