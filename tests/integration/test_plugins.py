"""A user's own analyzer: named in the settings, built from them, run by a real worker, its outputs stored."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
import uuid

import torch
import torchvision.models

from visionstream.classification.model import weights_file_version
from visionstream.core.db import connect
from visionstream.dev.samples import sample_images
from visionstream.dev.stack import free_port
from visionstream.dev.workerproc import WorkerProcess
from visionstream.images.producer import produce_keys

from .stacks import seed_stack

WEIGHTS = "MobileNet_V3_Small_Weights.IMAGENET1K_V1"  # the README example's model: small, fast on a CPU


def test_readme_torchvision_analyzer_runs_in_a_worker(stack, tmp_path):
    """The README's example (the torchvision entry point) on S3 images: rows in analyzer_results under the
    weights file's version, idempotent on redelivery, and no other model loaded."""
    weights_file = tmp_path / "mobilenet_v3_small.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.mobilenet_v3_small(weights=None).state_dict(), weights_file)
    model = f"mobilenet_v3_small@{weights_file_version(weights_file)}"
    name = f"plug{uuid.uuid4().hex[:8]}"
    overrides = dict(app_id=name, images_topic=f"{name}-images", dead_letter_topic=f"{name}-dead",
                     topic_partitions=1, image_analyzers="torchvision", frame_analyzers="",
                     hostname=f"host-{name}", web_port=free_port(), device="cpu")
    settings = stack.settings(**overrides)
    env = stack.env(**overrides) | {"TORCHVISION_ANALYZER_WEIGHTS": WEIGHTS,
                                    "TORCHVISION_ANALYZER_WEIGHTS_FILE": str(weights_file)}
    images = {f"{name}/{label}/{file_name}": data for label, file_name, data in sample_images(4)}
    categories = set(torchvision.models.get_weight(WEIGHTS).meta["categories"])

    def handled() -> float:
        """Images the worker has results for, stored (its metrics count them once the sinks have them)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{settings.web_port}/metrics", timeout=5) as response:
            text = response.read().decode()
        line = 'visionstream_messages_total{agent="classify",outcome="result",reason=""} '
        return next((float(row[len(line):]) for row in text.splitlines() if row.startswith(line)), 0.0)

    async def produce_and_read(handled_after: int):
        async def keys():
            for key in images:
                yield key, settings.s3_bucket

        await produce_keys(settings, keys())
        deadline = time.monotonic() + 90
        while handled() < handled_after:
            assert time.monotonic() < deadline, "timed out waiting for the analyzer's results"
            await asyncio.sleep(0.5)
        conn = await connect(settings)
        try:
            return (await conn.fetch("SELECT image_key, analyzer, model, output, topic FROM analyzer_results "
                                     "WHERE hostname = $1 ORDER BY image_key", settings.hostname),
                    await conn.fetchval("SELECT count(*) FROM prediction_results WHERE hostname = $1",
                                        settings.hostname))
        finally:
            await conn.close()

    asyncio.run(seed_stack(settings, images))
    worker = WorkerProcess(env, tmp_path / "worker.log", settings.web_port)
    try:
        worker.wait_ready()
        rows, predictions = asyncio.run(produce_and_read(len(images)))
        # The same keys again (as after a redelivery): still one row per image and model.
        again, _ = asyncio.run(produce_and_read(2 * len(images)))
        log = worker.log_text()
    finally:
        worker.stop()
    assert [r["image_key"] for r in rows] == sorted(images) and len(again) == len(images)
    assert {(r["analyzer"], r["model"], r["topic"]) for r in rows} == {("torchvision", model, settings.images_topic)}
    for row in rows:
        top = json.loads(row["output"])
        assert len(top) == 5 and {t["category"] for t in top} <= categories
        assert [t["confidence"] for t in top] == sorted((t["confidence"] for t in top), reverse=True)
    assert predictions == 0
    assert f"S3 images: torchvision ({model}); no other model loaded" in log
