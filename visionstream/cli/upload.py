"""`visionstream upload` (and `python upload.py`): the command line of bulk/upload.py."""

from __future__ import annotations

import argparse
import asyncio
import sys

from visionstream.bulk.upload import UploadRefused, upload
from visionstream.settings import Settings


def upload_command(settings: Settings, args: argparse.Namespace) -> int:
    try:
        summary = asyncio.run(upload(
            settings, args.sources, bucket=args.bucket, prefix=args.prefix, split=args.split,
            val_labels=args.val_labels, concurrency=args.concurrency, limit=args.limit, dry_run=args.dry_run,
            produce=args.produce, progress=not args.no_progress, rejects=args.rejects,
        ))
    except UploadRefused as exc:
        print(f"upload: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", flush=True)
        return 130
    print(summary)
    return 0
