"""Retry with capped exponential backoff, for outages of servers that come back. ``Delays`` is the one
backoff schedule of the package: this Backoff, the fault model's RetryPolicy (faults.py), the topic sink's
resends (sinks.py) and a camera's reconnects (frames/producer.py) all wait by it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Delays:
    """Capped exponential backoff: ``initial``, then times ``factor`` each wait, never above ``maximum``."""

    initial: float = 0.2
    maximum: float = 5.0
    factor: float = 2.0

    def __iter__(self) -> Iterator[float]:
        delay = self.initial
        while True:
            yield delay
            delay = min(delay * self.factor, self.maximum)


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
        self.delays = Delays(initial, maximum, factor)
        self._sleep = sleep

    async def run(
        self,
        what: str,
        operation: Callable[[], Awaitable[T]],
        retry_on: tuple[type[BaseException], ...],
    ) -> T:
        delays = iter(self.delays)
        failures = 0
        while True:
            try:
                result = await operation()
            except retry_on as exc:
                failures += 1
                delay = next(delays)
                log.warning(
                    "%s failed (%s: %s); retry %d in %.1fs", what, type(exc).__name__, exc, failures, delay
                )
                await self._sleep(delay)
                continue
            if failures:
                log.info("%s succeeded after %d retries", what, failures)
            return result
