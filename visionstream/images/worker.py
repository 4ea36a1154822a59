"""What an S3-image worker holds for its lifetime: its analyzers' models, S3, PostgreSQL, its sinks."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from visionstream import metrics
from visionstream.core.analyzers import CLASSIFY, FACES, build_analyzers
from visionstream.core.batching import BatchHandler
from visionstream.core.db import create_pool
from visionstream.core.pipeline import ImagePipeline
from visionstream.core.s3 import ImageStore, s3_client
from visionstream.core.sinks import (
    PostgresSink,
    TopicSink,
    all_records,
    image_face_table,
    image_face_topic,
    prediction_table,
    prediction_topics,
)
from visionstream.settings import Settings

log = logging.getLogger(__name__)


@asynccontextmanager
async def open_batch_handler(settings: Settings, predictions_topic: Any, category_topic: Any, image_faces_topic: Any,
                             dead_letter_topic: Any) -> AsyncIterator[metrics.ObservedHandler]:
    """Load the analyzers the settings name (and no other model), connect to S3 and PostgreSQL; release
    everything on exit."""
    async with AsyncExitStack() as stack:
        model_executor = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="vs-model"))
        decode_executor = stack.enter_context(
            ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="vs-decode")
        )
        loop = asyncio.get_running_loop()
        analyzers = await loop.run_in_executor(model_executor, build_analyzers, settings.image_analyzers, settings)
        log.info("S3 images: %s; no other model loaded", ", ".join(f"{a.name} ({a.model_id})" for a in analyzers))
        analyzers = metrics.observed_analyzers("classify", analyzers)
        client = await stack.enter_async_context(s3_client(settings))
        pool = await create_pool(settings)
        stack.push_async_callback(pool.close)
        policy = metrics.ObservedRetryPolicy(settings.message_max_attempts)
        pipeline = ImagePipeline(
            store=metrics.TimedStore(ImageStore(client, settings, policy), "classify"),
            analyzers=analyzers,
            decode_executor=decode_executor,
            model_executor=model_executor,
        )
        models = {a.name: a.model_id for a in analyzers}
        tables, records = [], []
        if CLASSIFY in models:
            tables.append(prediction_table(models[CLASSIFY], settings.hostname))
            records.append(prediction_topics(predictions_topic, category_topic, models[CLASSIFY], settings.hostname))
        if FACES in models:
            tables.append(image_face_table(models[FACES], settings.hostname))
            records.append(image_face_topic(image_faces_topic, models[FACES], settings.hostname))
        sinks = [
            metrics.TimedSink(PostgresSink(pool, tables, settings.hostname, policy), "classify", "postgres"),
            metrics.TimedSink(TopicSink(all_records(*records), dead_letter_topic, settings.hostname),
                              "classify", "topics"),
        ]
        yield metrics.ObservedHandler(BatchHandler(pipeline, sinks), "classify", metrics.image_results("classify"))
