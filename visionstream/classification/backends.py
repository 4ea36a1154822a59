"""Where the classifier's network runs on a CPU: torch, ONNX Runtime or OpenVINO, from the same weights (the
export, cache and measurement it shares with MTCNN are in core/backends.py).

The ONNX graph takes what the
decode threads make, uint8 N x H x W x 3, and normalises inside, so the runtimes get 4x fewer bytes than
floats.

``auto`` decides by measuring on this machine, not by the CPU's name: the CPUs here differ (an EPYC with
AVX-512 BF16, where compiled bf16 torch ran 386 img/s against ONNX Runtime's ~220, and one with AVX2 only,
where ONNX Runtime ran 186-197 against torch's 125: issue 26). Each candidate classifies the same sample
images as fp32 eager torch; only those whose top-1 agrees on at least 99.5% of them are timed, interleaved,
at the worker's batch size, and the fastest is kept. Without the sample photos (scikit-image is in the
local/test extras only) the exported candidates are fp32 only: bf16 OpenVINO is never gated on the synthetic
stand-ins (core/backends.py ``agreement_images``). The choice is cached beside the graph, keyed by everything it depends on
(weights, batch size, threads, package versions, CPU), so only a machine's first start pays the ~10 s. A
cache folder that cannot be written leaves ``auto`` on torch as configured, with a warning (model.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from visionstream.core.backends import export_onnx, exported_run

AGREEMENT_IMAGES = 200  # one disagreement in 200 is 99.5%

Logits = Callable[[np.ndarray], np.ndarray]  # uint8 N x H x W x 3 -> float logits N x classes


def top1_agreement(reference: np.ndarray, logits: np.ndarray) -> float:
    """Share of rows whose arg-max is the same in both N x classes arrays."""
    if reference.shape != logits.shape or not len(reference):
        raise ValueError(f"cannot compare logits of shape {reference.shape} with {logits.shape}")
    return float(np.mean(reference.argmax(axis=1) == logits.argmax(axis=1)))


class PixelsToLogits(nn.Module):
    """uint8 N x H x W x 3 -> logits, normalisation included: the graph every backend runs."""

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.model = model
        mean_t, std_t = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std_t))
        self.register_buffer("shift", -mean_t / std_t)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixels.permute(0, 3, 1, 2).float() * self.scale + self.shift)


def export_classifier(module: PixelsToLogits, crop: int, path: Path, again: bool = False) -> Path:
    """The classifier as an ONNX graph at ``path``, batch size dynamic (core/backends.py export_onnx)."""
    return export_onnx(module, torch.zeros((2, crop, crop, 3), dtype=torch.uint8), path, ["logits"], {0: "batch"},
                       again)


def exported_logits(backend: str, precision: str, path: Path, threads: int) -> Logits:
    run = exported_run(backend, precision, path, threads)
    return lambda pixels: run(pixels)[0]
