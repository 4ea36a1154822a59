"""Where models run: one answer for every analyzer, so no two models of one worker disagree on the device."""

from __future__ import annotations

import torch


def resolve_device(setting: str) -> torch.device:
    """``auto``: CUDA when torch sees it, else the CPU; ``cuda`` without a CUDA device is an error, not a
    silent CPU run (VISIONSTREAM_DEVICE)."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"VISIONSTREAM_DEVICE={setting} was requested but torch sees no CUDA device; "
                           "set VISIONSTREAM_DEVICE=auto or cpu")
    return torch.device(setting)
