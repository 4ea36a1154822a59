"""visionstream: real-time and bulk computer vision over Kafka.

``faust -A visionstream worker`` looks up ``visionstream.faust_app``; the Faust app is built on first access
from :func:`visionstream.settings.load_settings`, so importing the package reads no configuration.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "app":
        from visionstream.faust_app import get_app

        return get_app()
    raise AttributeError(f"module 'visionstream' has no attribute {name!r}")
