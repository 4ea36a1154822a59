"""The peer: visionstream's bulk job written the way a Ray Data user writes it.

    .venv/bin/python bench/ray_peer.py --prefix bench/ --hostname h-ray [--json OUT.json]
    (settings from VISIONSTREAM_* variables, as a worker reads them; `pip install -e '.[bench]'` for Ray)

``ray.data.read_binary_files`` over the S3 prefix (pyarrow's S3 filesystem on the same endpoint),
``map_batches`` with a decode function (tasks) and a predictor class (one actor holding the model), and
``Dataset.write_sql`` of one row per (image, rank) into the same ``prediction_results`` table. Decode and
model are visionstream's own (``Preprocessing``, ``Classifier`` with precision=auto, compiled, as a worker
builds it), so the ratio measures the data path around them: reading, scheduling, batching, writing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefix", default="bench/", help="S3 key prefix of the images in the settings' bucket")
    parser.add_argument("--hostname", default="h-ray", help="hostname column of the rows written")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import pyarrow.fs
    import ray

    from visionstream.settings import load_settings

    settings = load_settings()
    started = time.time()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
             object_store_memory=1 << 30, logging_level="ERROR")
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    endpoint = settings.s3_endpoint_url or ""
    filesystem = pyarrow.fs.S3FileSystem(
        access_key=settings.s3_access_key_id.get_secret_value() if settings.s3_access_key_id else None,
        secret_key=settings.s3_secret_access_key.get_secret_value() if settings.s3_secret_access_key else None,
        region=settings.s3_region, endpoint_override=endpoint.split("://", 1)[-1] or None,
        scheme=endpoint.split("://", 1)[0] if endpoint else "https")
    weights = str(settings.model_weights) if settings.model_weights else None
    max_pixels, hostname = settings.max_image_pixels, args.hostname

    def decode(batch: dict[str, Any]) -> dict[str, Any]:
        from visionstream.classification.model import MODELS

        preprocess = MODELS["squeezenet1_1"].preprocessing(max_pixels)
        keys = [path.split("/", 1)[1] for path in batch["path"]]  # "bucket/key" -> key
        return {"image_key": np.array(keys), "pixels": np.stack([preprocess(data) for data in batch["bytes"]])}

    class Predictor:
        def __init__(self) -> None:
            import torch

            from visionstream.classification.model import Classifier

            torch.set_num_threads(os.cpu_count())  # like a visionstream worker's model thread, not Ray's 1 CPU
            self.classifier = Classifier(weights_path=weights, device="cpu", precision="auto", top_k=5,
                                         allow_random_weights=weights is None, compile_for_batch=args.batch_size)

        def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
            top_ks = self.classifier(batch["pixels"])
            at = dt.datetime.now(dt.timezone.utc)
            rows = [(key, self.classifier.model_id, rank, category, class_index, confidence, hostname, at)
                    for key, top_k in zip(batch["image_key"], top_ks, strict=True)
                    for rank, (class_index, category, confidence) in enumerate(top_k, start=1)]
            names = ("image_key", "model", "rank", "category", "class_index", "confidence", "hostname", "time")
            return {name: np.array([row[i] for row in rows], dtype=object) for i, name in enumerate(names)}

    def connect() -> Any:
        import psycopg

        return psycopg.connect(settings.database_url.get_secret_value())

    dataset = (ray.data.read_binary_files(f"{settings.s3_bucket}/{args.prefix}", filesystem=filesystem,
                                          include_paths=True)
               .map_batches(decode, batch_size=args.batch_size)
               .map_batches(Predictor, batch_size=args.batch_size, concurrency=1))
    dataset.write_sql(
        "INSERT INTO prediction_results (image_key, model, rank, category, class_index, confidence, hostname, time)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (image_key, model, rank) DO NOTHING", connect)
    finished = time.time()
    ray.shutdown()
    result = {"started": started, "finished": finished, "wall_s": round(finished - started, 1)}
    print(json.dumps(result), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
