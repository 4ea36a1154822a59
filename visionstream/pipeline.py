"""One batch of image requests -> fetched bytes -> decoded tensors -> model -> per-message outcome.

Plain asyncio code with no Kafka in it: the agent hands it messages and sinks take its outcome.
CPU work never runs on the event loop: decoding uses a thread pool, the model one dedicated thread.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from visionstream.imaging import ImageDecodeError
from visionstream.models import TopK
from visionstream.records import MalformedMessage, SourceRef, key_of_malformed, parse_image_request
from visionstream.s3 import ImageStore, ObjectUnavailable



@dataclass(frozen=True, slots=True)
class InboundMessage:
    ref: SourceRef
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()  # Kafka headers (frames carry their metadata there)


@dataclass(frozen=True, slots=True)
class Classified:
    image_key: str
    ref: SourceRef
    top_k: TopK


@dataclass(frozen=True, slots=True)
class Failed:
    image_key: str
    ref: SourceRef
    stage: str  # parse | fetch | decode
    reason: str
    payload: bytes | None = None  # the raw message, kept for messages that did not parse


@dataclass(slots=True)
class BatchOutcome:
    classified: list[Classified] = field(default_factory=list)
    failed: list[Failed] = field(default_factory=list)
    computed_at: float = 0.0  # epoch seconds


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

    async def run(self, messages: Sequence[InboundMessage]) -> BatchOutcome:
        outcome = BatchOutcome()
        requests = []
        for message in messages:
            try:
                requests.append((message, parse_image_request(message.key, message.value)))
            except MalformedMessage as exc:
                outcome.failed.append(
                    Failed(key_of_malformed(message.key), message.ref, "parse", str(exc), message.value)
                )

        fetched = await self._store.get_many([(r.image_key, r.bucket) for _, r in requests])
        loop = asyncio.get_running_loop()
        decoding = []
        for (message, request), data in zip(requests, fetched, strict=True):
            if isinstance(data, ObjectUnavailable):
                outcome.failed.append(Failed(request.image_key, message.ref, "fetch", data.reason))
                continue
            future = loop.run_in_executor(self._decode_executor, self._preprocess, data)
            decoding.append((message, request, future))

        decoded = await asyncio.gather(*(f for _, _, f in decoding), return_exceptions=True)
        ready: list[tuple[InboundMessage, str, np.ndarray]] = []
        for (message, request, _), result in zip(decoding, decoded, strict=True):
            if isinstance(result, ImageDecodeError):
                outcome.failed.append(Failed(request.image_key, message.ref, "decode", result.reason))
            elif isinstance(result, BaseException):
                raise result
            else:
                ready.append((message, request.image_key, result))

        if ready:
            batch = np.stack([tensor for _, _, tensor in ready])
            predictions = await loop.run_in_executor(self._model_executor, self._predict, batch)
            outcome.classified = [
                Classified(key, message.ref, top_k)
                for (message, key, _), top_k in zip(ready, predictions, strict=True)
            ]
        outcome.computed_at = self._clock()
        return outcome
