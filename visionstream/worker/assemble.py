"""What a worker holds for one input topic, for its lifetime: the analyzers its settings name (and no other
model) with their followers, S3, PostgreSQL, the executors and the sinks every analyzer and the input
declare. One builder for every input, parameterised by its spec (core/inputs.py); nothing here knows a model.

Executor policy, the same for every input: one model thread (the models run one batch at a time, and torch
uses the cores inside it), ``decode_workers`` decode threads (Pillow releases the GIL).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import asyncpg

from visionstream import metrics
from visionstream.core.analyzers import (
    Analyzer,
    FollowerContext,
    OutputContext,
    Outputs,
    build_analyzers,
    check_unique_names,
    load_models,
)
from visionstream.core.batching import BatchHandler
from visionstream.core.db import create_pool
from visionstream.core.faults import DeadLetterBreaker, Recorded
from visionstream.core.imaging import DecodeLimits
from visionstream.core.inputs import InputSpec
from visionstream.core.pipeline import AnalysisPipeline, Prepare
from visionstream.core.s3 import ImageStore, object_reader, s3_client
from visionstream.core.sinks import (
    PostgresSink,
    Sink,
    TopicSink,
    all_records,
    analyzer_result_table,
    db_fault,
    recorded_dead_letters,
)
from visionstream.settings import Settings

log = logging.getLogger(__name__)


async def with_followers(analyzers: list[Analyzer], context: FollowerContext) -> list[Analyzer]:
    """Each analyzer, then the analyzers that build on its output (each hook logs what it loads, or why not)."""
    out = []
    for analyzer in analyzers:
        out.append(analyzer)
        if analyzer.followers is not None:
            out += await analyzer.followers(analyzer, context)
    check_unique_names(out)
    return out


def default_outputs(analyzer: Analyzer, context: OutputContext) -> Outputs:
    """An analyzer without an outputs hook: its JSON outputs in analyzer_results."""
    return Outputs([analyzer_result_table(analyzer, context.settings.hostname)])


def declared_outputs(spec: InputSpec, analyzers: Sequence[Analyzer], context: OutputContext) -> Outputs:
    """The input's own outputs, then each analyzer's (its hook's, or its JSON rows in analyzer_results)."""
    declared = [spec.outputs(context), *((a.outputs or default_outputs)(a, context) for a in analyzers)]
    return Outputs([t for o in declared for t in o.tables], [r for o in declared for r in o.records],
                   [s for o in declared for s in o.after_database])


@asynccontextmanager
async def open_handler(settings: Settings, spec: InputSpec, app: Any) -> AsyncIterator[metrics.ObservedHandler]:
    """Load the input's analyzers, connect to S3 and PostgreSQL; release everything on exit. ``app``: the
    Faust app (faust_app.VisionApp), its result topics by attribute."""
    agent = spec.agent
    async with AsyncExitStack() as stack:
        model_executor = stack.enter_context(
            ThreadPoolExecutor(1, thread_name_prefix=metrics.pool_thread_prefix(agent, "model")))
        decode_executor = stack.enter_context(
            ThreadPoolExecutor(settings.decode_workers, thread_name_prefix=metrics.pool_thread_prefix(agent, "decode")))
        loop = asyncio.get_running_loop()
        analyzers = await loop.run_in_executor(model_executor, load_models, build_analyzers, spec.analyzers, settings)
        log.info("%s: %s; no other model loaded", spec.label, ", ".join(
            f"{a.name} ({a.model_id}{', decodes its JPEGs on the device' if a.decode_encoded else ''})"
            for a in analyzers))
        pool: asyncpg.Pool = await create_pool(settings)
        stack.push_async_callback(pool.close)
        analyzers = await with_followers(analyzers, FollowerContext(settings, pool, model_executor))
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
        outputs = declared_outputs(spec, analyzers, OutputContext(
            spec.kind, {a.name: a for a in analyzers}, settings, app,
            lambda name: app.topic(name, key_type=str, key_serializer="raw", value_serializer="json"), policy))
        database = PostgresSink(pool, outputs.tables, settings.hostname, policy)
        stores = spec.stores(settings, client, policy, database)
        sinks: list[Sink] = [metrics.TimedSink(sink, agent, name) for name, sink in stores]
        sinks.append(metrics.TimedSink(database, agent, "postgres"))
        sinks += [metrics.TimedSink(sink, agent, name) for name, sink in (build(database) for build in outputs.after_database)]
        sinks.append(metrics.TimedSink(TopicSink(all_records(*outputs.records), app.dead_letter_topic, settings.hostname),
                                       agent, "topics"))
        breaker = recorded = None
        if settings.breaker_dead_letters:
            breaker = DeadLetterBreaker(settings.breaker_dead_letters, settings.breaker_window_seconds)

            async def recorded(topic: str) -> list[Recorded]:
                # Under the fault model like every other query: an outage at the first batch is waited out,
                # not a crash (and a crash loop at every restart while PostgreSQL is down).
                return await policy.run("PostgreSQL read",
                                        lambda: recorded_dead_letters(pool, topic, settings.breaker_dead_letters + 1),
                                        db_fault, database.health)

        yield metrics.ObservedHandler(BatchHandler(pipeline, sinks, breaker, recorded), agent, spec.observe(settings))
