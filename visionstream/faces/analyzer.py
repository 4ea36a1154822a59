"""The ``faces`` analyzer (an entry point of ``visionstream.analyzers``, setup.cfg): MTCNN's faces, and
identification as its follower: an analyzer that builds on the detector's output, on every input.

Each declares where its results go (its outputs hook): an S3 image's faces in image_faces and on the
image-faces topic, a frame's in frame_faces (frames/sinks.py; frame_results and the processed-frames topic
are the frames input's own), visits when tracking; identification adds face_embeddings when history is kept.

Identification follows ``faces`` when an embedder loads (dlib ships in face-recognition-models;
InceptionResnetV1 needs its weights) and someone is enrolled for it, face history is kept, or distinct visitors
are on (faces/visitors.py): embedding costs 5-14 ms a face on a CPU (dlib's network on OpenVINO; ~90 on dlib's
own), so nobody pays for it otherwise.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import Executor
from typing import Any

import asyncpg
import numpy as np

from visionstream.core.analyzers import Analyzer, FollowerContext, OutputContext, Outputs, load_models
from visionstream.core.sinks import PostgresSink
from visionstream.faces.detector import DetectedFace, FaceDetector, PreparedFrame
from visionstream.faces.embedder import EmbeddingWeightsMissing
from visionstream.faces.identifier import (
    FaceIdentifier,
    Identified,
    load_embedder,
    match_threshold,
)
from visionstream.faces.identities import load_matcher
from visionstream.faces.reuse import EmbeddingReuse
from visionstream.frames.records import Frame
from visionstream.faces.records import FACES, IDENTIFY
from visionstream.faces.sinks import image_face_table, image_face_topics
from visionstream.settings import Settings

log = logging.getLogger(__name__)


def build(settings: Settings) -> Analyzer:
    detector = FaceDetector.from_settings(settings)
    return Analyzer(FACES, "detect", detector.model_id, detector.decode_size, detector.prepare_decoded,
                    detector.detect, detector, outputs=face_outputs, followers=identify_followers)


def face_outputs(analyzer: Analyzer, context: OutputContext) -> Outputs:
    hostname = context.settings.hostname
    backend = analyzer.model.backend  # what runs MTCNN's nets (the model: the FaceDetector)
    if context.input == "images":
        return Outputs([image_face_table(analyzer.model_id, hostname, backend)],
                       [image_face_topics(context.topics.image_faces_topic, context.topics.identified_faces_topic,
                                          analyzer.model_id, hostname)])
    from visionstream.frames.sinks import frame_face_table

    tables = [frame_face_table(analyzer.model_id, hostname, backend)]
    if context.settings.face_tracking:
        from visionstream.faces.visits import visit_table

        tables.append(visit_table())
    return Outputs(tables)


async def identify_followers(faces: Analyzer, context: FollowerContext) -> list[Analyzer]:
    identify = await identify_analyzer(context.settings, faces, context.pool, context.model_executor)
    return [identify] if identify is not None else []


def identify_outputs(analyzer: Analyzer, context: OutputContext) -> Outputs:
    """Matches are stored with the detector's faces (faces/sinks.py); embeddings, when history is kept."""
    if not context.settings.store_face_embeddings:
        return Outputs()
    from visionstream.faces.history import EmbeddingSink

    def embeddings(database: PostgresSink[Any]) -> tuple[str, EmbeddingSink]:
        return "embeddings", EmbeddingSink(database.pool, analyzer.model_id, context.policy, database.health,
                                           context.settings.hostname)

    return Outputs(after_database=[embeddings])


async def identify_analyzer(settings: Settings, faces: Analyzer, pool: asyncpg.Pool,
                            model_executor: Executor) -> Analyzer | None:
    """The identification step after ``faces``, or None (and why, in the log) when it would do nothing."""
    loop = asyncio.get_running_loop()
    try:
        embedder = await loop.run_in_executor(model_executor, load_models, load_embedder, settings, faces.model)
    except EmbeddingWeightsMissing as exc:
        log.warning("%s", exc)
        return None
    matcher = await load_matcher(pool, embedder.model_id, match_threshold(settings))
    if not len(matcher) and not settings.store_face_embeddings and not settings.face_distinct_visitors:
        log.info("faces: nobody enrolled for %s, no face history kept, no distinct visitors: not identifying",
                 embedder.model_id)
        return None
    identifier = FaceIdentifier(embedder, matcher)
    # Frames: faces continuing an identified track (or one with its faces for distinct visitors) keep its identity
    # instead of a new embedding; None: every face embedded (face history kept, tracking off).
    reuse = EmbeddingReuse.from_settings(settings)

    def identify(items: Sequence[tuple[PreparedFrame, list[DetectedFace], Any]]) -> list[Identified]:
        if reuse is not None:
            where = [(s.camera_id, s.seq, s.captured_at) if isinstance(s, Frame) else None for _, _, s in items]
            return reuse.identify(identifier, [p for p, _, _ in items], [d for _, d, _ in items], where)
        found = [i for i, (_, detected, _) in enumerate(items) if detected]
        done = identifier([items[i][0] for i in found], [items[i][1] for i in found])
        results: list[Any] = [Identified(np.zeros((0, 0), np.float32), [])] * len(items)
        for i, result in zip(found, done, strict=True):
            results[i] = result
        return results

    log.info("faces: identifying %d enrolled people with %s (no other model loaded)%s", len(matcher), embedder.model_id,
             ", storing face embeddings" if settings.store_face_embeddings else "")
    return Analyzer(IDENTIFY, "identify", embedder.model_id, None, None, identify, embedder, after=faces.name,
                    outputs=identify_outputs, with_source=True)
