"""A batch's face embeddings that PostgreSQL refuses are dead letters of stage `embeddings`, not a log line."""

from __future__ import annotations

import asyncio
import uuid
from types import SimpleNamespace

from visionstream.faces.records import FACES, IDENTIFY
from visionstream.core.db import create_pool, migrate
from visionstream.core.faults import RetryPolicy, ServiceHealth
from visionstream.core.pipeline import AnalyzedImage, Outcome
from visionstream.core.records import SourceRef
from visionstream.faces.history import EmbeddingSink


def _analyzed(key: str, offset: int, box: list[float]) -> AnalyzedImage:
    outputs = {FACES: [SimpleNamespace(box=box)], IDENTIFY: SimpleNamespace(embeddings=[[0.6, 0.8]])}
    return AnalyzedImage(key, SourceRef("embeddings-test", 0, offset), outputs)


def test_refused_embeddings_are_dead_letters_and_the_others_are_stored(stack):
    settings = stack.settings()
    prefix = f"emb-{uuid.uuid4().hex[:8]}"
    good = [_analyzed(f"{prefix}/good-{i}.jpg", offset, [1.0, 2.0, 3.0, 4.0]) for i, offset in enumerate((1, 3))]
    # 1e300 does not fit a real (float32): a DataError, the message's own fault.
    refused = _analyzed(f"{prefix}/refused.jpg", 2, [1e300, 2.0, 3.0, 4.0])
    outcome = Outcome(results=[good[0], refused, good[1]], computed_at=1_700_000_000.0)

    async def run():
        await migrate(settings)
        pool = await create_pool(settings)
        try:
            health = ServiceHealth("PostgreSQL", lambda: pool.fetchval("SELECT 1"))
            await EmbeddingSink(pool, "test-embedder@1", RetryPolicy(2), health, "emb-host").write(outcome)
            stored = await pool.fetch("SELECT source FROM face_embeddings WHERE starts_with(source, $1)", prefix)
            errors = await pool.fetch("SELECT image_key, stage, reason, \"offset\", hostname FROM processing_errors "
                                      "WHERE starts_with(image_key, $1)", prefix)
            return {r["source"] for r in stored}, [dict(r) for r in errors]
        finally:
            await pool.close()

    stored, errors = asyncio.run(run())
    assert stored == {r.key for r in good}
    assert [(f.image_key, f.stage, f.ref.offset) for f in outcome.failed] == [(refused.key, "embeddings", 2)]
    assert outcome.results == [good[0], refused, good[1]]  # its result (stored before) is not taken back
    (error,) = errors
    assert (error["image_key"], error["stage"], error["offset"], error["hostname"]) == (
        refused.key, "embeddings", 2, "emb-host")
    assert "DataError" in error["reason"] and "out of float32 range" in error["reason"], error["reason"]
