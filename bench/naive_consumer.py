"""Naive baseline: the consumer this design replaces, written the straightforward way (for `make bench`).

    VISIONSTREAM_* settings in the environment (as for a worker), then:
    .venv/bin/python bench/naive_consumer.py worker -l info --web-port 6070

- one Faust agent takes the images topic one message at a time (``async for value in stream``);
- downloads the object to a temporary file with a synchronous boto3 client, on the event loop;
- decodes the full image with Pillow and runs torchvision's transform (resize 256, crop 224, normalise);
- runs SqueezeNet 1.1 at batch size 1 in fp32 (eager, NCHW) on the event loop;
- sends the top-k to a second topic, where a second agent does one INSERT per prediction row.

It is deliberately not optimised; it is what visionstream's throughput is compared with. Rows land in
``prediction_results`` like visionstream's, with ``time`` = when the image was classified
(visionstream stores its batch's computed_at the same way).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from datetime import datetime, timezone

import asyncpg
import boto3
import faust
import torch
from PIL import Image
from torchvision.models import SqueezeNet1_1_Weights, squeezenet1_1

from visionstream.core.kafka_client import faust_broker_credentials
from visionstream.core.records import parse_image_request
from visionstream.settings import load_settings

settings = load_settings()
RESULTS_TOPIC = os.environ.get("NAIVE_RESULTS_TOPIC", f"{settings.app_id}-results")

app = faust.App(
    settings.app_id,
    broker=settings.broker_url,
    broker_credentials=faust_broker_credentials(settings),
    store="memory://",
    autodiscover=False,
    topic_partitions=settings.topic_partitions,
    datadir=str(settings.data_dir / "naive-faust"),
    web_port=settings.web_port,
    web_bind="127.0.0.1",
    web_host="127.0.0.1",
)
images_topic = app.topic(settings.images_topic, key_type=bytes, value_type=bytes,
                         key_serializer="raw", value_serializer="raw")
results_topic = app.topic(RESULTS_TOPIC, key_type=str, key_serializer="raw",
                          value_serializer="json")

s3 = boto3.client(
    "s3",
    endpoint_url=settings.s3_endpoint_url,
    region_name=settings.s3_region,
    aws_access_key_id=settings.s3_access_key_id.get_secret_value() if settings.s3_access_key_id else None,
    aws_secret_access_key=settings.s3_secret_access_key.get_secret_value() if settings.s3_secret_access_key else None,
)

weights = SqueezeNet1_1_Weights.IMAGENET1K_V1
model = squeezenet1_1(weights=None)
if settings.model_weights is not None:
    model.load_state_dict(torch.load(settings.model_weights, map_location="cpu", weights_only=True))
model.eval()
transform = weights.transforms()
categories = weights.meta["categories"]


@app.agent(images_topic)
async def classify(stream):  # type: ignore[no-untyped-def]
    async for key, value in stream.items():
        request = parse_image_request(key, value)
        with tempfile.NamedTemporaryFile(suffix=".jpg") as file:
            s3.download_file(request.bucket or settings.s3_bucket, request.image_key, file.name)
            image = Image.open(file.name).convert("RGB")
        with torch.no_grad():
            probabilities = torch.softmax(model(transform(image).unsqueeze(0)), dim=1)[0]
        confidences, indexes = probabilities.topk(settings.top_k)
        await results_topic.send(key=request.image_key, value={
            "image_key": request.image_key,
            "time": time.time(),  # when it was classified, like visionstream's computed_at
            "top_k": [[int(i), categories[int(i)], float(c)] for i, c in zip(indexes, confidences)],
        })


@app.agent(results_topic)
async def store(stream):  # type: ignore[no-untyped-def]
    conn = await asyncpg.connect(settings.database_url.get_secret_value())
    try:
        async for result in stream:
            for rank, (class_index, category, confidence) in enumerate(result["top_k"], start=1):
                await conn.execute(
                    "INSERT INTO prediction_results (image_key, model, rank, category, class_index, confidence,"
                    " hostname, time) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
                    result["image_key"], "squeezenet1_1", rank, category, class_index, confidence,
                    settings.hostname, datetime.fromtimestamp(result["time"], tz=timezone.utc),
                )
    finally:
        await conn.close()


if __name__ == "__main__":
    sys.argv[0] = "naive_consumer"
    app.main()
