"""Handling a stream's batches: the batch loop every agent runs, its acks, its stop and its crash.

No models and no I/O here: the handler brings those (worker/assemble.py builds it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from faust.types import EventT

from visionstream.core.faults import BreakerTripped, DeadLetterBreaker, Recorded
from visionstream.core.pipeline import InboundMessage, Outcome
from visionstream.core.records import SourceRef
from visionstream.core.sinks import Sink

log = logging.getLogger(__name__)


class Pipeline(Protocol):
    """What the handler runs on a batch (pipeline.AnalysisPipeline)."""

    async def run(self, messages: Sequence[InboundMessage]) -> Outcome[Any]: ...


class BatchHandler:
    """Runs the pipeline on a batch, then writes the outcome to every sink (database first).

    With a breaker, the batch's dead letters are judged before any sink writes them: a batch that trips it
    raises BreakerTripped once written, one after the trip (or after a storm already recorded) raises with
    nothing written; the BatchLoop then holds the agent."""

    def __init__(self, pipeline: Pipeline, sinks: Sequence[Sink], breaker: DeadLetterBreaker | None = None,
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


def inbound_message(event: EventT) -> InboundMessage:
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
    abandon: Callable[[Sequence[EventT]], None] = lambda events: None
    crash: Callable[[BaseException], Awaitable[None]] = _no_crash
    breaker_tripped: asyncio.Event = field(default_factory=asyncio.Event)
    on_trip: Callable[[BreakerTripped], None] = lambda tripped: None  # readiness and the metric


class BatchStream(Protocol):
    """What the loop needs of a Faust stream (faust.Stream): batches taken without acks, then acks."""

    def noack_take(self, max_: int, within: float) -> AsyncIterator[list[EventT]]: ...

    async def ack(self, event: EventT) -> bool: ...


async def process_batches(stream: BatchStream, handler: BatchHandler, *, batch_size: int, within: float,
                          in_flight: int = 1, lifecycle: AgentLifecycle | None = None) -> None:
    """Run a BatchLoop over the stream until it ends or is cancelled."""
    await BatchLoop(stream, handler, batch_size=batch_size, within=within, in_flight=in_flight,
                    lifecycle=lifecycle).run()


class BatchLoop:
    """Takes batches from a Faust stream and handles up to ``in_flight`` at once; acks each batch's events only
    after every sink has its results (at-least-once), and in the order the batches were taken.

    ``noack_take``, not ``take``: take() acks a batch in a finally block, even when handling it failed or was
    cancelled. Acks stay in order because faust-streaming 0.15.3 commits past an unacked offset when the
    acked ones start right after it (``Consumer._new_offset``): each batch awaits the one taken before it.

    A stopping worker finishes the batches in flight within the grace period; what is not finished then is
    cancelled and abandoned unacked, so it is redelivered to whoever takes over. A batch that raises is a bug
    (messages' faults end as dead letters inside the handler): the worker crashes and exits non-zero, so an
    orchestrator restarts it and its unacked events are redelivered, rather than a dead agent holding them.
    """

    def __init__(self, stream: BatchStream, handler: BatchHandler, *, batch_size: int, within: float,
                 in_flight: int = 1, lifecycle: AgentLifecycle | None = None) -> None:
        self._stream = stream
        self._handler = handler
        self._batch_size = batch_size
        self._within = within
        self._life = lifecycle or AgentLifecycle()
        self._slots = asyncio.Semaphore(in_flight)
        self._running: dict[asyncio.Future[None], list[EventT]] = {}  # in the order taken: acks follow it
        self._crashed: list[BaseException] = []
        self._deadline: float | None = None  # set once the worker stops: the end of the grace period

    async def run(self) -> None:
        stop_watch = asyncio.ensure_future(self._on_stop())
        try:
            async for events in self._stream.noack_take(self._batch_size, within=self._within):
                await self._slots.acquire()
                # The grace period ended while this batch waited, or the breaker tripped: it is not started.
                if self._past_deadline() or self._life.breaker_tripped.is_set():
                    self._slots.release()
                    self._life.abandon(events)
                    continue
                self._start(events)
        except asyncio.CancelledError:
            await self._wind_down(stop_watch)
            raise
        # The stream ends when Faust stops it (the worker stops): the batches in flight still need an end.
        await self._wind_down(stop_watch)

    def _start(self, events: list[EventT]) -> None:
        previous = next(reversed(self._running), None)
        task = asyncio.ensure_future(self._handle(events, previous))
        self._running[task] = events
        task.add_done_callback(self._done)

    async def _handle(self, events: list[EventT], previous: asyncio.Future[None] | None) -> None:
        try:
            try:
                await self._handler.handle([inbound_message(event) for event in events])
            except BreakerTripped as tripped:
                await self._hold(tripped, events)
                return
            if previous is not None:
                await previous  # raises if the earlier batch failed: then this one is not acked either
            if self._crashed:
                return  # nothing more is acked once a batch failed: Faust may commit past a lone unacked offset
            if self._life.breaker_tripped.is_set():  # held after a tripped batch: not acked either
                await self._hold(None, events)
                return
            for event in events:
                await self._stream.ack(event)
        finally:
            self._slots.release()

    async def _hold(self, tripped: BreakerTripped | None, events: list[EventT]) -> None:
        """A tripped breaker: this batch and every later one wait, unacked, until the worker stops, and are
        redelivered to whoever takes the partitions (after the fix). The worker stays up (not a crash loop that
        rebalances the group at every restart), says so in /readyz and the metric. They are abandoned at once:
        Faust waits for every unacked event before it lets a rebalance go on (Consumer.wait_empty), so held ones
        would stall every join and leave of the group, the fix's rolling update included."""
        life = self._life
        if tripped is not None and not life.breaker_tripped.is_set():
            life.breaker_tripped.set()
            life.on_trip(tripped)
            log.critical("breaker tripped: %s", tripped)
        life.abandon(events)
        await life.stopping.wait()

    def _done(self, task: asyncio.Future[None]) -> None:
        self._running.pop(task, None)
        if task.cancelled() or (error := task.exception()) is None or self._crashed:
            return
        self._crashed.append(error)
        log.critical("a batch raised %r: a bug, not a message's fault; crashing the worker so that its "
                     "unacked messages are redelivered", error, exc_info=error)
        asyncio.ensure_future(self._life.crash(error))

    def _past_deadline(self) -> bool:
        return self._deadline is not None and asyncio.get_running_loop().time() >= self._deadline

    async def _finish_or_abandon(self) -> None:
        loop = asyncio.get_running_loop()
        if self._deadline is None:
            self._deadline = loop.time() + self._life.grace
        announced = False
        while pending := [task for task in self._running if not task.done()]:
            if not announced:
                log.info("stopping: finishing the in-flight batch first (%d in flight, up to %.0fs)",
                         len(pending), self._life.grace)
                announced = True
            if self._past_deadline():
                events = [event for task in pending for event in self._running.get(task, ())]
                for task in pending:
                    task.cancel()
                self._life.abandon(events)
                log.warning("%d in-flight batch(es) (%d messages) not finished within %.0fs; left unacked, "
                            "they will be redelivered", len(pending), len(events), self._life.grace)
                return
            await asyncio.wait(pending, timeout=self._deadline - loop.time())

    async def _on_stop(self) -> None:
        await self._life.stopping.wait()
        await self._finish_or_abandon()

    async def _wind_down(self, stop_watch: asyncio.Future[None]) -> None:
        if self._life.stopping.is_set() and not stop_watch.done():
            await stop_watch  # already finishing the batches in flight
        else:
            stop_watch.cancel()
            await self._finish_or_abandon()
