"""Prometheus metrics of a worker, served at GET /metrics on its web port.

Every metric is defined here, with bounded label sets: agent, outcome, stage and reason come from fixed
vocabularies, cameras are labelled by id up to ``metrics_max_cameras`` and as ``other`` after that, and no
label ever carries an image key. The data path is instrumented from outside where it can be: wrappers around
the stores, models, sinks, retry policy and batch handlers that the worker composes (see worker/assemble.py),
so pipeline, sink and batch-loop code stays free of metrics.

Consumer lag is computed at scrape time from the worker's own consumer positions, per assigned partition:

    lag = max(high watermark, read offset + 1) - committed offset

The high watermark is the broker's end of the partition as of the worker's last fetch. On the local Tansu
broker it is the last produce batch's base offset + 1, short of the true end when a batch held several records
(``visionstream produce keys`` batches; Faust's producers send one record per batch on the local stack,
PRODUCER_MAX_BATCH_SIZE=1): there the read offset raises it to what the worker has already seen, so the lag is
a lower bound while the worker is behind and exactly 0 once everything it was given is committed.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import platform
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import faust
import prometheus_client
from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from visionstream.core.faults import FaultReader, RetryPolicy, ServiceHealth
from visionstream.faust_ext.consumer_view import partition_progress, read_offsets

if TYPE_CHECKING:
    from visionstream.core.analyzers import Analyzer
    from visionstream.core.pipeline import Failed, ImageOutcome, InboundMessage
    from visionstream.faust_app import VisionApp

T = TypeVar("T")

# One registry per process, with the process collector (RSS, CPU seconds, open files) and no others.
REGISTRY = CollectorRegistry()
prometheus_client.ProcessCollector(registry=REGISTRY)

OTHER_CAMERAS = "other"
DEFAULT_MAX_CAMERAS = 50

# Seconds: a 64x64 JPEG decodes in well under a millisecond, a batch of 8 1080p frames through MTCNN on a CPU
# takes about a second, an outage can hold a sink for minutes.
_STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60, 300, 1800)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)

MESSAGES = Counter(
    "visionstream_messages", "Input messages handled, once their batch's sinks have them: outcome result, "
    "dead_letter (reason: the stage that failed: parse, fetch, decode, classify, detect, identify, store) "
    "or skipped (reason: why)",
    ["agent", "outcome", "reason"], registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "visionstream_batch_size", "Messages per batch taken from the input topic",
    ["agent"], buckets=_BATCH_BUCKETS, registry=REGISTRY,
)
STAGE_SECONDS = Histogram(
    "visionstream_stage_seconds", "Time per stage: fetch (S3, per batch), decode (per image or frame), "
    "analyze:<model> (per model call; a failing batch is bisected into more calls), device_decode:<model> (per "
    "batch of JPEGs decoded on the model's device), sink:<name> (per batch, retries included)",
    ["agent", "stage"], buckets=_STAGE_BUCKETS, registry=REGISTRY,
)
LATENCY = Histogram(
    "visionstream_latency_seconds", "End to end, until the result is written: frames from capture, images from "
    "their Kafka message timestamp",
    ["agent"], buckets=_LATENCY_BUCKETS, registry=REGISTRY,
)
FRAMES = Counter(
    "visionstream_frames", "Frames accounted for per camera: processed or skipped (drop rate: skipped / all)",
    ["camera", "outcome"], registry=REGISTRY,
)
FACES_DETECTED = Counter("visionstream_faces", "Faces detected per camera", ["camera"], registry=REGISTRY)
FACES_OVER_LIMIT = Counter(
    "visionstream_faces_over_limit", "Accepted faces left out of an image or frame as the least probable beyond "
    "VISIONSTREAM_FACE_MAX_PER_FRAME: nothing embeds, tracks or stores them", registry=REGISTRY,
)
RETRIES_IN_PROGRESS = Gauge(
    "visionstream_retries_in_progress", "Requests that failed and are being retried now, per service (S3, "
    "PostgreSQL): an outage waited out, or a poison message's bounded attempts (an outage: > 0 for long)",
    ["target"], registry=REGISTRY,
)
BREAKER_TRIPPED = Gauge(
    "visionstream_breaker_tripped", "1 when an agent's dead-letter breaker tripped: the stage dead-lettered "
    "more than VISIONSTREAM_BREAKER_DEAD_LETTERS messages of one error class within the window, and the agent "
    "holds its work until the fix is deployed (core/faults.py: DeadLetterBreaker)",
    ["agent", "stage", "error"], registry=REGISTRY,
)
DEVICE_DECODED = Counter(
    "visionstream_device_decoded_images", "JPEGs an analyzer decoded on its device (the classifier on CUDA: "
    "nvJPEG), by outcome: decoded, or refused by the device's decoder and decoded on the CPU instead",
    ["agent", "analyzer", "outcome"], registry=REGISTRY,
)
RETRIES = Counter("visionstream_retries", "Failed requests that were tried again, per service", ["target"],
                  registry=REGISTRY)
MODEL_INFO = Info("visionstream_model", "Models loaded by this worker, per agent and analyzer; version as in the "
                  "model_id (name@version) stored with every result; backend: what runs it (torch, onnxruntime, "
                  "openvino; dlib's network: openvino or dlib)", ["agent", "analyzer"], registry=REGISTRY)
WORKER_INFO = Info("visionstream_worker", "This worker", registry=REGISTRY)


class CameraLabels:
    """Camera ids as label values: the first ``limit`` cameras seen keep their id, later ones are ``other``."""

    def __init__(self, limit: int = DEFAULT_MAX_CAMERAS) -> None:
        self._limit = limit
        self._known: set[str] = set()

    def __call__(self, camera_id: str) -> str:
        if camera_id in self._known:
            return camera_id
        if len(self._known) < self._limit:
            self._known.add(camera_id)
            return camera_id
        return OTHER_CAMERAS


def timed(function: Callable[..., T], agent: str, stage: str) -> Callable[..., T]:
    """``function`` (run in an executor thread) timed into ``visionstream_stage_seconds``."""
    histogram = STAGE_SECONDS.labels(agent, stage)

    def run(*args: Any) -> T:
        with histogram.time():
            return function(*args)

    return run


class TimedStore:
    """An ImageStore whose batch fetches are timed (stage ``fetch``); batches with nothing to fetch are not."""

    def __init__(self, store: Any, agent: str) -> None:
        self._store = store
        self._histogram = STAGE_SECONDS.labels(agent, "fetch")

    async def get_many(self, requests: Sequence[tuple[str, str | None]]) -> list[Any]:
        if not requests:
            return await self._store.get_many(requests)
        with self._histogram.time():
            return await self._store.get_many(requests)


class TimedSink:
    """A sink whose batch writes are timed (stage ``sink:<name>``)."""

    def __init__(self, sink: Any, agent: str, name: str) -> None:
        self._sink = sink
        self._histogram = STAGE_SECONDS.labels(agent, f"sink:{name}")

    async def write(self, outcome: Any) -> None:
        with self._histogram.time():
            await self._sink.write(outcome)


class ObservedRetryPolicy(RetryPolicy):
    """The fault model's retry policy (faults.py), counting per service (``health.name``) the requests it
    retries and showing a request as in retry from its first failure until it succeeds or is given up.

    A failure that is not retried (a bad message, the last poison attempt) shows for no longer than it takes
    to decide that; ``visionstream_retries_total`` counts only the attempts that were made again.
    """

    async def run(self, what: str, operation: Callable[[], Awaitable[T]], classify: FaultReader,
                  health: ServiceHealth, max_attempts: int | None = None) -> T:
        in_progress = RETRIES_IN_PROGRESS.labels(health.name)
        failures = 0

        async def attempt() -> T:
            nonlocal failures
            if failures:
                RETRIES.labels(health.name).inc()
            try:
                return await operation()
            except Exception:
                failures += 1
                if failures == 1:
                    in_progress.inc()
                raise

        try:
            return await super().run(what, attempt, classify, health, max_attempts)
        finally:
            if failures:
                in_progress.dec()


def model_info(agent: str, analyzer: str, model_id: str, device: Any, precision: str, weights: str,
               backend: str) -> None:
    name, _, version = model_id.partition("@")
    # A weights file is named by its file name only: its folder says nothing about the model.
    if weights.startswith("file:"):
        weights = "file:" + weights.rsplit("/", 1)[-1]
    MODEL_INFO.labels(agent, analyzer).info({"name": name, "version": version, "device": str(device),
                                             "precision": precision, "weights": weights, "backend": backend})


def observed_analyzers(agent: str, analyzers: Sequence[Analyzer]) -> list[Analyzer]:
    """The analyzers with their input preparation from the decoded image (stage ``prepare:<model>``), their
    device JPEG decodes (``device_decode:<model>``, counted in ``visionstream_device_decoded_images``) and their
    model calls (``analyze:<model>``) timed, and their models in ``visionstream_model_info``."""
    observed = []
    for analyzer in analyzers:
        model = analyzer.model
        precision = getattr(model, "precision", "fp32") + (" compiled" if getattr(model, "compiled", False) else "")
        # dlib's embedder runs on the CPU and has no device of its own
        # what runs it: the classifier's and MTCNN's backend (auto's choice), dlib's network runtime, else torch
        backend = getattr(model, "backend", None) or getattr(model, "runtime", None) or "torch"
        model_info(agent, analyzer.name, analyzer.model_id, getattr(model, "device", "cpu"), precision,
                   getattr(model, "weights_source", "packaged"), backend)
        name = analyzer.model_id.partition("@")[0]
        prepare = analyzer.prepare and timed(analyzer.prepare, agent, f"prepare:{name}")
        decode = analyzer.decode_encoded and counted_device_decode(
            timed(analyzer.decode_encoded, agent, f"device_decode:{name}"), agent, analyzer.name)
        observed.append(dataclasses.replace(analyzer, prepare=prepare, decode_encoded=decode,
                                            run=timed(analyzer.run, agent, f"analyze:{name}")))
    return observed


def counted_device_decode(decode: Callable[[Sequence[Any]], list[Any]], agent: str,
                          analyzer: str) -> Callable[[Sequence[Any]], list[Any]]:
    decoded, refused = (DEVICE_DECODED.labels(agent, analyzer, outcome) for outcome in ("decoded", "refused"))

    def run(jpegs: Sequence[Any]) -> list[Any]:
        images = decode(jpegs)
        misses = sum(image is None for image in images)
        decoded.inc(len(images) - misses)
        refused.inc(misses)
        return images

    return run


def image_results(agent: str) -> Callable[[Sequence[InboundMessage], ImageOutcome], None]:
    """Records an S3-image batch's outcome: results with their latency, dead letters by stage."""
    results = MESSAGES.labels(agent, "result", "")
    latency = LATENCY.labels(agent)

    def record(messages: Sequence[InboundMessage], outcome: ImageOutcome) -> None:
        if outcome.results:
            results.inc(len(outcome.results))
            sent_at = {m.ref: m.timestamp for m in messages}
            for item in outcome.results:
                if (timestamp := sent_at.get(item.ref)) is not None:
                    latency.observe(max(outcome.computed_at - timestamp, 0.0))
        count_dead_letters(agent, outcome.failed)

    return record


def count_dead_letters(agent: str, failed: Sequence[Failed]) -> None:
    # By stage, a fixed vocabulary (pipeline.Failed); PostgreSQL's rejections (store) too: the sinks have
    # run by the time a batch is recorded.
    for failure in failed:
        MESSAGES.labels(agent, "dead_letter", failure.stage).inc()


class ObservedHandler:
    """A batch handler whose outcomes are recorded once its sinks have them (what was committed, not tried)."""

    def __init__(self, handler: Any, agent: str, record: Callable[[Sequence[InboundMessage], Any], None]) -> None:
        self._handler = handler
        self._record = record
        self._batch_size = BATCH_SIZE.labels(agent)

    async def handle(self, messages: Sequence[InboundMessage]) -> Any:
        outcome = await self._handler.handle(messages)
        self._batch_size.observe(len(messages))
        self._record(messages, outcome)
        return outcome


class ConsumerLagCollector(Collector):
    """``visionstream_consumer_lag`` per assigned partition, from the consumer's positions at scrape time."""

    def __init__(self, app: VisionApp) -> None:
        self._app = app

    def collect(self) -> Iterator[GaugeMetricFamily]:
        lag = GaugeMetricFamily(
            "visionstream_consumer_lag", "Records after the committed offset, per assigned partition: "
            "max(high watermark, read offset + 1) - committed offset (see visionstream/metrics.py)",
            labels=["topic", "partition"],
        )
        consumer = self._app.consumer
        read = read_offsets(consumer)
        for tp, progress in sorted(partition_progress(consumer, self._app.topics.acks_enabled_for).items()):
            if progress.committed is None:
                continue  # nothing committed yet: no position to measure from
            end = max(progress.highwater or 0, (read.get(tp) or -1) + 1)
            lag.add_metric([tp.topic, str(tp.partition)], max(end - progress.committed, 0))
        yield lag


THREAD_ROLES = ("event_loop", "decode", "model", "python_other", "native")


def pool_thread_prefix(agent: str, role: str) -> str:
    """The thread name prefix of an agent's ``decode`` or ``model`` pool (worker/assemble.py): ``thread_role``
    reads the role back from it."""
    return f"vs-{agent}-{role}"


def thread_role(name: str) -> str:
    """The role of a Python thread by its name; a pool's threads are "<prefix>_<n>"."""
    if name == "MainThread":
        return "event_loop"  # Faust's loop: consumer, producer, sinks' I/O, bookkeeping
    if name.startswith("vs-"):
        role = name.rpartition("-")[2].partition("_")[0]
        if role in ("decode", "model"):
            return role
    return "python_other"


class ThreadCpuCollector(Collector):
    """``visionstream_thread_cpu_seconds`` per role (Linux): where a worker's CPU goes without a profiler.

    Threads Python does not know (torch's intra-op OpenMP pool, which works for the model thread, and other
    libraries' own threads) count as ``native``. Read from /proc/self/task at scrape time, nothing per image.
    """

    def __init__(self, task_dir: str = "/proc/self/task") -> None:
        self._task_dir = task_dir
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._seen: dict[int, tuple[str, float]] = {}  # tid -> (role, seconds) at the last scrape
        self._ended = dict.fromkeys(THREAD_ROLES, 0.0)  # threads gone since: kept, so that counters never fall

    def _task_seconds(self) -> dict[int, float]:
        used = {}
        for tid in os.listdir(self._task_dir):
            try:
                with open(f"{self._task_dir}/{tid}/stat", "rb") as stat:
                    fields = stat.read().rsplit(b")", 1)[1].split()  # the name before ")" may hold spaces
            except OSError:
                continue  # the thread ended meanwhile
            used[int(tid)] = (int(fields[11]) + int(fields[12])) / self._tick  # utime + stime
        return used

    def _role(self, tid: int, names: dict[int | None, str]) -> str:
        if tid in names:
            return thread_role(names[tid])
        # Python forgets a thread (join returns) a moment before Linux drops its task: keep the role it had, or
        # its seconds would move to "native" and "decode" would fall (seen as a flaky test under load).
        seen = self._seen.get(tid)
        return seen[0] if seen else "native"

    def collect(self) -> Iterator[CounterMetricFamily]:
        if not os.path.isdir(self._task_dir):
            return
        tasks = self._task_seconds()
        names = {thread.native_id: thread.name for thread in threading.enumerate()}
        now = {tid: (self._role(tid, names), seconds) for tid, seconds in tasks.items()}
        for tid, (role, seconds) in self._seen.items():
            if tid not in now:
                self._ended[role] += seconds
        self._seen = now
        by_role = dict(self._ended)
        for role, seconds in now.values():
            by_role[role] += seconds
        family = CounterMetricFamily("visionstream_thread_cpu_seconds",
                                     "User+system CPU seconds of this worker's threads, per role", labels=["role"])
        for role, seconds in by_role.items():
            family.add_metric([role], seconds)
        yield family


def register_metrics(app: VisionApp) -> None:
    settings = app.settings
    WORKER_INFO.info({"app_id": settings.app_id, "hostname": settings.hostname,
                      "version": importlib.metadata.version("visionstream"), "faust": faust.__version__,
                      "python": platform.python_version(), "started": str(int(time.time()))})
    per_app = CollectorRegistry(auto_describe=False)
    per_app.register(ConsumerLagCollector(app))
    per_app.register(ThreadCpuCollector())

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        # A few hundred lines of text: cheap enough for the event loop, which also owns the consumer's state.
        body = prometheus_client.generate_latest(REGISTRY) + prometheus_client.generate_latest(per_app)
        return web.bytes(body, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})
