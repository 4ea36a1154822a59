"""Where a batch's outcome goes: PostgreSQL (the source of truth), then the result topics.

One small contract, ``async write(outcome)``, for every input. What each analyzer stores lives with it
(classification/sinks.py, faces/sinks.py, frames/sinks.py); here are the generic parts: the transaction,
the topics, the errors, and the table of plug-in analyzers' outputs. Each sink writes a whole batch at once and
is idempotent, because at-least-once delivery means a batch can be written again after a crash or a
rebalance. A result PostgreSQL rejects (a value it cannot hold) is found by bisection and turned into a
dead letter; the rest of the batch is written (faults.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol

import asyncpg
from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from faust.exceptions import ProducerSendError
from faust.types import TopicT

from visionstream.core.analyzers import Analyzer
from visionstream.core.faults import (
    BadMessage,
    Fault,
    RetryPolicy,
    ServiceHealth,
    isolate_failures,
)
from visionstream.core.pipeline import AnalyzedImage, Failed, Outcome, R
from visionstream.core.records import ProcessingError, connect_error_headers
from visionstream.core.retry import Delays

log = logging.getLogger(__name__)


class Sink(Protocol):
    """Where a batch's outcome goes; returns once it is stored (idempotent: a batch may be written again)."""

    async def write(self, outcome: Outcome[Any]) -> None: ...

# One statement per table and batch: unnest() turns column arrays into rows in a single round trip.
# Outputs of analyzers that are not built in (plug-ins): one JSON value per image and model.
INSERT_ANALYZER_RESULTS = """
INSERT INTO analyzer_results (image_key, analyzer, model, output, hostname, time, topic, "partition", "offset")
SELECT k, a, m, o::jsonb, h, t, tp, p, f FROM unnest(
    $1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[], $7::text[],
    $8::integer[], $9::bigint[]) AS u(k, a, m, o, h, t, tp, p, f)
ON CONFLICT (image_key, model) DO NOTHING
"""

INSERT_ERRORS = """
INSERT INTO processing_errors
    (image_key, stage, reason, hostname, time, topic, "partition", "offset", payload, attempts, unexpected)
SELECT * FROM unnest(
    $1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],
    $6::text[], $7::integer[], $8::bigint[], $9::bytea[], $10::integer[], $11::boolean[])
ON CONFLICT (topic, "partition", "offset") DO NOTHING
"""

# The newest unexpected dead letters not yet retried of an input topic, up to $2 per stage and error class
# (the text before the reason's first ":", faults.error_class): what a dead-letter breaker starts from.
RECORDED_DEAD_LETTERS = """
SELECT stage, reason, extract(epoch FROM time)::float8 AS at FROM (
    SELECT stage, reason, time,
           row_number() OVER (PARTITION BY stage, split_part(reason, ':', 1) ORDER BY time DESC) AS newest
    FROM processing_errors WHERE topic = $1 AND retried_at IS NULL AND unexpected
) recorded WHERE newest <= $2
"""


async def recorded_dead_letters(pool: asyncpg.Pool, topic: str, per_class: int) -> list[tuple[str, str, float]]:
    return [(r["stage"], r["reason"], r["at"]) for r in await pool.fetch(RECORDED_DEAD_LETTERS, topic, per_class)]


# SQLSTATE classes that every message would hit until someone acts (connection, authentication, missing
# table or privilege, resources, operator intervention, serialisation conflicts): waited out like an outage.
_SERVICE_CLASSES = {"08", "25", "28", "3D", "3F", "40", "42", "53", "55", "57", "58"}


def db_fault(exc: BaseException) -> Fault | None:
    """The fault model's reading of a PostgreSQL failure (faults.py)."""
    if isinstance(exc, (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)):
        return Fault.BAD_MESSAGE  # a value it rejects: NUL in text, NaN or out of range, a CHECK
    if isinstance(exc, asyncpg.PostgresError) and str(exc.sqlstate or "")[:2] in _SERVICE_CLASSES:
        return Fault.OUTAGE
    return None


def columns_of(rows: Sequence[tuple[Any, ...]]) -> list[list[Any]]:
    return [list(column) for column in zip(*rows, strict=True)] if rows else []


def utc(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, tz=dt.timezone.utc)


def _json_value(value: Any) -> Any:
    """numpy scalars and arrays (what models hand back) as JSON numbers and lists."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not a JSON value")


def analyzer_result_columns(results: Sequence[AnalyzedImage], computed_at: float, analyzer: Analyzer,
                            hostname: str) -> list[list[Any]]:
    at = utc(computed_at)
    return columns_of([
        (item.image_key, analyzer.name, analyzer.model_id,
         json.dumps(item.outputs[analyzer.name], default=_json_value), hostname, at,
         item.ref.topic, item.ref.partition, item.ref.offset)
        for item in results if analyzer.name in item.outputs
    ])


def analyzer_result_table(analyzer: Analyzer, hostname: str) -> ResultTable[AnalyzedImage]:
    """A plug-in analyzer's outputs, as JSON, in analyzer_results."""
    return ResultTable(INSERT_ANALYZER_RESULTS,
                       lambda results, at: analyzer_result_columns(results, at, analyzer, hostname))


def error_columns(failed: Sequence[Failed], computed_at: float, hostname: str) -> list[list[Any]]:
    at = utc(computed_at)
    return columns_of([
        (f.image_key, f.stage, f.reason, hostname, at, f.ref.topic, f.ref.partition, f.ref.offset, f.payload,
         f.attempts, f.unexpected)
        for f in failed
    ])


@dataclass(frozen=True, slots=True)
class ResultTable(Generic[R]):
    """How one kind of result is stored: its INSERT and the column arrays for a list of results."""

    insert: str
    columns: Callable[[Sequence[R], float], list[list[Any]]]  # (results, computed_at) -> columns


class PostgresSink(Generic[R]):
    """Writes a batch's results (to each of its tables) and errors in one transaction under the fault model."""

    def __init__(self, pool: asyncpg.Pool, tables: Sequence[ResultTable[R]], hostname: str,
                 policy: RetryPolicy) -> None:
        self._pool = pool
        self._tables = tables
        self._hostname = hostname
        self._policy = policy

        async def probe() -> None:
            async with self._pool.acquire() as conn:
                await conn.fetchval("SELECT 1")

        self.health = ServiceHealth("PostgreSQL", probe)

    @property
    def pool(self) -> asyncpg.Pool:
        """The worker's pool, for stores that read or write beside this sink's transaction (visits)."""
        return self._pool

    async def _transaction(self, results: Sequence[R], failed: Sequence[Failed], computed_at: float) -> None:
        statements = [(table.insert, table.columns(results, computed_at)) for table in self._tables]
        errors = error_columns(failed, computed_at, self._hostname)
        async with self._pool.acquire() as conn, conn.transaction():
            for insert, rows in statements:
                if rows:
                    await conn.execute(insert, *rows)
            if errors:
                await conn.execute(INSERT_ERRORS, *errors)

    async def _write(self, results: Sequence[R], failed: Sequence[Failed], computed_at: float,
                     max_attempts: int | None = None) -> None:
        await self._policy.run("PostgreSQL write", lambda: self._transaction(results, failed, computed_at),
                               db_fault, self.health, max_attempts)

    async def write(self, outcome: Outcome[R]) -> None:
        if not outcome.results and not outcome.failed:
            return
        try:
            await self._write(outcome.results, outcome.failed, outcome.computed_at)
            return
        except BadMessage as exc:
            log.warning("PostgreSQL rejected a batch of %d results (%s); finding the results it rejects",
                        len(outcome.results), exc.reason)
        # The service works (or this was known at once): one attempt per part is enough to tell.
        rejected = await isolate_failures(
            list(outcome.results), lambda part: self._write(part, (), outcome.computed_at, max_attempts=1))
        for result, error in rejected:
            outcome.reject(result, "store", error)
        await self._write((), outcome.failed, outcome.computed_at)


def error_records(outcome: Outcome[Any], hostname: str) -> list[ProcessingError]:
    return [
        ProcessingError(
            image_key=f.image_key, stage=f.stage, reason=f.reason, hostname=hostname, time=outcome.computed_at,
            topic=f.ref.topic, partition=f.ref.partition, offset=f.ref.offset, attempts=f.attempts,
        )
        for f in outcome.failed
    ]


# (topic, key, value) records a batch publishes, built from its outcome; the value a Faust record or JSON value.
Records = Callable[[Outcome[Any]], list[tuple[TopicT, str, Any]]]


def kafka_fault(exc: BaseException) -> Fault | None:
    if isinstance(exc, ProducerSendError) and exc.__cause__ is not None:
        exc = exc.__cause__  # Faust wraps the producer's KafkaError
    if isinstance(exc, MessageSizeTooLargeError) or not isinstance(exc, KafkaError):
        return Fault.BAD_MESSAGE  # too large, or a value the serializer refused: sending again cannot help
    return Fault.OUTAGE  # the producer has retried already; Kafka is down for everyone


class TopicSink:
    """Publishes a batch's records and its dead letters, and returns only once the broker has them all.

    A record the broker can never take is logged and left out (its result is in PostgreSQL already); one
    that fails because Kafka is down is sent again after a backoff, for as long as it takes.
    """

    def __init__(self, records: Records, dead_letter_topic: TopicT, hostname: str,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self._records = records
        self._dead_letters = dead_letter_topic
        self._hostname = hostname
        self._sleep = sleep

    async def write(self, outcome: Outcome[Any]) -> None:
        pending = self._records(outcome) + [
            (self._dead_letters, record.image_key, record, connect_error_headers(record))
            for record in error_records(outcome, self._hostname)
        ]
        delays = iter(Delays(0.5, 5.0))
        while pending:
            sent = await asyncio.gather(*[await self._send(*record) for record in pending], return_exceptions=True)
            retry = []
            for record, result in zip(pending, sent, strict=True):
                if isinstance(result, Exception):
                    if kafka_fault(result) is Fault.BAD_MESSAGE:
                        log.error("record %r for %s left out: %s: %s", record[1], record[0].get_topic_name(),
                                  type(result).__name__, result)
                    else:
                        retry.append(record)
            if retry:
                delay = next(delays)
                log.warning("%d record(s) not delivered (Kafka does not answer); retry in %.1fs", len(retry), delay)
                await self._sleep(delay)
            pending = retry

    @staticmethod
    async def _send(topic: TopicT, key: str, value: Any, headers: list[tuple[str, bytes]] | None = None
                    ) -> asyncio.Future[Any]:
        """send() only buffers, in call order (a camera's results stay in order); the future says when the
        broker has the record. A record the serializer refuses comes back as a failed future."""
        try:
            return await topic.send(key=key, value=value, headers=headers)
        except Exception as exc:
            failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            failed.set_exception(exc)
            return failed


def all_records(*sources: Records) -> Records:
    return lambda outcome: [record for source in sources for record in source(outcome)]
