"""Real sample photos: scikit-image's bundled pictures and ImageNet-sized JPEGs derived from them (crops, flips,
rescales), each one distinct. In core, not dev/, because a worker's start-up backend measurement uses them
(core/backends.py agreement_images) where scikit-image is installed; the demo, tests and benchmarks use them
through dev/samples.py."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
from PIL import Image

# scikit-image's colour photos, by the name we use as their folder label.
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle", "coins", "camera", "immunohistochemistry")

IMAGENET_SIZE = (500, 375)  # a typical ImageNet photo


def _photo(name: str) -> np.ndarray:
    from skimage import data

    image = data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return image[..., :3]


def encode_jpeg(image: np.ndarray | Image.Image, quality: int = 90) -> bytes:
    picture = image if isinstance(image, Image.Image) else Image.fromarray(image)
    out = io.BytesIO()
    picture.convert("RGB").save(out, format="JPEG", quality=quality)
    return out.getvalue()


def variant(photo: np.ndarray, index: int, size: tuple[int, int] = IMAGENET_SIZE) -> Image.Image:
    """The index-th distinct ImageNet-sized view of a photo: a crop of varying extent, maybe mirrored."""
    rng = np.random.default_rng(index)
    height, width = photo.shape[:2]
    scale = rng.uniform(0.6, 1.0)
    crop_w, crop_h = int(width * scale), int(height * scale)
    left = int(rng.integers(0, width - crop_w + 1))
    top = int(rng.integers(0, height - crop_h + 1))
    picture = Image.fromarray(photo[top : top + crop_h, left : left + crop_w]).resize(size, Image.BILINEAR)
    return picture.transpose(Image.FLIP_LEFT_RIGHT) if index % 2 else picture


def sample_images(count: int, quality: int = 90) -> Iterator[tuple[str, str, bytes]]:
    """(label, file name, JPEG bytes): first the original photos, then derived ImageNet-sized views."""
    photos = {name: _photo(name) for name in PHOTOS}
    for index in range(count):
        label = PHOTOS[index % len(PHOTOS)]
        if index < len(PHOTOS):
            yield label, f"{label}.jpg", encode_jpeg(photos[label], quality)
        else:
            yield label, f"{label}_{index:06d}.jpg", encode_jpeg(variant(photos[label], index), quality)
