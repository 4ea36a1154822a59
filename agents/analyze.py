"""The analysis agents: a thin loop from an input topic (S3 image requests, camera frames) to its handler."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from visionstream.core.batching import process_batches
from visionstream.core.inputs import InputSpec
from visionstream.worker.assemble import open_handler

if TYPE_CHECKING:
    from visionstream.faust_app import VisionApp


def register_analysis_agent(app: VisionApp, topic: Any, spec: InputSpec, *, batch_size: int,
                            in_flight: int) -> None:
    settings = app.settings
    opened = app.readiness.model_gate(spec.agent, open_handler)  # /readyz: loaded while it is open

    @app.agent(topic, name=spec.agent)
    async def analyze(stream):  # type: ignore[no-untyped-def]
        async with opened(settings, spec, app) as handler:
            await process_batches(stream, handler, batch_size=batch_size, within=settings.max_batch_delay,
                                  in_flight=in_flight, lifecycle=app.agent_lifecycle(spec.agent))
