"""`produce keys --where` and `replay --where` run the operator's condition in a READ ONLY transaction: a
condition that writes fails and changes nothing."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from visionstream.core.db import connect, migrate
from visionstream.images.producer import keys_from_database, selected_keys
from visionstream.images.replay import Selection, count_selected

# A condition with a side effect: it draws from processing_errors' identity sequence.
WRITING = "nextval(pg_get_serial_sequence('processing_errors', 'id')) > 0"


async def _drain(keys) -> list:
    return [key async for key in keys]


async def _sequence_value(settings) -> int:
    conn = await connect(settings)
    try:
        await conn.execute("INSERT INTO image_info (image_key, bucket) VALUES ('where-ro/a.jpg', 'b') "
                           "ON CONFLICT DO NOTHING")
        return await conn.fetchval("SELECT last_value FROM processing_errors_id_seq")
    finally:
        await conn.close()


@pytest.mark.parametrize("select", ["produce keys", "replay count", "replay keys"])
def test_a_where_condition_that_writes_fails(stack, select):
    settings = stack.settings()
    asyncio.run(migrate(settings))
    before = asyncio.run(_sequence_value(settings))
    run = {
        "produce keys": lambda: _drain(keys_from_database(settings, where=WRITING)),
        "replay count": lambda: count_selected(settings, Selection(where=WRITING)),
        "replay keys": lambda: _drain(selected_keys(settings, *Selection(where=WRITING).query())),
    }[select]
    with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
        asyncio.run(run())
    assert asyncio.run(_sequence_value(settings)) == before
