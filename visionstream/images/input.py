"""The images topic as an input: an image request (JSON, keyed by image key) -> an S3 object to fetch. It
writes nothing of its own: its analyzers say where their results go (their outputs hooks)."""

from __future__ import annotations

from dataclasses import dataclass

from visionstream import metrics
from visionstream.core.inputs import InputSpec
from visionstream.core.pipeline import InboundMessage, Input
from visionstream.core.records import REQUEST_PAYLOAD_KEPT, check_allowed_bucket, parse_image_request
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


def image_input(settings: Settings) -> InputSpec:
    return InputSpec("classify", "images", "S3 images", ImageRequestInput(settings.allowed_buckets),
                     settings.image_analyzers, lambda settings: metrics.image_results("classify"),
                     payload_kept=REQUEST_PAYLOAD_KEPT)
