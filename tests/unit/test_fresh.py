"""FreshFor (core/fresh.py): /stats/visitors' PostgreSQL answer shared while fresh, one query in flight."""

from __future__ import annotations

import asyncio

import pytest

from visionstream.core.fresh import FreshFor


class Query:
    """Counts its runs; each run waits until released, so requests can pile up while it is in flight."""

    def __init__(self) -> None:
        self.runs = 0
        self.release = asyncio.Event()
        self.fail = False

    async def __call__(self) -> int:
        self.runs += 1
        await self.release.wait()
        if self.fail:
            raise ConnectionError("database unreachable")
        return self.runs


async def settle() -> None:
    """Let every ready task run up to its next wait."""
    for _ in range(5):
        await asyncio.sleep(0)


def test_concurrent_requests_share_one_query_and_a_fresh_answer_is_reused():
    async def main() -> None:
        now = [0.0]
        query = Query()
        fresh = FreshFor(query, 2.0, clock=lambda: now[0])
        waiting = [asyncio.ensure_future(fresh.get()) for _ in range(50)]
        await settle()
        assert query.runs == 1  # 50 requests in flight, one query
        query.release.set()
        assert await asyncio.gather(*waiting) == [1] * 50
        now[0] = 1.9
        assert await fresh.get() == 1 and query.runs == 1  # still fresh
        now[0] = 2.0
        assert await fresh.get() == 2 and query.runs == 2  # stale: asked again

    asyncio.run(main())


def test_a_failure_reaches_every_waiter_is_not_kept_and_a_cancelled_caller_does_not_cancel_the_rest():
    async def main() -> None:
        query = Query()
        query.fail = True
        fresh = FreshFor(query, 60.0, clock=lambda: 0.0)
        leaving, staying = asyncio.ensure_future(fresh.get()), asyncio.ensure_future(fresh.get())
        await settle()
        leaving.cancel()  # a closed web request
        await settle()
        query.release.set()
        with pytest.raises(ConnectionError):
            await staying
        assert query.runs == 1
        query.fail = False
        assert await fresh.get() == 2  # the failure was not cached

    asyncio.run(main())
