"""The arguments of the commands whose modules import database and S3 clients: defined here, so that building
the parser (``visionstream --help``) imports none of asyncpg, aioboto3, faust or torch."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

# The stages a dead letter names (core/pipeline.py: Failed.stage).
STAGES = ("parse", "fetch", "decode", "classify", "detect", "identify", "archive", "store")


def iso_time(text: str) -> dt.datetime:
    """An ISO 8601 date or time; one without a zone is UTC."""
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r} (e.g. 2024-05-01T12:00)") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive whole number: {text!r}")
    return int(text)


def report_tables() -> list[str]:
    from visionstream.cli.report import (
        QUERIES,  # SQL text only: report.py connects lazily
    )

    return list(QUERIES)


def add_replay_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--camera", help="replay this camera's archived frames (VISIONSTREAM_FRAME_ARCHIVE) to the "
                        "frame replay topic instead of images; --since/--until then mean the capture time")
    parser.add_argument("--prefix", help="only image keys starting with this prefix")
    parser.add_argument("--label", help="only images with this label (e.g. a wnid, n01440764)")
    parser.add_argument("--since", type=iso_time, help="only images registered at or after this time (ISO 8601)")
    parser.add_argument("--until", type=iso_time, help="only images registered before this time (ISO 8601)")
    parser.add_argument("--only-missing", metavar="MODEL",
                        help="only images without results of this version (name@version, see prediction_results.model; "
                        "with --camera: frames without frame_faces of this detector version)")
    parser.add_argument("--where", help="SQL condition on image_info i, e.g. \"i.split = 'val'\"")
    parser.add_argument("--limit", type=int, help="replay at most this many images (or frames)")
    parser.add_argument("--dry-run", action="store_true", help="count the selected images (or frames), send nothing")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--table", action="append", choices=list(report_tables()),
                        help="only this table (repeat for several; default: all)")
    parser.add_argument("--format", choices=["text", "csv", "json"], default="text", help="output format")
    parser.add_argument("--prefix", default="", help="image tables: only keys starting with this prefix")
    parser.add_argument("--since", type=iso_time, help="only rows at or after this time (ISO 8601, UTC default)")
    parser.add_argument("--bucket", choices=["minute", "hour", "day"], default="hour",
                        help="time bucket of the throughput and faces tables (default hour)")
    parser.add_argument("--plot", type=Path, metavar="DIR", help="also write PNG charts into this folder")


def add_upload_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", nargs="+", type=Path, metavar="SOURCE",
                        help="folder or tar archive of images: ImageNet train/<wnid>/*.JPEG, a flat val/, "
                             "or any folder of photos (label = class folder name)")
    parser.add_argument("--bucket", help="S3 bucket (default: VISIONSTREAM_S3_BUCKET)")
    parser.add_argument("--prefix", default="", help="prepended to each file's path in its SOURCE to make its key")
    parser.add_argument("--split", choices=["train", "val"],
                        help="split of every image (default: from a train/val folder or archive name)")
    parser.add_argument("--val-labels", type=Path, metavar="FILE",
                        help="ground truth: lines 'file_name wnid' (LOC_val_solution.csv works)")
    parser.add_argument("--concurrency", type=int, default=64, help="uploads in flight (default 64)")
    parser.add_argument("--limit", type=int, help="stop after this many files")
    parser.add_argument("--dry-run", action="store_true", help="walk, validate and count; touch nothing")
    parser.add_argument("--produce", action="store_true",
                        help="send each newly registered key to the images topic as it is registered")
    parser.add_argument("--rejects", type=Path, default=Path("upload-rejects.tsv"), metavar="FILE",
                        help="TSV of rejected files and why (default upload-rejects.tsv; only written if any)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_errors_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stage", choices=STAGES, help="only errors of this stage")
    parser.add_argument("--since", type=iso_time, metavar="ISO", help="only errors at or after this time (UTC)")
    parser.add_argument("--limit", type=positive, default=50, metavar="N", help="newest N errors (default 50)")


def add_retry_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stage", choices=STAGES, help="retry the errors of this stage")
    parser.add_argument("--key", action="append", dest="keys", metavar="K",
                        help="retry the errors of this image key (repeatable)")
    parser.add_argument("--all", action="store_true", help="retry every error not retried yet")
