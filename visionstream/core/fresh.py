"""An async query's answer, reused while it is fresh, with one query in flight however many ask.

A web page that reads PostgreSQL per request lets each polling client open its own connection (TLS and
SCRAM each time), unbounded, beside the worker's pool; served through ``FreshFor``, N requests within the
freshness cost one query, and concurrent ones wait for the same query (single flight).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class FreshFor(Generic[T]):
    """``await get()``: the query's last answer if it finished less than ``seconds`` ago, else a new one;
    callers arriving while a query runs share it. A failure reaches every waiter and is not kept."""

    def __init__(self, query: Callable[[], Awaitable[T]], seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._query = query
        self._seconds = seconds
        self._clock = clock
        self._answer: tuple[float, T] | None = None
        self._running: asyncio.Future[T] | None = None

    async def get(self) -> T:
        if self._answer is not None and self._clock() - self._answer[0] < self._seconds:
            return self._answer[1]
        if self._running is None:
            self._running = asyncio.ensure_future(self._refresh())
            # Read a failure nobody awaits any more (every caller cancelled), so asyncio does not log it.
            self._running.add_done_callback(lambda done: done.cancelled() or done.exception())
        # shield: a caller that goes away (a closed request) does not cancel the others' query.
        return await asyncio.shield(self._running)

    async def _refresh(self) -> T:
        try:
            answer = await self._query()
            self._answer = (self._clock(), answer)
            return answer
        finally:
            self._running = None
