"""The images topic as an input: an image request (JSON, keyed by image key) -> an S3 object to fetch, and
where its analyzers' results go."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from visionstream import metrics
from visionstream.classification.sinks import classification_outputs
from visionstream.core.analyzers import FACES, Analyzer
from visionstream.core.pipeline import InboundMessage, Input
from visionstream.core.records import REQUEST_PAYLOAD_KEPT, check_allowed_bucket, parse_image_request
from visionstream.core.sinks import Records, ResultTable
from visionstream.core.worker import InputSpec
from visionstream.faces.sinks import image_face_table, image_face_topics
from visionstream.settings import Settings


@dataclass(frozen=True, slots=True)
class ImageRequestInput:
    """The images topic's input adapter (core/pipeline.py): a request naming a bucket this deployment does
    not read is a bad message here, before any S3 call."""

    allowed_buckets: frozenset[str]

    def __call__(self, message: InboundMessage, now: float) -> Input:
        request = parse_image_request(message.key, message.value)
        check_allowed_bucket(request.bucket, self.allowed_buckets)
        return Input(request.image_key, request, s3_key=request.image_key, bucket=request.bucket)


def image_outputs(analyzers: Mapping[str, Analyzer], topics: Any, hostname: str
                  ) -> tuple[list[ResultTable[Any]], list[Records]]:
    """An S3 image's classes in prediction_results and on the predictions topic; its faces in
    image_faces and on the image-faces topic, identified faces on the identified-faces topic."""
    tables, records = classification_outputs(analyzers, topics, hostname)
    if FACES in analyzers:
        model = analyzers[FACES].model_id
        tables.append(image_face_table(model, hostname))
        records.append(image_face_topics(topics.image_faces_topic, topics.identified_faces_topic, model, hostname))
    return tables, records


def image_input(settings: Settings) -> InputSpec:
    return InputSpec("classify", "S3 images", ImageRequestInput(settings.allowed_buckets), settings.image_analyzers,
                     image_outputs, lambda settings: metrics.image_results("classify"),
                     payload_kept=REQUEST_PAYLOAD_KEPT)
