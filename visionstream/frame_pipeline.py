"""One batch of frames-topic messages -> faces (and who they are) per frame, or a skip, or an error.

Plain asyncio code with no Kafka in it, like pipeline.ClassificationPipeline. In live mode a frame captured
longer ago than the max lag is skipped before it costs anything (no S3 fetch, no decode, no detection),
so a worker slower than its cameras drops frames instead of falling ever further behind.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

from visionstream.identities import Match
from visionstream.imaging import ImageDecodeError
from visionstream.models.face_detector import DetectedFace, PreparedFrame
from visionstream.pipeline import Failed, InboundMessage
from visionstream.records import MalformedMessage, SourceRef, key_of_malformed
from visionstream.s3 import ImageStore, ObjectUnavailable
from visionstream.video_records import Frame, parse_frame

SKIP_LAG = "lag"

Identify = Callable[[Sequence[PreparedFrame], Sequence[Sequence[DetectedFace]]], list[list[Match | None]]]


@dataclass(frozen=True, slots=True)
class FrameResult:
    frame: Frame
    ref: SourceRef
    faces: list[DetectedFace] = field(default_factory=list)
    matches: list[Match | None] = field(default_factory=list)  # one per face when identification is on
    skip_reason: str | None = None

    @property
    def status(self) -> str:
        return "processed" if self.skip_reason is None else "skipped"


@dataclass(slots=True)
class FrameOutcome:
    frames: list[FrameResult] = field(default_factory=list)
    failed: list[Failed] = field(default_factory=list)
    computed_at: float = 0.0  # epoch seconds

    def latency(self, result: FrameResult) -> float:
        return self.computed_at - result.frame.captured_at


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


class FramePipeline:
    def __init__(
        self,
        store: ImageStore,
        prepare: Callable[[bytes], PreparedFrame],
        detect: Callable[[Sequence[PreparedFrame]], list[list[DetectedFace]]],
        identify: Identify | None,
        lag: LagPolicy,
        decode_executor: Executor,
        model_executor: Executor,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._prepare = prepare
        self._detect = detect
        self._identify = identify
        self._lag = lag
        self._decode_executor = decode_executor
        self._model_executor = model_executor
        self._clock = clock

    async def run(self, messages: Sequence[InboundMessage]) -> FrameOutcome:
        outcome = FrameOutcome()
        now = self._clock()
        wanted: list[tuple[InboundMessage, Frame]] = []
        for message in messages:
            try:
                frame = parse_frame(message.key, message.value, message.headers)
            except MalformedMessage as exc:
                outcome.failed.append(
                    Failed(key_of_malformed(message.key), message.ref, "parse", str(exc), message.value)
                )
                continue
            reason = self._lag.skip_reason(frame, now)
            if reason is not None:
                outcome.frames.append(FrameResult(frame, message.ref, skip_reason=reason))
            else:
                wanted.append((message, frame))

        # Claim checks: the JPEG is in S3, transparently fetched here.
        claimed = [f for _, f in wanted if f.jpeg is None]
        fetched = await self._store.get_many([(f.s3_key, None) for f in claimed])  # type: ignore[misc]
        jpegs = {id(f): data for f, data in zip(claimed, fetched, strict=True)}
        loop = asyncio.get_running_loop()
        decoding = []
        for message, frame in wanted:
            data = frame.jpeg if frame.jpeg is not None else jpegs[id(frame)]
            if isinstance(data, ObjectUnavailable):
                outcome.failed.append(Failed(frame.frame_key, message.ref, "fetch", data.reason))
                continue
            decoding.append((message, frame, loop.run_in_executor(self._decode_executor, self._prepare, data)))

        decoded = await asyncio.gather(*(f for _, _, f in decoding), return_exceptions=True)
        ready: list[tuple[InboundMessage, Frame, PreparedFrame]] = []
        for (message, frame, _), result in zip(decoding, decoded, strict=True):
            if isinstance(result, ImageDecodeError):
                outcome.failed.append(Failed(frame.frame_key, message.ref, "decode", result.reason))
            elif isinstance(result, BaseException):
                raise result
            else:
                ready.append((message, frame, result))

        if ready:
            prepared = [p for _, _, p in ready]
            faces = await loop.run_in_executor(self._model_executor, self._detect, prepared)
            matches: list[list[Match | None]] = [[] for _ in ready]
            if self._identify is not None and any(faces):
                matches = await loop.run_in_executor(self._model_executor, self._identify, prepared, faces)
            outcome.frames += [
                FrameResult(frame, message.ref, frame_faces, frame_matches)
                for (message, frame, _), frame_faces, frame_matches in zip(ready, faces, matches, strict=True)
            ]
        outcome.computed_at = self._clock()
        return outcome
