"""The frames topic as an input: a frame message -> its JPEG (the value, or an S3 claim check), and where
its analyzers' results go.

In live mode a frame captured longer ago than the max lag is skipped before it costs anything (no S3
fetch, no decode, no model), so a worker slower than its cameras drops frames instead of falling ever
further behind. In either mode a frame captured further in the future than a camera clock's skew is
skipped: its ``vs-captured`` is the producer's word, and each future hour it names would open a live-table
window (tables/visit_counts.py) that Faust never expires, since a window only goes stale once it is past.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from visionstream.core.analyzers import OutputContext, Outputs
from visionstream.core.faults import RetryPolicy
from visionstream.core.inputs import InputSpec, no_stores
from visionstream.core.pipeline import AnalyzedImage, InboundMessage, Input
from visionstream.core.sinks import PostgresSink, Sink
from visionstream.faces.records import FACES
from visionstream.frames.archive import FrameArchiveSink, check_claim_check
from visionstream.frames.observe import frame_results
from visionstream.frames.records import Frame, parse_frame
from visionstream.frames.sinks import frame_table, frame_topics
from visionstream.settings import Settings

SKIP_LAG = "lag"
SKIP_FUTURE = "future"
# How far a camera's clock may run ahead of the worker's: NTP keeps clocks within milliseconds; a minute
# leaves room for a drifting camera without a resync while a future frame opens no window beyond the next hour.
MAX_CAPTURE_AHEAD_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class LagPolicy:
    """Live mode: frames older than their camera's max lag are skipped. None: archive mode, keep all old ones.
    Both modes skip a frame captured more than ``max_ahead`` seconds after it arrived."""

    max_lag: float | None
    per_camera: Mapping[str, float] = field(default_factory=dict)
    max_ahead: float = MAX_CAPTURE_AHEAD_SECONDS

    def skip_reason(self, frame: Frame, now: float) -> str | None:
        if frame.captured_at - now > self.max_ahead:
            return SKIP_FUTURE
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


def frame_outputs(context: OutputContext) -> Outputs:
    """Every frame in frame_results (its faces there when ``faces`` runs; with the archive on, its archive
    key) and on the processed-frames topic, identified faces on the identified-faces topic; each analyzer's
    own outputs beside these (a frame's classes where an S3 image's go, under "<camera>/<seq>")."""
    topics, hostname = context.topics, context.settings.hostname
    return Outputs([frame_table(hostname, context.settings.frame_archive)],
                   [frame_topics(topics.processed_frames_topic, topics.identified_faces_topic, hostname)])


def frame_stores(settings: Settings, client: Any, policy: RetryPolicy, database: PostgresSink[AnalyzedImage]
                 ) -> list[tuple[str, Sink]]:
    """The archive's PUTs (rows name the archived key), then the tracker (rows carry each face's visit)."""
    stores: list[tuple[str, Sink]] = []
    if settings.frame_archive:
        stores.append(("archive", FrameArchiveSink(client, settings, policy)))
    if settings.face_tracking and FACES in settings.frame_analyzers:
        from visionstream.faces.visits import VisitTrackingSink

        stores.append(("tracking", VisitTrackingSink(settings, policy, database.pool, database.health)))
    return stores


def frame_input(settings: Settings) -> InputSpec:
    tracking = settings.face_tracking and FACES in settings.frame_analyzers
    return InputSpec("faces", "frames", "frames", FrameInput(LagPolicy.from_settings(settings)),
                     settings.frame_analyzers,
                     lambda settings: frame_results("faces", settings.metrics_max_cameras), frame_outputs,
                     stores=frame_stores if settings.frame_archive or tracking else no_stores)
