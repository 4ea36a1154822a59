"""Test media from the shared assets folder (never copied into the repo); tests skip when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ASSETS = Path(os.environ.get("VISIONSTREAM_TEST_ASSETS", Path(__file__).resolve().parents[2] / "shared" / "assets"))
ARCADE_VIDEO = ("media", "arcade_pedestrians_1080p.mp4")


def media_file(*parts: str) -> Path:
    path = ASSETS.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"test media {path} not found: set VISIONSTREAM_TEST_ASSETS to the shared assets folder")
    return path


def portraits() -> list[Path]:
    """The single-face portraits, faces/<name>/1.jpg."""
    return sorted(media_file("media", "faces").glob("*/1.jpg"))


def squeezenet_weights() -> Path | None:
    """The real SqueezeNet weights when present; tests that only need some model run without them."""
    path = ASSETS / "models" / "squeezenet1_1_imagenet.pth"
    return path if path.is_file() else None
