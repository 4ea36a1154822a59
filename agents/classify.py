"""The S3-image agent (`classify`, its historic name): a thin loop from the images topic to the batch handler."""

from __future__ import annotations

from typing import TYPE_CHECKING

from visionstream.core.batching import process_batches
from visionstream.images.worker import open_batch_handler

if TYPE_CHECKING:
    from visionstream.faust_app import VisionApp


def register_classifier(app: VisionApp) -> None:
    settings = app.settings
    open_handler = app.readiness.model_gate("classify", open_batch_handler)  # /readyz: loaded while it is open

    @app.agent(app.images_topic, name="classify")
    async def classify(stream):  # type: ignore[no-untyped-def]
        async with open_handler(
            settings, app.predictions_topic, app.category_topic, app.image_faces_topic, app.dead_letter_topic
        ) as handler:
            await process_batches(stream, handler, batch_size=settings.batch_size,
                                  within=settings.max_batch_delay, in_flight=settings.batches_in_flight,
                                  lifecycle=app.agent_lifecycle())
