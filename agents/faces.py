"""The faces agent: a thin loop from the frames topic to the face batch handler."""

from __future__ import annotations

from typing import TYPE_CHECKING

from visionstream.core.batching import process_batches
from visionstream.frames.worker import open_face_handler

if TYPE_CHECKING:
    from visionstream.faust_app import VisionApp


def register_face_agent(app: VisionApp) -> None:
    settings = app.settings
    open_handler = app.readiness.model_gate("faces", open_face_handler)  # /readyz: loaded while it is open

    @app.agent(app.frames_topic, name="faces")
    async def faces(stream):  # type: ignore[no-untyped-def]
        async with open_handler(
            settings, app.processed_frames_topic, app.identified_faces_topic, app.dead_letter_topic
        ) as handler:
            # One batch at a time: a camera's processed frames stay in capture order.
            await process_batches(stream, handler, batch_size=settings.face_batch_size,
                                  within=settings.max_batch_delay, lifecycle=app.agent_lifecycle())
