"""The ``classify`` analyzer (an entry point of ``visionstream.analyzers``, setup.cfg): SqueezeNet 1.1's
top-k categories, stored in prediction_results and published on the predictions topic (sinks.py). On CUDA it
decodes its JPEGs there (model.py: ``Classifier.decode_jpegs``)."""

from __future__ import annotations

from visionstream.classification.model import Classifier
from visionstream.classification.sinks import CLASSIFY, classification_outputs
from visionstream.core.analyzers import Analyzer
from visionstream.settings import Settings


def build(settings: Settings) -> Analyzer:
    return classify_analyzer(Classifier.from_settings(settings), settings.max_image_pixels)


def classify_analyzer(classifier: Classifier, max_image_pixels: int) -> Analyzer:
    crop = classifier.preprocessor(max_image_pixels)
    return Analyzer(CLASSIFY, "classify", classifier.model_id, crop.decode_size, crop.from_decoded,
                    classifier.classify_prepared, classifier, outputs=classification_outputs,
                    decode_encoded=classifier.decode_jpegs if classifier.decode_on_device else None)
