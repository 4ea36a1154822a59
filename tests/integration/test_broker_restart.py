"""The broker stops mid-stream and comes back: every key's result ends in PostgreSQL exactly once and on the
result topic, none lost (issue 24 point 5: offsets are committed only after the results are published).

The module runs its own stack with a durable broker (``stack up --durable-broker``: Tansu on the stack's S3),
since the in-memory broker forgets topics and committed offsets when it restarts, and a restart there would
test nothing. Only the broker is restarted; the worker keeps running through the outage. Half the keys are
produced before the outage (the worker has most of them fetched and publishes their results into a broker that
is gone), half after it (the worker's consumer must fetch again from the restarted broker).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from .stacks import running_stack
from .test_reliability import (
    App,
    _all_keys,
    _errors_under,
    _some_keys,
    produce,
    read_topic,
    result_counts,
    small_jpegs,
    upload,
    wait_until,
)

KEYS = 400
DOWN_SECONDS = 5.0


@pytest.fixture(scope="module")
def durable_stack(tmp_path_factory):
    with running_stack(tmp_path_factory.mktemp("durable"), durable_broker=True) as local:
        yield local


def test_a_broker_restart_mid_stream_loses_nothing(durable_stack, tmp_path):
    app = App(durable_stack, tmp_path)
    settings = app.settings
    images = small_jpegs(10, seed=5)
    keys = [f"{app.name}/{i:04d}.jpg" for i in range(KEYS)]
    asyncio.run(upload(settings, {key: images[i % len(images)] for i, key in enumerate(keys)}))
    worker = app.start_worker("through-restart")
    try:
        worker.wait_ready()

        async def scenario() -> dict[str, float]:
            assert await produce(settings, keys[:KEYS // 2]) == KEYS // 2
            await wait_until(lambda: _some_keys(settings, 32, app.name), 120, "the first results")
            _, at_stop = await result_counts(settings)
            stopped_at = time.monotonic()
            await asyncio.to_thread(durable_stack.stop_server, "kafka")
            try:
                await asyncio.sleep(DOWN_SECONDS)
                assert worker.process.poll() is None, "the worker exited while the broker was down"
            finally:
                await asyncio.to_thread(durable_stack.up)
            back_at = time.monotonic()
            assert await produce(settings, keys[KEYS // 2:]) == KEYS - KEYS // 2
            await wait_until(lambda: _all_keys(settings, KEYS), 180, "every key after the broker restart")
            return {"done at stop": at_stop, "down s": back_at - stopped_at,
                    "all done s after restart": time.monotonic() - back_at}

        figures = asyncio.run(scenario())
        assert worker.process.poll() is None, worker.log_text()[-4000:]
    finally:
        assert worker.stop() == 0, worker.log_text()[-4000:]
    assert figures["done at stop"] < KEYS // 2, "the broker stopped after that work was done: no outage seen"
    assert asyncio.run(result_counts(settings)) == (KEYS, KEYS)  # each key once in PostgreSQL
    records = asyncio.run(read_topic(settings, settings.predictions_topic))
    published = Counter(record["image_key"] for record in records)
    assert set(published) == set(keys), f"{len(set(keys) - set(published))} keys never published"
    assert asyncio.run(_errors_under(settings, app.name)) == 0  # the outage was not mistaken for bad input
    print(f"\nbroker restart: {KEYS} keys, PostgreSQL {KEYS} once each, topic {sum(published.values())} "
          f"({sum(published.values()) - KEYS} re-published), {figures}")
