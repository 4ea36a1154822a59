"""process_batches: several batches in flight, acks in the order the batches were taken, finish on stop.

Pure logic: a stand-in stream with Faust's noack_take/ack surface and a handler whose batches finish when the
test says so.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from visionstream.core.batching import AgentLifecycle, process_batches


def event(offset: int) -> SimpleNamespace:
    return SimpleNamespace(message=SimpleNamespace(topic="images", partition=0, offset=offset, key=b"k",
                                                   value=b"v", headers=None, timestamp=1.0))


class Stream:
    def __init__(self, batches: list[list[int]]) -> None:
        self.batches = [[event(offset) for offset in batch] for batch in batches]
        self.acked: list[int] = []
        self.taken = asyncio.Event()
        self.more = asyncio.Event()  # set: the stream ends after its batches; unset: it waits (a live topic)

    async def noack_take(self, max_: int, within: float):
        for batch in self.batches:
            yield batch
        self.taken.set()
        await self.more.wait()

    async def ack(self, event: SimpleNamespace) -> None:
        self.acked.append(event.message.offset)


class Handler:
    """Each batch waits for its release; records which batches ran at the same time."""

    def __init__(self) -> None:
        self.release: dict[int, asyncio.Event] = {}
        self.running: set[int] = set()
        self.most_at_once = 0

    async def handle(self, messages):
        first = messages[0].ref.offset
        self.running.add(first)
        self.most_at_once = max(self.most_at_once, len(self.running))
        await self.release.setdefault(first, asyncio.Event()).wait()
        self.running.discard(first)


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_later_batch_finishing_first_is_acked_after_the_earlier_one():
    async def scenario():
        stream, handler = Stream([[0, 1], [2, 3], [4]]), Handler()
        stream.more.set()
        task = asyncio.ensure_future(process_batches(stream, handler, batch_size=2, within=0.1, in_flight=2))
        await settle()
        assert handler.running == {0, 2}  # two in flight, the third waits for a slot
        handler.release[2].set()
        await settle()
        assert stream.acked == []  # batch 2 is done but batch 0 is not
        handler.release[0].set()
        await settle()
        assert stream.acked == [0, 1, 2, 3]
        handler.release.setdefault(4, asyncio.Event()).set()
        await task
        return stream.acked, handler.most_at_once

    acked, most_at_once = asyncio.run(scenario())
    assert acked == [0, 1, 2, 3, 4]
    assert most_at_once == 2


def test_one_in_flight_handles_batches_one_after_another():
    async def scenario():
        stream, handler = Stream([[0], [1], [2]]), Handler()
        stream.more.set()
        for offset in range(3):
            handler.release[offset] = asyncio.Event()
            handler.release[offset].set()
        await process_batches(stream, handler, batch_size=1, within=0.1)
        return stream.acked, handler.most_at_once

    assert asyncio.run(scenario()) == ([0, 1, 2], 1)


def test_a_stopping_agent_finishes_its_batches_in_flight_first():
    async def scenario():
        stream, handler = Stream([[0], [1]]), Handler()
        task = asyncio.ensure_future(process_batches(stream, handler, batch_size=1, within=0.1, in_flight=2))
        await stream.taken.wait()
        task.cancel()  # the worker stops while both batches run
        await settle()
        assert not task.done() and stream.acked == []
        handler.release[1].set()
        handler.release[0].set()
        with pytest.raises(asyncio.CancelledError):
            await task
        return stream.acked

    assert asyncio.run(scenario()) == [0, 1]


def test_batches_not_finished_within_the_grace_period_stay_unacked():
    async def scenario():
        stream, handler = Stream([[0]]), Handler()
        abandoned: list[int] = []
        life = AgentLifecycle(grace=0.05, abandon=lambda events: abandoned.extend(e.message.offset for e in events))
        task = asyncio.ensure_future(process_batches(stream, handler, batch_size=1, within=0.1, lifecycle=life))
        await stream.taken.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return stream.acked, abandoned

    assert asyncio.run(scenario()) == ([], [0])


def test_a_stopping_worker_abandons_what_it_cannot_finish_within_the_grace_period():
    """Faust waits for every handed-out event's ack before it cancels the agents: the stop signal, not the
    cancellation, starts the grace period, and the abandoned events are released unacked."""

    async def scenario():
        stream, handler = Stream([[0], [1], [2]]), Handler()
        abandoned: list[int] = []
        life = AgentLifecycle(grace=0.1, abandon=lambda events: abandoned.extend(e.message.offset for e in events))
        task = asyncio.ensure_future(process_batches(stream, handler, batch_size=1, within=0.1, in_flight=3,
                                                     lifecycle=life))
        await stream.taken.wait()
        handler.release[1].set()  # finishes, but waits for batch 0 to be acked first
        life.stopping.set()
        await asyncio.sleep(0.3)  # past the grace period
        assert not task.done()  # the agent itself is not cancelled
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return stream.acked, sorted(abandoned)

    assert asyncio.run(scenario()) == ([], [0, 1, 2])


def test_a_batch_that_raises_crashes_the_worker_and_nothing_after_it_is_acked():
    class Buggy(Handler):
        async def handle(self, messages):
            if messages[0].ref.offset == 0:
                await asyncio.sleep(0.05)
                raise RuntimeError("a bug")
            self.running.add(messages[0].ref.offset)

    async def scenario():
        stream, crashes = Stream([[0], [1]]), []

        async def crash(exc: BaseException) -> None:
            crashes.append(exc)

        task = asyncio.ensure_future(process_batches(stream, Buggy(), batch_size=1, within=0.1, in_flight=2,
                                                     lifecycle=AgentLifecycle(crash=crash)))
        await stream.taken.wait()
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return stream.acked, [str(exc) for exc in crashes]

    assert asyncio.run(scenario()) == ([], ["a bug"])
