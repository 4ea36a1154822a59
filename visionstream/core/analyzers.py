"""Analyzers: a model with its own input preparation, run batched on whatever images a pipeline decodes.

An analyzer has a name (the key of its output and of its setting value), a stage (its failures' stage in
dead letters), a ``model_id`` (``name@version``, stored with every result), ``prepare`` (bytes -> its input,
in a decode thread) and ``run`` (a batch of inputs -> one output each, in the model thread). Built in:
``classify`` (SqueezeNet 1.1: top-k categories) and ``faces`` (MTCNN: boxes, probabilities, landmarks).
A worker builds only the analyzers its settings name, so a model that is not used is never loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from visionstream.settings import Settings

CLASSIFY = "classify"
FACES = "faces"


@dataclass(frozen=True, slots=True)
class Analyzer:
    name: str
    stage: str
    model_id: str
    prepare: Callable[[bytes], Any]
    run: Callable[[Sequence[Any]], list[Any]]
    model: Any = None  # the loaded model, to describe it (device, precision, weights: metrics.py)


def classify_analyzer(settings: Settings) -> Analyzer:
    from visionstream.classification.model import Classifier

    classifier = Classifier.from_settings(settings)
    return Analyzer(CLASSIFY, "classify", classifier.model_id, classifier.preprocessor(settings.max_image_pixels),
                    lambda batch: classifier(np.stack(batch)), classifier)  # stacked in the model thread


def faces_analyzer(settings: Settings) -> Analyzer:
    from visionstream.faces.detector import FaceDetector

    detector = FaceDetector.from_settings(settings)
    return Analyzer(FACES, "detect", detector.model_id, detector.prepare, detector.detect, detector)


BUILDERS: dict[str, Callable[[Settings], Analyzer]] = {CLASSIFY: classify_analyzer, FACES: faces_analyzer}


def build_analyzers(names: Sequence[str], settings: Settings) -> list[Analyzer]:
    """The named analyzers, models loaded (call in the model thread: loading is CPU work)."""
    return [BUILDERS[name](settings) for name in names]
