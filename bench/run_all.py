"""`make bench`: every visionstream benchmark in one run; a table on stdout and BENCHMARKS.md.

    .venv/bin/python bench/run_all.py [--only model|backends|offline|default|camera|facepeer|streaming|peer|naive|
                                      transport ...] [--full] [--keys 2000] [--default-keys 600] [--no-write]
                                      [--no-profile]
    .venv/bin/python bench/run_all.py --from-json .visionstream/bench/last.json --notes NOTES.md

Sections (all on this machine, CPU only unless CUDA is present):
  model      SqueezeNet ceiling per execution path, from bench/bench_model.py (the production classifier
             compiled as a worker runs it; a raw fp32 torch.compile path only with --full)
  offline    decode + preprocess + model over in-memory ImageNet-like JPEGs, decode threads and the model
             thread pipelined like the worker
  backends   the classifier as a worker builds it (VISIONSTREAM_INFERENCE_BACKEND=auto, measured afresh) vs
             torch, ONNX Runtime and OpenVINO at bs 32, top-1 agreement with fp32 (bench/pipeline_targets.py)
  default    the default image pipeline (classify + faces): its offline ceiling (one decode, both models per
             batch) and one streaming worker over --default-keys keys
  camera     the arcade clip's frames/s with identification (one person of the clip enrolled) vs detection
             alone, decode + models in one process (bench/pipeline_targets.py)
  facepeer   MTCNN vs the face detectors whose models ship in PyPI wheels (BlazeFace, Haar, dlib HOG) on the
             arcade clip: frames/s and recall against the faces the other detectors agree on (bench/face_peers.py;
             the peers needing numpy<2 run in their own venv, made on first use)
  streaming  keys in Kafka -> S3 GET -> decode -> model -> PostgreSQL with 1 and 2 `faust -A visionstream`
             workers, images/s from prediction_results.time (middle 80% of results by time); CPU per
             image per process, and inside the workers per thread role from their /metrics
             (visionstream_thread_cpu_seconds_total: "outside decode + model" is the event loop and the
             other Python threads)
  peer       the same bulk job as a Ray Data user writes it (bench/ray_peer.py: read_binary_files from the
             same S3 objects, map_batches with the same decode and a predictor class holding the same
             compiled model, write_sql to the same table), measured the same way; skipped with the reason
             when Ray is not installed (`.venv/bin/pip install -e '.[bench]'`, which `make bench` does)
  naive      bench/naive_consumer.py over the same keys, measured the same way
  transport  50 KB frames, N cameras at 15 fps, through a Faust pass-through agent (local-broker tuning, and
             Faust's default producer batching) vs a raw aiokafka one

A private local stack (Tansu, SeaweedFS, PostgreSQL on free ports, under a temporary folder) is started for
streaming, naive and transport, and stopped at the end. Benchmarks are not tests: nothing asserts on speed.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

import bench_model  # noqa: E402  (bench/ is not a package)
import face_peers  # noqa: E402
import pipeline_targets  # noqa: E402
from cpu_accounting import cpu_seconds  # noqa: E402

SECTIONS = ("model", "backends", "offline", "default", "camera", "facepeer", "streaming", "peer", "naive",
            "transport")
TRANSPORT_KINDS = {
    "faust": "Faust pass-through agent (local-broker tuning)",
    "faust-batched": "Faust pass-through agent (Faust's default producer batching)",
    "raw": "raw aiokafka pass-through",
}
WEIGHTS = bench_model.DEFAULT_WEIGHTS
JPEG_QUALITY = 99  # sample_images at q99: ~110 KB per 500x375 JPEG, like ImageNet's photos
DISTINCT_IMAGES = 200
TARGETS = {
    "classifier model path / best of ORT and OpenVINO": 1.0,
    "default image pipeline (classify + faces) streaming / offline ceiling": 0.85,
    "camera frames/s: detection + identification / detection alone": 0.9,
    "streaming / offline ceiling": 0.85,
    "streaming / naive": 6.0,
    "visionstream bulk / Ray Data peer": 1.0,
    "CPU fast path / fp32 eager": 3.0,
    "visionstream transport / raw aiokafka": 0.9,
}
# Lower is better: worker core-ms per image in its event loop and other Python threads (not decode, not model).
CEILINGS = {"worker CPU per image outside decode + model (core-ms)": 1.5}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# Machine ---------------------------------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                 platform.processor())
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
    simd = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16") if f in flags]
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "simd": " ".join(simd) or "none of avx2/avx512/amx",
        "ram_gb": round(int(meminfo["MemTotal"].split()[0]) / 1024**2, 1),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
        "python": platform.python_version(),
        "load_start": os.getloadavg(),
    }


def weights_file(tmp: Path) -> tuple[Path, bool]:
    """The shared real weights, or random ones saved to a file (figures stay valid; labels do not)."""
    if WEIGHTS.is_file():
        return WEIGHTS, True
    from torchvision.models import squeezenet1_1

    path = tmp / "squeezenet1_1_random.pth"
    torch.save(squeezenet1_1(weights=None).state_dict(), path)
    log(f"!! {WEIGHTS} not found: using random weights (speed figures are valid, agreement is not meaningful)")
    return path, False


def imagenet_like_jpegs(count: int) -> list[bytes]:
    from visionstream.dev.samples import PHOTOS, sample_images

    # The first len(PHOTOS) are the original photos at their own sizes: skip them.
    return [data for _, _, data in sample_images(count + len(PHOTOS), quality=JPEG_QUALITY)][len(PHOTOS):]


# 1. Model ceiling -------------------------------------------------------------------------------------------

def section_model(weights: Path, full: bool) -> dict[str, Any]:
    state = torch.load(weights, map_location="cpu", weights_only=True)
    photos = bench_model.colour_photos()
    images = list(bench_model.variants(photos, 300 if full else 200))
    inputs = torch.stack([bench_model.TRANSFORM(image) for image in images])
    rows = bench_model.bench_models(state, torch.device("cpu"), [1, 32], 3.0 if full else 1.0, full, inputs, weights)
    eager = next(r for r in rows if r["path"] == "fp32 eager NCHW")
    fast = max((r for r in rows if r is not eager and r["agreement"] >= 0.99), key=lambda r: r["img/s@32"])
    production = next(r for r in rows if r["path"].startswith("classifier precision=auto"))
    return {"rows": rows, "eager": eager, "fast": fast, "production": production,
            "fast_ratio": fast["img/s@32"] / eager["img/s@32"],
            "production_ratio": production["img/s@32"] / eager["img/s@32"]}


# 2. Offline ceiling -----------------------------------------------------------------------------------------

def pipelined_rate(classifier: Callable, preprocess: Callable, jpegs: list[bytes], decode_threads: int,
                   batch: int, seconds: float, overlap: bool, stack: Callable = np.stack) -> tuple[float, float]:
    """Images/s through decode threads and one model thread (batch i+1 decodes during model(i) with overlap),
    and this process's CPU per image in core-ms (decode + model: what a worker cannot do without)."""
    with ThreadPoolExecutor(decode_threads) as decoders, ThreadPoolExecutor(1) as model_thread:
        counter = iter(range(1 << 62))

        def submit_batch() -> list:
            return [decoders.submit(preprocess, jpegs[next(counter) % len(jpegs)]) for _ in range(batch)]

        def run(budget: float) -> tuple[float, float]:
            ahead = deque([submit_batch()] + ([submit_batch()] if overlap else []))
            running = None
            done, start, cpu_start = 0, time.perf_counter(), time.process_time()
            while time.perf_counter() - start < budget:
                pixels = stack([f.result() for f in ahead.popleft()])
                if overlap:
                    ahead.append(submit_batch())
                if running is not None:
                    running.result()
                    done += batch
                running = model_thread.submit(classifier, pixels)
                if not overlap:
                    running.result()
                    done += batch
                    running = None
                    ahead.append(submit_batch())
            if running is not None:
                running.result()
                done += batch
            for futures in ahead:
                for f in futures:
                    f.result()
            cpu_ms = 1000 * (time.process_time() - cpu_start) / (done + batch * len(ahead))
            return done / (time.perf_counter() - start), cpu_ms

        run(1.0)  # warm-up
        return run(seconds)


# (decode threads, torch threads (None: torch's default), overlap, what)
OFFLINE_CONFIGS = ((2, None, True, "decode || model (like a worker: batches in flight)"),
                   (1, None, True, "decode || model"),
                   (2, 1, True, "decode || model"),
                   (1, 1, True, "decode || model"),
                   (2, None, False, "decode then model, per batch (no overlap)"))


def section_offline(weights: Path, real: bool, full: bool) -> dict[str, Any]:
    from visionstream.classification.model import Classifier

    jpegs = imagenet_like_jpegs(DISTINCT_IMAGES)  # the streaming runs' own objects: the same work
    kb = sum(map(len, jpegs)) / len(jpegs) / 1000
    default_threads = torch.get_num_threads()
    seconds = 5.0 if full else 3.0
    rows = []
    # Built once, as a worker builds it (backend and precision auto, compiled if torch is chosen); the thread
    # count is set per run.
    classifier = Classifier(weights_path=weights, device="cpu", precision="auto", top_k=5,
                            allow_random_weights=not real, compile_for_batch=32, backend="auto", batch_size=32)
    preprocess = classifier.preprocessor(89_478_485)
    try:
        for decode_threads, torch_threads, overlap, what in OFFLINE_CONFIGS:
            torch_threads = torch_threads or default_threads
            torch.set_num_threads(torch_threads)
            rate, cpu_ms = pipelined_rate(classifier, preprocess, jpegs, decode_threads, 32, seconds, overlap)
            row = {"decode_threads": decode_threads, "torch_threads": torch_threads, "overlap": overlap,
                   "what": what, "precision": f"{classifier.backend} {classifier.precision}", "img/s": round(rate, 1),
                   "cpu_ms_per_image": round(cpu_ms, 2)}
            rows.append(row)
            log(f"  offline {what:52s} decode={decode_threads} torch={torch_threads}: {rate:7.1f} img/s, "
                f"{cpu_ms:.2f} core-ms/image")
    finally:
        torch.set_num_threads(default_threads)
    best = max(rows, key=lambda r: r["img/s"])
    return {"rows": rows, "best": best, "mean_kb": round(kb, 1)}


DEFAULT_OFFLINE_CONFIGS = ((2, True, "decode || models (like a worker)"),
                           (2, False, "decode then models, per batch (no overlap)"))


def section_default_offline(weights: Path, real: bool, full: bool) -> dict[str, Any]:
    """The default image pipeline's ceiling: one decode per image for both analyzers (core/pipeline.py's
    Prepare), then classify and faces on the batch in the model thread, batches in flight like a worker. Run on
    the streaming run's own JPEGs (MTCNN's cost follows the faces in them) for 10 s: a 3 s run over 64 other
    images read 1.13x *below* the streaming worker on 2026-12-06."""
    from visionstream.core.analyzers import build_analyzers
    from visionstream.core.imaging import DecodeLimits
    from visionstream.core.pipeline import Prepare
    from visionstream.settings import load_settings

    settings = load_settings(model_weights=str(weights), device="cpu", allow_random_weights=not real,
                             image_analyzers="classify,faces")
    analyzers = build_analyzers(settings.image_analyzers, settings)
    prepare = Prepare(analyzers, DecodeLimits.from_settings(settings))

    def models(items: list) -> list:
        return [analyzer.run([inputs[i] for _, inputs in items]) for i, analyzer in enumerate(analyzers)]

    jpegs = imagenet_like_jpegs(DISTINCT_IMAGES)
    rows = []
    for decode_threads, overlap, what in DEFAULT_OFFLINE_CONFIGS:
        rate, cpu_ms = pipelined_rate(models, prepare, jpegs, decode_threads, settings.batch_size,
                                      20.0 if full else 10.0, overlap, stack=list)
        rows.append({"what": what, "decode_threads": decode_threads, "img/s": round(rate, 1),
                     "cpu_ms_per_image": round(cpu_ms, 2)})
        log(f"  offline classify + faces, {what:44s}: {rate:7.1f} img/s, {cpu_ms:.2f} core-ms/image")
    classifier = analyzers[0].model
    return {"rows": rows, "best": max(rows, key=lambda r: r["img/s"]),
            "classifier": f"{classifier.backend} {classifier.precision}"}


# Local stack -----------------------------------------------------------------------------------------------

class Bench:
    """The private stack, the uploaded keys and helpers to run workers against them."""

    def __init__(self, tmp: Path, weights: Path, real: bool, keys: int) -> None:
        from visionstream.dev.stack import LocalStack, StackPorts, free_ports

        self.weights, self.real, self.n_keys = weights, real, keys
        # Worker logs outlive the run (the stack's data does not): .visionstream/bench/logs-<time>/
        self.tmp = ROOT / ".visionstream" / "bench" / time.strftime("logs-%Y%m%d-%H%M%S")
        self.tmp.mkdir(parents=True, exist_ok=True)
        kafka, s3, postgres = free_ports(3)
        self.stack = LocalStack(tmp / "stack-data", StackPorts(kafka=kafka, s3=s3, postgres=postgres))
        self.keys: list[str] = []

    def up(self) -> None:
        started = time.monotonic()
        self.stack.up()
        log(f"local stack up in {time.monotonic() - started:.1f}s")

    def down(self) -> None:
        self.stack.down()

    def settings(self, **overrides: Any) -> Any:
        return self.stack.settings(**overrides)

    async def upload(self) -> None:
        from visionstream.core.db import migrate
        from visionstream.core.s3 import s3_client

        settings = self.settings()
        await migrate(settings)
        if self.keys:
            return
        jpegs = imagenet_like_jpegs(DISTINCT_IMAGES)
        self.mean_kb = round(sum(map(len, jpegs)) / len(jpegs) / 1000, 1)
        keys = [f"bench/{i % 8}/{i:06d}.jpg" for i in range(self.n_keys)]
        started = time.monotonic()
        limit = asyncio.Semaphore(32)
        async with s3_client(settings) as client:
            async def put(index: int, key: str) -> None:
                async with limit:
                    await client.put_object(Bucket=settings.s3_bucket, Key=key, Body=jpegs[index % len(jpegs)])

            await asyncio.gather(*(put(i, k) for i, k in enumerate(keys)))
        self.keys = keys
        log(f"uploaded {len(keys)} objects ({DISTINCT_IMAGES} distinct JPEGs, mean {self.mean_kb} KB) "
            f"in {time.monotonic() - started:.1f}s")

    def run_overrides(self, name: str, image_analyzers: str = "classify", **extra: Any) -> dict[str, Any]:
        from visionstream.dev.stack import free_port

        return dict(app_id=name, images_topic=f"{name}-images", predictions_topic=f"{name}-predictions",
                    dead_letter_topic=f"{name}-dead", frames_topic=f"{name}-frames",
                    processed_frames_topic=f"{name}-processed", identified_faces_topic=f"{name}-faces",
                    model_weights=self.weights, allow_random_weights=not self.real, hostname=f"h-{name}",
                    # The classifier's path alone unless asked: comparable with its offline ceiling.
                    image_analyzers=image_analyzers, web_port=free_port(), **extra)

    def env(self, overrides: dict[str, Any]) -> dict[str, str]:
        return self.stack.env(**overrides)

    async def prepare_run(self, overrides: dict[str, Any]) -> Any:
        from visionstream.core.db import connect
        from visionstream.topics import ensure_topics

        settings = self.settings(**overrides)
        await ensure_topics(settings)
        conn = await connect(settings)
        try:
            await conn.execute("TRUNCATE prediction_results, processing_errors")  # our private database
        finally:
            await conn.close()
        return settings

    async def produce(self, settings: Any, limit: int | None = None) -> float:
        from visionstream.images.producer import produce_keys

        async def keys() -> Any:
            for key in self.keys[:limit]:
                yield key, settings.s3_bucket

        started = time.monotonic()
        await produce_keys(settings, keys())
        return time.monotonic() - started

    async def wait_results(self, settings: Any, hostnames: list[str], expected: int, timeout: float,
                           processes: list[subprocess.Popen]) -> dict[str, Any]:
        """Poll PostgreSQL until every key has a result (or timeout); rate from the middle 80% of result times."""
        from visionstream.core.db import connect

        conn = await connect(settings)
        try:
            deadline = time.monotonic() + timeout
            done = 0
            while time.monotonic() < deadline:
                done = await conn.fetchval("SELECT count(*) FROM prediction_results WHERE rank = 1"
                                           " AND hostname = ANY($1)", hostnames)
                errors = await conn.fetchval("SELECT count(*) FROM processing_errors")
                if done + errors >= expected:
                    break
                if any(p.poll() is not None for p in processes):
                    raise RuntimeError("a worker exited during the run")
                await asyncio.sleep(0.5)
            times = [r["time"].timestamp() for r in await conn.fetch(
                "SELECT time FROM prediction_results WHERE rank = 1 AND hostname = ANY($1) ORDER BY time",
                hostnames)]
            errors = await conn.fetchval("SELECT count(*) FROM processing_errors")
            per_host = {r["hostname"]: r["n"] for r in await conn.fetch(
                "SELECT hostname, count(*) AS n FROM prediction_results WHERE rank = 1 AND hostname = ANY($1)"
                " GROUP BY 1", hostnames)}
        finally:
            await conn.close()
        return {"results": len(times), "errors": errors, "complete": len(times) + errors >= expected,
                "per_host": per_host, **steady_rate(times)}


def steady_rate(times: list[float]) -> dict[str, Any]:
    """Images/s over the middle 80% of results by time (warm-up and tail excluded), and over all of them."""
    n = len(times)
    if n < 10:
        return {"img/s": 0.0, "img/s_all": 0.0, "span_s": 0.0}
    lo, hi = int(n * 0.1), int(n * 0.9) - 1
    span = times[hi] - times[lo]
    return {"img/s": round((hi - lo) / span, 1) if span > 0 else 0.0,
            "img/s_all": round(n / max(times[-1] - times[0], 1e-9), 1), "span_s": round(span, 1),
            "first_to_last_s": round(times[-1] - times[0], 1)}


# 3. Streaming ----------------------------------------------------------------------------------------------

def py_spy_record(pid: int, seconds: float, out: Path) -> subprocess.Popen | None:
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        log("  (py-spy not installed: no profile; .venv/bin/pip install py-spy)")
        return None
    return subprocess.Popen([exe, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "50",
                             "--nonblocking", "--threads", "--idle", "--format", "raw", "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


IDLE_LEAVES = ("select (selectors.py", "_worker (concurrent/futures/thread.py", "wait (threading.py",
               "_wait_for_tstate_lock", "sleep")


def summarise_profile(path: Path, top: int = 6) -> dict[str, Any]:
    """Per thread (pool threads merged by prefix): share of samples not idle and the busiest leaf functions."""
    threads: dict[str, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        head = frames[0].split(": ", 1)
        tid, name = head[0], (head[1] if len(head) > 1 else head[0])
        name = re.sub(r"_\d+$", "", name)  # vs-decode_0, vs-decode_1 -> vs-decode
        entry = threads.setdefault(name, {"samples": 0, "busy": 0, "leaves": {}, "tids": set()})
        n = int(count)
        entry["samples"] += n
        entry["tids"].add(tid)
        leaf = frames[-1]
        if len(frames) > 1 and not any(marker in leaf for marker in IDLE_LEAVES):
            entry["busy"] += n
            func, _, where = leaf.partition(" (")
            short = f"{func} ({where.split('/')[-1].split(':')[0]})"
            entry["leaves"][short] = entry["leaves"].get(short, 0) + n
    summary = {}
    for name, entry in threads.items():
        total = entry["samples"]
        leaves = sorted(entry["leaves"].items(), key=lambda kv: -kv[1])[:top]
        summary[f"{name} x{len(entry['tids'])}" if len(entry["tids"]) > 1 else name] = {
            "busy": round(entry["busy"] / total, 3), "samples": total,
            "top": [(leaf, round(n / total, 3)) for leaf, n in leaves]}
    return summary


async def run_streaming(bench: Bench, workers: int, profile_dir: Path | None, timeout: float,
                        image_analyzers: str = "classify", keys: int | None = None) -> dict[str, Any]:
    from visionstream.dev.workerproc import WorkerProcess

    name = f"vs{workers}w{uuid.uuid4().hex[:6]}"
    keys = len(bench.keys) if keys is None else min(keys, len(bench.keys))
    per_worker = [bench.run_overrides(name, image_analyzers) for _ in range(workers)]
    for i, overrides in enumerate(per_worker):
        overrides["hostname"] = f"h-{name}-{i}"
    settings = await bench.prepare_run(per_worker[0])
    procs = [WorkerProcess(bench.env(o), bench.tmp / f"{name}-{i}.log", o["web_port"])
             for i, o in enumerate(per_worker)]
    profile = None
    try:
        for proc in procs:
            await asyncio.to_thread(proc.wait_ready, 180)
        # Faust is ready before the model is: the CPU count must start after the compile (~15 core-s, which
        # over 1,500 images read as ~10 core-ms per image).
        for proc in procs:
            await asyncio.to_thread(wait_models_loaded, proc.web_port, 300)
        await asyncio.sleep(3.0 if workers > 1 else 1.0)  # group (re)join: ~1 s per rebalance with 2 s sessions
        # Where the CPU goes on this shared machine: workers and the three servers, per image.
        accounted = {**{f"worker {i}": p.process.pid for i, p in enumerate(procs)},
                     **{f"{s.name} server": s.pid for s in bench.stack.status() if s.pid}}
        cpu_before = cpu_seconds(accounted)
        threads_before = thread_cpu(await asyncio.to_thread(scrape, [p.web_port for p in procs]))
        produce_s = await bench.produce(settings, keys)
        if profile_dir is not None:
            profile_path = profile_dir / f"{name}-worker0.pyspy.txt"
            profile = (py_spy_record(procs[0].process.pid, 12, profile_path), profile_path)
        result = await bench.wait_results(settings, [o["hostname"] for o in per_worker], keys, timeout,
                                          [p.process for p in procs])
        result["keys"] = keys
        cpu_after = cpu_seconds(accounted)
        scraped = await asyncio.to_thread(scrape, [p.web_port for p in procs])  # one /metrics read per worker
        threads_after, stages = thread_cpu(scraped), stage_seconds(scraped)
    finally:
        for proc in procs:
            await asyncio.to_thread(proc.stop, 30)
    result["stages"] = stages
    result["device_decoded"] = device_decoded(scraped)
    result["produce_s"] = round(produce_s, 2)
    result["cpu_ms_per_image"] = {name: round(1000 * (cpu_after[name] - cpu_before[name]) / max(result["results"], 1), 2)
                                  for name in cpu_after if name in cpu_before}
    # Inside the workers, per thread role (metrics.ThreadCpuCollector): what the target "outside decode + model"
    # counts is the event loop and the other Python threads; torch's intra-op threads are "native".
    result["thread_cpu_ms_per_image"] = {role: round(1000 * (threads_after[role] - threads_before.get(role, 0.0))
                                                     / max(result["results"], 1), 2) for role in threads_after}
    if profile is not None and profile[0] is not None:
        await asyncio.to_thread(profile[0].wait, 30)
        if profile[1].exists() and profile[1].stat().st_size:
            result["profile"] = summarise_profile(profile[1])
            result["profile_file"] = str(profile[1])
    log(f"  streaming, {workers} worker(s): {result['img/s']} img/s steady (middle 80%), {result['results']} results, "
        f"{result['errors']} errors, per worker {list(result['per_host'].values())}")
    return result


def wait_models_loaded(port: int, timeout: float) -> None:
    """Until the worker's /readyz says its models are loaded (its handlers open)."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5).read()
        except urllib.error.HTTPError as exc:  # 503 until ready: the body says which check is pending
            body = exc.read()
        except OSError:
            body = b"{}"
        try:
            models = json.loads(body).get("checks", {}).get("models", {})
        except ValueError:
            models = {}
        if isinstance(models, dict) and models.get("ok"):
            return
        time.sleep(0.5)
    raise RuntimeError(f"the worker on port {port} did not load its models within {timeout:.0f}s")


_STAGE_LINE = re.compile(r'^visionstream_stage_seconds_(sum|count)\{agent="classify",stage="([^"]+)"\} (\S+)$')


def metrics_text(port: int) -> str | None:
    import urllib.request

    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError as exc:
        log(f"  (no /metrics from port {port}: {exc})")
        return None


_THREAD_LINE = re.compile(r'^visionstream_thread_cpu_seconds_total\{role="([a-z_]+)"\} ([0-9.e+-]+)$')


def scrape(ports: list[int]) -> list[str]:
    """The workers' /metrics texts (those that answered)."""
    return [text for text in map(metrics_text, ports) if text is not None]


def thread_cpu(texts: list[str]) -> dict[str, float]:
    """CPU seconds per thread role, summed over the workers' /metrics texts."""
    totals: dict[str, float] = {}
    for text in texts:
        for line in text.splitlines():
            if match := _THREAD_LINE.match(line):
                totals[match[1]] = totals.get(match[1], 0.0) + float(match[2])
    return totals


def stage_seconds(texts: list[str]) -> dict[str, dict[str, float]]:
    """Per stage, summed over the workers' /metrics texts (warm-up included): calls and seconds per call (ms)."""
    totals: dict[str, dict[str, float]] = {}
    for text in texts:
        for line in text.splitlines():
            match = _STAGE_LINE.match(line)
            if match:
                kind, stage, value = match.groups()
                entry = totals.setdefault(stage, {"sum": 0.0, "count": 0.0})
                entry[kind] += float(value)
    return {stage: {"calls": int(v["count"]), "ms_per_call": round(1000 * v["sum"] / v["count"], 2) if v["count"]
                    else 0.0, "seconds": round(v["sum"], 2)} for stage, v in sorted(totals.items())}


_DEVICE_DECODED_LINE = re.compile(
    r'^visionstream_device_decoded_images_total\{agent="classify",analyzer="[^"]+",outcome="([^"]+)"\} (\S+)$')


def device_decoded(texts: list[str]) -> dict[str, int]:
    """JPEGs the workers decoded on their device, and those its decoder refused (decoded on the CPU instead)."""
    totals: dict[str, int] = {}
    for text in texts:
        for match in filter(None, map(_DEVICE_DECODED_LINE.match, text.splitlines())):
            totals[match[1]] = totals.get(match[1], 0) + int(float(match[2]))
    return totals


# 4. Peer ----------------------------------------------------------------------------------------------------

async def run_peer(bench: Bench, timeout: float) -> dict[str, Any]:
    """bench/ray_peer.py over the same objects into the same table, measured like the streaming runs."""
    import importlib.util

    from visionstream.dev.workerproc import LoggedProcess

    if importlib.util.find_spec("ray") is None:
        log("  (Ray Data is not installed: no peer; .venv/bin/pip install -e '.[bench]')")
        return {"skipped": "Ray is not installed here (.venv/bin/pip install -e '.[bench]')"}
    name = f"ray{uuid.uuid4().hex[:6]}"
    overrides = bench.run_overrides(name)
    settings = await bench.prepare_run(overrides)
    out = bench.tmp / f"{name}.json"
    argv = [sys.executable, str(BENCH / "ray_peer.py"), "--prefix", "bench/", "--hostname", overrides["hostname"],
            "--json", str(out)]
    # No CPU figure: Ray's worker processes come and go under the raylet, so sampling the tree misses some.
    proc = LoggedProcess("Ray Data peer", argv, bench.env(overrides), bench.tmp / f"{name}.log")
    try:
        started = time.monotonic()
        while proc.process.poll() is None and time.monotonic() - started < timeout:
            await asyncio.sleep(0.5)
        if proc.process.poll() is None:
            raise RuntimeError(f"the Ray peer did not finish within {timeout:.0f}s (log: {bench.tmp / name}.log)")
        if proc.process.returncode != 0:
            raise RuntimeError(f"the Ray peer failed with exit code {proc.process.returncode} "
                               f"(log: {bench.tmp / name}.log)")
    finally:
        await asyncio.to_thread(proc.stop, 30)
    result = await bench.wait_results(settings, [overrides["hostname"]], len(bench.keys), 10, [])
    job = json.loads(out.read_text())
    result["wall_s"] = job["wall_s"]
    log(f"  Ray Data peer: {result['img/s']} img/s steady (middle 80%), {result['results']} results, job "
        f"{job['wall_s']} s from ray.init to the last write")
    return result


# 5. Naive ---------------------------------------------------------------------------------------------------

async def run_naive(bench: Bench, keys: int, timeout: float, profile_dir: Path | None) -> dict[str, Any]:
    from visionstream.dev.workerproc import LoggedProcess, faust_worker_argv

    name = f"naive{uuid.uuid4().hex[:6]}"
    overrides = bench.run_overrides(name)
    settings = await bench.prepare_run(overrides)
    proc = LoggedProcess("naive consumer", faust_worker_argv([str(BENCH / "naive_consumer.py")], overrides["web_port"]),
                         {**bench.env(overrides), "NAIVE_RESULTS_TOPIC": f"{name}-results"}, bench.tmp / f"{name}.log")
    profile = None
    try:
        await asyncio.to_thread(proc.wait_ready, 180)
        await asyncio.sleep(1.0)
        await bench.produce(settings, keys)
        if profile_dir is not None:
            profile_path = profile_dir / f"{name}.pyspy.txt"
            profile = (py_spy_record(proc.process.pid, 10, profile_path), profile_path)
        # The naive consumer starves its own insert agent while a backlog lasts (model on the event loop),
        # so it gets a smaller key set and is waited for to the end; rates use the classification times.
        result = await bench.wait_results(settings, [overrides["hostname"]], keys, timeout, [proc.process])
    finally:
        await asyncio.to_thread(proc.stop, 30)
    if profile is not None and profile[0] is not None:
        await asyncio.to_thread(profile[0].wait, 30)
        if profile[1].exists() and profile[1].stat().st_size:
            result["profile"] = summarise_profile(profile[1])
    result["timeout_s"] = timeout
    result["keys"] = keys
    log(f"  naive: {result['img/s']} img/s steady (middle 80% of {result['results']} results"
        f"{'' if result['complete'] else f', stopped after {timeout:.0f}s'})")
    return result


# 6. Transport ----------------------------------------------------------------------------------------------

async def run_transport(bench: Bench, kind: str, seconds: float) -> dict[str, Any]:
    import transport
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from visionstream.core.kafka_client import kafka_client_kwargs
    from visionstream.dev.workerproc import READY_LINE, LoggedProcess, faust_worker_argv

    settings = bench.settings()
    name = f"tr{kind}{uuid.uuid4().hex[:6]}"
    in_topic, out_topic = f"{name}-in", f"{name}-out"
    admin = AIOKafkaAdminClient(**kafka_client_kwargs(settings))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, num_partitions=4, replication_factor=1) for t in (in_topic, out_topic)])
    finally:
        await admin.close()
    env = {**bench.stack.env(), "TRANSPORT_BOOTSTRAP": settings.kafka_bootstrap,
           "TRANSPORT_IN": in_topic, "TRANSPORT_OUT": out_topic, "TRANSPORT_GROUP": name,
           "TRANSPORT_DATADIR": str(bench.tmp / name)}
    if kind == "faust-batched":
        # The local tuning's one-record producer batches keep table recovery exact on Tansu; production Kafka
        # needs no such setting, so this is the pass-through as it runs there.
        env["PRODUCER_MAX_BATCH_SIZE"] = "16384"
    if kind.startswith("faust"):
        from visionstream.dev.stack import free_port

        argv, ready = faust_worker_argv([str(BENCH / "transport.py"), "faust"], free_port()), READY_LINE
    else:
        argv, ready = [sys.executable, str(BENCH / "transport.py"), "raw"], "READY"
    proc = LoggedProcess(f"{kind} pass-through", argv, env, bench.tmp / f"{name}.log", ready)
    try:
        await asyncio.to_thread(proc.wait_ready, 120)
        await asyncio.sleep(2.0 if kind.startswith("faust") else 0.5)
        best, steps = await transport.find_max_cameras(settings.kafka_bootstrap, in_topic, out_topic, seconds,
                                                       log=log)
    finally:
        await asyncio.to_thread(proc.stop, 20)
    best_step = max((s for s in steps if s.sustained), key=lambda s: s.cameras, default=None)
    log(f"  transport {kind}: max sustained N = {best} cameras ({best * transport.FPS} frames/s, "
        f"{best * transport.FPS * transport.FRAME_BYTES / 1e6:.1f} MB/s)")
    return {"max_cameras": best, "frames/s": best * transport.FPS,
            "MB/s": round(best * transport.FPS * transport.FRAME_BYTES / 1e6, 1),
            "max_forwarded_fr/s": round(max((s.received_rate for s in steps), default=0.0), 0),
            "best_step": None if best_step is None else {k: v for k, v in vars(best_step).items() if k != "samples"},
            "steps": [{k: (round(v, 1) if isinstance(v, float) else v) for k, v in vars(s).items() if k != "samples"}
                      for s in steps]}


# Report ----------------------------------------------------------------------------------------------------

def ratio_line(name: str, value: float | None, detail: str) -> tuple[str, str, str, str]:
    if name in CEILINGS:
        target, bound = CEILINGS[name], "<="
        met = value is not None and value <= target
    else:
        target, bound = TARGETS[name], ">="
        met = value is not None and value >= target
    if value is None:
        return name, f"{bound} {target:g}", "not run", detail
    return name, f"{bound} {target:g}", f"{value:.2f} ({'met' if met else 'MISSED'})", detail


def report(results: dict[str, Any], command: str) -> str:
    m = results["machine"]
    lines = ["# visionstream benchmarks", "",
             f"Generated by `{command}` on {results['date']} in {results['duration_s']:.0f} s.", "",
             "## Machine", "",
             f"- CPU: {m['cpu']}, {m['cores']} cores ({m['simd']}); RAM {m['ram_gb']} GB; CUDA: {m['cuda']}",
             f"- Python {m['python']}, torch {m['torch']} ({m['torch_threads']} intra-op threads)",
             f"- load average at start: {' / '.join(f'{x:.2f}' for x in m['load_start'])} (1/5/15 min); "
             f"at end: {' / '.join(f'{x:.2f}' for x in results['load_end'])}",
             f"- weights: {'real ImageNet SqueezeNet 1.1' if results['real_weights'] else 'RANDOM (no shared weights)'}",
             ""]
    lines += ["## Figures", "", "| section | figure | images/s (or as stated) |", "|---|---|---|"]
    for section, figure, value in summary_rows(results):
        lines.append(f"| {section} | {figure} | {value} |")
    lines += ["", "## Targets", "", "| ratio | target | measured | from |", "|---|---|---|---|"]
    for row in target_rows(results):
        lines.append("| " + " | ".join(row) + " |")
    if "model" in results:
        lines += ["", "## Model paths (bench/bench_model.py, CPU)", "",
                  "| path | bs=1 img/s | bs=32 img/s | top-1 agreement with fp32 eager |", "|---|---|---|---|"]
        for r in results["model"]["rows"]:
            lines.append(f"| {r['path']} | {r['img/s@1']} | {r['img/s@32']} | {r['agreement']:.1%} of {r['images']} |")
    if "backends" in results:
        b = results["backends"]
        lines += ["", f"## Classifier backends (bench/pipeline_targets.py, bs 32; auto's start-up measurement "
                  f"{b['startup_s']} s)", "", "| path | img/s | top-1 agreement with fp32 torch |", "|---|---|---|"]
        for r in b["rows"]:
            lines.append(f"| {r['path']} | {r['img/s']} | {r['agreement']:.1%} of {r['images']} |")
    if "default_offline" in results:
        d = results["default_offline"]
        lines += ["", f"## Default image pipeline offline (classify on {d['classifier']} + faces, in-memory JPEGs)",
                  "", "| configuration | decode threads | img/s | core-ms/image |", "|---|---|---|---|"]
        for r in d["rows"]:
            lines.append(f"| {r['what']} | {r['decode_threads']} | {r['img/s']} | {r['cpu_ms_per_image']} |")
    if "camera" in results:
        c = results["camera"]
        lines += ["", "## Camera (bench/pipeline_targets.py camera)", "",
                  f"- arcade clip 1080p, {c['frames']} frames x {c['rounds']}: detection {c['fps']['detection']} fr/s, "
                  f"detection + identification ({c['identification']}, one person of the clip enrolled) "
                  f"{c['fps']['detection + identification']} fr/s; {c['faces']} faces, {c['embedded']} embedded"]
    if "facepeer" in results:
        lines += ["", "## Face detectors: MTCNN vs the peers installable here (bench/face_peers.py)", ""]
        lines += face_peers.markdown(results["facepeer"])
    if "offline" in results:
        lines += ["", f"## Offline configurations (in-memory JPEGs, mean {results['offline']['mean_kb']} KB, batch 32)",
                  "", "| configuration | decode threads | torch threads | precision | img/s | core-ms/image |",
                  "|---|---|---|---|---|---|"]
        for r in results["offline"]["rows"]:
            lines.append(f"| {r['what']} | {r['decode_threads']} | {r['torch_threads']} | {r['precision']} | {r['img/s']}"
                         f" | {r.get('cpu_ms_per_image', '')} |")
    for key, title in (("streaming_1", "1 worker"), ("streaming_2", "2 workers"),
                       ("streaming_default", "1 worker, default image pipeline (classify + faces)"),
                       ("peer", "Ray Data peer (bench/ray_peer.py)"), ("naive", "naive consumer")):
        r = results.get(key)
        if r and r.get("skipped"):
            lines += ["", f"## Streaming, {title}", "", f"- not run: {r['skipped']}"]
        elif r:
            lines += ["", f"## Streaming, {title}", "",
                      f"- {r['results']} results ({r['errors']} errors) for {r.get('keys', results.get('keys'))} keys; steady "
                      f"{r['img/s']} img/s over the middle 80% ({r['span_s']} s); first to last result "
                      f"{r.get('first_to_last_s')} s ({r['img/s_all']} img/s overall); per worker {r['per_host']}"
                      + (f"; whole job {r['wall_s']} s from ray.init (model compile included)" if "wall_s" in r
                         else "")]
            if r.get("cpu_ms_per_image"):
                used = r["cpu_ms_per_image"]
                lines.append(f"- CPU per image (user+system, core-ms): {', '.join(f'{k} {v}' for k, v in used.items())}; "
                             f"total {sum(used.values()):.2f}, i.e. at most {2000 / sum(used.values()):.0f} img/s on "
                             f"2 cores")
            if r.get("thread_cpu_ms_per_image"):
                lines.append("- inside the worker(s), CPU per image by thread role (core-ms, metrics.ThreadCpuCollector): "
                             + ", ".join(f"{k} {v}" for k, v in r["thread_cpu_ms_per_image"].items()))
            if r.get("stages"):
                lines.append("- stage times from the workers' /metrics (calls, ms per call): " + ", ".join(
                    f"{stage} {v['calls']} x {v['ms_per_call']}" for stage, v in r["stages"].items()))
            if r.get("profile"):
                lines.append("- py-spy (worker 0, ~10 s during the run, 50 Hz, share of samples):")
                for thread, p in sorted(r["profile"].items(), key=lambda kv: -kv[1]["busy"]):
                    top = ", ".join(f"{leaf} {share:.0%}" for leaf, share in p["top"][:4])
                    lines.append(f"  - {thread}: busy {p['busy']:.0%}; {top}")
    for kind, title in TRANSPORT_KINDS.items():
        r = results.get(f"transport_{kind}")
        if r:
            lines += ["", f"## Transport, {title}",
                      "", "| N cameras | offered fr/s | sent fr/s | forwarded fr/s | lag at end | lag slope fr/s | sustained |",
                      "|---|---|---|---|---|---|---|"]
            for s in r["steps"]:
                lines.append(f"| {s['cameras']} | {s['target_rate']:.0f} | {s['sent_rate']:.0f} | {s['received_rate']:.0f}"
                             f" | {s['lag_end']} | {s['lag_slope']:+.1f} | {'yes' if s['sustained'] else 'no'} |")
    notes = results.get("notes")
    if notes:
        lines += ["", "## Findings", "", notes.strip()]
    lines += ["", "## Method", "", (__doc__ or "").strip().split("\n\n", 2)[-1], ""]
    return "\n".join(lines) + "\n"


def summary_rows(results: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    if "model" in results:
        m = results["model"]
        yield "model", "fp32 eager NCHW, bs=32", f"{m['eager']['img/s@32']}"
        yield "model", f"fast path: {m['fast']['path']}, bs=32 (top-1 agree {m['fast']['agreement']:.1%})", \
            f"{m['fast']['img/s@32']}"
        yield "model", f"production {m['production']['path']}, bs=32, uint8 in -> top-k", f"{m['production']['img/s@32']}"
    if "backends" in results:
        for r in results["backends"]["rows"]:
            yield "backends", f"{r['path']}, bs=32 (top-1 agree {r['agreement']:.1%})", f"{r['img/s']}"
    if "default_offline" in results:
        b = results["default_offline"]["best"]
        yield "default", f"offline ceiling, classify + faces: {b['what']}", f"{b['img/s']}"
    if "camera" in results:
        for what, fps in results["camera"]["fps"].items():
            yield "camera", f"arcade 1080p, {what} (frames/s)", f"{fps}"
    if "offline" in results:
        b = results["offline"]["best"]
        yield "offline", f"ceiling: {b['what']}, decode={b['decode_threads']} torch={b['torch_threads']}", f"{b['img/s']}"
    for key, figure in (("streaming_1", "streaming, 1 worker (steady, DB time)"),
                        ("streaming_2", "streaming, 2 workers on this machine"),
                        ("streaming_default", "streaming, default image pipeline (classify + faces), 1 worker"),
                        ("peer", "Ray Data peer: the same bulk job (steady, DB time)"),
                        ("naive", "naive consumer (one message at a time)")):
        if key in results and "img/s" in results[key]:
            yield key.split("_")[0], figure, f"{results[key]['img/s']}"
    for kind, title in TRANSPORT_KINDS.items():
        if f"transport_{kind}" in results:
            r = results[f"transport_{kind}"]
            yield "transport", f"{title}: max cameras at 15 fps x 50 KB", f"N = {r['max_cameras']} ({r['frames/s']} fr/s, {r['MB/s']} MB/s)"


def bracketed_ceiling(results: dict[str, Any], key: str) -> tuple[float | None, str]:
    """An offline ceiling (the fastest configuration) measured before and after the streaming runs it is
    compared with, averaged: this machine's speed drifts by up to 20% within minutes."""
    figures = [results[k]["best"]["img/s"] for k in (key, f"{key}_after") if k in results]
    if not figures:
        return None, ""
    if len(figures) == 1:
        return figures[0], "measured once, before the streaming runs"
    return sum(figures) / len(figures), f"{figures[0]} img/s before and {figures[1]} after, averaged"


def target_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows = []
    b = results.get("backends")
    peer = b and b["best_peer"]
    rows.append(ratio_line("classifier model path / best of ORT and OpenVINO", b and b["ratio"],
                           f"bs 32; production (auto chose {b['chosen']}) {b['production']['img/s']} img/s, "
                           f"agreement {b['production']['agreement']:.1%}, vs {peer['path']} {peer['img/s']}"
                           if peer else "not run"))
    stream = results.get("streaming_default", {}).get("img/s")
    ceiling, bracket = bracketed_ceiling(results, "default_offline")
    rows.append(ratio_line("default image pipeline (classify + faces) streaming / offline ceiling",
                           stream / ceiling if stream and ceiling else None,
                           f"1 worker {stream} img/s vs offline {ceiling:.1f} ({bracket})" if ceiling else ""))
    c = results.get("camera")
    rows.append(ratio_line("camera frames/s: detection + identification / detection alone", c and c["ratio"],
                           f"{c['fps']}, {c['identification']}" if c else ""))
    if "facepeer" in results:
        rows.append(("faces: recall and frames/s vs the peer detectors", "reported",
                     *face_peers.target_cells(results["facepeer"])))
    streaming = max((results[k]["img/s"] for k in ("streaming_1", "streaming_2") if k in results), default=None)
    offline, bracket = bracketed_ceiling(results, "offline")
    rows.append(ratio_line("streaming / offline ceiling",
                           streaming / offline if streaming and offline else None,
                           f"best of 1/2 workers {streaming} img/s vs the best offline "
                           f"configuration {offline:.1f} ({bracket})" if offline else ""))
    naive = results.get("naive", {}).get("img/s")
    rows.append(ratio_line("streaming / naive", streaming / naive if streaming and naive else None,
                           "best streaming vs bench/naive_consumer.py"))
    peer = results.get("peer", {}).get("img/s")
    rows.append(ratio_line("visionstream bulk / Ray Data peer", streaming / peer if streaming and peer else None,
                           results["peer"]["skipped"] if "skipped" in results.get("peer", {})
                           else "best of 1/2 workers vs bench/ray_peer.py, same objects, model and table"))
    worker = results.get("streaming_1", {}).get("cpu_ms_per_image", {}).get("worker 0")
    threads = results.get("streaming_1", {}).get("thread_cpu_ms_per_image")
    ceiling = results.get("offline", {}).get("best", {}).get("cpu_ms_per_image")
    if threads:  # measured inside the worker, per thread: no second run to subtract
        outside = threads.get("event_loop", 0.0) + threads.get("python_other", 0.0)
        rows.append(ratio_line("worker CPU per image outside decode + model (core-ms)", outside,
                               f"1 worker, event loop {threads.get('event_loop')} + other Python threads "
                               f"{threads.get('python_other')} (all threads {worker}; offline decode+model "
                               f"{ceiling})"))
    else:
        rows.append(ratio_line("worker CPU per image outside decode + model (core-ms)",
                               worker - ceiling if worker and ceiling else None,
                               f"1 worker {worker} core-ms/image minus offline decode+model {ceiling}"))
    model = results.get("model")
    rows.append(ratio_line("CPU fast path / fp32 eager", model["fast_ratio"] if model else None,
                           f"bs=32, {model['fast']['path']} (agreement {model['fast']['agreement']:.1%}); production "
                           f"Classifier {model['production_ratio']:.2f}x" if model else ""))
    tr = results.get("transport_raw")
    for kind, how in (("faust", "local-broker tuning (PRODUCER_MAX_BATCH_SIZE=1)"),
                      ("faust-batched", "Faust's default producer batching, as on production Kafka")):
        tf = results.get(f"transport_{kind}")
        if tf:
            rows.append(ratio_line("visionstream transport / raw aiokafka",
                                   tf["max_cameras"] / tr["max_cameras"] if tr and tr["max_cameras"] else None,
                                   f"max sustained cameras; {how}"))
    return rows


def print_table(results: dict[str, Any]) -> None:
    print("\n" + "=" * 100)
    for section, figure, value in summary_rows(results):
        print(f"{section:10s} {figure:70s} {value}")
    print("-" * 100)
    for name, target, measured, detail in target_rows(results):
        print(f"{name:40s} {target:8s} {measured:18s} {detail}")
    print("=" * 100, flush=True)


# Main ------------------------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    parser.add_argument("--full", action="store_true", help="longer timings and torch.compile in the model section")
    parser.add_argument("--keys", type=int, default=2000, help="distinct S3 keys for streaming and naive")
    parser.add_argument("--naive-keys", type=int, default=250, help="keys for the (slow) naive consumer")
    parser.add_argument("--default-keys", type=int, default=600,
                        help="keys for the default image pipeline's streaming run (classify + faces)")
    parser.add_argument("--naive-timeout", type=float, default=150.0,
                        help="stop the naive run after this many seconds (its rate comes from what finished)")
    parser.add_argument("--transport-seconds", type=float, default=15.0, help="seconds per camera count")
    parser.add_argument("--no-profile", dest="profile", action="store_false",
                        help="do not py-spy the first worker and the naive consumer (on by default when installed)")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--json", type=Path, default=ROOT / ".visionstream" / "bench" / "last.json",
                        help="also write the raw results here")
    parser.add_argument("--from-json", type=Path, help="run nothing: rewrite BENCHMARKS.md from saved results")
    parser.add_argument("--notes", type=Path, default=BENCH / "FINDINGS.md",
                        help="markdown appended under Findings in BENCHMARKS.md (default: bench/FINDINGS.md)")
    parser.add_argument("--no-write", action="store_true", help="print only, do not write BENCHMARKS.md")
    args = parser.parse_args()
    sections = args.only or list(SECTIONS)
    if args.from_json:
        results = json.loads(args.from_json.read_text())
        if args.notes and args.notes.exists():
            results["notes"] = args.notes.read_text()
        print_table(results)
        args.output.write_text(report(results, results.get("command", "make bench")))
        log(f"wrote {args.output} from {args.from_json}")
        return 0
    command = "make bench" if not sys.argv[1:] else ".venv/bin/python bench/run_all.py " + " ".join(sys.argv[1:])
    started = time.monotonic()
    results: dict[str, Any] = {"machine": machine(), "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
                               "command": command}
    m = results["machine"]
    log(f"{m['cpu']}, {m['cores']} cores, {m['ram_gb']} GB, torch {m['torch']}, load {m['load_start']}")
    with tempfile.TemporaryDirectory(prefix="vs-bench-") as tmp_name:
        tmp = Path(tmp_name)
        weights, real = weights_file(tmp)
        results["real_weights"] = real
        if "model" in sections:
            log("model ceiling (bench_model.py)")
            results["model"] = section_model(weights, args.full)
        if "backends" in sections:
            log("classifier backends at bs 32 (bench/pipeline_targets.py)")
            results["backends"] = pipeline_targets.section_backends(weights, real)
        if "offline" in sections:
            log("offline ceiling: in-memory JPEG -> decode threads -> model thread")
            results["offline"] = section_offline(weights, real, args.full)
        if "default" in sections:
            log("offline ceiling of the default image pipeline (classify + faces)")
            results["default_offline"] = section_default_offline(weights, real, args.full)
        if "camera" in sections:
            log("camera frames/s: detection + identification vs detection alone (bench/pipeline_targets.py)")
            results["camera"] = pipeline_targets.section_camera()
        if "facepeer" in sections:
            log("face detectors: MTCNN vs the peers installable here (bench/face_peers.py)")
            results["facepeer"] = face_peers.section_facepeer()
        if {"streaming", "default", "peer", "naive", "transport"} & set(sections):
            bench = Bench(tmp, weights, real, args.keys)
            profile_dir = (ROOT / ".visionstream" / "bench") if args.profile else None
            if profile_dir:
                profile_dir.mkdir(parents=True, exist_ok=True)
            bench.up()
            try:
                if {"streaming", "default", "peer", "naive"} & set(sections):
                    asyncio.run(bench.upload())
                    results["keys"] = len(bench.keys)
                if "streaming" in sections:
                    for workers in (1, 2):
                        log(f"streaming with {workers} worker(s) over {len(bench.keys)} keys")
                        results[f"streaming_{workers}"] = asyncio.run(
                            run_streaming(bench, workers, profile_dir if workers == 1 else None, timeout=240))
                    if "offline" in sections:  # the ceiling again, at the load the streaming runs left
                        log("offline ceiling again, after the streaming runs")
                        results["offline_after"] = section_offline(weights, real, args.full)
                if "default" in sections:
                    log(f"streaming, default image pipeline (classify + faces), 1 worker, {args.default_keys} keys")
                    results["streaming_default"] = asyncio.run(run_streaming(
                        bench, 1, None, timeout=300, image_analyzers="classify,faces", keys=args.default_keys))
                    log("offline ceiling of the default image pipeline again, after its streaming run")
                    results["default_offline_after"] = section_default_offline(weights, real, args.full)
                if "peer" in sections:
                    log(f"Ray Data peer over the same {len(bench.keys)} keys")
                    try:
                        results["peer"] = asyncio.run(run_peer(bench, timeout=600))
                    except Exception as exc:  # the peer's failure is a figure to report, not the end of the run
                        log(f"  Ray Data peer failed: {type(exc).__name__}: {exc}")
                        results["peer"] = {"skipped": f"it failed: {type(exc).__name__}: {str(exc)[:300]}"}
                if "naive" in sections:
                    log(f"naive consumer over the first {args.naive_keys} of the same keys"
                        f" (at most {args.naive_timeout:.0f} s)")
                    results["naive"] = asyncio.run(run_naive(bench, min(args.naive_keys, len(bench.keys)),
                                                             args.naive_timeout, profile_dir))
                if "transport" in sections:
                    for kind in TRANSPORT_KINDS:
                        log(f"transport: {kind} pass-through, {args.transport_seconds:g} s per camera count")
                        results[f"transport_{kind}"] = asyncio.run(run_transport(bench, kind,
                                                                                 args.transport_seconds))
            finally:
                bench.down()
    results["load_end"] = os.getloadavg()
    results["duration_s"] = time.monotonic() - started
    if args.notes and args.notes.exists():
        results["notes"] = args.notes.read_text()
    print_table(results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str))
    if not args.no_write:
        args.output.write_text(report(results, command))
        log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
