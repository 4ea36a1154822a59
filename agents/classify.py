"""The classification agent: a thin loop from the images topic to the batch handler."""

from __future__ import annotations

from typing import TYPE_CHECKING

from visionstream.pipeline import InboundMessage
from visionstream.records import SourceRef
from visionstream.worker import open_batch_handler, run_to_completion

if TYPE_CHECKING:
    from visionstream.faust_app import VisionApp


def register_classifier(app: VisionApp) -> None:
    settings = app.settings

    @app.agent(app.images_topic, name="classify")
    async def classify(stream):  # type: ignore[no-untyped-def]
        async with open_batch_handler(settings, app.predictions_topic, app.dead_letter_topic) as handler:
            # noack_take: faust's take() acks a batch in a finally block, even when processing it
            # failed or was cancelled; we ack only after every sink has the batch (at-least-once).
            async for events in stream.noack_take(settings.batch_size, within=settings.max_batch_delay):
                messages = [
                    InboundMessage(
                        SourceRef(e.message.topic, e.message.partition, e.message.offset),
                        e.message.key, e.message.value,
                    )
                    for e in events
                ]
                await run_to_completion(handler.handle(messages))
                for event in events:
                    await stream.ack(event)
