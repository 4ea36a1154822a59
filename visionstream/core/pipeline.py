"""One batch of image requests -> fetched bytes -> each analyzer's input -> its model -> per-message outcome.

Plain asyncio code with no Kafka in it: the agent hands it messages and sinks take its outcome.
CPU work never runs on the event loop: decoding uses a thread pool, the model one dedicated thread.
Every message ends as a result or a ``Failed`` with its stage (faults.py): nothing a message contains
can make ``run`` raise.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from visionstream.core.analyzers import Analyzer
from visionstream.core.faults import BadMessage, describe, run_each, run_isolated
from visionstream.core.records import (
    MalformedMessage,
    SourceRef,
    key_of_malformed,
    parse_image_request,
    printable,
)
from visionstream.core.s3 import ImageStore


@dataclass(frozen=True, slots=True)
class InboundMessage:
    ref: SourceRef
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()  # Kafka headers (frames carry their metadata there)
    timestamp: float | None = None  # the Kafka message timestamp, epoch seconds (latency metrics)


@dataclass(frozen=True, slots=True)
class Failed:
    image_key: str
    ref: SourceRef
    stage: str  # parse | fetch | decode | classify | detect | identify | store
    reason: str
    payload: bytes | None = None  # the raw message, kept for messages that did not parse
    attempts: int = 1

    @classmethod
    def of(cls, key: str, ref: SourceRef, stage: str, error: BadMessage, payload: bytes | None = None) -> Failed:
        return cls(printable(key), ref, stage, printable(error.reason), payload, error.attempts)


class Result(Protocol):
    @property
    def key(self) -> str: ...

    @property
    def ref(self) -> SourceRef: ...


R = TypeVar("R", bound=Result)
P = TypeVar("P")


@dataclass(slots=True)
class Outcome(Generic[R]):
    """A batch's results and failures, one per message; a sink that cannot store a result rejects it."""

    results: list[R] = field(default_factory=list)
    failed: list[Failed] = field(default_factory=list)
    computed_at: float = 0.0  # epoch seconds

    def reject(self, result: R, stage: str, error: BadMessage) -> None:
        self.results.remove(result)
        self.failed.append(Failed.of(result.key, result.ref, stage, error))


@dataclass(frozen=True, slots=True)
class AnalyzedImage:
    image_key: str
    ref: SourceRef
    outputs: dict[str, Any]  # analyzer name -> its output: "classify": TopK, "faces": list[DetectedFace]

    @property
    def key(self) -> str:
        return self.image_key


ImageOutcome = Outcome[AnalyzedImage]


def parse_each(messages: Sequence[InboundMessage], parse: Callable[[InboundMessage], P],
               failed: list[Failed]) -> list[tuple[InboundMessage, P]]:
    """(message, parsed) for the messages that parse; the others become parse failures with their payload."""
    parsed = []
    for message in messages:
        try:
            parsed.append((message, parse(message)))
        except Exception as exc:  # a parser's own error, or e.g. RecursionError from JSON nested 100,000 deep
            error = exc if isinstance(exc, BadMessage) else MalformedMessage(describe(exc))
            failed.append(Failed.of(key_of_malformed(message.key), message.ref, "parse", error, message.value))
    return parsed


class ImagePipeline:
    """Turns a batch of raw images-topic messages into one result (every analyzer's output) or one error each."""

    def __init__(
        self,
        store: ImageStore,
        analyzers: Sequence[Analyzer],
        decode_executor: Executor,
        model_executor: Executor,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._analyzers = analyzers
        self._decode_executor = decode_executor
        self._model_executor = model_executor
        self._clock = clock

    async def run(self, messages: Sequence[InboundMessage]) -> ImageOutcome:
        outcome = ImageOutcome()
        requests = parse_each(messages, lambda m: parse_image_request(m.key, m.value), outcome.failed)

        fetched = await self._store.get_many([(r.image_key, r.bucket) for _, r in requests])
        images = []
        for (message, request), data in zip(requests, fetched, strict=True):
            if isinstance(data, BadMessage):
                outcome.failed.append(Failed.of(request.image_key, message.ref, "fetch", data))
            else:
                images.append((message, request.image_key, data))

        # Each analyzer prepares its own input (a 224 crop, a detection-scale frame) in the decode threads.
        prepared = await asyncio.gather(*(
            run_each(self._decode_executor, analyzer.prepare, [data for _, _, data in images])
            for analyzer in self._analyzers))
        ready = []
        for index, (message, key, _) in enumerate(images):
            error = next((inputs[index] for inputs in prepared if isinstance(inputs[index], BadMessage)), None)
            if error is not None:
                outcome.failed.append(Failed.of(key, message.ref, "decode", error))
            else:
                ready.append((message, key, [inputs[index] for inputs in prepared]))

        outputs: list[dict[str, Any]] = [{} for _ in ready]
        failed: dict[int, Failed] = {}
        for position, analyzer in enumerate(self._analyzers):
            alive = [i for i in range(len(ready)) if i not in failed]
            results, failures = await run_isolated(self._model_executor, analyzer.run,
                                                   [ready[i][2][position] for i in alive])
            for j, i in enumerate(alive):
                if j in failures:
                    message, key, _ = ready[i]
                    failed[i] = Failed.of(key, message.ref, analyzer.stage, failures[j])
                else:
                    outputs[i][analyzer.name] = results[j]
        for i, (message, key, _) in enumerate(ready):
            if i in failed:
                outcome.failed.append(failed[i])
            else:
                outcome.results.append(AnalyzedImage(key, message.ref, outputs[i]))
        outcome.computed_at = self._clock()
        return outcome
