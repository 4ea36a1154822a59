"""The classifier's GPU paths, images/s: the model alone on uint8 batches, and JPEG bytes -> top-k with the
decode on the GPU (nvJPEG, batched) vs in CPU threads (Pillow) feeding the GPU model; and what a worker's
decode thread spends per image either way (core-ms: the CPU decode + crop, or the header check that leaves
the JPEG to the device), through the worker's own Prepare.

    .venv/bin/python bench/gpu_model.py --device cuda --json OUT.json
    .venv/bin/python bench/gpu_model.py --device cpu --seconds 0.5 --batch-sizes 8   # dry run: same code on CPU

Run by bench/gpu_check.sh; on CPU with --device cpu the device-decode path uses torchvision's CPU decoder.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))


def rate(function: Any, items: Any, count: int, seconds: float) -> float:
    function(items)  # warm-up (compiles the batch size, allocates)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        function(items)
        done += count
    return done / (time.perf_counter() - start)


def decode_thread_ms(classifier: Any, jpegs: list[bytes], rounds: int = 5) -> dict[str, float]:
    """Thread CPU per image of the worker's Prepare for classify alone, decoding on the CPU or leaving JPEGs
    to the device; best of ``rounds`` interleaved rounds (the worker's default limits)."""
    from visionstream.classification.analyzer import classify_analyzer
    from visionstream.core.imaging import DecodeLimits
    from visionstream.core.pipeline import Prepare

    limits = DecodeLimits(64_000_000, 24_000_000, 256 << 20)
    on_device = classify_analyzer(classifier, limits.max_pixels)
    paths = {"CPU decode + crop": Prepare([dataclasses.replace(on_device, decode_encoded=None)], limits),
             "header check, JPEG left to the device": Prepare([on_device], limits)}
    best: dict[str, float] = {}
    for _ in range(rounds):
        for name, prepare in paths.items():
            start = time.thread_time()
            for data in jpegs:
                prepare(data)
            best[name] = min(best.get(name, float("inf")), 1000 * (time.thread_time() - start) / len(jpegs))
    return {name: round(ms, 3) for name, ms in best.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128, 256])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import torch
    from run_all import WEIGHTS, imagenet_like_jpegs, pipelined_rate

    from visionstream.classification.model import Classifier
    from visionstream.core.imaging import DecodeLimits, device_jpeg

    weights = WEIGHTS if WEIGHTS.is_file() else None
    largest = max(args.batch_sizes)
    classifier = Classifier(weights_path=weights, device=args.device, precision="auto", top_k=5,
                            allow_random_weights=weights is None, decode_on_device=True,
                            compile_for_batch=None if args.no_compile else largest)
    jpegs = imagenet_like_jpegs(max(64, largest))
    preprocess = classifier.preprocessor(89_478_485)
    prepared = [device_jpeg(data, DecodeLimits(89_478_485)) for data in jpegs]  # the worker's header check

    def device_decode_and_model(batch: list) -> list:
        return classifier.classify_prepared(classifier.decode_jpegs(batch))

    pixels = np.stack([preprocess(data) for data in jpegs])
    rows = []
    for size in args.batch_sizes:
        batch = np.stack([pixels[i % len(pixels)] for i in range(size)])
        encoded = [prepared[i % len(prepared)] for i in range(size)]
        row = {"batch": size,
               "model img/s (uint8 in)": round(rate(classifier, batch, size, args.seconds), 1),
               "device decode + model img/s": round(rate(device_decode_and_model, encoded, size,
                                                         args.seconds), 1)}
        threads = os.cpu_count() or 1
        row[f"CPU decode ({threads} threads) || model img/s"] = round(pipelined_rate(
            classifier, preprocess, jpegs, threads, size, args.seconds, overlap=True)[0], 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"device": str(classifier.device), "precision": classifier.precision, "compiled": classifier.compiled,
              "gpu": torch.cuda.get_device_name() if classifier.device.type == "cuda" else None,
              "mean_jpeg_kb": round(sum(map(len, jpegs)) / len(jpegs) / 1000, 1), "rows": rows,
              "decode thread core-ms per image": decode_thread_ms(classifier, jpegs)}
    print(json.dumps(result["decode thread core-ms per image"]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
