"""Any torchvision classification model as an analyzer, by its weights name, with a local weights file.

The worked example of README "Your own analyzer", and usable as it is:

    VISIONSTREAM_IMAGE_ANALYZERS=classify,torchvision       # the entry point setup.cfg declares, or
    VISIONSTREAM_IMAGE_ANALYZERS=classify,visionstream.classification.torchvision_analyzer:build
    TORCHVISION_ANALYZER_WEIGHTS=MobileNet_V3_Small_Weights.IMAGENET1K_V1   # names model, transform, labels
    TORCHVISION_ANALYZER_WEIGHTS_FILE=/models/mobilenet_v3_small.pth        # its state_dict (no download)

Its outputs (top 5 per image: category, class index, confidence) go to analyzer_results under
``<model>@<file hash>``. It runs on the worker's device, in fp32, eagerly.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torchvision.models

from visionstream.classification.model import weights_file_version
from visionstream.core.analyzers import Analyzer
from visionstream.core.device import resolve_device
from visionstream.core.imaging import Preprocessing
from visionstream.settings import Settings

TOP_K = 5


def model_of(weights: torchvision.models.WeightsEnum) -> str:
    """The model name whose weights enum this is (resnet50 for ResNet50_Weights.IMAGENET1K_V2)."""
    for name in torchvision.models.list_models(module=torchvision.models):
        if torchvision.models.get_model_weights(name) is type(weights):
            return name
    raise ValueError(f"no torchvision classification model takes {weights}")


def build(settings: Settings) -> Analyzer:
    try:
        weights = torchvision.models.get_weight(os.environ["TORCHVISION_ANALYZER_WEIGHTS"])
        path = os.environ["TORCHVISION_ANALYZER_WEIGHTS_FILE"]
    except KeyError as missing:
        raise SystemExit(f"the torchvision analyzer needs {missing.args[0]}: see {__name__}'s docstring") from None
    name = model_of(weights)
    device = resolve_device(settings.device)
    model = torchvision.models.get_model(name, weights=None)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    model = model.eval().to(device)
    transform, categories = weights.transforms(), weights.meta["categories"]
    crop = Preprocessing(settings.max_image_pixels, transform.resize_size[0], transform.crop_size[0])
    mean = torch.tensor(transform.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(transform.std, device=device).view(1, 3, 1, 1)

    def run(batch: Sequence[np.ndarray]) -> list[list[dict[str, Any]]]:
        pixels = torch.from_numpy(np.stack(batch)).to(device).permute(0, 3, 1, 2).float() / 255
        with torch.inference_mode():
            confidences, indexes = torch.softmax(model((pixels - mean) / std), dim=1).topk(TOP_K, dim=1)
        return [[{"category": categories[i], "class_index": i, "confidence": round(c, 5)}
                 for i, c in zip(row_i, row_c, strict=True)]
                for row_i, row_c in zip(indexes.tolist(), confidences.tolist(), strict=True)]

    # name@version like every result: the version is the weights file's hash, so two files sit side by side.
    return Analyzer("torchvision", "classify", f"{name}@{weights_file_version(path)}", crop.decode_size,
                    crop.from_decoded, run, model)
