"""What a classification worker holds for its lifetime, and how it handles one batch."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from visionstream.db import create_pool
from visionstream.models.classifier import Classifier
from visionstream.pipeline import BatchOutcome, ClassificationPipeline, InboundMessage
from visionstream.records import SourceRef
from visionstream.s3 import ImageStore, s3_client
from visionstream.settings import Settings
from visionstream.sinks import PostgresSink, TopicSink

log = logging.getLogger(__name__)

# How long a stopping worker keeps finishing its in-flight batch before it gives up on it (unacked,
# so the batch is redelivered to whoever takes over the partition).
STOP_GRACE_SECONDS = 30.0


class BatchHandler:
    """Runs the pipeline on a batch, then writes the outcome to every sink (database first)."""

    def __init__(self, pipeline: ClassificationPipeline, sinks: Sequence[Any]) -> None:
        self._pipeline = pipeline
        self._sinks = sinks

    async def handle(self, messages: Sequence[InboundMessage]) -> BatchOutcome:
        outcome = await self._pipeline.run(messages)
        for sink in self._sinks:
            await sink.write(outcome)
        for failure in outcome.failed:
            log.warning(
                "dead letter %r at %s[%d]@%d: %s: %s", failure.image_key, failure.ref.topic,
                failure.ref.partition, failure.ref.offset, failure.stage, failure.reason,
            )
        return outcome


def inbound_message(event: Any) -> InboundMessage:
    message = event.message
    return InboundMessage(SourceRef(message.topic, message.partition, message.offset), message.key,
                          message.value, message.headers or ())


async def process_batches(stream: Any, handler: BatchHandler, *, batch_size: int, within: float,
                          in_flight: int = 1, grace: float = STOP_GRACE_SECONDS) -> None:
    """Take batches from a Faust stream and handle up to ``in_flight`` at once; ack each batch's events only
    after every sink has its results (at-least-once), and in the order the batches were taken.

    ``noack_take``, not ``take``: take() acks a batch in a finally block, even when handling it failed or was
    cancelled. Acks stay in order because faust-streaming 0.15.3 commits past an unacked offset when the
    acked ones start right after it (``Consumer._new_offset``). A stopping worker (the agent is cancelled)
    finishes the batches in flight within ``grace`` seconds; what is not finished is redelivered.
    """
    slots = asyncio.Semaphore(in_flight)
    running: list[asyncio.Future[None]] = []

    async def handle(events: list[Any], previous: asyncio.Future[None] | None) -> None:
        try:
            await handler.handle([inbound_message(event) for event in events])
            if previous is not None:
                await previous  # raises if the earlier batch failed: then this one is not acked either
            for event in events:
                await stream.ack(event)
        finally:
            slots.release()

    try:
        async for events in stream.noack_take(batch_size, within=within):
            await slots.acquire()
            for task in [task for task in running if task.done()]:
                running.remove(task)
                task.result()  # a bug in a handler stops the agent, as it would without tasks
            running.append(asyncio.ensure_future(handle(events, running[-1] if running else None)))
    except asyncio.CancelledError:
        pending = [task for task in running if not task.done()]
        if pending:
            log.info("stopping: finishing the in-flight batch first (%d in flight, up to %.0fs)",
                     len(pending), grace)
            _, unfinished = await asyncio.wait(pending, timeout=grace)
            for task in unfinished:
                task.cancel()
            if unfinished:
                log.warning("%d in-flight batch(es) not finished within %.0fs; they will be redelivered",
                            len(unfinished), grace)
        raise


@asynccontextmanager
async def open_batch_handler(settings: Settings, predictions_topic: Any, category_topic: Any,
                             dead_letter_topic: Any) -> AsyncIterator[BatchHandler]:
    """Load the model, connect to S3 and PostgreSQL; release everything on exit."""
    async with AsyncExitStack() as stack:
        model_executor = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="vs-model"))
        decode_executor = stack.enter_context(
            ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="vs-decode")
        )
        loop = asyncio.get_running_loop()
        classifier = await loop.run_in_executor(model_executor, Classifier.from_settings, settings)
        log.info("model %s on %s (%s%s), weights: %s", classifier.name, classifier.device, classifier.precision,
                 ", compiled" if classifier.compiled else "", classifier.weights_source)
        client = await stack.enter_async_context(s3_client(settings))
        pool = await create_pool(settings)
        stack.push_async_callback(pool.close)
        pipeline = ClassificationPipeline(
            store=ImageStore(client, settings),
            preprocess=classifier.preprocessor(settings.max_image_pixels),
            predict=classifier,
            decode_executor=decode_executor,
            model_executor=model_executor,
        )
        sinks = [
            PostgresSink(pool, classifier.name, settings.hostname),
            TopicSink(predictions_topic, category_topic, dead_letter_topic, classifier.name, settings.hostname),
        ]
        yield BatchHandler(pipeline, sinks)
