"""A worker whose classifier runs on ONNX Runtime writes the rows a torch worker writes: the same model id,
the same top-k, its backend and precision in their own columns; rows another backend already wrote stay."""

from __future__ import annotations

import asyncio
import time
import uuid

import numpy as np

from visionstream.classification.model import Classifier
from visionstream.classification.sinks import INSERT_PREDICTIONS
from visionstream.core.db import connect
from visionstream.core.sinks import columns_of, utc
from visionstream.dev.samples import sample_images
from visionstream.dev.stack import free_port
from visionstream.dev.workerproc import WorkerProcess
from visionstream.images.producer import produce_keys

from ..media import squeezenet_weights
from .stacks import own_topics, seed_stack

IMAGES = 48
TOP_K = 3
WRITTEN_BY_TORCH = 6  # keys another worker (torch) classified before this one saw them


async def _keys(items):
    for item in items:
        yield item


def test_onnxruntime_worker_writes_the_same_rows(stack, tmp_path):
    name = f"ort{uuid.uuid4().hex[:8]}"
    weights = squeezenet_weights()
    overrides = dict(
        app_id=name, **own_topics(name), topic_partitions=1, top_k=TOP_K, batch_size=16,
        model_weights=weights, allow_random_weights=weights is None, hostname=f"host-{name}",
        web_port=free_port(), image_analyzers="classify", frame_analyzers="", device="cpu",
        inference_backend="onnxruntime", model_cache_dir=str(tmp_path / "models"),
    )
    settings = stack.settings(**overrides)
    images = {f"{name}/{label}/{file_name}": data for label, file_name, data in sample_images(IMAGES + 1)}
    sentinel = list(images)[-1]  # produced after the redelivered keys, on the one partition: read last
    keys = list(images)[:IMAGES]
    reference = Classifier(weights_path=weights, device="cpu", precision="fp32", top_k=TOP_K,
                           allow_random_weights=weights is None)
    preprocess = reference.preprocessor(settings.max_image_pixels)
    expected = dict(zip(keys, reference(np.stack([preprocess(images[key]) for key in keys])), strict=True))

    async def scenario():
        await seed_stack(settings, images)
        conn = await connect(settings)
        try:
            at = utc(time.time())
            await conn.execute(INSERT_PREDICTIONS, *columns_of([
                (key, reference.model_id, rank, category, index, confidence, "torch-host", at, "elsewhere", 0, 0,
                 reference.backend, reference.precision)
                for key in keys[:WRITTEN_BY_TORCH]
                for rank, (index, category, confidence) in enumerate(expected[key], start=1)]))
            worker = WorkerProcess(stack.env(**overrides), tmp_path / "worker.log", settings.web_port)
            try:
                await asyncio.to_thread(worker.wait_ready)
                requests = [(key, settings.s3_bucket) for key in keys]
                await produce_keys(settings, _keys(requests))
                await produce_keys(settings, _keys(requests[:10] + [(sentinel, settings.s3_bucket)]))  # redelivered

                deadline = time.monotonic() + 240
                while await conn.fetchval("SELECT count(*) FROM prediction_results WHERE image_key = $1",
                                          sentinel) < TOP_K:
                    assert time.monotonic() < deadline, worker.log_text()[-3000:]
                    await asyncio.sleep(0.5)
            finally:
                await asyncio.to_thread(worker.stop)
            return await conn.fetch(
                "SELECT image_key, model, rank, category, confidence, hostname, backend, \"precision\" "
                "FROM prediction_results WHERE image_key = ANY($1::text[])", [*keys, sentinel])
        finally:
            await conn.close()

    rows = asyncio.run(scenario())
    assert len(rows) == (IMAGES + 1) * TOP_K  # nothing written twice: not the redelivered, not torch's keys
    assert {row["model"] for row in rows} == {reference.model_id}  # the model id does not name the backend
    by_key = {}
    for row in rows:
        by_key.setdefault(row["image_key"], {})[row["rank"]] = row
    for key in keys[:WRITTEN_BY_TORCH]:  # the first computation's rows stay, whichever backend made them
        assert {(r["hostname"], r["backend"], r["precision"]) for r in by_key[key].values()} == {
            ("torch-host", "torch", "fp32")}
    for key in [*keys[WRITTEN_BY_TORCH:], sentinel]:
        assert {(r["hostname"], r["backend"], r["precision"]) for r in by_key[key].values()} == {
            (settings.hostname, "onnxruntime", "fp32")}
    for key in keys[WRITTEN_BY_TORCH:]:
        got = [(by_key[key][rank]["category"], by_key[key][rank]["confidence"]) for rank in range(1, TOP_K + 1)]
        want = [(category, confidence) for _, category, confidence in expected[key]]
        assert [c for c, _ in got] == [c for c, _ in want], key
        assert np.allclose([p for _, p in got], [p for _, p in want], atol=1e-4), key
    assert list((tmp_path / "models").glob("squeezenet1_1-*.onnx"))  # exported at start into the local cache
