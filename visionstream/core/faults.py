"""The fault model: what a failure of one message means, decided in one place for every stage.

Every failure is one of three kinds (``Fault``):

- **bad message**: the message itself is at fault and retrying cannot help (it does not parse, its
  object is missing, S3 rejects its key, PostgreSQL rejects one of its values): dead letter now.
- **outage**: the service does not work for anyone (unreachable, timing out, 5xx for every request):
  wait with backoff and no attempt limit, committing nothing. Shutdown stays bounded (worker.py).
- **poison**: the message keeps failing while its service works (other requests succeed, or a probe
  does): a bounded number of attempts, then a dead letter naming the stage, the exception and the attempts.

Each service supplies a classifier (the message's fault, the service's, or cannot tell) and a
``ServiceHealth`` (is the service working?); ``RetryPolicy.run`` combines them. ``isolate_failures`` finds
the messages of a batch that make a batch-wide call (a model, a database write) fail, so only those are dead-lettered.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import Executor
from typing import Any, TypeVar

from visionstream.core.retry import Delays

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

REASON_LIMIT = 2_000  # characters of an exception kept in a dead letter's reason
# A URL's user:password (``scheme://user:pass@host``), were an exception to print one: masked in every reason,
# which goes to the dead letter's value and headers, the processing_errors table and the log alike.
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]+@")


class Fault(enum.Enum):
    BAD_MESSAGE = "bad message"
    OUTAGE = "outage"
    POISON = "poison"


# What an exception says on its own: the message's fault, the service's (every request would fail: wait),
# or None: it depends on whether the service works for other requests.
FaultReader = Callable[[BaseException], "Fault | None"]


class BadMessage(ValueError):
    """This message cannot be processed; ``reason`` is short and loggable, ``attempts`` how often it was tried.

    ``unexpected``: raised by no check of ours but by an exception a decoder, a model, a plug-in or a parser
    let through (``from_exception``): a bug shows itself that way, so only these count towards the
    dead-letter breaker; a refusal we chose (a bucket not allowed, a missing object, an oversized one) never
    does, whoever sends a storm of them."""

    def __init__(self, reason: str, attempts: int = 1, unexpected: bool = False) -> None:
        reason = mask_credentials(reason)
        super().__init__(reason)
        self.reason = reason
        self.attempts = attempts
        self.unexpected = unexpected

    @classmethod
    def from_exception(cls, exc: BaseException, attempts: int = 1) -> BadMessage:
        """``exc`` as this message's fault: itself if it is one, else its description, marked unexpected."""
        if isinstance(exc, BadMessage):
            return exc
        return cls(describe(exc), attempts, unexpected=True)


def mask_credentials(text: str) -> str:
    """``text`` with every URL's ``user:password@`` replaced by ``***@``."""
    return _URL_USERINFO.sub(r"\1***@", text)


def describe(exc: BaseException) -> str:
    """``Type: message`` of an exception, bounded and with URL credentials masked, for a dead letter's reason."""
    if isinstance(exc, BadMessage):
        return exc.reason
    text = mask_credentials(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    return text if len(text) <= REASON_LIMIT else text[: REASON_LIMIT - 1] + "…"


class ServiceHealth:
    """Whether a service works: yes when any request succeeded after a given moment, else ask a probe.

    Successes of other requests come first because they are free and because a probe can pass while the
    requests that matter fail (SeaweedFS answers HEAD bucket before its volume server is back).
    """

    def __init__(self, name: str, probe: Callable[[], Awaitable[object]], timeout: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self._probe = probe
        self._timeout = timeout
        self._clock = clock
        self._last_success = -math.inf

    def now(self) -> float:
        return self._clock()

    def succeeded(self) -> None:
        self._last_success = self._clock()

    async def works_since(self, moment: float) -> bool:
        if self._last_success > moment:
            return True
        try:
            await asyncio.wait_for(self._probe(), self._timeout)
        except asyncio.CancelledError:
            raise
        except Exception:  # any failure of the probe means: not working
            return False
        self.succeeded()
        return True


class RetryPolicy:
    """Runs one message's request to a service under the fault model.

    Delays grow from ``initial`` by ``factor`` up to ``maximum``; ``max_attempts`` counts only the attempts
    made while the service worked, so an outage is waited out however long it lasts.
    """

    def __init__(self, max_attempts: int = 5, initial: float = 0.5, maximum: float = 5.0, factor: float = 2.0,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.max_attempts = max_attempts
        self.delays = Delays(initial, maximum, factor)
        self._sleep = sleep

    async def run(self, what: str, operation: Callable[[], Awaitable[T]], classify: FaultReader,
                  health: ServiceHealth, max_attempts: int | None = None) -> T:
        """The operation's result, or BadMessage once the message is known to be at fault."""
        limit = self.max_attempts if max_attempts is None else max_attempts
        attempts = waits = 0
        delays = iter(self.delays)
        while True:
            started = health.now()
            try:
                result = await operation()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = next(delays)
                fault = Fault.BAD_MESSAGE if isinstance(exc, BadMessage) else classify(exc)
                if fault is None:
                    fault = Fault.POISON if await health.works_since(started) else Fault.OUTAGE
                if fault is Fault.BAD_MESSAGE:
                    raise BadMessage(describe(exc), attempts + 1, getattr(exc, "unexpected", False)) from exc
                if fault is Fault.POISON:
                    attempts += 1
                    if attempts >= limit:
                        raise BadMessage(f"{describe(exc)} ({attempts} attempt{'s' if attempts > 1 else ''} "
                                         f"while {health.name} worked)", attempts) from exc
                    log.warning("%s failed while %s works (attempt %d of %d): %s; retry in %.1fs",
                                what, health.name, attempts, limit, describe(exc), delay)
                else:
                    waits += 1
                    log.warning("%s failed and %s does not answer (%s); waiting, retry in %.1fs",
                                what, health.name, describe(exc), delay)
                await self._sleep(delay)
                continue
            health.succeeded()
            if attempts or waits:
                log.info("%s succeeded after %d retries", what, attempts + waits)
            return result


async def isolate_failures(items: Sequence[T], run: Callable[[Sequence[T]], Awaitable[None]],
                           _depth: int = 0) -> list[tuple[T, BadMessage]]:
    """Run ``items`` together; when that raises BadMessage, halve until each failing item stands alone.

    Returns the failing items with their errors (``attempts`` = the runs the item was part of). A batch with
    one bad item costs about 2*log2(n) extra runs; the good items' runs have done their work.
    """
    if not items:
        return []
    try:
        await run(items)
        return []
    except BadMessage as exc:
        if len(items) == 1:
            return [(items[0], BadMessage(exc.reason, _depth + exc.attempts, exc.unexpected))]
    middle = len(items) // 2
    return (await isolate_failures(items[:middle], run, _depth + 1)
            + await isolate_failures(items[middle:], run, _depth + 1))


def _each(function: Callable[[T], R], items: Sequence[T]) -> list[R | BadMessage]:
    out: list[R | BadMessage] = []
    for item in items:
        try:
            out.append(function(item))
        except Exception as exc:  # that item's fault; BaseException (interrupts) is not and propagates
            out.append(BadMessage.from_exception(exc))
    return out


async def run_each(executor: Executor, function: Callable[[T], R], items: Sequence[T],
                   chunks: int) -> list[R | BadMessage]:
    """``function`` on every item in ``executor``, split into ``chunks`` calls (one per thread is enough); an
    exception is that item's fault (a BadMessage in its place).

    One executor call per chunk, not per item: each call costs a future and an event-loop wake-up, which
    measured 0.09 core-ms per image here (bench/worker_stages.py: 1.76 vs 1.67 core-ms per decoded image).
    """
    if not items:
        return []
    loop = asyncio.get_running_loop()
    size = -(-len(items) // max(1, chunks))
    parts = await asyncio.gather(*(loop.run_in_executor(executor, _each, function, items[i:i + size])
                                   for i in range(0, len(items), size)))
    return [result for part in parts for result in part]


async def run_isolated(executor: Executor, function: Callable[[Sequence[T]], list[R]], items: Sequence[T],
                       ) -> tuple[dict[int, R], dict[int, BadMessage]]:
    """A batch function (a model) over ``items`` in ``executor``, isolating the items it fails on.

    Returns results and failures by item index. Any exception from the function counts: a model that raises
    on a batch raises on some input in it, and the items without it still get their results.
    """
    loop = asyncio.get_running_loop()
    results: dict[int, R] = {}

    async def run(indexes: Sequence[int]) -> None:
        try:
            out = await loop.run_in_executor(executor, function, [items[i] for i in indexes])
        except Exception as exc:
            raise BadMessage.from_exception(exc) from exc
        if len(out) != len(indexes):
            raise BadMessage(f"returned {len(out)} results for {len(indexes)} inputs", unexpected=True)
        results.update(zip(indexes, out, strict=True))

    failures = await isolate_failures(list(range(len(items))), run)
    return results, dict(failures)


def error_class(reason: str) -> str:
    """The error class of a dead letter's reason: the exception type ``describe`` puts before the first ":"
    (a reason without one, such as an S3 error code, is its own class)."""
    return reason.split(":", 1)[0].strip()[:100]


class BreakerTripped(Exception):
    """A stage's dead letters of one error class exceeded the breaker's bound: a bug, not bad messages."""

    def __init__(self, stage: str, error: str, count: int, window: float, recorded: bool = False) -> None:
        super().__init__(f"stage {stage!r} dead-lettered {count} messages with {error} within {window:.0f}s: "
                         f"a bug, not bad messages; this agent takes no more work until the fix is deployed "
                         f"(then `visionstream retry --stage {stage}` re-sends them and clears the breaker)")
        self.stage = stage
        self.error = error
        self.recorded = recorded  # tripped by dead letters recorded before this process started


# (stage, reason, epoch seconds) of a dead letter already recorded.
Recorded = tuple[str, str, float]


class DeadLetterBreaker:
    """Stops an agent when one stage dead-letters more than ``bound`` messages of one error class within
    ``window`` seconds: a poison message is dead-lettered alone, a bug in a decoder, a model or a plug-in
    would otherwise dead-letter every message at that stage.

    The batch whose dead letters exceed the bound is written (so the storm is on record) and held unacked
    with everything after it. It holds across restarts: ``seed`` gives it the dead letters already recorded
    and not yet retried, and a stage and class that stormed trips it at its first new dead letter, before
    that batch writes anything. Retrying the dead letters (after the fix) clears the record.
    """

    def __init__(self, bound: int, window: float, clock: Callable[[], float] = time.time) -> None:
        self.bound = bound
        self.window = window
        self._clock = clock
        self._times: dict[tuple[str, str], list[float]] = {}
        self._stormed: dict[tuple[str, str], int] = {}  # recorded storms: (stage, class) -> dead letters
        self.tripped: BreakerTripped | None = None

    def _storm(self, times: list[float]) -> int:
        """The most of ``times`` within one window (0 when never more than the bound)."""
        times = sorted(times)
        start = most = 0
        for end, moment in enumerate(times):
            while moment - times[start] > self.window:
                start += 1
            most = max(most, end - start + 1)
        return most if most > self.bound else 0

    def seed(self, recorded: Iterable[Recorded]) -> None:
        by_class: dict[tuple[str, str], list[float]] = {}
        for stage, reason, at in recorded:
            by_class.setdefault((stage, error_class(reason)), []).append(at)
        self._stormed = {key: n for key, times in by_class.items() if (n := self._storm(times))}

    def check(self, failed: Sequence[Any]) -> BreakerTripped | None:
        """Count a batch's dead letters (objects with ``stage`` and ``reason``); the trip, if this batch
        trips the breaker (or it tripped before)."""
        if self.tripped is not None:
            return self.tripped
        now = self._clock()
        if len(self._times) > 1_000:  # classes are free text: forget those with nothing in the window
            self._times = {key: times for key, times in self._times.items() if now - times[-1] <= self.window}
        for failure in failed:
            if not failure.unexpected:  # a refusal of ours, however many: bad messages, not a bug
                continue
            key = (failure.stage, error_class(failure.reason))
            times = [t for t in self._times.get(key, ()) if now - t <= self.window] + [now]
            self._times[key] = times
            if stormed := self._stormed.get(key):
                self.tripped = BreakerTripped(key[0], key[1], stormed, self.window, recorded=True)
                return self.tripped
            if len(times) > self.bound:
                self.tripped = BreakerTripped(key[0], key[1], len(times), self.window)
                return self.tripped
        return None
