"""GET /metrics of a real worker during a run: counters agree with PostgreSQL, histograms fill, lag drains,
and a PostgreSQL outage shows up as retries in progress."""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from visionstream.core.db import connect
from visionstream.core.faults import BadMessage, ServiceHealth
from visionstream.core.kafka_client import kafka_client_kwargs
from visionstream.dev.samples import sample_images
from visionstream.dev.stack import free_port
from visionstream.dev.workerproc import WorkerProcess
from visionstream.frames.producer import (
    CaptureOptions,
    VideoSource,
    capture_frames,
    produce_frames,
)
from visionstream.frames.records import frame_headers
from visionstream.images.producer import produce_keys
from visionstream.metrics import REGISTRY, CameraLabels, ObservedRetryPolicy

from ..media import ARCADE_VIDEO, media_file
from .stacks import seed_stack

IMAGES = 120
FRAMES = 12


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def series(samples, name: str) -> dict[frozenset, float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


async def _keys(items):
    for item in items:
        yield item


async def _wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (result := await predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.5)
    return result


def test_camera_labels_are_capped():
    labels = CameraLabels(2)
    assert [labels(c) for c in ("a", "b", "c", "a", "d", "b")] == ["a", "b", "other", "a", "other", "b"]


def test_the_observed_retry_policy_counts_what_it_retries_and_shows_it_in_progress():
    """Outage waits and poison attempts are retries in progress until the request ends; a bad message is not
    retried, so it counts no retry and leaves nothing in progress."""
    target = f"unit-{uuid.uuid4().hex[:8]}"

    def sample(name: str) -> float:
        return REGISTRY.get_sample_value(name, {"target": target}) or 0.0

    seen_in_progress = []

    async def sleep(seconds: float) -> None:
        seen_in_progress.append(sample("visionstream_retries_in_progress"))

    def failing(errors):
        async def operation() -> str:
            if errors:
                raise errors.pop(0)
            return "ok"
        return operation

    async def probe_fails() -> None:
        raise ConnectionRefusedError("down")

    async def probe_works() -> None:
        return None

    async def scenario():
        policy = ObservedRetryPolicy(3, sleep=sleep)
        down = ServiceHealth(target, probe_fails)
        # An outage: three failures waited out, then the request succeeds.
        assert await policy.run("op", failing([TimeoutError()] * 3), lambda exc: None, down) == "ok"
        assert (seen_in_progress, sample("visionstream_retries_total")) == ([1, 1, 1], 3)
        assert sample("visionstream_retries_in_progress") == 0
        # Poison: 3 attempts while the service works (2 retries), then a dead letter.
        with pytest.raises(BadMessage):
            await policy.run("op", failing([ValueError("poison")] * 5), lambda exc: None,
                             ServiceHealth(target, probe_works))
        assert sample("visionstream_retries_total") == 5 and sample("visionstream_retries_in_progress") == 0
        # A bad message: given up at once.
        with pytest.raises(BadMessage):
            await policy.run("op", failing([BadMessage("bad")]), lambda exc: None, down)
        assert sample("visionstream_retries_total") == 5 and sample("visionstream_retries_in_progress") == 0

    asyncio.run(scenario())


@pytest.fixture(scope="module")
def run(stack, tmp_path_factory):
    name = f"metrics{uuid.uuid4().hex[:8]}"
    stale = f"{name}-stale"
    overrides = dict(
        app_id=name, images_topic=f"{name}-images", predictions_topic=f"{name}-predictions",
        dead_letter_topic=f"{name}-dead", frames_topic=f"{name}-frames", image_faces_topic=f"{name}-image-faces",
        processed_frames_topic=f"{name}-processed", identified_faces_topic=f"{name}-identified",
        topic_partitions=2, batch_size=16, top_k=1, allow_random_weights=True, compile_model=False, device="cpu",
        hostname=f"host-{name}", web_port=free_port(), face_detect_max_side=640,
        # Live mode with room for a slow CPU, and one camera whose frames are always too old: skips.
        frame_mode="live", max_frame_lag_seconds=120, camera_max_frame_lag=json.dumps({stale: 0.000001}),
    )
    settings = stack.settings(**{**overrides, "camera_max_frame_lag": {stale: 0.000001}})
    images = {f"{name}/{label}/{file_name}": data for label, file_name, data in sample_images(IMAGES)}

    asyncio.run(seed_stack(settings, {**images, f"{name}/bad/corrupt.jpg": b"not a JPEG"}))
    worker = WorkerProcess(stack.env(**overrides), tmp_path_factory.mktemp("metrics-worker") / "worker.log",
                           settings.web_port)
    try:
        worker.wait_ready()
        yield settings, images, stale, worker
    finally:
        worker.stop()


def test_metrics_agree_with_postgres_during_and_after_a_run(run, stack):
    settings, images, stale, worker = run
    port = settings.web_port
    camera = f"{settings.app_id}-arcade"
    scrapes = []

    async def scenario():
        keys = [(k, settings.s3_bucket) for k in images]
        keys += [(f"{settings.app_id}/bad/corrupt.jpg", None), (f"{settings.app_id}/missing.jpg", None)]
        assert await produce_keys(settings, _keys(keys)) == len(keys)
        producer = AIOKafkaProducer(**kafka_client_kwargs(settings))
        await producer.start()
        try:
            await producer.send_and_wait(settings.images_topic, b"{not json", key=b"malformed")
            await producer.send_and_wait(settings.frames_topic, b"not a JPEG", key=b"broken-camera",
                                         headers=frame_headers(1, time.time(), 640, 360))
        finally:
            await producer.stop()
        arcade = str(media_file(*ARCADE_VIDEO))
        sources = [VideoSource(arcade, camera), VideoSource(arcade, stale)]
        sent = await produce_frames(settings, capture_frames(
            sources, CaptureOptions(max_side=640, realtime=False, limit=FRAMES)))
        assert sum(sent.values()) == 2 * FRAMES

        conn = await connect(settings)
        try:
            async def done():
                scrapes.append(await asyncio.to_thread(scrape, port))
                results = await conn.fetchval(
                    "SELECT count(DISTINCT image_key) FROM prediction_results WHERE hostname = $1", settings.hostname)
                errors = await conn.fetchval(
                    "SELECT count(*) FROM processing_errors WHERE hostname = $1", settings.hostname)
                frames = await conn.fetchval(
                    "SELECT count(*) FROM frame_results WHERE hostname = $1", settings.hostname)
                return results == len(images) and errors == 4 and frames == 2 * FRAMES

            await _wait_until(done, 300, "every image and frame to have a result or an error")
            errors = dict(await conn.fetch(
                "SELECT stage || '/' || topic, count(*) FROM processing_errors WHERE hostname = $1 GROUP BY 1",
                settings.hostname))
            frames = await conn.fetch(
                "SELECT camera_id, status, skip_reason, face_count FROM frame_results WHERE hostname = $1",
                settings.hostname)
        finally:
            await conn.close()
        return errors, frames

    errors, frames = asyncio.run(scenario())
    assert errors == {f"decode/{settings.images_topic}": 1, f"fetch/{settings.images_topic}": 1,
                      f"parse/{settings.images_topic}": 1, f"decode/{settings.frames_topic}": 1}

    # Counters are recorded after the sinks wrote, so once PostgreSQL has everything the metrics do too
    # (and the last commits reach the lag within a commit interval).
    deadline = time.monotonic() + 30
    while True:
        samples = scrape(port)
        lag = series(samples, "visionstream_consumer_lag")
        if (value(samples, "visionstream_messages_total", agent="classify", outcome="result", reason="") == IMAGES
                and lag and not any(lag.values())) or time.monotonic() > deadline:
            break
        time.sleep(0.5)

    assert value(samples, "visionstream_messages_total", agent="classify", outcome="result", reason="") == IMAGES
    for stage in ("parse", "fetch", "decode"):
        assert value(samples, "visionstream_messages_total", agent="classify", outcome="dead_letter",
                     reason=stage) == 1, stage
    assert value(samples, "visionstream_messages_total", agent="faces", outcome="dead_letter", reason="decode") == 1
    processed = [r for r in frames if r["status"] == "processed"]
    skipped = [r for r in frames if r["status"] == "skipped"]
    assert {r["camera_id"] for r in processed} == {camera} and {r["camera_id"] for r in skipped} == {stale}
    assert value(samples, "visionstream_messages_total", agent="faces", outcome="result", reason="") == FRAMES
    assert value(samples, "visionstream_messages_total", agent="faces", outcome="skipped", reason="lag") == FRAMES
    assert value(samples, "visionstream_frames_total", camera=camera, outcome="processed") == FRAMES
    assert value(samples, "visionstream_frames_total", camera=stale, outcome="skipped") == FRAMES
    faces = sum(r["face_count"] for r in processed)
    assert faces >= FRAMES  # the arcade clip has 3-8 faces per frame
    assert value(samples, "visionstream_faces_total", camera=camera) == faces

    # Histograms have observations: every stage, batch sizes, one latency per result. The S3 images run both
    # analyzers (the default) on one decode.
    for agent, stages in {"classify": ("fetch", "decode", "prepare:squeezenet1_1", "prepare:mtcnn",
                                       "analyze:squeezenet1_1", "analyze:mtcnn", "sink:postgres", "sink:topics"),
                          "faces": ("decode", "prepare:mtcnn", "analyze:mtcnn", "sink:postgres",
                                    "sink:topics")}.items():
        for stage in stages:
            count = value(samples, "visionstream_stage_seconds_count", agent=agent, stage=stage)
            total = value(samples, "visionstream_stage_seconds_sum", agent=agent, stage=stage)
            assert count > 0 and total > 0, (agent, stage)
    # One decode per image (the bad one included), then each analyzer's input from the decoded pixels.
    assert value(samples, "visionstream_stage_seconds_count", agent="classify", stage="decode") == IMAGES + 1
    for model in ("squeezenet1_1", "mtcnn"):
        assert value(samples, "visionstream_stage_seconds_count", agent="classify",
                     stage=f"prepare:{model}") == IMAGES
    assert value(samples, "visionstream_batch_size_sum", agent="classify") == IMAGES + 3
    assert value(samples, "visionstream_batch_size_sum", agent="faces") == 2 * FRAMES + 1
    assert value(samples, "visionstream_latency_seconds_count", agent="classify") == IMAGES
    assert value(samples, "visionstream_latency_seconds_count", agent="faces") == FRAMES
    latency = value(samples, "visionstream_latency_seconds_sum", agent="classify") / IMAGES
    assert 0 < latency < 120

    # CPU per thread role: the decode and model pools worked, and no more CPU is counted than the process used.
    threads = {dict(labels)["role"]: v for labels, v in series(samples, "visionstream_thread_cpu_seconds_total").items()}
    assert threads["decode"] > 0 and threads["model"] > 0 and threads["event_loop"] > 0, threads
    assert sum(threads.values()) <= value(samples, "process_cpu_seconds_total") + 0.5, threads

    # Lag: a series per assigned partition of the input topics, behind during the run, 0 at the end.
    topics = {dict(labels)["topic"] for labels in lag}
    assert {settings.images_topic, settings.frames_topic} <= topics
    assert {dict(labels)["partition"] for labels in lag} == {"0", "1"}
    assert not any(lag.values()), lag
    peak = max(v for s in scrapes for labels, v in series(s, "visionstream_consumer_lag").items()
               if dict(labels)["topic"] == settings.images_topic)
    assert peak > 0

    models = {(dict(labels)["agent"], dict(labels)["analyzer"]): dict(labels)
              for labels in series(samples, "visionstream_model_info")}
    # (and ("faces", "identify") when people are enrolled in this stack's database by another test module)
    assert {("classify", "classify"), ("classify", "faces"), ("faces", "faces")} <= set(models)
    classifier = models[("classify", "classify")]
    assert (classifier["name"], classifier["device"]) == ("squeezenet1_1", "cpu") and classifier["version"]
    for agent in ("classify", "faces"):
        assert models[(agent, "faces")]["name"] == "mtcnn"
        assert models[(agent, "faces")]["version"].startswith("facenet-pytorch-"), models[(agent, "faces")]
    # what runs each model: auto's choice on this CPU (the rows' backend column says the same)
    assert {models[key]["backend"] for key in models} <= {"torch", "onnxruntime", "openvino", "dlib"}, models
    (worker_info,) = series(samples, "visionstream_worker_info")
    assert dict(worker_info)["hostname"] == settings.hostname
    assert value(samples, "process_resident_memory_bytes") > 0
    assert value(samples, "visionstream_retries_in_progress", target="PostgreSQL") == 0

    # The Grafana dashboard and the Prometheus rules use only metrics a worker serves.
    deploy = Path(__file__).resolve().parents[2] / "deploy"
    used = set(re.findall(r"\b(?:visionstream|process)_[a-z_]+", (deploy / "grafana" / "visionstream.json").read_text()
                          + (deploy / "prometheus" / "visionstream-rules.yml").read_text()))
    assert used - {name for name, _ in samples} == set()


def test_a_postgres_outage_shows_as_retries_in_progress(run, stack):
    settings, images, _, worker = run
    port = settings.web_port
    before = scrape(port)
    results_before = value(before, "visionstream_messages_total", agent="classify", outcome="result", reason="")
    keys = [(k, settings.s3_bucket) for k in list(images)[:20]]  # already written: idempotent, still counted
    stack.stop_server("postgres")
    try:
        assert asyncio.run(produce_keys(settings, _keys(keys))) == len(keys)
        deadline = time.monotonic() + 60
        while value(scrape(port), "visionstream_retries_in_progress", target="PostgreSQL") < 1:
            assert time.monotonic() < deadline, "no retry in progress while PostgreSQL is down"
            time.sleep(0.3)
    finally:
        stack.up()
    deadline = time.monotonic() + 60
    while True:
        samples = scrape(port)
        if (value(samples, "visionstream_messages_total", agent="classify", outcome="result", reason="")
                == results_before + len(keys)) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert value(samples, "visionstream_messages_total", agent="classify", outcome="result",
                 reason="") == results_before + len(keys)
    assert value(samples, "visionstream_retries_in_progress", target="PostgreSQL") == 0
    assert value(samples, "visionstream_retries_total", target="PostgreSQL") >= 1
