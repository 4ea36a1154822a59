"""Where a batch's outcome goes: PostgreSQL (the source of truth) and the result topics.

Each sink writes a whole batch at once and is idempotent, because at-least-once delivery means a
batch can be written again after a crash or a rebalance.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import asyncpg

from visionstream.pipeline import BatchOutcome
from visionstream.records import Category, Prediction, ProcessingError
from visionstream.retry import Backoff

# One statement per table and batch: unnest() turns column arrays into rows in a single round trip.
INSERT_PREDICTIONS = """
INSERT INTO prediction_results
    (image_key, model, rank, category, class_index, confidence, hostname, time, topic, "partition", "offset")
SELECT * FROM unnest(
    $1::text[], $2::text[], $3::smallint[], $4::text[], $5::integer[], $6::real[],
    $7::text[], $8::timestamptz[], $9::text[], $10::integer[], $11::bigint[])
ON CONFLICT (image_key, model, rank) DO NOTHING
"""

INSERT_ERRORS = """
INSERT INTO processing_errors
    (image_key, stage, reason, hostname, time, topic, "partition", "offset", payload)
SELECT * FROM unnest(
    $1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],
    $6::text[], $7::integer[], $8::bigint[], $9::bytea[])
ON CONFLICT (topic, "partition", "offset") DO NOTHING
"""

# Every database error is waited out, not only outages: a missing table or permission is fixed by an
# operator (and logged on every retry), and skipping the batch would lose its results.
RETRYABLE_DB_ERRORS = (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


def prediction_columns(outcome: BatchOutcome, model: str, hostname: str) -> list[list[Any]]:
    at = dt.datetime.fromtimestamp(outcome.computed_at, tz=dt.timezone.utc)
    rows = [
        (item.image_key, model, rank, category, class_index, confidence, hostname, at,
         item.ref.topic, item.ref.partition, item.ref.offset)
        for item in outcome.classified
        for rank, (class_index, category, confidence) in enumerate(item.top_k, start=1)
    ]
    return [list(column) for column in zip(*rows, strict=True)] if rows else []


def error_columns(outcome: BatchOutcome, hostname: str) -> list[list[Any]]:
    at = dt.datetime.fromtimestamp(outcome.computed_at, tz=dt.timezone.utc)
    rows = [
        (f.image_key, f.stage, f.reason, hostname, at, f.ref.topic, f.ref.partition, f.ref.offset, f.payload)
        for f in outcome.failed
    ]
    return [list(column) for column in zip(*rows, strict=True)] if rows else []


class PostgresSink:
    """Writes a batch's results and errors in one transaction; waits out database outages."""

    def __init__(self, pool: asyncpg.Pool, model: str, hostname: str, backoff: Backoff | None = None) -> None:
        self._pool = pool
        self._model = model
        self._hostname = hostname
        self._backoff = backoff or Backoff()

    async def write(self, outcome: BatchOutcome) -> None:
        predictions = prediction_columns(outcome, self._model, self._hostname)
        errors = error_columns(outcome, self._hostname)
        if not predictions and not errors:
            return

        async def transaction() -> None:
            async with self._pool.acquire() as conn, conn.transaction():
                if predictions:
                    await conn.execute(INSERT_PREDICTIONS, *predictions)
                if errors:
                    await conn.execute(INSERT_ERRORS, *errors)

        await self._backoff.run("PostgreSQL write", transaction, RETRYABLE_DB_ERRORS)


def prediction_records(outcome: BatchOutcome, model: str, hostname: str) -> list[Prediction]:
    records = []
    for item in outcome.classified:
        top_k = [
            Category(rank=rank, class_index=class_index, category=category, confidence=confidence)
            for rank, (class_index, category, confidence) in enumerate(item.top_k, start=1)
        ]
        records.append(
            Prediction(
                image_key=item.image_key, model=model, category=top_k[0].category,
                confidence=top_k[0].confidence, top_k=top_k, hostname=hostname, time=outcome.computed_at,
            )
        )
    return records


def error_records(outcome: BatchOutcome, hostname: str) -> list[ProcessingError]:
    return [
        ProcessingError(
            image_key=f.image_key, stage=f.stage, reason=f.reason, hostname=hostname,
            time=outcome.computed_at, topic=f.ref.topic, partition=f.ref.partition, offset=f.ref.offset,
        )
        for f in outcome.failed
    ]


class TopicSink:
    """Publishes predictions (keyed by image), the same predictions keyed by top-1 category (the live
    category table's input) and dead letters, and returns only once the broker has them all."""

    def __init__(self, predictions_topic: Any, category_topic: Any, dead_letter_topic: Any, model: str,
                 hostname: str) -> None:
        self._predictions = predictions_topic
        self._by_category = category_topic
        self._dead_letters = dead_letter_topic
        self._model = model
        self._hostname = hostname

    async def write(self, outcome: BatchOutcome) -> None:
        pending = []
        for record in prediction_records(outcome, self._model, self._hostname):
            pending.append(await self._predictions.send(key=record.image_key, value=record))
            # Keyed here rather than re-keyed by a group_by agent: one fewer stream (and passive drainer)
            # between every worker's single fetcher and its agents.
            pending.append(await self._by_category.send(key=record.category, value=record))
        pending += [
            await self._dead_letters.send(key=record.image_key, value=record)
            for record in error_records(outcome, self._hostname)
        ]
        # send() only buffers; the offsets of this batch may be committed once every record is delivered.
        await asyncio.gather(*pending)
