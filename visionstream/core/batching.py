"""Handling a stream's batches: the batch loop every agent runs, its acks, its stop and its crash.

No models and no I/O here: the handler brings those (worker.py, face_worker.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from visionstream.core.faults import BreakerTripped, DeadLetterBreaker, Recorded
from visionstream.core.pipeline import InboundMessage, Outcome
from visionstream.core.records import SourceRef

log = logging.getLogger(__name__)


class BatchHandler:
    """Runs the pipeline on a batch, then writes the outcome to every sink (database first).

    With a breaker, the batch's dead letters are judged before any sink writes them: a batch that trips it
    raises BreakerTripped once written, one after the trip (or after a storm already recorded) raises with
    nothing written; process_batches then holds the agent."""

    def __init__(self, pipeline: Any, sinks: Sequence[Any], breaker: DeadLetterBreaker | None = None,
                 recorded: Callable[[str], Awaitable[Iterable[Recorded]]] | None = None) -> None:
        self._pipeline = pipeline
        self._sinks = sinks
        self._breaker = breaker
        self._recorded = recorded  # topic -> its dead letters already recorded, to seed the breaker
        self._seeded = False

    async def handle(self, messages: Sequence[InboundMessage]) -> Outcome[Any]:
        if self._breaker is not None and self._recorded is not None and not self._seeded and messages:
            self._breaker.seed(await self._recorded(messages[0].ref.topic))
            self._seeded = True
        outcome = await self._pipeline.run(messages)
        tripped = None
        if self._breaker is not None:
            tripped_before = self._breaker.tripped is not None
            if (tripped := self._breaker.check(outcome.failed)) is not None and (tripped_before or tripped.recorded):
                raise tripped
        for sink in self._sinks:
            await sink.write(outcome)
        for failure in outcome.failed:
            log.warning(
                "dead letter %r at %s[%d]@%d: %s (%d attempt%s): %s", failure.image_key, failure.ref.topic,
                failure.ref.partition, failure.ref.offset, failure.stage, failure.attempts,
                "s" if failure.attempts > 1 else "", failure.reason,
            )
        if tripped is not None:
            raise tripped
        return outcome


def inbound_message(event: Any) -> InboundMessage:
    message = event.message
    return InboundMessage(SourceRef(message.topic, message.partition, message.offset), message.key,
                          message.value, message.headers or (), message.timestamp)


async def _no_crash(exc: BaseException) -> None:
    raise exc


@dataclass
class AgentLifecycle:
    """What an agent's batch loop needs from its worker: when it stops, how long it may finish, how to stop
    the framework waiting for events it gave up on, and how to crash the worker on a bug."""

    grace: float = 30.0
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    abandon: Callable[[Sequence[Any]], None] = lambda events: None
    crash: Callable[[BaseException], Awaitable[None]] = _no_crash
    breaker_tripped: asyncio.Event = field(default_factory=asyncio.Event)
    on_trip: Callable[[BreakerTripped], None] = lambda tripped: None  # readiness and the metric


async def process_batches(stream: Any, handler: BatchHandler, *, batch_size: int, within: float,
                          in_flight: int = 1, lifecycle: AgentLifecycle | None = None) -> None:
    """Take batches from a Faust stream and handle up to ``in_flight`` at once; ack each batch's events only
    after every sink has its results (at-least-once), and in the order the batches were taken.

    ``noack_take``, not ``take``: take() acks a batch in a finally block, even when handling it failed or was
    cancelled. Acks stay in order because faust-streaming 0.15.3 commits past an unacked offset when the
    acked ones start right after it (``Consumer._new_offset``).

    A stopping worker finishes the batches in flight within the grace period; what is not finished then is
    cancelled and abandoned unacked, so it is redelivered to whoever takes over. A batch that raises is a bug
    (messages' faults end as dead letters inside the handler): the worker crashes and exits non-zero, so an
    orchestrator restarts it and its unacked events are redelivered, rather than a dead agent holding them.
    """
    life = lifecycle or AgentLifecycle()
    slots = asyncio.Semaphore(in_flight)
    running: dict[asyncio.Future[None], list[Any]] = {}
    crashed: list[BaseException] = []

    async def handle(events: list[Any], previous: asyncio.Future[None] | None) -> None:
        try:
            try:
                await handler.handle([inbound_message(event) for event in events])
            except BreakerTripped as tripped:
                await hold(tripped, events)
                return
            if previous is not None:
                await previous  # raises if the earlier batch failed: then this one is not acked either
            if crashed:
                return  # nothing more is acked once a batch failed: Faust may commit past a lone unacked offset
            if life.breaker_tripped.is_set():  # held after a tripped batch: not acked either
                await hold(None, events)
                return
            for event in events:
                await stream.ack(event)
        finally:
            slots.release()

    async def hold(tripped: BreakerTripped | None, events: list[Any]) -> None:
        """A tripped breaker: this batch and every later one wait, unacked, until the worker stops, and are
        redelivered to whoever takes the partitions (after the fix). The worker stays up (not a crash loop that
        rebalances the group at every restart), says so in /readyz and the metric. They are abandoned at once:
        Faust waits for every unacked event before it lets a rebalance go on (Consumer.wait_empty), so held ones
        would stall every join and leave of the group, the fix's rolling update included."""
        if tripped is not None and not life.breaker_tripped.is_set():
            life.breaker_tripped.set()
            life.on_trip(tripped)
            log.critical("breaker tripped: %s", tripped)
        life.abandon(events)
        await life.stopping.wait()

    def done(task: asyncio.Future[None]) -> None:
        running.pop(task, None)
        if task.cancelled() or task.exception() is None or crashed:
            return
        crashed.append(task.exception())  # type: ignore[arg-type]
        log.critical("a batch raised %r: a bug, not a message's fault; crashing the worker so that its "
                     "unacked messages are redelivered", task.exception(), exc_info=task.exception())
        asyncio.ensure_future(life.crash(task.exception()))  # type: ignore[arg-type]

    loop = asyncio.get_running_loop()
    deadline: float | None = None  # set once the worker stops: the end of the grace period

    def past_deadline() -> bool:
        return deadline is not None and loop.time() >= deadline

    async def finish_or_abandon() -> None:
        nonlocal deadline
        deadline = loop.time() + life.grace if deadline is None else deadline
        announced = False
        while pending := [task for task in running if not task.done()]:
            if not announced:
                log.info("stopping: finishing the in-flight batch first (%d in flight, up to %.0fs)",
                         len(pending), life.grace)
                announced = True
            if past_deadline():
                events = [event for task in pending for event in running.get(task, ())]
                for task in pending:
                    task.cancel()
                life.abandon(events)
                log.warning("%d in-flight batch(es) (%d messages) not finished within %.0fs; left unacked, "
                            "they will be redelivered", len(pending), len(events), life.grace)
                return
            await asyncio.wait(pending, timeout=deadline - loop.time())

    async def on_stop() -> None:
        await life.stopping.wait()
        await finish_or_abandon()

    async def wind_down() -> None:
        if life.stopping.is_set() and not stop_watch.done():
            await stop_watch  # already finishing the batches in flight
        else:
            stop_watch.cancel()
            await finish_or_abandon()

    stop_watch = asyncio.ensure_future(on_stop())
    try:
        async for events in stream.noack_take(batch_size, within=within):
            await slots.acquire()
            # The grace period ended while this batch waited, or the breaker tripped: it is not started.
            if past_deadline() or life.breaker_tripped.is_set():
                slots.release()
                life.abandon(events)
                continue
            previous = next(reversed(running), None)
            task = asyncio.ensure_future(handle(events, previous))
            running[task] = events
            task.add_done_callback(done)
    except asyncio.CancelledError:
        await wind_down()
        raise
    # The stream ends when Faust stops it (the worker stops): the batches in flight still need an end.
    await wind_down()
