"""Image bytes -> pixels decoded once for every analyzer: header probe, safe decode at DCT scale, crop.

Runs in decode threads: Pillow's decoders and resamplers release the GIL, so threads scale across
cores. Output is uint8 RGB, H x W x C (what Pillow hands over without a transpose); float conversion
and normalisation happen later on the model's device, where they are nearly free.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageFile

from visionstream.core.faults import BadMessage

if TYPE_CHECKING:
    from visionstream.settings import Settings

# Only these decoders are tried: fewer parsers exposed to untrusted bytes, and no guessing over every plugin.
FORMATS = ("JPEG", "PNG")

# EXIF orientations that swap width and height (transpose, rotate 90/270, transverse).
_SWAPS_AXES = {5, 6, 7, 8}
_EXIF_ORIENTATION = 0x0112

# JPEG DCT-domain downscaling is blockier than an antialiased bilinear resize: the classifier's crop may only
# take it down to twice the resized size, so the bilinear filter still does the last >= 2x of the reduction.
DRAFT_MARGIN = 2


class ImageDecodeError(BadMessage):
    """The bytes are not a decodable, acceptably sized image; ``reason`` is short and loggable."""


def probe_image(data: bytes) -> tuple[str, int, int]:
    """(format, width, height) from the header alone; the pixel data is neither read nor checked."""
    with _open(data) as image:
        return image.format, image.width, image.height


Size = tuple[int, int]
# An analyzer's need: for an image of this (width, height), the smallest decoded size its input is made from.
DecodeSize = Callable[[int, int], Size]


@dataclass(frozen=True, slots=True)
class DecodedImage:
    """An image decoded once for every analyzer: upright RGB pixels, possibly DCT-scaled below full size."""

    pixels: Image.Image  # RGB, upright (EXIF orientation applied)
    width: int  # the image's own upright size, before any DCT scaling
    height: int

    @property
    def scale(self) -> float:
        """Original pixels per decoded pixel."""
        return self.width / self.pixels.width


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """What one decode of untrusted bytes may cost, checked from the header before any pixel is decoded.

    A JPEG is decoded at DCT scale, so its pixel count alone costs little; other formats (PNG) are decoded
    whole: a ~350 KB PNG near 89 MP took ~0.9 GB. A progressive JPEG holds every DCT coefficient of the full
    image whatever the scale: an 8000x8000 one of 376 KB took 190 MB of RSS decoded at 1/8 (baseline: 7 MB).
    """

    max_pixels: int
    max_full_decode_pixels: int | None = None  # None: max_pixels
    memory_bytes: int | None = None  # None: unbounded (tools, benchmarks; the worker always sets it)

    @classmethod
    def from_settings(cls, settings: Settings) -> DecodeLimits:
        return cls(settings.max_image_pixels, settings.max_full_decode_pixels, settings.decode_memory_bytes)


# Bytes per pixel of Pillow's buffer for a mode; every multi-band 8-bit mode (RGB included) takes 4.
_BUFFER_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}


def decode_memory(image: ImageFile.ImageFile, width: int, height: int, orientation: int) -> int:
    """Bytes decoding an opened (and drafted) image to upright RGB holds at once: its buffer at the decoded
    size, the RGB conversion and the turned copy, and a progressive JPEG's coefficients at full size."""
    pixels = image.width * image.height
    total = pixels * _BUFFER_BYTES.get(image.mode, 4)
    total += pixels * 4 * ((image.mode != "RGB") + (orientation in _ORIENTATION_TRANSPOSE))
    if image.format == "JPEG" and image.info.get("progressive"):
        # Two bytes per coefficient, one coefficient per pixel of each component at its sampling.
        components = getattr(image, "layer", None) or [(0, 1, 1, 0)] * len(image.getbands())
        h_max, v_max = max(c[1] for c in components), max(c[2] for c in components)
        total += sum(2 * width * height * c[1] * c[2] // (h_max * v_max) for c in components)
    return total


def _check_pixels(image: ImageFile.ImageFile, limits: DecodeLimits) -> None:
    width, height = image.size
    if width * height > limits.max_pixels:
        raise ImageDecodeError(f"{width}x{height} exceeds {limits.max_pixels} pixels "
                               "(VISIONSTREAM_MAX_IMAGE_PIXELS)")
    full_limit = limits.max_full_decode_pixels
    if image.format != "JPEG" and full_limit is not None and width * height > full_limit:
        raise ImageDecodeError(f"{width}x{height} {image.format} exceeds {full_limit} pixels, the limit for "
                               "formats decoded at full size (VISIONSTREAM_MAX_FULL_DECODE_PIXELS)")


@dataclass(frozen=True, slots=True)
class EncodedJpeg:
    """A JPEG left encoded for a device decoder (nvJPEG), its header checked: see ``device_jpeg``."""

    data: bytes
    width: int
    height: int


# Pillow modes of JPEGs nvJPEG decodes to the RGB Pillow gives (CMYK/YCCK JPEGs are decoded on the CPU).
_DEVICE_JPEG_MODES = {"RGB", "L"}
_JPEG_END = b"\xff\xd9"


def device_jpeg(data: bytes, limits: DecodeLimits) -> EncodedJpeg | None:
    """The JPEG, left encoded, when a device decoder gives what Pillow would and within ``limits``: RGB or
    greyscale, upright (no EXIF turn), complete (ends with its EOI marker: nvJPEG may decode a truncated file
    that Pillow calls corrupt) and decoded at full size within ``limits.memory_bytes`` (no DCT scaling on the
    device). None: decode it on the CPU. Raises ImageDecodeError, from the header alone, for what no decoder
    may take (not an image, over the pixel limit)."""
    with _open(data) as image:
        _check_pixels(image, limits)
        width, height = image.size
        if (image.format != "JPEG" or image.mode not in _DEVICE_JPEG_MODES or not data.endswith(_JPEG_END)
                or image.getexif().get(_EXIF_ORIENTATION, 1) != 1):
            return None
        if limits.memory_bytes is not None and decode_memory(image, width, height, 1) > limits.memory_bytes:
            return None
        return EncodedJpeg(data, width, height)


def decode_image(data: bytes, limits: DecodeLimits | int, sizes: Sequence[DecodeSize] = ()) -> DecodedImage:
    """Decode once, at the smallest JPEG DCT scale (1, 1/2, 1/4, 1/8) that is at least every ``sizes``
    need: decoding cost falls with the square of the scale. Raises ImageDecodeError for what cannot be read,
    or would cost more than ``limits`` (a plain int: a pixel limit alone).

    Needs are asked for the stored (not EXIF-rotated) size: they depend on the shorter and longer sides only.
    """
    if isinstance(limits, int):
        limits = DecodeLimits(limits)
    with _open(data) as image:
        _check_pixels(image, limits)
        width, height = image.size
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
        if image.format == "JPEG" and sizes:
            needs = [size(width, height) for size in sizes]
            image.draft("RGB", (max(w for w, _ in needs), max(h for _, h in needs)))
        if limits.memory_bytes is not None:
            if (memory := decode_memory(image, width, height, orientation)) > limits.memory_bytes:
                raise ImageDecodeError(f"decoding {width}x{height} {image.format} would take {memory >> 20} MiB; "
                                       f"VISIONSTREAM_DECODE_MEMORY_BYTES allows {limits.memory_bytes >> 20}")
        try:
            image.load()
        except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt pixel data
            raise ImageDecodeError(f"corrupt {image.format} data: {exc}") from None
        if orientation in _SWAPS_AXES:
            width, height = height, width
        return DecodedImage(_upright_rgb(image, orientation), width, height)


@dataclass(frozen=True, slots=True)
class Preprocessing:
    """Preprocess like torchvision's ``ImageClassification`` transform, minus normalisation.

    The shorter side is resized to ``resize_size`` (bilinear, antialiased), then the centre
    ``crop_size`` square is cut out; the result is ``crop_size x crop_size x 3`` uint8 RGB.
    """

    max_pixels: int  # larger images are rejected from the header, before any pixel is decoded
    resize_size: int = 256
    crop_size: int = 224

    def decode_size(self, width: int, height: int) -> Size:
        # DCT scaling only down to twice the resized size: the bilinear filter still does the last >= 2x.
        scale = min(width, height) / (DRAFT_MARGIN * self.resize_size)
        return math.ceil(width / scale), math.ceil(height / scale)

    def __call__(self, data: bytes) -> np.ndarray:
        """Bytes -> the crop, decoding for this need alone."""
        return self.from_decoded(decode_image(data, self.max_pixels, [self.decode_size]))

    def from_decoded(self, image: DecodedImage) -> np.ndarray:
        pixels = image.pixels
        resized_w, resized_h = _resized(image.width, image.height, self.resize_size)
        # Resize only the source region of the centre crop: identical to resize-then-crop (the
        # filter still reads pixels beyond the box), with ~40% fewer output pixels computed.
        sx, sy = pixels.width / resized_w, pixels.height / resized_h
        left = int(round((resized_w - self.crop_size) / 2.0))
        top = int(round((resized_h - self.crop_size) / 2.0))
        box = (left * sx, top * sy, (left + self.crop_size) * sx, (top + self.crop_size) * sy)
        cropped = pixels.resize((self.crop_size, self.crop_size), Image.Resampling.BILINEAR, box=box)
        return np.asarray(cropped)


def _open(data: bytes) -> ImageFile.ImageFile:
    if not data:
        raise ImageDecodeError("empty image data")
    try:
        return Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(str(exc)) from None
    except (OSError, SyntaxError, ValueError) as exc:  # Pillow's errors for bytes that are not an image
        raise ImageDecodeError(f"not a {'/'.join(FORMATS)} image: {type(exc).__name__}") from None


def _resized(width: int, height: int, shorter: int) -> tuple[int, int]:
    """Size after scaling the shorter side to ``shorter``, truncating the longer side like torchvision."""
    if width <= height:
        return shorter, int(shorter * height / width)
    return int(shorter * width / height), shorter


def _upright_rgb(image: Image.Image, orientation: int) -> Image.Image:
    if image.mode != "RGB":
        try:
            image = image.convert("RGB")
        except ValueError as exc:  # modes without an RGB conversion, e.g. 16-bit greyscale PNG
            raise ImageDecodeError(f"unsupported pixel mode {image.mode}: {exc}") from None
    if orientation in _ORIENTATION_TRANSPOSE:
        image = image.transpose(_ORIENTATION_TRANSPOSE[orientation])
    return image


_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
