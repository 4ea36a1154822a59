"""Retry with capped exponential backoff, for outages of servers that come back."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class Backoff:
    """Retries an awaitable until it succeeds; only the given exception types are retried.

    There is no attempt limit on purpose: a worker must not commit offsets past work it could not finish,
    so it waits for the server instead (and stays visible in the log while it does).
    """

    def __init__(
        self,
        initial: float = 0.2,
        maximum: float = 5.0,
        factor: float = 2.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self._sleep = sleep

    async def run(
        self,
        what: str,
        operation: Callable[[], Awaitable[T]],
        retry_on: tuple[type[BaseException], ...],
    ) -> T:
        delay = self.initial
        failures = 0
        while True:
            try:
                result = await operation()
            except retry_on as exc:
                failures += 1
                log.warning(
                    "%s failed (%s: %s); retry %d in %.1fs", what, type(exc).__name__, exc, failures, delay
                )
                await self._sleep(delay)
                delay = min(delay * self.factor, self.maximum)
                continue
            if failures:
                log.info("%s succeeded after %d retries", what, failures)
            return result
