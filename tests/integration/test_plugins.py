"""A user's own analyzer: named in the settings, built from them, run by a real worker, its outputs stored."""

from __future__ import annotations

import asyncio
import io
import json
import time
import urllib.request
import uuid

import torch
import torchvision.models
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from PIL import Image, ImageOps

from visionstream.classification.model import weights_file_version
from visionstream.core.db import connect
from visionstream.core.kafka_client import kafka_client_kwargs
from visionstream.dev.samples import sample_images
from visionstream.dev.stack import free_port
from visionstream.dev.workerproc import WorkerProcess
from visionstream.images.producer import produce_keys

from .stacks import read_records, seed_stack

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


# A user's analyzer in a module of its own, outside the package: it declares its own table and topic
# (its outputs hook), as the built-in analyzers do, instead of rows in analyzer_results.
OWN_OUTPUTS_PLUGIN = '''
from visionstream.core.analyzers import Analyzer, Outputs
from visionstream.core.sinks import ResultTable, columns_of

TABLE, TOPIC = {table!r}, {topic!r}
INSERT = (f"INSERT INTO {{TABLE}} (image_key, model, width, height) "
          "SELECT * FROM unnest($1::text[], $2::text[], $3::integer[], $4::integer[]) ON CONFLICT DO NOTHING")


def build(settings):
    return Analyzer("sizes", "sizes", "sizes@1", None, lambda decoded: (decoded.width, decoded.height), list,
                    outputs=outputs)


def outputs(analyzer, context):
    topic = context.topic(TOPIC)

    def rows(results, computed_at):
        return columns_of([(r.image_key, analyzer.model_id, *r.outputs["sizes"]) for r in results])

    def records(outcome):
        return [(topic, r.image_key, {{"image_key": r.image_key, "size": list(r.outputs["sizes"]),
                                      "input": context.input}})
                for r in outcome.results]

    return Outputs([ResultTable(INSERT, rows)], [records])
'''


def test_an_analyzer_outside_the_package_declares_its_own_table_and_topic(stack, tmp_path):
    name = f"own{uuid.uuid4().hex[:8]}"
    table, topic = f"{name}_sizes", f"{name}-sizes"
    module = tmp_path / f"{name}_plugin.py"
    module.write_text(OWN_OUTPUTS_PLUGIN.format(table=table, topic=topic))
    overrides = dict(app_id=name, images_topic=f"{name}-images", dead_letter_topic=f"{name}-dead",
                     topic_partitions=1, image_analyzers=f"{name}_plugin:build", frame_analyzers="",
                     hostname=f"host-{name}", web_port=free_port(), device="cpu")
    settings = stack.settings(**overrides)
    env = stack.env(**overrides) | {"PYTHONPATH": str(tmp_path)}
    images = {f"{name}/{label}/{file_name}": data for label, file_name, data in sample_images(3)}

    async def prepare():
        await seed_stack(settings, images)
        conn = await connect(settings)
        try:  # the plug-in's own schema, as its package's migration would create it
            await conn.execute(f"CREATE TABLE {table} (image_key text PRIMARY KEY, model text NOT NULL, "
                               "width integer NOT NULL, height integer NOT NULL)")
        finally:
            await conn.close()
        admin = AIOKafkaAdminClient(**kafka_client_kwargs(settings))
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
        finally:
            await admin.close()

    async def produce_and_read():
        async def keys():
            for key in images:
                yield key, settings.s3_bucket

        await produce_keys(settings, keys())
        conn = await connect(settings)
        try:
            deadline = time.monotonic() + 90
            while len(rows := await conn.fetch(f"SELECT image_key, model, width, height FROM {table} "
                                               "ORDER BY image_key")) < len(images):
                assert time.monotonic() < deadline, "timed out waiting for the plug-in's rows"
                await asyncio.sleep(0.5)
            json_rows = await conn.fetchval("SELECT count(*) FROM analyzer_results WHERE hostname = $1",
                                            settings.hostname)
        finally:
            await conn.close()
        return rows, json_rows, await read_records(settings, topic)

    asyncio.run(prepare())
    worker = WorkerProcess(env, tmp_path / "worker.log", settings.web_port)
    try:
        worker.wait_ready()
        rows, json_rows, published = asyncio.run(produce_and_read())
    finally:
        worker.stop()
    sizes = {key: ImageOps.exif_transpose(Image.open(io.BytesIO(data))).size for key, data in images.items()}
    assert [(r["image_key"], r["model"], (r["width"], r["height"])) for r in rows] == [
        (key, "sizes@1", sizes[key]) for key in sorted(images)]
    assert json_rows == 0  # its hook replaced the default JSON rows
    assert sorted((key.decode(), json.loads(value)) for key, value in published) == [
        (key, {"image_key": key, "size": list(sizes[key]), "input": "images"}) for key in sorted(images)]
