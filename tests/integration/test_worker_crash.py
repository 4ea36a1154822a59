"""A bug in the batch loop itself (not a message's fault) crashes a real worker, which exits non-zero with
nothing of that batch written or dead-lettered; after the fix a new worker processes every key (issue 24
point 5). Only a fake ``crash`` callback was tested before (tests/unit).

The bug is a plug-in's, and it surfaces in the loop's own code: ``run`` must return a list (one output per
input, core/analyzers.py) and this one returns a generator. ``run`` itself succeeds, so no message is at
fault; the loop's ``len(out)`` (core/faults.py ``run_isolated``) then raises TypeError outside every
per-message guard. (Outputs that are not JSON, or a ``run`` that raises, end as dead letters instead: a
message's fault, bounded by the breaker, tests/integration/test_breaker.py.)"""

from __future__ import annotations

import asyncio
import uuid

from visionstream.core.db import connect
from visionstream.dev.stack import free_port
from visionstream.dev.workerproc import WorkerProcess
from visionstream.images.producer import produce_keys

from .stacks import seed_stack
from .test_breaker import jpeg, wait_for

PLUGIN = '''
import os

import numpy as np

from visionstream.core.analyzers import Analyzer


def build(settings):
    bug = os.environ.get("CRASH_TEST_BUG") == "1"

    def run(means):
        outputs = ({"mean": m} for m in means)
        return outputs if bug else list(outputs)

    return Analyzer("brightness", "measure", "brightness@1", None,
                    lambda decoded: float(np.asarray(decoded.pixels).mean()), run)
'''
KEYS = 8


def test_a_bug_in_the_batch_loop_exits_the_worker_non_zero_and_loses_nothing(stack, tmp_path):
    name = f"crash{uuid.uuid4().hex[:8]}"
    (tmp_path / "crash_plugin.py").write_text(PLUGIN)
    overrides = dict(app_id=name, images_topic=f"{name}-images", dead_letter_topic=f"{name}-dead",
                     topic_partitions=1, image_analyzers="crash_plugin:build", frame_analyzers="",
                     batch_size=4, hostname=f"host-{name}")
    settings = stack.settings(**overrides)
    keys = {f"{name}/img-{i}.jpg": jpeg((40 + 20 * i, 90, 160)) for i in range(KEYS)}
    asyncio.run(seed_stack(settings, keys))

    async def produce() -> int:
        async def each():
            for key in keys:
                yield key, settings.s3_bucket

        return await produce_keys(settings, each())

    async def rows(table: str) -> int:
        conn = await connect(settings)
        try:
            return await conn.fetchval(f"SELECT count(*) FROM {table} WHERE starts_with(image_key, $1)", name)
        finally:
            await conn.close()

    def worker(label: str, bug: bool) -> WorkerProcess:
        port = free_port()
        env = stack.env(**overrides, web_port=port) | {"PYTHONPATH": str(tmp_path),
                                                        "CRASH_TEST_BUG": "1" if bug else "0"}
        process = WorkerProcess(env, tmp_path / f"{label}.log", port)
        process.wait_ready()
        return process

    buggy = worker("buggy", bug=True)
    try:
        assert asyncio.run(produce()) == KEYS
        wait_for(lambda: buggy.process.poll() is not None, 90, "the buggy worker to exit")
    finally:
        buggy.stop()
    log = buggy.log_text()
    assert buggy.process.returncode != 0, log[-3000:]
    assert "a batch raised" in log and "has no len()" in log, log[-3000:]
    assert asyncio.run(rows("analyzer_results")) == 0
    assert asyncio.run(rows("processing_errors")) == 0, "a bug in the loop must not dead-letter the messages"

    fixed = worker("fixed", bug=False)
    try:
        wait_for(lambda: asyncio.run(rows("analyzer_results")) == KEYS, 90, "every key's result after the fix")
    finally:
        assert fixed.stop() == 0
    assert asyncio.run(rows("processing_errors")) == 0
    print(f"\ncrash: buggy worker exited {buggy.process.returncode}; after the fix {KEYS} of {KEYS} keys")
