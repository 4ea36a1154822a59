"""Real sample photos for the demo, tests and benchmarks (core/samples.py), and an ImageNet-style tree of them."""

from __future__ import annotations

from pathlib import Path

from visionstream.core.samples import IMAGENET_SIZE, PHOTOS, _photo, encode_jpeg, sample_images, variant

__all__ = ["IMAGENET_SIZE", "PHOTOS", "_photo", "encode_jpeg", "sample_images", "variant", "write_sample_tree"]


def write_sample_tree(folder: Path, count: int) -> Path:
    """An ImageNet-style tree folder/<label>/<name>.jpg of count sample images."""
    for label, name, data in sample_images(count):
        (folder / label).mkdir(parents=True, exist_ok=True)
        (folder / label / name).write_bytes(data)
    return folder
