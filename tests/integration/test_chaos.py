"""Chaos: workers SIGKILLed and replaced again and again while keys flow; then the live category table
(/stats/categories) holds exactly PostgreSQL's counts, category by category, and PostgreSQL one row per key.

Two kinds of repeat reach the table, and it skips both (tables/partitions.py): its own replays (the records
after its last commit, handed out again after every SIGKILL), by the offset kept in each value; and the
predictions topic's own repeats (a key whose result the victim published but did not commit is published
again by whoever takes over: Tansu has no transactions), by the input each record names (``source``). The
topic itself stays at-least-once: it holds more records than keys.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections import Counter

from visionstream.core.db import connect

from .test_reliability import App, _all_keys, produce, read_topic, small_jpegs, upload, wait_until

KEYS = 1200
KILLS = 4
KILL_EVERY = 6.0  # seconds between kills: each victim has joined, taken partitions and published some


def categories(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats/categories", timeout=5) as response:
        return json.loads(response.read())


def test_live_counts_equal_postgresql_after_repeated_sigkills(stack, tmp_path):
    app = App(stack, tmp_path)
    images = small_jpegs(20, seed=3)
    keys = [f"{app.name}/img-{i:05d}.jpg" for i in range(KEYS)]
    asyncio.run(upload(app.settings, {key: images[i % len(images)] for i, key in enumerate(keys)}))
    workers = [app.start_worker("w0"), app.start_worker("w1")]
    try:
        for worker in workers:
            worker.wait_ready()
        assert asyncio.run(produce(app.settings, keys)) == KEYS
        for kill in range(KILLS):
            time.sleep(KILL_EVERY)
            victim = workers.pop(0)
            victim.kill()
            workers.append(app.start_worker(f"w{kill + 2}"))
        asyncio.run(wait_until(lambda: _all_keys(app.settings, KEYS), 240, "every key's result"))
        # One worker left: it holds every partition of the table, recovered from the changelog.
        survivor = workers.pop()
        for worker in workers:
            worker.stop()
        survivor.wait_ready()

        async def truth():
            conn = await connect(app.settings)
            try:
                rows = await conn.fetch("SELECT category, count(*) AS n FROM prediction_results WHERE topic = $1 "
                                        "GROUP BY category", app.settings.images_topic)
            finally:
                await conn.close()
            published = await read_topic(app.settings, app.settings.predictions_topic)
            return Counter({r["category"]: r["n"] for r in rows}), Counter(r["category"] for r in published), \
                Counter(r["image_key"] for r in published)

        database, on_topic, per_key = asyncio.run(truth())
        deadline = time.monotonic() + 60
        while (body := categories(survivor.web_port))["total"] != sum(database.values()) \
                and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        for worker in workers:
            worker.kill()
        if "survivor" in locals():
            survivor.stop()
    republished = sum(per_key.values()) - len(per_key)
    served = {c["category"]: c["count"] for c in body["categories"]}
    print(f"\nchaos: {KILLS} SIGKILLs, {KEYS} keys; PostgreSQL {sum(database.values())}, topic "
          f"{sum(on_topic.values())} ({republished} re-published), /stats/categories {body['total']}")
    assert sum(database.values()) == KEYS and set(per_key) == set(keys)
    assert served == dict(database), "the live table is not exactly PostgreSQL"
    assert sum(on_topic.values()) == KEYS + republished  # what it skipped: the topic's own repeats
