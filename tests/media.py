"""Test media from the shared assets folder (never copied into the repo); tests skip when it is absent, and fail
when ``CI`` is set: there a wrong VISIONSTREAM_TEST_ASSETS would otherwise pass with the classifier, faces,
identification and dashboard untested."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from visionstream.dev.samples import sample_images

ASSETS = Path(os.environ.get("VISIONSTREAM_TEST_ASSETS", Path(__file__).resolve().parents[2] / "shared" / "assets"))
ARCADE_VIDEO = ("media", "arcade_pedestrians_1080p.mp4")


def in_ci() -> bool:
    """``CI`` set and not "false"/"0", as CI services set it."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


def missing_asset(path: Path) -> None:
    """Skip the test for want of ``path``; in CI, fail it."""
    reason = f"test media {path} not found: set VISIONSTREAM_TEST_ASSETS to the shared assets folder"
    if in_ci():
        pytest.fail(f"{reason} (CI is set: a missing asset fails the run)", pytrace=False)
    pytest.skip(reason)


def media_file(*parts: str) -> Path:
    path = ASSETS.joinpath(*parts)
    if not path.exists():
        missing_asset(path)
    return path


def arcade_jpegs(count: int, step: int, start: int = 0) -> list[bytes]:
    """``count`` frames of the arcade clip from frame ``start``, one every ``step``, as JPEGs (quality 85), as a
    camera sends them."""
    import cv2

    capture = cv2.VideoCapture(str(media_file(*ARCADE_VIDEO)))
    frames = []
    for index in range(start + count * step):
        ok, bgr = capture.read()
        assert ok, "the arcade clip is shorter than the test needs"
        if index >= start and (index - start) % step == 0:
            frames.append(cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes())
    capture.release()
    return frames


def portraits() -> list[Path]:
    """The single-face portraits, faces/<name>/1.jpg."""
    return sorted(media_file("media", "faces").glob("*/1.jpg"))


def squeezenet_weights() -> Path | None:
    """The real SqueezeNet weights when present; tests that only need some model run without them, except in
    CI, where their absence fails the test (the real classifier's checks would be skipped silently)."""
    path = ASSETS / "models" / "squeezenet1_1_imagenet.pth"
    if path.is_file():
        return path
    if in_ci():
        missing_asset(path)
    return None


# ImageNet-style folders (train/<wnid>/...) of distinct ImageNet-sized JPEGs, for the bulk upload tests.
WNIDS = ["n01440764", "n02102040", "n03000134"]


def jpegs(count: int) -> list[bytes]:
    """Distinct ImageNet-sized JPEGs (the originals come first in sample_images, so skip them)."""
    return [data for _, _, data in sample_images(count + 8)][8:]


def write_imagenet_tree(root: Path, per_class: int = 3) -> dict[str, tuple[bytes, str]]:
    """root/train/<wnid>/<wnid>_<i>.JPEG; returns {path relative to root: (bytes, wnid)}."""
    files = {}
    images = iter(jpegs(per_class * len(WNIDS)))
    for wnid in WNIDS:
        for index in range(per_class):
            relative = f"train/{wnid}/{wnid}_{index}.JPEG"
            files[relative] = (next(images), wnid)
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            (root / relative).write_bytes(files[relative][0])
    return files
