"""The faces agent: a thin loop from the frames topic to the face batch handler."""

from __future__ import annotations

from typing import TYPE_CHECKING

from visionstream.face_worker import open_face_handler
from visionstream.pipeline import InboundMessage
from visionstream.records import SourceRef
from visionstream.worker import run_to_completion

if TYPE_CHECKING:
    from visionstream.faust_app import VisionApp


def register_face_agent(app: VisionApp) -> None:
    settings = app.settings

    @app.agent(app.frames_topic, name="faces")
    async def faces(stream):  # type: ignore[no-untyped-def]
        async with open_face_handler(
            settings, app.processed_frames_topic, app.identified_faces_topic, app.dead_letter_topic
        ) as handler:
            # noack_take and ack after the sinks, as in agents/classify.py (at-least-once).
            async for events in stream.noack_take(settings.face_batch_size, within=settings.max_batch_delay):
                messages = [
                    InboundMessage(
                        SourceRef(e.message.topic, e.message.partition, e.message.offset),
                        e.message.key, e.message.value, e.message.headers or (),
                    )
                    for e in events
                ]
                await run_to_completion(handler.handle(messages))
                for event in events:
                    await stream.ack(event)

