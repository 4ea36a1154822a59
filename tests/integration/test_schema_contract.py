"""The topics' contract holds for a client that is not ours: librdkafka's (confluent-kafka) producer sends an
image request and a camera frame built from the schemas alone (visionstream/schemas), a real worker processes
them, and its consumer reads a prediction, a processed frame and a dead letter (with Kafka Connect's error
headers) that each validate against their topic's schema."""

from __future__ import annotations

import asyncio
import io
import json
import time
import uuid

import pytest
from PIL import Image

from visionstream.dev.samples import sample_images
from visionstream.dev.stack import free_port
from visionstream.dev.workerproc import WorkerProcess
from visionstream.schemas import message_errors, schema_of_topic, schemas

from ..media import squeezenet_weights
from .stacks import own_topics, seed_stack

confluent_kafka = pytest.importorskip("confluent_kafka", reason="the test extra's confluent-kafka")


def _const(schema: dict, ref_or_field: dict) -> object:
    """A field's constant (the record version), following a reference into common.json."""
    if "$ref" in ref_or_field:
        file, pointer = ref_or_field["$ref"].split("#")
        target = schemas()[file]
        for part in pointer.strip("/").split("/"):
            target = target[part]
        return target["const"]
    return ref_or_field["const"]


def _request_from_schema(image_key: str) -> bytes:
    value_schema = schema_of_topic("images_topic")["properties"]["value"]
    assert value_schema["required"] == ["image_key"]
    value = {"image_key": image_key, "v": _const(value_schema, value_schema["properties"]["v"])}
    return json.dumps(value).encode()


def _frame_headers_from_schema(seq: int, captured: float, width: int, height: int) -> list[tuple[str, bytes]]:
    header_schema = schema_of_topic("frames_topic")["properties"]["headers"]
    values = {"vs-v": header_schema["properties"]["vs-v"]["const"], "vs-seq": str(seq), "vs-captured": f"{captured:.3f}",
              "vs-width": str(width), "vs-height": str(height)}
    assert sorted(values) == sorted(header_schema["required"])
    return [(name, text.encode()) for name, text in values.items()]


def _consume(settings, topic: str, wanted, timeout: float) -> list:
    """Messages of ``topic`` read with confluent-kafka from the start until ``wanted(messages)`` holds."""
    consumer = confluent_kafka.Consumer({
        "bootstrap.servers": settings.kafka_bootstrap, "group.id": f"contract-{uuid.uuid4().hex[:8]}",
        "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    messages: list = []
    deadline = time.monotonic() + timeout
    try:
        while not wanted(messages):
            assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s reading {topic}: {len(messages)}"
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                messages.append(message)
    finally:
        consumer.close()
    return messages


def test_a_producer_written_from_the_schemas_drives_a_worker(stack, tmp_path):
    name = f"con{uuid.uuid4().hex[:8]}"
    weights = squeezenet_weights()
    overrides = dict(app_id=name, **own_topics(name), topic_partitions=1, image_analyzers="classify",
                     frame_analyzers="faces", frame_mode="archive", model_weights=weights,
                     allow_random_weights=weights is None, compile_model=False, device="cpu",
                     hostname=f"host-{name}")
    settings = stack.settings(**overrides)
    _, file_name, jpeg = next(sample_images(1))
    image_key = f"{name}/{file_name}"
    asyncio.run(seed_stack(settings, {image_key: jpeg}))
    width, height = Image.open(io.BytesIO(jpeg)).size

    port = free_port()
    worker = WorkerProcess(stack.env(**overrides, web_port=port), tmp_path / "worker.log", port)
    try:
        worker.wait_ready()
        producer = confluent_kafka.Producer({"bootstrap.servers": settings.kafka_bootstrap, "acks": "all"})
        delivered: dict[bytes, tuple[str, int, int]] = {}

        def report(error, message) -> None:
            assert error is None, error
            delivered[message.key()] = (message.topic(), message.partition(), message.offset())

        request, future = _request_from_schema(image_key), _request_from_schema(f"{name}/future.jpg")
        future = future.replace(b'"v": 1', b'"v": 2')  # a version this worker does not read: a dead letter
        headers = _frame_headers_from_schema(7, time.time(), width, height)
        assert message_errors("images_topic", image_key.encode(), request) == []
        assert message_errors("images_topic", b"future", future) != []
        assert message_errors("frames_topic", b"door", jpeg, headers) == []
        producer.produce(settings.images_topic, request, image_key.encode(), on_delivery=report)
        producer.produce(settings.images_topic, future, b"future", on_delivery=report)
        producer.produce(settings.frames_topic, jpeg, b"door", headers=headers, on_delivery=report)
        assert producer.flush(30) == 0

        (prediction,) = _consume(settings, settings.predictions_topic, lambda m: len(m) >= 1, 180)
        (frame,) = _consume(settings, settings.processed_frames_topic, lambda m: len(m) >= 1, 180)
        (letter,) = _consume(settings, settings.dead_letter_topic, lambda m: len(m) >= 1, 60)
    finally:
        assert worker.stop() == 0

    for setting, message in (("predictions_topic", prediction), ("processed_frames_topic", frame),
                             ("dead_letter_topic", letter)):
        assert message_errors(setting, message.key(), message.value(), message.headers()) == [], setting
    assert json.loads(prediction.value())["image_key"] == image_key
    processed = json.loads(frame.value())
    assert (frame.key(), processed["seq"], processed["status"]) == (b"door", 7, "processed")
    record, connect = json.loads(letter.value()), dict(letter.headers())
    topic, partition, offset = delivered[b"future"]
    assert (record["stage"], record["topic"], record["offset"]) == ("parse", topic, offset)
    assert (connect["__connect.errors.topic"], connect["__connect.errors.partition"],
            connect["__connect.errors.offset"]) == (topic.encode(), str(partition).encode(), str(offset).encode())
    assert b"unknown record version 2" in connect["__connect.errors.exception.message"]
