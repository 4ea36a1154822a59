"""A frame batch's outcome in the worker's metrics (metrics.py): results and skips per camera, faces,
capture-to-result latency, dead letters by stage."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from visionstream.core.pipeline import ImageOutcome, InboundMessage
from visionstream.faces.records import FACES
from visionstream.frames.records import frame_of
from visionstream.frames.sinks import frame_latency
from visionstream.metrics import FACES_DETECTED, FRAMES, LATENCY, MESSAGES, CameraLabels, count_dead_letters


def frame_results(agent: str, max_cameras: int) -> Callable[[Sequence[InboundMessage], ImageOutcome], None]:
    cameras = CameraLabels(max_cameras)
    results = MESSAGES.labels(agent, "result", "")
    latency = LATENCY.labels(agent)

    def record(messages: Sequence[InboundMessage], outcome: ImageOutcome) -> None:
        for result in outcome.results:
            camera = cameras(frame_of(result).camera_id)
            if result.skip_reason is None:
                results.inc()
                FRAMES.labels(camera, "processed").inc()
                if faces := result.outputs.get(FACES):
                    FACES_DETECTED.labels(camera).inc(len(faces))
                latency.observe(max(frame_latency(outcome, result), 0.0))
            else:
                MESSAGES.labels(agent, "skipped", result.skip_reason).inc()
                FRAMES.labels(camera, "skipped").inc()
        count_dead_letters(agent, outcome.failed)

    return record
