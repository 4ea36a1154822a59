"""One batch of messages of any input topic -> image bytes -> one decode -> each analyzer -> per-message outcome.

Plain asyncio code with no Kafka in it: the agent hands it messages and sinks take its outcome. An input
adapter per topic (images/input.py: S3 image requests; frames/input.py: camera frames, inline or claim
check, with live mode's lag skip) is all that differs between inputs.
CPU work never runs on the event loop: decoding uses a thread pool, the models one dedicated thread (where an
analyzer that decodes JPEGs on its device does so, before the models run).
Every message ends as a result or a ``Failed`` with its stage (faults.py): nothing a message contains
can make ``run`` raise.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from visionstream.core.analyzers import Analyzer
from visionstream.core.faults import REASON_LIMIT, BadMessage, describe, run_each, run_isolated
from visionstream.core.imaging import DecodeLimits, EncodedJpeg, decode_image, device_jpeg
from visionstream.core.records import (
    MalformedMessage,
    SourceRef,
    key_of_malformed,
    printable,
)
from visionstream.core.s3 import ImageStore

log = logging.getLogger(__name__)


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
    stage: str  # parse | fetch | decode | classify | detect | identify | archive | store | embeddings
    reason: str
    payload: bytes | None = None  # the raw message, kept for messages that did not parse
    attempts: int = 1
    unexpected: bool = False  # an exception no check of ours raised (BadMessage.unexpected): the breaker counts it

    @classmethod
    def of(cls, key: str, ref: SourceRef, stage: str, error: BadMessage, payload: bytes | None = None) -> Failed:
        return cls(printable(key), ref, stage, printable(error.reason[:REASON_LIMIT]), payload, error.attempts,
                   error.unexpected)


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
class Input:
    """What an input adapter makes of a message: the image's name, where its bytes are, why it is skipped."""

    key: str  # the image key, or a frame's "<camera>/<seq>": its name in results and dead letters
    source: Any  # what the adapter parsed (ImageRequest, Frame), for the sinks
    data: bytes | None = None  # the bytes, when the message carries them
    s3_key: str | None = None  # else this S3 object holds them
    bucket: str | None = None  # None: the configured bucket
    skip_reason: str | None = None  # set: no fetch, no decode, no model: a result without outputs


class InputAdapter(Protocol):
    """Turns one message of its topic into an Input; raises (a BadMessage) for a message it cannot read."""

    def __call__(self, message: InboundMessage, now: float) -> Input: ...


@dataclass(frozen=True, slots=True)
class AnalyzedImage:
    image_key: str
    ref: SourceRef
    outputs: dict[str, Any]  # analyzer name -> its output: "classify": TopK, "faces": list[DetectedFace]
    source: Any = None  # the adapter's parsed input (ImageRequest, Frame)
    size: tuple[int, int] | None = None  # the image's own width and height, once decoded
    skip_reason: str | None = None

    @property
    def key(self) -> str:
        return self.image_key


ImageOutcome = Outcome[AnalyzedImage]


def parse_each(messages: Sequence[InboundMessage], parse: Callable[[InboundMessage], P],
               failed: list[Failed], payload_kept: int = 0) -> list[tuple[InboundMessage, P]]:
    """(message, parsed) for the messages that parse; the others become parse failures with the first
    ``payload_kept`` bytes of their value (what ``visionstream retry`` re-sends), the reason saying so when
    that is not all of it: a frame's value is a JPEG of faces, kept nowhere it was not asked for."""
    parsed = []
    for message in messages:
        try:
            parsed.append((message, parse(message)))
        except Exception as exc:  # a parser's own error, or e.g. RecursionError from JSON nested 100,000 deep
            error = exc if isinstance(exc, BadMessage) else MalformedMessage(describe(exc), unexpected=True)
            payload = message.value
            if payload and len(payload) > payload_kept:
                error = BadMessage(f"{error.reason} (a {len(payload)}-byte value: {payload_kept} bytes kept)",
                                   error.attempts, error.unexpected)
                payload = payload[:payload_kept] or None
            failed.append(Failed.of(key_of_malformed(message.key), message.ref, "parse", error, payload))
    return parsed


@dataclass(frozen=True, slots=True)
class OnDevice:
    """An analyzer's input left as a JPEG for its device's decoder, and how to make it on the CPU instead."""

    jpeg: EncodedJpeg
    on_cpu: Callable[[bytes], Any]  # the JPEG -> the input, decoded under the same limits (a decode thread)


class Prepare:
    """Bytes -> every pixel analyzer's input: one decode, at the smallest DCT scale all of them accept. A JPEG
    that an analyzer's device can decode (imaging.device_jpeg) reaches it encoded instead, and its need is left
    out of the CPU decode: with no other pixel analyzer, nothing is decoded on the CPU."""

    def __init__(self, analyzers: Sequence[Analyzer], limits: DecodeLimits | int) -> None:
        pixel = [a for a in analyzers if a.prepare is not None]
        self._prepares = [a.prepare for a in pixel]
        self._sizes = [a.decode_size for a in pixel if a.decode_size is not None]
        self._limits = limits if isinstance(limits, DecodeLimits) else DecodeLimits(limits)
        self._on_cpu = [None if a.decode_encoded is None else functools.partial(self._decode_for, a)
                        for a in pixel]
        self._cpu_sizes = [a.decode_size for a in pixel if a.decode_encoded is None and a.decode_size is not None]
        self._all_on_device = all(self._on_cpu)

    def __call__(self, data: bytes) -> tuple[tuple[int, int], list[Any]]:
        """(the image's own width and height, each analyzer's input)."""
        jpeg = device_jpeg(data, self._limits) if any(self._on_cpu) else None
        if jpeg is None:
            image = decode_image(data, self._limits, self._sizes)
            return (image.width, image.height), [prepare(image) for prepare in self._prepares]
        image = None if self._all_on_device else decode_image(data, self._limits, self._cpu_sizes)
        return (jpeg.width, jpeg.height), [prepare(image) if on_cpu is None else OnDevice(jpeg, on_cpu)
                                           for prepare, on_cpu in zip(self._prepares, self._on_cpu, strict=True)]

    def _decode_for(self, analyzer: Analyzer, data: bytes) -> Any:
        sizes = [] if analyzer.decode_size is None else [analyzer.decode_size]
        return analyzer.prepare(decode_image(data, self._limits, sizes))  # type: ignore[misc]


class AnalysisPipeline:
    """Turns a batch of raw messages of one topic into one result (every analyzer's output), a skip, or one
    error each: adapter -> bytes (inline or S3) -> one decode -> each analyzer's input -> its model."""

    def __init__(
        self,
        adapter: InputAdapter,
        store: ImageStore,
        analyzers: Sequence[Analyzer],
        prepare: Callable[[bytes], tuple[tuple[int, int], list[Any]]],
        decode_executor: Executor,
        model_executor: Executor,
        clock: Callable[[], float] = time.time,
        decode_chunks: int = 1,  # calls per batch into decode_executor: its thread count keeps every one busy
        payload_kept: int = 0,  # bytes of a value that does not parse kept with its dead letter (parse_each)
    ) -> None:
        self._adapter = adapter
        self._payload_kept = payload_kept
        self._store = store
        self._analyzers = analyzers
        self._pixel_analyzers = [a for a in analyzers if a.after is None]
        self._device_decoders = [a for a in self._pixel_analyzers if a.decode_encoded is not None]
        self._prepare = prepare
        self._decode_executor = decode_executor
        self._model_executor = model_executor
        self._clock = clock
        self._decode_chunks = decode_chunks

    async def run(self, messages: Sequence[InboundMessage]) -> ImageOutcome:
        outcome = ImageOutcome()
        now = self._clock()
        wanted: list[tuple[InboundMessage, Input]] = []
        for message, item in parse_each(messages, lambda m: self._adapter(m, now), outcome.failed,
                                        self._payload_kept):
            if item.skip_reason is not None:  # before any cost: no fetch, no decode, no model
                outcome.results.append(AnalyzedImage(item.key, message.ref, {}, item.source,
                                                     skip_reason=item.skip_reason))
            else:
                wanted.append((message, item))

        remote = [item for _, item in wanted if item.data is None]
        fetched = await self._store.get_many([(item.s3_key, item.bucket) for item in remote])  # type: ignore[misc]
        data_of = {id(item): data for item, data in zip(remote, fetched, strict=True)}
        images = []
        for message, item in wanted:
            data = item.data if item.data is not None else data_of[id(item)]
            if isinstance(data, BadMessage):
                outcome.failed.append(Failed.of(item.key, message.ref, "fetch", data))
            else:
                images.append((message, item, data))

        # Decoded once, then each analyzer prepares its own input (a 224 crop, a detection-scale frame).
        prepared = await run_each(self._decode_executor, self._prepare, [data for _, _, data in images],
                                  self._decode_chunks)
        ready = []
        for (message, item, _), inputs in zip(images, prepared, strict=True):
            if isinstance(inputs, BadMessage):
                outcome.failed.append(Failed.of(item.key, message.ref, "decode", inputs))
            else:
                ready.append((message, item, inputs[0], inputs[1]))

        inputs_of = {a.name: [r[3][p] for r in ready] for p, a in enumerate(self._pixel_analyzers)}
        outputs: list[dict[str, Any]] = [{} for _ in ready]
        failed: dict[int, Failed] = {}
        for analyzer in self._device_decoders:
            for i, error in (await self._decode_on_device(analyzer, inputs_of[analyzer.name])).items():
                message, item, _, _ = ready[i]
                failed.setdefault(i, Failed.of(item.key, message.ref, "decode", error))
        for analyzer in self._analyzers:
            alive = [i for i in range(len(ready)) if i not in failed]
            if analyzer.after is None:
                batch = [inputs_of[analyzer.name][i] for i in alive]
            elif analyzer.with_source:
                batch = [(inputs_of[analyzer.after][i], outputs[i][analyzer.after], ready[i][1].source)
                         for i in alive]
            else:
                batch = [(inputs_of[analyzer.after][i], outputs[i][analyzer.after]) for i in alive]
            results, failures = await run_isolated(self._model_executor, analyzer.run, batch)
            for j, i in enumerate(alive):
                if j in failures:
                    message, item, _, _ = ready[i]
                    failed[i] = Failed.of(item.key, message.ref, analyzer.stage, failures[j])
                else:
                    outputs[i][analyzer.name] = results[j]
        for i, (message, item, size, _) in enumerate(ready):
            if i in failed:
                outcome.failed.append(failed[i])
            else:
                outcome.results.append(AnalyzedImage(item.key, message.ref, outputs[i], item.source, size))
        outcome.computed_at = self._clock()
        return outcome

    async def _decode_on_device(self, analyzer: Analyzer, inputs: list[Any]) -> dict[int, BadMessage]:
        """``analyzer``'s JPEGs decoded on its device in one call (the model thread), in place in ``inputs``;
        those its decoder refuses (or all, if the call raises) decoded on the CPU. Returns the images that no
        decoder could read, as for any decode."""
        waiting = [i for i, item in enumerate(inputs) if isinstance(item, OnDevice)]
        if not waiting:
            return {}
        jpegs = [inputs[i].jpeg for i in waiting]
        try:
            decoded = await asyncio.get_running_loop().run_in_executor(
                self._model_executor, analyzer.decode_encoded, jpegs)  # type: ignore[arg-type]
            if len(decoded) != len(jpegs):
                raise ValueError(f"{len(decoded)} decoded images for {len(jpegs)} JPEGs")
        except Exception as exc:  # the device's fault (out of memory, a driver error), not an image's
            log.warning("%s: device JPEG decode failed (%s); decoding %d images on the CPU", analyzer.name,
                        describe(exc), len(jpegs))
            decoded = [None] * len(jpegs)
        refused = [i for i, image in zip(waiting, decoded, strict=True) if image is None]
        on_cpu = await run_each(self._decode_executor, lambda item: item.on_cpu(item.jpeg.data),
                                [inputs[i] for i in refused], self._decode_chunks)
        for i, image in zip(waiting, decoded, strict=True):
            inputs[i] = image
        errors = {}
        for i, image in zip(refused, on_cpu, strict=True):
            if isinstance(image, BadMessage):
                errors[i] = image
            else:
                inputs[i] = image
        return errors
