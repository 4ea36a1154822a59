"""Bulk upload throughput: ``upload.py`` against ``aws s3 cp --recursive`` on the same tree and S3 endpoint.

Generates an ImageNet-like tree (train/<wnid>/*.JPEG, ~110 KB 500x375 JPEGs derived from scikit-image's
photos, each distinct), then uploads it twice to fresh prefixes: once with upload.py (which also registers
every image in image_info) and once with the AWS CLI (which only copies). Also times image_info
registration alone (COPY batches of ROW_BATCH rows).

Uses the stack the VISIONSTREAM_* variables point at when VISIONSTREAM_S3_ENDPOINT_URL is set
(``source .visionstream/stack.env``), otherwise starts a LocalStack in a temporary folder. Needs the AWS
CLI: ``.venv/bin/pip install awscli``.

    .venv/bin/python bench/bench_upload.py --images 5000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from visionstream.bulk.upload import ImageRegistry
from visionstream.core.db import connect, create_pool, migrate
from visionstream.core.retry import Backoff
from visionstream.dev.samples import PHOTOS, _photo, encode_jpeg, variant
from visionstream.dev.stack import LocalStack, StackPorts, free_ports
from visionstream.settings import Settings, load_settings

CLASSES = 10
JPEG_QUALITY = 95
NOISE_SIGMA = 8.0  # film-grain-like noise: brings 500x375 JPEGs to ImageNet's typical ~110 KB
REGISTRATION_ROWS = 200_000


def _write_images(folder: Path, indices: range) -> int:
    photos = {name: _photo(name) for name in PHOTOS}
    written = 0
    for index in indices:
        wnid = f"n{index % CLASSES:08d}"
        picture = np.asarray(variant(photos[PHOTOS[index % len(PHOTOS)]], index), dtype=np.float32)
        noise = np.random.default_rng(index).normal(0, NOISE_SIGMA, picture.shape)
        data = encode_jpeg(np.clip(picture + noise, 0, 255).astype(np.uint8), JPEG_QUALITY)
        path = folder / "train" / wnid / f"{wnid}_{index:07d}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written += len(data)
    return written


def make_tree(folder: Path, count: int) -> int:
    """Write the tree with every core; return its size in bytes."""
    workers = os.cpu_count() or 1
    with ProcessPoolExecutor(workers) as pool:
        return sum(pool.map(_write_images, [folder] * workers, [range(w, count, workers) for w in range(workers)]))


def timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


async def time_registration(settings: Settings, rows: int) -> float:
    """Seconds to register rows fake images through the upload's COPY path (no S3 involved)."""
    prefix = f"bench-register/{uuid.uuid4().hex[:8]}/"
    pool = await create_pool(settings)
    try:
        registry = ImageRegistry(pool, Backoff(), produce=False)
        started = time.perf_counter()
        for index in range(rows):
            await registry.add((f"{prefix}{index:09d}.JPEG", settings.s3_bucket, 110_000, 500, 375, "JPEG",
                                f"n{index % 1000:08d}", "train", "bench", f"{index:064x}"))
        await registry.close()
        seconds = time.perf_counter() - started
        assert registry.registered == rows
    finally:
        await pool.close()
    conn = await connect(settings)
    try:
        await conn.execute("DELETE FROM image_info WHERE starts_with(image_key, $1)", prefix)
    finally:
        await conn.close()
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000, help="JPEGs in the tree (default 5000)")
    parser.add_argument("--concurrency", type=int, default=64, help="upload.py --concurrency (default 64)")
    args = parser.parse_args()
    aws = shutil.which("aws", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if aws is None:
        sys.exit("the AWS CLI is needed: .venv/bin/pip install awscli")

    with ExitStack() as cleanup:
        work = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="bench-upload-")))
        if os.environ.get("VISIONSTREAM_S3_ENDPOINT_URL"):
            settings = load_settings()
            env = dict(os.environ)
        else:
            kafka, s3, postgres = free_ports(3)
            stack = LocalStack(work / "stack", StackPorts(kafka=kafka, s3=s3, postgres=postgres))
            stack.up()
            cleanup.callback(stack.down)
            settings = stack.settings()
            env = {**os.environ, **stack.env()}
        asyncio.run(migrate(settings))

        tree = work / "imagenet"
        started = time.perf_counter()
        total_bytes = make_tree(tree, args.images)
        print(f"generated {args.images} JPEGs, {total_bytes / 1e6:.0f} MB "
              f"({total_bytes / args.images / 1e3:.0f} KB each) in {time.perf_counter() - started:.0f}s")

        run_prefix = f"bench/{uuid.uuid4().hex[:8]}/"
        upload_seconds = timed(
            [sys.executable, str(Path(__file__).resolve().parents[1] / "upload.py"), str(tree),
             "--prefix", f"{run_prefix}upload/", "--concurrency", str(args.concurrency), "--no-progress",
             "--rejects", str(work / "rejects.tsv")], env)
        aws_env = {
            **env,
            "AWS_ACCESS_KEY_ID": settings.s3_access_key_id.get_secret_value(),
            "AWS_SECRET_ACCESS_KEY": settings.s3_secret_access_key.get_secret_value(),
            "AWS_DEFAULT_REGION": settings.s3_region,
        }
        aws_seconds = timed(
            [aws, "s3", "cp", str(tree), f"s3://{settings.s3_bucket}/{run_prefix}awscli/", "--recursive",
             "--only-show-errors", "--endpoint-url", settings.s3_endpoint_url], aws_env)
        register_seconds = asyncio.run(time_registration(settings, REGISTRATION_ROWS))

    print(f"{'tool':<34}{'seconds':>9}{'images/s':>10}{'MB/s':>8}")
    for tool, seconds in [("upload.py (S3 + image_info)", upload_seconds), ("aws s3 cp --recursive", aws_seconds)]:
        print(f"{tool:<34}{seconds:>9.1f}{args.images / seconds:>10.0f}{total_bytes / 1e6 / seconds:>8.1f}")
    print(f"image_info registration alone: {REGISTRATION_ROWS} rows in {register_seconds:.2f}s "
          f"({REGISTRATION_ROWS / register_seconds:,.0f} rows/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
