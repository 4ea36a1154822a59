"""Soak: sustained load on one `faust -A visionstream` worker; reports RSS growth and throughput stability.

    .venv/bin/python bench/soak.py [--minutes 20] [--backlog 1000] [--weights PATH] [--json OUT]

A private local stack (Tansu, SeaweedFS, PostgreSQL on free ports, under a temporary folder) is started and
stopped at the end. A feeder keeps about --backlog keys waiting (keys sent minus the consumer group's committed
offsets): each key is a new S3 object (ImageNet-sized copies of the sample photos), because results are
idempotent per key and a repeated key adds no row. Every minute the worker's RSS (median of samples taken every
few seconds), images/s (from prediction_results.time) and the CPU per image of the worker, each server and this
script are recorded, so a trend can be attributed to the process that causes it. Then the feeder stops and the
backlog drains: every key sent must have exactly one result.

Targets: RSS growth < 10% from the second minute (model loaded, buffers warm) to the last, and steady images/s.
Not part of `make test`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from cpu_accounting import cpu_seconds

from visionstream.core.db import connect, migrate
from visionstream.core.kafka_client import kafka_client_kwargs
from visionstream.core.retry import Backoff
from visionstream.core.s3 import TRANSIENT_S3_ERRORS, s3_client
from visionstream.dev.samples import sample_images
from visionstream.dev.stack import LocalStack, StackPorts, free_port, free_ports
from visionstream.dev.workerproc import WorkerProcess
from visionstream.images.producer import produce_keys
from visionstream.settings import Settings
from visionstream.topics import ensure_topics

DEFAULT_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "assets" / "models" / "squeezenet1_1_imagenet.pth"
DISTINCT_PHOTOS = 64  # different images cycled through the uploaded keys
CHUNK = 256  # keys uploaded and produced at a time
RSS_EVERY = 5.0  # seconds between RSS samples
DRAIN_TIMEOUT = 300.0
MAX_IMAGES_PER_S = 250  # above what this machine's worker sustains; sizes the local S3 for the soak's objects
S3_VOLUME_BYTES = 64 * 2**20

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

    def __init__(self, settings: Settings, backlog: int, photos: list[bytes]) -> None:
        self.settings = settings
        self.backlog = backlog
        self.sent = 0
        self._backoff = Backoff()
        self._photos = photos
        self._partitions = [TopicPartition(settings.images_topic, p) for p in range(settings.topic_partitions)]

    async def committed(self, admin: AIOKafkaAdminClient) -> int:
        """Keys the worker has finished: the sum of the group's committed offsets (the topic starts at 0).
        Cheap at any size, unlike counting result rows, which would load PostgreSQL more as the table grows."""
        # Partitions are named: Tansu drops an OffsetFetch for all of a group's partitions.
        offsets = await admin.list_consumer_group_offsets(self.settings.app_id, partitions=self._partitions)
        return sum(max(meta.offset, 0) for meta in offsets.values())

    async def run(self, until: float) -> None:
        admin = AIOKafkaAdminClient(**kafka_client_kwargs(self.settings))
        await admin.start()
        try:
            async with s3_client(self.settings) as client:
                while time.monotonic() < until:
                    if self.sent - await self.committed(admin) >= self.backlog:
                        await asyncio.sleep(1.0)
                        continue
                    await self._send_chunk(client)
        finally:
            await admin.close()

    async def _send_chunk(self, client) -> None:
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


class Monitor:
    """Samples the worker's RSS every few seconds and everyone's CPU seconds at each minute boundary."""

    def __init__(self, worker_pid: int, servers: dict[str, int]) -> None:
        self.worker = psutil.Process(worker_pid)
        self.processes = {"worker": worker_pid, **servers}
        self.rss: list[tuple[float, int]] = []  # (seconds since start, bytes)
        self.cpu_at_minute: list[dict[str, float]] = []  # CPU seconds at the start of each minute

    async def run(self, started: float, until: float) -> None:
        while (now := time.monotonic()) < until:
            if now - started >= 60 * len(self.cpu_at_minute):
                self.cpu_at_minute.append(self._cpu_seconds())
            self.rss.append((now - started, self.worker.memory_info().rss))
            await asyncio.sleep(RSS_EVERY)
        self.cpu_at_minute.append(self._cpu_seconds())

    def _cpu_seconds(self) -> dict[str, float]:
        # This script alone: the worker and the servers are its children.
        return {**cpu_seconds(self.processes), **cpu_seconds({"soak script": os.getpid()}, children=False)}

    def rss_mib_by_minute(self) -> list[float]:
        by_minute: dict[int, list[int]] = {}
        for at, value in self.rss:
            by_minute.setdefault(int(at // 60), []).append(value)
        return [statistics.median(values) / 2**20 for _, values in sorted(by_minute.items())]


def s3_volumes_needed(minutes: float, photos: list[bytes]) -> int:
    """Every key is a new object, so the local S3 must hold all of them (7 volumes go to the bucket itself)."""
    objects = MAX_IMAGES_PER_S * minutes * 60
    return 8 + math.ceil(objects * statistics.fmean(map(len, photos)) / S3_VOLUME_BYTES)


async def soak(settings: Settings, monitor: Monitor, minutes: float, backlog: int, photos: list[bytes]) -> dict:
    feeder = Feeder(settings, backlog, photos)
    started = time.monotonic()
    started_epoch = time.time()
    until = started + minutes * 60
    await asyncio.gather(feeder.run(until), monitor.run(started, until))

    conn = await connect(settings)
    try:
        drain_deadline = time.monotonic() + DRAIN_TIMEOUT
        while (await conn.fetchrow(TOTALS, settings.images_topic))["keys"] < feeder.sent \
                and time.monotonic() < drain_deadline:
            await asyncio.sleep(2.0)
        per_minute = {r["minute"]: r["images"] for r in await conn.fetch(
            PER_MINUTE, settings.images_topic, started_epoch)}
        totals = await conn.fetchrow(TOTALS, settings.images_topic)
    finally:
        await conn.close()

    full = int(minutes)
    images = [per_minute.get(minute, 0) for minute in range(full)]
    rss = monitor.rss_mib_by_minute()[:full]
    cpu = monitor.cpu_at_minute
    cpu_ms_per_image = [{name: round(1000 * (cpu[m + 1][name] - cpu[m][name]) / max(images[m], 1), 2)
                         for name in cpu[m]} for m in range(min(full, len(cpu) - 1))]
    steady = [n / 60 for n in images[1:]] or [n / 60 for n in images]  # minute 0 has the join and warm-up
    baseline = rss[1] if len(rss) > 1 else rss[0]
    return {
        "minutes": minutes,
        "keys_sent": feeder.sent,
        "results": totals["keys"],
        "errors": totals["errors"],
        "rss_baseline_mib": baseline,
        "rss_end_mib": rss[-1],
        "rss_peak_mib": max(value for _, value in monitor.rss) / 2**20,
        "rss_growth_pct": 100 * (rss[-1] - baseline) / baseline,
        "rss_mib_by_minute": [round(value) for value in rss],
        "images_per_s_by_minute": [round(n / 60, 1) for n in images],
        "images_per_s_mean": statistics.fmean(steady),
        "images_per_s_cv_pct": 100 * statistics.pstdev(steady) / statistics.fmean(steady),
        "cpu_ms_per_image_by_minute": cpu_ms_per_image,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="minutes of sustained load (default 20)")
    parser.add_argument("--backlog", type=int, default=1000, help="keys kept waiting in the topic (default 1000)")
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS if DEFAULT_WEIGHTS.is_file() else None,
                        help="SqueezeNet state_dict (default: the shared assets' file; else random weights)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()

    photos = [data for _, _, data in sample_images(DISTINCT_PHOTOS)]
    with tempfile.TemporaryDirectory(prefix="visionstream-soak-") as folder:
        kafka, s3, postgres = free_ports(3)
        stack = LocalStack(Path(folder), StackPorts(kafka=kafka, s3=s3, postgres=postgres),
                           s3_max_volumes=s3_volumes_needed(args.minutes, photos))
        stack.up()
        worker = None
        try:
            name = f"soak{uuid.uuid4().hex[:8]}"
            overrides = {
                "app_id": name, "images_topic": f"{name}-images", "predictions_topic": f"{name}-predictions",
                "dead_letter_topic": f"{name}-dead", "hostname": name, "web_port": free_port(),
                "allow_random_weights": args.weights is None, "model_weights": args.weights,
                "image_analyzers": "classify",  # the classifier's path, as in the soak figures in the README
            }
            settings = stack.settings(**overrides)
            asyncio.run(_prepare(settings))
            env = stack.env(**overrides)
            worker = WorkerProcess(env, Path(folder) / "worker.log", settings.web_port)
            worker.wait_ready()
            monitor = Monitor(worker.process.pid, {
                f"{server.name} server": server.pid for server in stack.status() if server.pid})
            figures = asyncio.run(soak(settings, monitor, args.minutes, args.backlog, photos))
        finally:
            if worker is not None:
                worker.stop()
            stack.down()

    for key, value in figures.items():
        if key == "cpu_ms_per_image_by_minute":
            for minute, used in enumerate(value):
                print(f"cpu ms/image minute {minute:<4} {used}")
        else:
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
