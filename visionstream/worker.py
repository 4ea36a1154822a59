"""What a classification worker holds for its lifetime: the model, S3, PostgreSQL, its sinks."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from visionstream.batching import BatchHandler
from visionstream.db import create_pool
from visionstream.faults import RetryPolicy
from visionstream.models.classifier import Classifier
from visionstream.pipeline import ClassificationPipeline
from visionstream.s3 import ImageStore, s3_client
from visionstream.settings import Settings
from visionstream.sinks import PostgresSink, TopicSink, prediction_table, prediction_topics

log = logging.getLogger(__name__)


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
        log.info("model %s on %s (%s%s), weights: %s; results tagged %s", classifier.name, classifier.device,
                 classifier.precision, ", compiled" if classifier.compiled else "", classifier.weights_source,
                 classifier.model_id)
        client = await stack.enter_async_context(s3_client(settings))
        pool = await create_pool(settings)
        stack.push_async_callback(pool.close)
        policy = RetryPolicy(settings.message_max_attempts)
        pipeline = ClassificationPipeline(
            store=ImageStore(client, settings, policy),
            preprocess=classifier.preprocessor(settings.max_image_pixels),
            predict=classifier,
            decode_executor=decode_executor,
            model_executor=model_executor,
        )
        sinks = [
            PostgresSink(pool, prediction_table(classifier.model_id, settings.hostname), settings.hostname, policy),
            TopicSink(prediction_topics(predictions_topic, category_topic, classifier.model_id, settings.hostname),
                      dead_letter_topic, settings.hostname),
        ]
        yield BatchHandler(pipeline, sinks)
