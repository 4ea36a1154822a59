"""What a worker holds for one input topic, for its lifetime: the analyzers its settings name (and no other
model), S3, PostgreSQL, the executors and the sinks. One builder for every input, parameterised by the
input's adapter, analyzers and outputs (images/input.py, frames/input.py).

Executor policy, the same for every input: one model thread (the models run one batch at a time, and torch
uses the cores inside it), ``decode_workers`` decode threads (Pillow releases the GIL).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

from visionstream import metrics
from visionstream.core.analyzers import (
    BUILT_IN,
    FACES,
    IDENTIFY,
    Analyzer,
    build_analyzers,
    load_models,
)
from visionstream.core.batching import BatchHandler
from visionstream.core.db import create_pool
from visionstream.core.faults import DeadLetterBreaker, Recorded, RetryPolicy
from visionstream.core.imaging import DecodeLimits
from visionstream.core.pipeline import (
    AnalysisPipeline,
    InboundMessage,
    InputAdapter,
    Outcome,
    Prepare,
)
from visionstream.core.s3 import ImageStore, object_reader, s3_client
from visionstream.core.sinks import (
    PostgresSink,
    Records,
    ResultTable,
    TopicSink,
    all_records,
    analyzer_result_table,
    classify_db,
    recorded_dead_letters,
)
from visionstream.settings import Settings

log = logging.getLogger(__name__)

# (the analyzers by name, the app's topics, hostname) -> the input's result tables and topic records.
Outputs = Callable[[Mapping[str, Analyzer], Any, str], tuple[list[ResultTable[Any]], list[Records]]]
# (settings, S3 client, retry policy) -> (name, sink) of each sink that stores what the PostgreSQL rows point to.
Stores = Callable[[Settings, Any, RetryPolicy, PostgresSink], list[tuple[str, Any]]]


def no_stores(settings: Settings, client: Any, policy: RetryPolicy, database: PostgresSink) -> list[tuple[str, Any]]:
    return []


@dataclass(frozen=True, slots=True)
class InputSpec:
    """One input topic: its agent's name, adapter, analyzers and where their results go."""

    agent: str  # the agent's name (metrics, readiness)
    label: str  # what it takes, for the log: "S3 images", "frames"
    adapter: InputAdapter
    analyzers: Sequence[str]
    outputs: Outputs
    observe: Callable[[Settings], Callable[[Sequence[InboundMessage], Outcome[Any]], None]]  # batch metrics
    stores: Stores = no_stores  # run before PostgreSQL, so that a row never names an object not yet stored
    payload_kept: int = 0  # bytes of a value that does not parse kept in processing_errors (pipeline.parse_each)


@asynccontextmanager
async def open_handler(settings: Settings, spec: InputSpec, topics: Any) -> AsyncIterator[metrics.ObservedHandler]:
    """Load the input's analyzers, connect to S3 and PostgreSQL; release everything on exit. ``topics``
    holds the app's result topics (VisionApp)."""
    agent = spec.agent
    async with AsyncExitStack() as stack:
        model_executor = stack.enter_context(
            ThreadPoolExecutor(1, thread_name_prefix=metrics.pool_thread_prefix(agent, "model")))
        decode_executor = stack.enter_context(
            ThreadPoolExecutor(settings.decode_workers, thread_name_prefix=metrics.pool_thread_prefix(agent, "decode")))
        loop = asyncio.get_running_loop()
        analyzers = await loop.run_in_executor(model_executor, load_models, build_analyzers, spec.analyzers, settings)
        log.info("%s: %s; no other model loaded", spec.label, ", ".join(f"{a.name} ({a.model_id})" for a in analyzers))
        pool = await create_pool(settings)
        stack.push_async_callback(pool.close)
        faces = next((a for a in analyzers if a.name == FACES), None)
        if faces is not None:
            from visionstream.faces.analyzer import identify_analyzer

            # Logs what it loads, or why it identifies nobody.
            if (identify := await identify_analyzer(settings, faces, pool, model_executor)) is not None:
                analyzers.append(identify)
        analyzers = metrics.observed_analyzers(agent, analyzers)
        client = await stack.enter_async_context(s3_client(settings))
        reader = await stack.enter_async_context(object_reader(settings))  # the hot GET (s3.py: ObjectReader)
        policy = metrics.ObservedRetryPolicy(settings.message_max_attempts)
        pipeline = AnalysisPipeline(
            spec.adapter,
            metrics.TimedStore(ImageStore(client, settings, policy, reader), agent),
            analyzers,
            metrics.timed(Prepare(analyzers, DecodeLimits.from_settings(settings)), agent, "decode"),
            decode_executor,
            model_executor,
            decode_chunks=settings.decode_workers,
            payload_kept=spec.payload_kept,
        )
        by_name = {a.name: a for a in analyzers}
        tables, records = spec.outputs(by_name, topics, settings.hostname)
        tables += [analyzer_result_table(a, settings.hostname) for a in analyzers
                   if a.name not in (*BUILT_IN, IDENTIFY)]
        database = PostgresSink(pool, tables, settings.hostname, policy)
        stores = spec.stores(settings, client, policy, database)
        sinks: list[Any] = [metrics.TimedSink(sink, agent, name) for name, sink in stores]
        sinks.append(metrics.TimedSink(database, agent, "postgres"))
        if IDENTIFY in by_name and settings.store_face_embeddings:
            from visionstream.faces.history import EmbeddingSink

            sinks.append(metrics.TimedSink(EmbeddingSink(pool, by_name[IDENTIFY].model_id, policy, database.health,
                                                         settings.hostname),
                                           agent, "embeddings"))
        sinks.append(metrics.TimedSink(TopicSink(all_records(*records), topics.dead_letter_topic, settings.hostname),
                                       agent, "topics"))
        breaker = recorded = None
        if settings.breaker_dead_letters:
            breaker = DeadLetterBreaker(settings.breaker_dead_letters, settings.breaker_window_seconds)

            async def recorded(topic: str) -> list[Recorded]:
                # Under the fault model like every other query: an outage at the first batch is waited out,
                # not a crash (and a crash loop at every restart while PostgreSQL is down).
                return await policy.run("PostgreSQL read",
                                        lambda: recorded_dead_letters(pool, topic, settings.breaker_dead_letters + 1),
                                        classify_db, database.health)

        yield metrics.ObservedHandler(BatchHandler(pipeline, sinks, breaker, recorded), agent, spec.observe(settings))
