"""Peak memory one hostile input costs a worker's read and decode, with the bounds off and on (README "Security").

    .venv/bin/python bench/untrusted_memory.py            # decode bombs, then an S3 GET on a private local stack
    .venv/bin/python bench/untrusted_memory.py --no-s3    # decode bombs only

Decode: a 6000x6000 PNG (flat, ~35 KB) and an 8000x8000 progressive JPEG (4:4:4, ~750 KB), each decoded once
as a worker does (at the classifier's DCT scale) in a fresh process, with the old limit (89,478,485 pixels
and nothing else) and with the settings' defaults (DecodeLimits.from_settings). S3: one ObjectReader GET of a
128 MiB object with the object limit at 5 GiB (the old read-it-all) and at 4 MiB. Peak RSS growth is sampled
from /proc every 5 ms (decode: ru_maxrss, the files being made in a process of their own).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from visionstream.settings import Settings

OLD_MAX_PIXELS = 89_478_485  # Pillow's default, the worker's limit before
OBJECT_BYTES = 128 << 20
BOMBS = ("png", "jpeg")


def make_bomb(kind: str, path: Path) -> None:
    from PIL import Image

    if kind == "png":
        Image.new("L", (6000, 6000)).save(path, "PNG", optimize=True)
    else:
        Image.new("RGB", (8000, 8000), (90, 90, 90)).save(path, "JPEG", progressive=True, subsampling=0, quality=50)


def decode_once(path: Path, limits_name: str) -> str:
    """One decode in this (fresh) process: what became of it and the peak RSS it added."""
    from visionstream.core.imaging import DecodeLimits, ImageDecodeError, decode_image
    from visionstream.settings import load_settings

    data = path.read_bytes()
    limits = DecodeLimits(OLD_MAX_PIXELS) if limits_name == "old" else DecodeLimits.from_settings(load_settings())
    start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    crop_scale = [lambda w, h: (w * 512 // min(w, h), h * 512 // min(w, h))]  # the classifier's need
    try:
        outcome = f"decoded at {decode_image(data, limits, crop_scale).pixels.size}"
    except ImageDecodeError as exc:
        outcome = f"refused: {exc.reason}"
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start) / 1024
    return f"{path.name} ({len(data) / 1e3:.0f} KB), {limits_name} limits: {outcome}; peak RSS +{grown:.0f} MiB"


def rss() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))


async def read_once(settings: Settings, key: str, limit: int) -> str:
    from visionstream.core.s3 import ObjectTooLarge, object_reader

    async with object_reader(settings.model_copy(update={"s3_max_object_bytes": limit})) as reader:
        base, peak, stop = rss(), [0], threading.Event()

        def sample() -> None:
            while not stop.wait(0.005):
                peak[0] = max(peak[0], rss())

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            outcome = f"read {len(await reader.get(settings.s3_bucket, key)) >> 20} MiB"
        except ObjectTooLarge as exc:
            outcome = f"refused: {exc.reason}"
        finally:
            stop.set()
            sampler.join()
    grown = max(peak[0] - base, 0) / 2**20
    return f"S3 GET of {OBJECT_BYTES >> 20} MiB, limit {limit >> 20} MiB: {outcome}; peak RSS +{grown:.1f} MiB"


async def measure_read(settings: Settings) -> list[str]:
    from visionstream.core.s3 import s3_client

    async with s3_client(settings) as client:
        await client.put_object(Bucket=settings.s3_bucket, Key="large.bin", Body=os.urandom(OBJECT_BYTES))
    return [await read_once(settings, "large.bin", limit) for limit in (5 << 30, 4 << 20)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-s3", action="store_true", help="decode bombs only, no local stack")
    parser.add_argument("--decode", nargs=2, metavar=("FILE", "LIMITS"), help=argparse.SUPPRESS)  # one child run
    parser.add_argument("--make", nargs=2, metavar=("KIND", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make:
        make_bomb(args.make[0], Path(args.make[1]))
        return 0
    if args.decode:
        print(decode_once(Path(args.decode[0]), args.decode[1]))
        return 0
    with tempfile.TemporaryDirectory(prefix="vs-untrusted-") as tmp:
        for kind in BOMBS:
            path = Path(tmp) / f"bomb.{'png' if kind == 'png' else 'jpg'}"
            subprocess.run([sys.executable, __file__, "--make", kind, str(path)], check=True)
            for limits in ("old", "new"):
                subprocess.run([sys.executable, __file__, "--decode", str(path), limits], check=True)
        if not args.no_s3:
            from visionstream.dev.stack import LocalStack, StackPorts, free_ports

            kafka, s3, postgres = free_ports(3)
            stack = LocalStack(Path(tmp) / "stack", StackPorts(kafka=kafka, s3=s3, postgres=postgres))
            stack.up()
            try:
                print("\n".join(asyncio.run(measure_read(stack.settings()))))
            finally:
                stack.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
