"""One batch of image requests -> fetched bytes -> decoded tensors -> model -> per-message outcome.

Plain asyncio code with no Kafka in it: the agent hands it messages and sinks take its outcome.
CPU work never runs on the event loop: decoding uses a thread pool, the model one dedicated thread.
Every message ends as a result or a ``Failed`` with its stage (faults.py): nothing a message contains
can make ``run`` raise.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import numpy as np

from visionstream.faults import BadMessage, describe, run_each, run_isolated
from visionstream.models import TopK
from visionstream.records import MalformedMessage, SourceRef, key_of_malformed, parse_image_request, printable
from visionstream.s3 import ImageStore


@dataclass(frozen=True, slots=True)
class InboundMessage:
    ref: SourceRef
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()  # Kafka headers (frames carry their metadata there)


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
class Classified:
    image_key: str
    ref: SourceRef
    top_k: TopK

    @property
    def key(self) -> str:
        return self.image_key


BatchOutcome = Outcome[Classified]


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


class ClassificationPipeline:
    """Turns a batch of raw images-topic messages into results and errors, one per message."""

    def __init__(
        self,
        store: ImageStore,
        preprocess: Callable[[bytes], np.ndarray],
        predict: Callable[[np.ndarray], list[TopK]],
        decode_executor: Executor,
        model_executor: Executor,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._preprocess = preprocess
        self._predict = predict
        self._decode_executor = decode_executor
        self._model_executor = model_executor
        self._clock = clock

    def _predict_list(self, tensors: Sequence[np.ndarray]) -> list[TopK]:
        return self._predict(np.stack(tensors))  # stacked in the model thread, off the event loop

    async def run(self, messages: Sequence[InboundMessage]) -> BatchOutcome:
        outcome = BatchOutcome()
        requests = parse_each(messages, lambda m: parse_image_request(m.key, m.value), outcome.failed)

        fetched = await self._store.get_many([(r.image_key, r.bucket) for _, r in requests])
        to_decode = []
        for (message, request), data in zip(requests, fetched, strict=True):
            if isinstance(data, BadMessage):
                outcome.failed.append(Failed.of(request.image_key, message.ref, "fetch", data))
            else:
                to_decode.append((message, request.image_key, data))

        decoded = await run_each(self._decode_executor, self._preprocess, [data for _, _, data in to_decode])
        ready = []
        for (message, key, _), tensor in zip(to_decode, decoded, strict=True):
            if isinstance(tensor, BadMessage):
                outcome.failed.append(Failed.of(key, message.ref, "decode", tensor))
            else:
                ready.append((message, key, tensor))

        predictions, failures = await run_isolated(self._model_executor, self._predict_list,
                                                   [tensor for _, _, tensor in ready])
        for index, (message, key, _) in enumerate(ready):
            if index in failures:
                outcome.failed.append(Failed.of(key, message.ref, "classify", failures[index]))
            else:
                outcome.results.append(Classified(key, message.ref, predictions[index]))
        outcome.computed_at = self._clock()
        return outcome
