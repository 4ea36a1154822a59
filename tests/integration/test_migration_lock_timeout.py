"""A migration that alters a live table (0016's ALTERs on image_faces and frame_faces) gives up after its
lock_timeout instead of queueing every worker's inserts behind a long reader; it is rolled back, and the next
start applies it (ADD COLUMN IF NOT EXISTS: also where the columns were added by hand)."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from visionstream.core.db import connect, migrate
from visionstream.settings import Settings

VERSION = "0016_face_rows_backend"


async def blocked_then_applied(settings: Settings) -> tuple[float, bool, list[str]]:
    await migrate(settings)
    admin, reader = await connect(settings), await connect(settings)
    try:
        await admin.execute("DELETE FROM schema_migrations WHERE version = $1", VERSION)  # the columns stay
        async with reader.transaction():
            await reader.execute("LOCK TABLE frame_faces IN ACCESS SHARE MODE")  # as a report's aggregate holds
            start = time.monotonic()
            with pytest.raises(asyncpg.LockNotAvailableError):
                await migrate(settings)
            waited = time.monotonic() - start
        recorded = await admin.fetchval("SELECT count(*) FROM schema_migrations WHERE version = $1", VERSION) > 0
        return waited, recorded, await migrate(settings)
    finally:
        await admin.close()
        await reader.close()


def test_a_migration_blocked_by_a_reader_gives_up_and_applies_at_the_next_start(stack_settings):
    waited, recorded, applied = asyncio.run(blocked_then_applied(stack_settings))
    assert 4.5 <= waited < 30  # the file's lock_timeout (5 s), not the reader's lifetime
    assert not recorded  # rolled back, image_faces' ALTER with it
    assert applied == [VERSION]
