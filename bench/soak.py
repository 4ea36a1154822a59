"""Soak: sustained load on one `faust -A visionstream` worker; reports RSS growth and throughput stability.

    .venv/bin/python bench/soak.py [--minutes 20] [--backlog 1000] [--weights PATH] [--json OUT]

A private local stack (Tansu, SeaweedFS, PostgreSQL on free ports, under a temporary folder) is started and
stopped at the end. A feeder keeps about --backlog keys waiting: each key is a new S3 object (ImageNet-sized
copies of the sample photos), because results are idempotent per key and a repeated key adds no row.
The worker's RSS is sampled every few seconds; images/s per minute come from prediction_results.time.
Then the feeder stops and the backlog drains: every key sent must have exactly one result.

Targets: RSS growth < 10% from the end of the first minute (model loaded, buffers warm) to the end, and
steady images/s. Not part of `make test`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil

from visionstream.db import connect, migrate
from visionstream.producer import produce_keys
from visionstream.retry import Backoff
from visionstream.s3 import TRANSIENT_S3_ERRORS, s3_client
from visionstream.samples import sample_images
from visionstream.settings import Settings, env_name
from visionstream.stack import LocalStack, StackPorts, free_port, free_ports
from visionstream.topics import ensure_topics
from visionstream.workerproc import WorkerProcess

DEFAULT_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "assets" / "models" / "squeezenet1_1_imagenet.pth"
DISTINCT_PHOTOS = 64  # different images cycled through the uploaded keys
CHUNK = 256  # keys uploaded and produced at a time
RSS_EVERY = 5.0  # seconds between RSS samples
WARM_UP = 60.0  # seconds before the RSS baseline is taken
DRAIN_TIMEOUT = 300.0

PER_MINUTE = """
SELECT floor((extract(epoch FROM time) - $2) / 60)::int AS minute, count(*) AS images
FROM prediction_results WHERE topic = $1 AND rank = 1 GROUP BY 1 ORDER BY 1
"""
TOTALS = """
SELECT count(DISTINCT image_key) AS keys,
       (SELECT count(*) FROM processing_errors WHERE topic = $1) AS errors
FROM prediction_results WHERE topic = $1 AND rank = 1
"""


class Feeder:
    """Uploads fresh objects and sends their keys whenever fewer than ``backlog`` keys are waiting."""

    def __init__(self, settings: Settings, backlog: int) -> None:
        self.settings = settings
        self.backlog = backlog
        self.sent = 0
        self._backoff = Backoff()
        self._photos = [data for _, _, data in sample_images(DISTINCT_PHOTOS)]

    async def done(self) -> int:
        conn = await connect(self.settings)
        try:
            return (await conn.fetchrow(TOTALS, self.settings.images_topic))["keys"]
        finally:
            await conn.close()

    async def run(self, until: float) -> None:
        async with s3_client(self.settings) as client:
            while time.monotonic() < until:
                if self.sent - await self.done() >= self.backlog:
                    await asyncio.sleep(1.0)
                    continue
                keys = [f"soak/{self.sent + i:08d}.jpg" for i in range(CHUNK)]
                async def put(key: str, body: bytes) -> None:
                    # SeaweedFS answers an occasional InternalError under sustained writes: retry, as upload.py does.
                    await self._backoff.run(f"S3 PUT {key}", lambda: client.put_object(
                        Bucket=self.settings.s3_bucket, Key=key, Body=body), TRANSIENT_S3_ERRORS)

                await asyncio.gather(*(put(key, self._photos[(self.sent + i) % len(self._photos)])
                                       for i, key in enumerate(keys)))
                self.sent += await produce_keys(self.settings, _pairs(keys))


async def _pairs(keys: list[str]):
    for key in keys:
        yield key, None


async def sample_rss(process: psutil.Process, started: float, until: float, samples: list[tuple[float, int]]
                     ) -> None:
    while time.monotonic() < until:
        samples.append((time.monotonic() - started, process.memory_info().rss))
        await asyncio.sleep(RSS_EVERY)


async def soak(settings: Settings, worker: WorkerProcess, minutes: float, backlog: int) -> dict:
    feeder = Feeder(settings, backlog)
    started = time.monotonic()
    started_epoch = time.time()
    until = started + minutes * 60
    rss: list[tuple[float, int]] = []
    await asyncio.gather(feeder.run(until), sample_rss(psutil.Process(worker.process.pid), started, until, rss))

    drain_deadline = time.monotonic() + DRAIN_TIMEOUT
    while await feeder.done() < feeder.sent and time.monotonic() < drain_deadline:
        await asyncio.sleep(1.0)
    conn = await connect(settings)
    try:
        per_minute = [(r["minute"], r["images"]) for r in await conn.fetch(
            PER_MINUTE, settings.images_topic, started_epoch)]
        totals = await conn.fetchrow(TOTALS, settings.images_topic)
    finally:
        await conn.close()

    baseline = next((value for at, value in rss if at >= WARM_UP), rss[-1][1])
    full_minutes = [images / 60 for minute, images in per_minute if minute < int(minutes)]
    steady = full_minutes[1:] or full_minutes  # the first minute includes the group join and warm-up
    return {
        "minutes": minutes,
        "keys_sent": feeder.sent,
        "results": totals["keys"],
        "errors": totals["errors"],
        "rss_start_mib": rss[0][1] / 2**20,
        "rss_baseline_mib": baseline / 2**20,
        "rss_end_mib": rss[-1][1] / 2**20,
        "rss_peak_mib": max(value for _, value in rss) / 2**20,
        "rss_growth_pct": 100 * (rss[-1][1] - baseline) / baseline,
        "images_per_s_by_minute": [round(value, 1) for value in full_minutes],
        "images_per_s_mean": statistics.fmean(steady) if steady else 0.0,
        "images_per_s_cv_pct": 100 * statistics.pstdev(steady) / statistics.fmean(steady) if len(steady) > 1
        else 0.0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="minutes of sustained load (default 20)")
    parser.add_argument("--backlog", type=int, default=1000, help="keys kept waiting in the topic (default 1000)")
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS if DEFAULT_WEIGHTS.is_file() else None,
                        help="SqueezeNet state_dict (default: the shared assets' file; else random weights)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="visionstream-soak-") as folder:
        kafka, s3, postgres = free_ports(3)
        stack = LocalStack(Path(folder), StackPorts(kafka=kafka, s3=s3, postgres=postgres))
        stack.up()
        worker = None
        try:
            name = f"soak{uuid.uuid4().hex[:8]}"
            overrides = {
                "app_id": name, "images_topic": f"{name}-images", "predictions_topic": f"{name}-predictions",
                "dead_letter_topic": f"{name}-dead", "hostname": name, "web_port": free_port(),
                "allow_random_weights": args.weights is None, "model_weights": args.weights or "",
            }
            settings = stack.settings(**overrides)
            asyncio.run(_prepare(settings))
            env = {**stack.env(), **{env_name(k): str(v) for k, v in overrides.items()}}
            worker = WorkerProcess(env, Path(folder) / "worker.log", settings.web_port)
            worker.wait_ready()
            figures = asyncio.run(soak(settings, worker, args.minutes, args.backlog))
        finally:
            if worker is not None:
                worker.stop()
            stack.down()

    for key, value in figures.items():
        print(f"{key:<24} {value:.1f}" if isinstance(value, float) else f"{key:<24} {value}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    lost = figures["keys_sent"] - figures["results"] - figures["errors"]
    print(f"lost {lost}; RSS growth {figures['rss_growth_pct']:.1f}% (target < 10%)")
    return 0 if lost == 0 else 1


async def _prepare(settings: Settings) -> None:
    await migrate(settings)
    await ensure_topics(settings)


if __name__ == "__main__":
    sys.exit(main())
