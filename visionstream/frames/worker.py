"""What a faces worker holds for its lifetime: MTCNN, optional identification, S3, PostgreSQL, sinks."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from visionstream import metrics
from visionstream.core.batching import BatchHandler
from visionstream.core.db import create_pool
from visionstream.core.s3 import ImageStore, s3_client
from visionstream.core.sinks import PostgresSink, TopicSink
from visionstream.faces.detector import FaceDetector
from visionstream.faces.embedder import EmbeddingWeightsMissing
from visionstream.faces.history import EmbeddingSink
from visionstream.faces.identifier import FaceIdentifier, load_embedder, match_threshold
from visionstream.faces.identities import load_matcher
from visionstream.frames.pipeline import FramePipeline, LagPolicy
from visionstream.frames.sinks import frame_table, frame_topics
from visionstream.settings import Settings

log = logging.getLogger(__name__)


def lag_policy(settings: Settings) -> LagPolicy:
    if settings.frame_mode == "archive":
        return LagPolicy(None)
    return LagPolicy(settings.max_frame_lag_seconds, settings.camera_max_frame_lag)


@asynccontextmanager
async def open_face_handler(settings: Settings, processed_topic: Any, identified_topic: Any,
                            dead_letter_topic: Any) -> AsyncIterator[metrics.ObservedHandler]:
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
        try:
            embedder = await loop.run_in_executor(model_executor, load_embedder, settings, detector)
        except EmbeddingWeightsMissing as exc:
            log.warning("%s", exc)
        else:
            matcher = await load_matcher(pool, embedder.model_id, match_threshold(settings))
            # Embedding costs ~90 ms a face on a CPU: only when someone is enrolled or history is kept.
            if len(matcher) or settings.store_face_embeddings:
                identify = FaceIdentifier(embedder, matcher)
        log.info("faces: MTCNN on %s, detection at max side %d, %s mode, identifying %d enrolled people with %s%s",
                 detector.device, settings.face_detect_max_side, settings.frame_mode,
                 len(identify.matcher) if identify else 0, identify.embedder.model_id if identify else "nothing",
                 ", storing face embeddings" if identify and settings.store_face_embeddings else "")
        metrics.model_info("faces", "faces", detector.model_id, detector.device, "fp32", "packaged")
        if identify:  # dlib's embedder runs on the CPU and has no device of its own
            embedder_device = getattr(identify.embedder, "device", "cpu")
            metrics.model_info("faces", "identify", identify.embedder.model_id, embedder_device, "fp32", "packaged")
        client = await stack.enter_async_context(s3_client(settings))
        policy = metrics.ObservedRetryPolicy(settings.message_max_attempts)
        pipeline = FramePipeline(
            store=metrics.TimedStore(ImageStore(client, settings, policy), "faces"),
            prepare=metrics.timed(detector.prepare, "faces", "decode"),
            detect=metrics.timed(detector.detect, "faces", "analyze:mtcnn"),
            identify=metrics.timed(identify, "faces", "analyze:identify") if identify else None,
            lag=lag_policy(settings),
            decode_executor=decode_executor,
            model_executor=model_executor,
        )
        frames_sink = PostgresSink(pool, [frame_table(settings.hostname)], settings.hostname, policy)
        sinks: list[Any] = [metrics.TimedSink(frames_sink, "faces", "postgres")]
        if identify and settings.store_face_embeddings:
            sinks.append(metrics.TimedSink(EmbeddingSink(pool, identify.embedder.model_id, policy, frames_sink.health),
                                           "faces", "embeddings"))
        sinks.append(metrics.TimedSink(TopicSink(frame_topics(processed_topic, identified_topic, settings.hostname),
                                                 dead_letter_topic, settings.hostname), "faces", "topics"))
        yield metrics.ObservedHandler(BatchHandler(pipeline, sinks), "faces",
                                      metrics.frame_results("faces", settings.metrics_max_cameras))
