"""Identification as an analyzer that builds on the face detector's output, on every input.

Added after ``faces`` by the worker when an embedder loads (dlib ships in face-recognition-models;
InceptionResnetV1 needs its weights) and someone is enrolled for it, face history is kept, or distinct visitors
are on (faces/visitors.py): embedding costs ~90 ms a face on a CPU, so nobody pays for it otherwise.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import Executor
from typing import Any

import asyncpg
import numpy as np

from visionstream.core.analyzers import IDENTIFY, Analyzer, load_models
from visionstream.faces.detector import DetectedFace, PreparedFrame
from visionstream.faces.embedder import EmbeddingWeightsMissing
from visionstream.faces.identifier import (
    FaceIdentifier,
    Identified,
    load_embedder,
    match_threshold,
)
from visionstream.faces.identities import load_matcher
from visionstream.settings import Settings

log = logging.getLogger(__name__)


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

    def identify(pairs: Sequence[tuple[PreparedFrame, list[DetectedFace]]]) -> list[Identified]:
        found = [i for i, (_, detected) in enumerate(pairs) if detected]
        done = identifier([pairs[i][0] for i in found], [pairs[i][1] for i in found])
        results: list[Any] = [Identified(np.zeros((0, 0), np.float32), [])] * len(pairs)
        for i, result in zip(found, done, strict=True):
            results[i] = result
        return results

    log.info("faces: identifying %d enrolled people with %s (no other model loaded)%s", len(matcher), embedder.model_id,
             ", storing face embeddings" if settings.store_face_embeddings else "")
    return Analyzer(IDENTIFY, "identify", embedder.model_id, None, None, identify, embedder, after=faces.name)
