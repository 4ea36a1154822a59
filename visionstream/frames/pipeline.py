"""One batch of frames-topic messages -> faces (and who they are) per frame, or a skip, or an error.

Plain asyncio code with no Kafka in it, like pipeline.ImagePipeline. In live mode a frame captured
longer ago than the max lag is skipped before it costs anything (no S3 fetch, no decode, no detection),
so a worker slower than its cameras drops frames instead of falling ever further behind.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from visionstream.core.faults import BadMessage, run_each, run_isolated
from visionstream.core.pipeline import Failed, InboundMessage, Outcome, parse_each
from visionstream.core.records import SourceRef
from visionstream.core.s3 import ImageStore
from visionstream.faces.detector import DetectedFace, PreparedFrame
from visionstream.faces.identifier import Identified
from visionstream.faces.identities import Match
from visionstream.frames.records import Frame, parse_frame

SKIP_LAG = "lag"

Identify = Callable[[Sequence[PreparedFrame], Sequence[Sequence[DetectedFace]]], list[Identified]]


@dataclass(frozen=True, slots=True)
class FrameResult:
    frame: Frame
    ref: SourceRef
    faces: list[DetectedFace] = field(default_factory=list)
    matches: list[Match | None] = field(default_factory=list)  # one per face when identification is on
    embeddings: np.ndarray | None = None  # faces x dimension, when identification is on
    skip_reason: str | None = None
    size: tuple[int, int] | None = None  # the JPEG's own width and height, once decoded

    @property
    def key(self) -> str:
        return self.frame.frame_key

    @property
    def status(self) -> str:
        return "processed" if self.skip_reason is None else "skipped"

    @property
    def width(self) -> int:
        return self.size[0] if self.size else self.frame.width

    @property
    def height(self) -> int:
        return self.size[1] if self.size else self.frame.height

    @property
    def header_size(self) -> str | None:
        """The size the headers claimed, when the JPEG has another one (the JPEG's is what is stored)."""
        claimed = (self.frame.width, self.frame.height)
        return f"{claimed[0]}x{claimed[1]}" if self.size is not None and self.size != claimed else None


class FrameOutcome(Outcome[FrameResult]):
    __slots__ = ()

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

    def _identify_pairs(self, pairs: Sequence[tuple[PreparedFrame, list[DetectedFace]]]) -> list[Identified]:
        assert self._identify is not None
        return self._identify([prepared for prepared, _ in pairs], [faces for _, faces in pairs])

    async def run(self, messages: Sequence[InboundMessage]) -> FrameOutcome:
        outcome = FrameOutcome()
        now = self._clock()
        wanted: list[tuple[InboundMessage, Frame]] = []
        for message, frame in parse_each(messages, lambda m: parse_frame(m.key, m.value, m.headers), outcome.failed):
            reason = self._lag.skip_reason(frame, now)
            if reason is not None:
                outcome.results.append(FrameResult(frame, message.ref, skip_reason=reason))
            else:
                wanted.append((message, frame))

        # Claim checks: the JPEG is in S3, transparently fetched here.
        claimed = [f for _, f in wanted if f.jpeg is None]
        fetched = await self._store.get_many([(f.s3_key, None) for f in claimed])  # type: ignore[misc]
        jpegs = {id(f): data for f, data in zip(claimed, fetched, strict=True)}
        to_decode = []
        for message, frame in wanted:
            data = frame.jpeg if frame.jpeg is not None else jpegs[id(frame)]
            if isinstance(data, BadMessage):
                outcome.failed.append(Failed.of(frame.frame_key, message.ref, "fetch", data))
            else:
                to_decode.append((message, frame, data))

        decoded = await run_each(self._decode_executor, self._prepare, [data for _, _, data in to_decode])
        ready: list[tuple[InboundMessage, Frame, PreparedFrame]] = []
        for (message, frame, _), prepared in zip(to_decode, decoded, strict=True):
            if isinstance(prepared, BadMessage):
                outcome.failed.append(Failed.of(frame.frame_key, message.ref, "decode", prepared))
            else:
                ready.append((message, frame, prepared))

        faces, failures = await run_isolated(self._model_executor, self._detect, [p for _, _, p in ready])
        stage = {index: "detect" for index in failures}
        identified: dict[int, Identified] = {}
        found = [index for index in range(len(ready)) if faces.get(index)]
        if self._identify is not None and found:
            done, failed = await run_isolated(
                self._model_executor, self._identify_pairs, [(ready[i][2], faces[i]) for i in found])
            identified = {found[j]: result for j, result in done.items()}
            failures.update({found[j]: error for j, error in failed.items()})
            stage.update({found[j]: "identify" for j in failed})
        for index, (message, frame, prepared) in enumerate(ready):
            if index in failures:
                outcome.failed.append(Failed.of(frame.frame_key, message.ref, stage[index], failures[index]))
            else:
                result = identified.get(index)
                outcome.results.append(FrameResult(
                    frame, message.ref, faces[index], result.matches if result else [],
                    result.embeddings if result else None, size=(prepared.width, prepared.height)))
        outcome.computed_at = self._clock()
        return outcome
