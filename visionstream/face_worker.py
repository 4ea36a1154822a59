"""What a faces worker holds for its lifetime: MTCNN, optional identification, S3, PostgreSQL, sinks."""

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
from visionstream.frame_pipeline import FramePipeline, LagPolicy
from visionstream.frame_sinks import frame_table, frame_topics
from visionstream.identities import load_matcher
from visionstream.models.face_detector import FaceDetector
from visionstream.models.face_embedder import EmbeddingWeightsMissing, FaceEmbedder, FaceIdentifier
from visionstream.s3 import ImageStore, s3_client
from visionstream.settings import Settings
from visionstream.sinks import PostgresSink, TopicSink

log = logging.getLogger(__name__)


def lag_policy(settings: Settings) -> LagPolicy:
    if settings.frame_mode == "archive":
        return LagPolicy(None)
    return LagPolicy(settings.max_frame_lag_seconds, settings.camera_max_frame_lag)


@asynccontextmanager
async def open_face_handler(settings: Settings, processed_topic: Any, identified_topic: Any,
                            dead_letter_topic: Any) -> AsyncIterator[BatchHandler]:
    """Load MTCNN (and the embedder when weights and enrolled people exist), connect; release on exit."""
    async with AsyncExitStack() as stack:
        model_executor = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="vs-faces"))
        decode_executor = stack.enter_context(
            ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="vs-frame-decode")
        )
        loop = asyncio.get_running_loop()
        detector = await loop.run_in_executor(model_executor, FaceDetector.from_settings, settings)
        pool = await create_pool(settings)
        stack.push_async_callback(pool.close)
        identify = None
        matcher = await load_matcher(pool, settings.face_match_threshold)
        if len(matcher):
            try:
                embedder = await loop.run_in_executor(model_executor, FaceEmbedder.from_settings, settings)
                identify = FaceIdentifier(detector, embedder, matcher)
            except EmbeddingWeightsMissing as exc:
                log.warning("%s", exc)
        log.info("faces: MTCNN on %s, detection at max side %d, %s mode, identifying %d enrolled people",
                 detector.device, settings.face_detect_max_side, settings.frame_mode,
                 len(matcher) if identify else 0)
        client = await stack.enter_async_context(s3_client(settings))
        policy = RetryPolicy(settings.message_max_attempts)
        pipeline = FramePipeline(
            store=ImageStore(client, settings, policy),
            prepare=detector.prepare,
            detect=detector.detect,
            identify=identify,
            lag=lag_policy(settings),
            decode_executor=decode_executor,
            model_executor=model_executor,
        )
        sinks = [
            PostgresSink(pool, [frame_table(settings.hostname)], settings.hostname, policy),
            TopicSink(frame_topics(processed_topic, identified_topic, settings.hostname), dead_letter_topic,
                      settings.hostname),
        ]
        yield BatchHandler(pipeline, sinks)
