"""What a classification worker holds for its lifetime, and how it handles one batch."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, TypeVar

from visionstream.db import create_pool
from visionstream.models.classifier import Classifier
from visionstream.pipeline import BatchOutcome, ClassificationPipeline, InboundMessage
from visionstream.s3 import ImageStore, s3_client
from visionstream.settings import Settings
from visionstream.sinks import PostgresSink, TopicSink

log = logging.getLogger(__name__)

T = TypeVar("T")

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


async def run_to_completion(work: Awaitable[T], grace: float = STOP_GRACE_SECONDS) -> T:
    """Await work; if we are cancelled (worker stopping), let it finish first, within the grace period.

    The caller acknowledges the batch after this returns, so a batch whose results were not written
    must never look finished: when the grace period runs out the cancellation propagates unacked.
    """
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        log.info("stopping: finishing the in-flight batch first (up to %.0fs)", grace)
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=grace)
        except asyncio.TimeoutError:
            task.cancel()
            log.warning("in-flight batch not finished within %.0fs; it will be redelivered", grace)
        raise


@asynccontextmanager
async def open_batch_handler(settings: Settings, predictions_topic: Any, dead_letter_topic: Any
                             ) -> AsyncIterator[BatchHandler]:
    """Load the model, connect to S3 and PostgreSQL; release everything on exit."""
    async with AsyncExitStack() as stack:
        model_executor = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="vs-model"))
        decode_executor = stack.enter_context(
            ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="vs-decode")
        )
        loop = asyncio.get_running_loop()
        classifier = await loop.run_in_executor(model_executor, Classifier.from_settings, settings)
        log.info("model %s on %s (%s), weights: %s", classifier.name, classifier.device,
                 classifier.precision, classifier.weights_source)
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
            TopicSink(predictions_topic, dead_letter_topic, classifier.name, settings.hostname),
        ]
        yield BatchHandler(pipeline, sinks)
