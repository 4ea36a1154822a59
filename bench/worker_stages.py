"""CPU per image of a worker's stages outside decode + model, each alone, on a private local stack.

    .venv/bin/python bench/worker_stages.py [--objects 1000] [--json OUT.json]

Measures this process's user+system CPU (one event loop, like a worker's) per image for:
  s3 GET        aiobotocore get_object (what workers used) vs core/s3.py's ObjectReader (aiohttp + SigV4)
  encode        a Prediction record to JSON bytes: Faust's Record.dumps() vs orjson on the same dict
  postgres      the unnest() INSERT of 32 images x top-5 rows per statement, in one transaction
  decode        32-image batches of the classifier's real preprocessing in 2 threads: one executor call per
                image vs one per thread (core/faults.py run_each), decode itself included in both
Concurrency 32 (a batch's worth of GETs in flight), objects ~110 KB like ImageNet photos.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))


def cpu() -> float:
    return time.process_time()


async def per_item(label: str, count: int, run: Callable[[], Awaitable[None]]) -> dict[str, Any]:
    await run()  # warm-up: connections, caches
    wall, used = time.perf_counter(), cpu()
    await run()
    used, wall = cpu() - used, time.perf_counter() - wall
    row = {"stage": label, "core_ms_per_image": round(1000 * used / count, 3), "items/s": round(count / wall, 1)}
    print(f"  {label:48s} {row['core_ms_per_image']:7.3f} core-ms/image  {row['items/s']:8.1f}/s", flush=True)
    return row


async def measure(stack: Any, objects: int) -> list[dict[str, Any]]:
    import asyncpg
    from run_all import imagenet_like_jpegs

    from visionstream.classification.model import MODELS
    from visionstream.classification.sinks import INSERT_PREDICTIONS
    from visionstream.core.db import migrate
    from visionstream.core.faults import run_each
    from visionstream.core.records import Category, Prediction
    from visionstream.core.s3 import object_reader, s3_client
    from visionstream.core.sinks import columns_of, utc

    settings = stack.settings()
    jpegs = imagenet_like_jpegs(50)
    keys = [f"stages/{i:06d}.jpg" for i in range(objects)]
    limit = asyncio.Semaphore(32)
    rows = []
    async with s3_client(settings) as client, object_reader(settings) as reader:
        async def put(i: int, key: str) -> None:
            async with limit:
                await client.put_object(Bucket=settings.s3_bucket, Key=key, Body=jpegs[i % len(jpegs)])

        await asyncio.gather(*(put(i, k) for i, k in enumerate(keys)))

        async def botocore_get(key: str) -> bytes:
            async with limit:
                response = await client.get_object(Bucket=settings.s3_bucket, Key=key)
                async with response["Body"] as body:
                    return await body.read()

        async def reader_get(key: str) -> bytes:
            async with limit:
                return await reader.get(settings.s3_bucket, key)

        for label, get in (("s3 GET: aiobotocore get_object", botocore_get), ("s3 GET: ObjectReader", reader_get)):
            async def run(get: Callable = get) -> None:
                await asyncio.gather(*(get(k) for k in keys))
            rows.append(await per_item(label, objects, run))

    top_k = [Category(rank=r, class_index=r, category=f"category {r}", confidence=0.1) for r in range(1, 6)]
    record = Prediction(image_key="bench/0/000001.jpg", model="squeezenet1_1@file-0123456789ab", category="x",
                        confidence=0.5, top_k=top_k, hostname="worker-0", time=time.time())
    n = 5000

    async def faust_encode() -> None:
        for _ in range(n):
            record.dumps()

    rows.append(await per_item("encode: faust Record.dumps()", n, faust_encode))
    try:
        import orjson
    except ImportError:
        print("  (orjson not installed)")
    else:
        async def orjson_encode() -> None:
            for _ in range(n):
                orjson.dumps(record.asdict() | {"top_k": [c.asdict() for c in record.top_k]})

        rows.append(await per_item("encode: orjson.dumps(asdict)", n, orjson_encode))

    preprocess = MODELS["squeezenet1_1"].preprocessing(89_478_485)
    batch = [jpegs[i % len(jpegs)] for i in range(32)]
    with ThreadPoolExecutor(2) as pool:
        for label, chunks in (("decode: one executor call per image", len(batch)),
                              ("decode: one executor call per thread", 2)):
            async def decode(chunks: int = chunks) -> None:
                for _ in range(objects // 32):
                    await run_each(pool, preprocess, batch, chunks)
            rows.append(await per_item(label, objects // 32 * 32, decode))

    await migrate(settings)
    conn = await asyncpg.connect(settings.database_url.get_secret_value())
    try:
        batches = objects // 32
        counter = iter(range(1 << 40))

        async def insert() -> None:
            for _ in range(batches):
                at = utc(time.time())
                base = next(counter) * 32
                columns = columns_of([(f"stages/{base + i}", "m", rank, "c", rank, 0.1, "h", at, "t", 0, base + i, None, None)
                                      for i in range(32) for rank in range(1, 6)])
                async with conn.transaction():
                    await conn.execute(INSERT_PREDICTIONS, *columns)

        rows.append(await per_item("postgres: unnest INSERT, 32 x top-5 per batch", batches * 32, insert))
    finally:
        await conn.close()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from visionstream.dev.stack import LocalStack, StackPorts, free_ports

    with tempfile.TemporaryDirectory(prefix="vs-stages-") as tmp:
        kafka, s3, postgres = free_ports(3)
        stack = LocalStack(Path(tmp), StackPorts(kafka=kafka, s3=s3, postgres=postgres))
        stack.up()
        try:
            rows = asyncio.run(measure(stack, args.objects))
        finally:
            stack.down()
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
