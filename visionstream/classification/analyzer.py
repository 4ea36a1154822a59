"""The ``classify`` analyzer (an entry point of ``visionstream.analyzers``, setup.cfg): SqueezeNet 1.1's
top-k categories, stored in prediction_results and published on the predictions topic (sinks.py)."""

from __future__ import annotations

import numpy as np

from visionstream.classification.model import Classifier
from visionstream.classification.sinks import CLASSIFY, classification_outputs
from visionstream.core.analyzers import Analyzer
from visionstream.settings import Settings


def build(settings: Settings) -> Analyzer:
    classifier = Classifier.from_settings(settings)
    crop = classifier.preprocessor(settings.max_image_pixels)
    return Analyzer(CLASSIFY, "classify", classifier.model_id, crop.decode_size, crop.from_decoded,
                    lambda batch: classifier(np.stack(batch)), classifier,  # stacked in the model thread
                    outputs=classification_outputs)
