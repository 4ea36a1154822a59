"""Dead letters after the fact: ``visionstream errors`` lists processing_errors, ``visionstream retry``
sends chosen ones back to the images topic.

Only errors of messages from the images topic are retried (the faces agent's frames have no key to
re-send). Parse-stage errors go back as their raw payload and key (a newer worker may read a record
version this one rejected); the others as a fresh request for their image key, in the bucket image_info
names for it, else the workers' default bucket. Retried rows are marked, not deleted: a message that
fails again is recorded anew under its new offset.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import asyncpg

from visionstream.core.db import connect
from visionstream.images.producer import Message, encode_request, produce_messages
from visionstream.settings import Settings

REASON_WIDTH = 60  # characters of the reason shown in the table; the row holds all of it

LIST_ERRORS = """
SELECT id, time, stage, attempts, image_key, reason, topic, "partition", "offset", retried_at
FROM processing_errors
WHERE ($1::text IS NULL OR stage = $1) AND ($2::timestamptz IS NULL OR time >= $2)
ORDER BY time DESC, id DESC
LIMIT $3
"""

# Rows not yet retried, oldest first; a chosen key selects every error recorded for it.
SELECT_RETRYABLE = """
SELECT e.id, e.image_key, e.stage, e.payload, i.bucket
FROM processing_errors e LEFT JOIN image_info i USING (image_key)
WHERE e.topic = $1 AND e.retried_at IS NULL
  AND ($2::text IS NULL OR e.stage = $2)
  AND (cardinality($3::text[]) = 0 OR e.image_key = ANY($3::text[]))
ORDER BY e.id
"""

MARK_RETRIED = "UPDATE processing_errors SET retried_at = now() WHERE id = ANY($1::bigint[])"


@dataclass(frozen=True, slots=True)
class RetryPlan:
    """What one error row sends back: the Kafka key and value for the images topic."""

    error_id: int
    key: bytes
    value: bytes


async def list_errors(settings: Settings, stage: str | None = None, since: dt.datetime | None = None,
                      limit: int = 50) -> list[asyncpg.Record]:
    """The newest processing_errors rows, optionally of one stage and since a time."""
    conn = await connect(settings)
    try:
        return await conn.fetch(LIST_ERRORS, stage, since, limit)
    finally:
        await conn.close()


def format_errors(rows: Sequence[asyncpg.Record]) -> str:
    """A plain-text table, one line per error, newest first."""
    header = ("time (UTC)", "stage", "attempts", "source", "retried", "image key", "reason")
    lines = [
        (
            row["time"].astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
            row["stage"],
            str(row["attempts"]),
            f"{row['topic']}[{row['partition']}]@{row['offset']}",
            "yes" if row["retried_at"] else "",
            repr(row["image_key"])[1:-1],  # control characters and odd keys stay on one line
            _shorten(row["reason"], REASON_WIDTH),
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(width) for cell, width in zip(line, widths)), line[-1]]).rstrip()
        for line in [header, *lines]
    )


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def plan_retry(row: asyncpg.Record) -> RetryPlan:
    if row["stage"] == "parse":
        # Re-sent exactly as it came (the key was stored decoded; non-UTF-8 key bytes come back escaped).
        return RetryPlan(row["id"], row["image_key"].encode(), row["payload"] or b"")
    return RetryPlan(row["id"], row["image_key"].encode(), encode_request(row["image_key"], row["bucket"]))


async def retry_errors(settings: Settings, stage: str | None = None, keys: Sequence[str] = ()) -> int:
    """Send the matching errors not yet retried back to the images topic, mark them; return how many.

    Sent first, marked after: a failure in between leaves them unmarked, and sending one twice only costs
    a redundant classification (results are written idempotently).
    """
    conn = await connect(settings)
    try:
        rows = await conn.fetch(SELECT_RETRYABLE, settings.images_topic, stage, list(keys))
        plans = [plan_retry(row) for row in rows]
        if plans:
            await produce_messages(settings, _messages(plans))
            await conn.execute(MARK_RETRIED, [plan.error_id for plan in plans])
        return len(plans)
    finally:
        await conn.close()


async def _messages(plans: Sequence[RetryPlan]) -> AsyncIterator[Message]:
    for plan in plans:
        yield plan.key, plan.value, None


def errors_command(settings: Settings, args: argparse.Namespace) -> int:
    rows = asyncio.run(list_errors(settings, args.stage, args.since, args.limit))
    if not rows:
        print("no processing errors match")
        return 0
    print(format_errors(rows))
    return 0


def retry_command(settings: Settings, args: argparse.Namespace) -> int:
    if not (args.all or args.stage or args.keys):
        print("visionstream retry: choose what to retry with --stage, --key or --all", file=sys.stderr)
        return 2
    sent = asyncio.run(retry_errors(settings, args.stage, args.keys or ()))
    print(f"sent {sent} message(s) back to {settings.images_topic}")
    return 0
