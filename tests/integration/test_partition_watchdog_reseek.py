"""The partition watchdog's re-seek (faust_ext/partition_watchdog.py) in a real worker: a hole in a partition
is found and its records are processed (issue 24 point 5; tests/unit/test_partition_watchdog.py covers the
detector's logic alone).

The hole is real: a plug-in analyzer, loaded by dotted path from a module this test writes, calls the
consumer's public ``seek`` forward once, past records not yet produced (Tansu then serves from the sought
offset when they arrive; Kafka would reset an offset beyond the end). Records after the hole are processed and
acked, the hole's are never fetched, and the partition cannot commit past it: the state the watchdog exists
for. It waits ``STALL_SECONDS`` (30 s, a constant) before it seeks back, so this test takes ~45 s.
"""

from __future__ import annotations

import asyncio
import uuid

from visionstream.core.db import connect
from visionstream.dev.stack import free_port
from visionstream.dev.workerproc import WorkerProcess
from visionstream.faust_ext.partition_watchdog import STALL_SECONDS
from visionstream.images.producer import produce_keys

from .stacks import own_topics, seed_stack
from .test_breaker import jpeg, wait_for

PLUGIN = '''
import asyncio
import os
from pathlib import Path

import numpy as np
from faust.types import TP

from visionstream.core.analyzers import Analyzer


def build(settings):
    marker = Path(os.environ["HOLE_TEST_MARKER"])
    seek_to = int(os.environ["HOLE_TEST_SEEK_TO"])

    def run(means):
        if any(mean > 250 for mean in means) and not marker.exists():  # the white image, once
            import visionstream

            app = visionstream.app  # the worker's app; run is called in a model thread
            seek = app.consumer.seek(TP(settings.images_topic, 0), seek_to)
            asyncio.run_coroutine_threadsafe(seek, app.loop).result(10)
            marker.write_text(str(seek_to))
        return [{"mean": mean} for mean in means]

    return Analyzer("brightness", "measure", "brightness@1", None,
                    lambda decoded: float(np.asarray(decoded.pixels).mean()), run)
'''
BEFORE = 5  # offsets 0-4, the white trigger last; the hole is 5 to SEEK_TO - 1
SEEK_TO = 11
AFTER = 16  # offsets 5-20


def test_the_watchdog_seeks_back_over_a_hole_and_every_key_gets_its_result(stack, tmp_path):
    name = f"hole{uuid.uuid4().hex[:8]}"
    (tmp_path / "hole_plugin.py").write_text(PLUGIN)
    marker = tmp_path / "sought"
    overrides = dict(app_id=name, **own_topics(name), topic_partitions=1, image_analyzers="hole_plugin:build",
                     frame_analyzers="", batch_size=4, hostname=f"host-{name}")
    settings = stack.settings(**overrides)
    keys = [f"{name}/{offset:02d}.jpg" for offset in range(BEFORE + AFTER)]
    images = {key: jpeg((40 + 5 * offset, 90, 160)) for offset, key in enumerate(keys)}
    images[keys[BEFORE - 1]] = jpeg((255, 255, 255))
    asyncio.run(seed_stack(settings, images))
    hole = set(keys[BEFORE:SEEK_TO])

    async def produce(part: list[str]) -> int:
        async def each():
            for key in part:
                yield key, settings.s3_bucket

        return await produce_keys(settings, each())

    async def with_results() -> set[str]:
        conn = await connect(settings)
        try:
            return {row["image_key"] for row in await conn.fetch(
                "SELECT image_key FROM analyzer_results WHERE starts_with(image_key, $1)", name)}
        finally:
            await conn.close()

    port = free_port()
    env = stack.env(**overrides, web_port=port) | {"PYTHONPATH": str(tmp_path), "HOLE_TEST_MARKER": str(marker),
                                                    "HOLE_TEST_SEEK_TO": str(SEEK_TO)}
    worker = WorkerProcess(env, tmp_path / "worker.log", port)
    try:
        worker.wait_ready()
        assert asyncio.run(produce(keys[:BEFORE])) == BEFORE
        wait_for(lambda: len(asyncio.run(with_results())) == BEFORE and marker.exists(), 60,
                 "the first keys' results and the plug-in's seek")
        assert asyncio.run(produce(keys[BEFORE:])) == AFTER
        after_hole = set(keys[SEEK_TO:])
        # The records after the hole are processed first, the hole's are not: the hole is real.
        done = wait_for(lambda: (got := asyncio.run(with_results())) >= after_hole and got, 60,
                        "the results after the hole")
        assert not done & hole, f"{sorted(done & hole)} got results before any seek back: no hole"
        wait_for(lambda: asyncio.run(with_results()) == set(keys), STALL_SECONDS + 60,
                 "the hole's keys after the watchdog's seek")
        log = worker.log_text()
    finally:
        assert worker.stop() == 0, worker.log_text()[-4000:]
    assert f"[0]: stuck at committed offset {BEFORE}" in log and "seeking back to it" in log, log[-4000:]
    print(f"\nwatchdog: hole of {len(hole)} records at offsets {BEFORE}-{SEEK_TO - 1} sought back; "
          f"{len(keys)} of {len(keys)} keys have a result")
