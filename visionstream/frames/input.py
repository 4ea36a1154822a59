"""The frames topic as an input: a frame message -> its JPEG (the value, or an S3 claim check), and where
its analyzers' results go.

In live mode a frame captured longer ago than the max lag is skipped before it costs anything (no S3
fetch, no decode, no model), so a worker slower than its cameras drops frames instead of falling ever
further behind.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from visionstream import metrics
from visionstream.classification.sinks import classification_outputs
from visionstream.core.analyzers import FACES, Analyzer
from visionstream.core.faults import RetryPolicy
from visionstream.core.pipeline import InboundMessage, Input
from visionstream.core.sinks import PostgresSink, Records, ResultTable
from visionstream.core.worker import InputSpec, no_stores
from visionstream.frames.archive import FrameArchiveSink, check_claim_check
from visionstream.frames.records import Frame, parse_frame
from visionstream.frames.sinks import frame_face_table, frame_table, frame_topics
from visionstream.settings import Settings

SKIP_LAG = "lag"


@dataclass(frozen=True, slots=True)
class LagPolicy:
    """Live mode: frames older than their camera's max lag are skipped. None: archive mode, keep all."""

    max_lag: float | None
    per_camera: Mapping[str, float] = field(default_factory=dict)

    def skip_reason(self, frame: Frame, now: float) -> str | None:
        if self.max_lag is None:
            return None
        limit = self.per_camera.get(frame.camera_id, self.max_lag)
        return SKIP_LAG if now - frame.captured_at > limit else None

    @classmethod
    def from_settings(cls, settings: Settings) -> LagPolicy:
        if settings.frame_mode == "archive":
            return cls(None)
        return cls(settings.max_frame_lag_seconds, settings.camera_max_frame_lag)


@dataclass(frozen=True, slots=True)
class FrameInput:
    """The frames topic's input adapter (core/pipeline.py)."""

    lag: LagPolicy

    def __call__(self, message: InboundMessage, now: float) -> Input:
        frame = parse_frame(message.key, message.value, message.headers)
        check_claim_check(frame)
        # Claim checks: the JPEG is in S3 (the configured bucket), fetched like an S3 image.
        return Input(frame.frame_key, frame, data=frame.jpeg, s3_key=frame.s3_key,
                     skip_reason=self.lag.skip_reason(frame, now))


def frame_outputs(analyzers: Mapping[str, Analyzer], topics: Any, hostname: str, archive: bool = False,
                  tracking: bool = False) -> tuple[list[ResultTable[Any]], list[Records]]:
    """Every frame in frame_results (its faces there when ``faces`` runs; with ``archive``, its archive key)
    and on the processed-frames topic, identified faces on the identified-faces topic; its faces again in
    frame_faces under the detector's name@version, so that versions can be compared (migration 0009); a
    frame's classes where an S3 image's go, under its frame key ("<camera>/<seq>") with the frames topic as
    source. With ``tracking``, each face's visit (faces/visits.py) in the jsonb and the visits table."""
    tables, records = classification_outputs(analyzers, topics, hostname)
    if FACES in analyzers:
        tables.append(frame_face_table(analyzers[FACES].model_id, hostname))
        if tracking:
            from visionstream.faces.visits import visit_table

            tables.append(visit_table())
    return ([frame_table(hostname, archive), *tables],
            [frame_topics(topics.processed_frames_topic, topics.identified_faces_topic, hostname), *records])


def frame_stores(settings: Settings, client: Any, policy: RetryPolicy, database: PostgresSink
                 ) -> list[tuple[str, Any]]:
    """The archive's PUTs (rows name the archived key), then the tracker (rows carry each face's visit)."""
    stores: list[tuple[str, Any]] = []
    if settings.frame_archive:
        stores.append(("archive", FrameArchiveSink(client, settings, policy)))
    if settings.face_tracking and FACES in settings.frame_analyzers:
        from visionstream.faces.visits import VisitTrackingSink

        stores.append(("tracking", VisitTrackingSink(settings, policy, database.pool, database.health)))
    return stores


def frame_input(settings: Settings) -> InputSpec:
    tracking = settings.face_tracking and FACES in settings.frame_analyzers
    return InputSpec("faces", "frames", FrameInput(LagPolicy.from_settings(settings)), settings.frame_analyzers,
                     partial(frame_outputs, archive=settings.frame_archive, tracking=tracking),
                     lambda settings: metrics.frame_results("faces", settings.metrics_max_cameras),
                     stores=frame_stores if settings.frame_archive or tracking else no_stores)
