"""The dead-letter breaker (core/faults.py) and how the batch loop holds a tripped agent (core/batching.py).

Pure logic: an injectable clock, stand-in failures, and the stand-in stream of test_batches_in_flight.py.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from visionstream.core.batching import AgentLifecycle, BatchHandler, process_batches
from visionstream.core.faults import DeadLetterBreaker, error_class
from visionstream.core.pipeline import Failed
from visionstream.core.records import SourceRef

from ..clock import Clock
from .test_batches_in_flight import Stream, settle


def failed(stage: str, reason: str, offset: int = 0, unexpected: bool = True) -> Failed:
    return Failed(f"key-{offset}", SourceRef("images", 0, offset), stage, reason, unexpected=unexpected)


def test_error_class_is_the_exception_type_of_the_reason():
    assert error_class("RuntimeError: plug-in bug (5 attempts while S3 worked)") == "RuntimeError"
    assert error_class("NoSuchKey") == "NoSuchKey"


def test_more_than_the_bound_of_one_stage_and_class_within_the_window_trips_it():
    clock = Clock(1_000.0)
    breaker = DeadLetterBreaker(3, 60, clock)
    assert breaker.check([failed("plugin", "KeyError: 'x'")] * 3) is None
    # Other stages and classes count apart.
    assert breaker.check([failed("decode", "KeyError: 'x'"), failed("plugin", "ValueError: y")] * 3) is None
    tripped = breaker.check([failed("plugin", "KeyError: 'z'")])
    assert tripped is not None and (tripped.stage, tripped.error) == ("plugin", "KeyError")
    assert "stage 'plugin' dead-lettered 4 messages with KeyError within 60s" in str(tripped)
    assert breaker.check([]) is tripped  # it stays tripped


def test_refusals_of_our_own_never_trip_it_however_many():
    """A storm of requests for a bucket not allowed, or of deleted keys, is bad messages, not a bug: whoever
    can write to the topic must not be able to hold the agent with them."""
    breaker = DeadLetterBreaker(3, 60, Clock(1_000.0))
    refusals = [failed("parse", "bucket 'other' is not one this deployment reads", i, unexpected=False)
                for i in range(50)] + [failed("fetch", "NoSuchKey", i, unexpected=False) for i in range(50)]
    assert breaker.check(refusals) is None and breaker.tripped is None
    assert breaker.check([failed("decode", "KeyError: 'x'")] * 4) is not None  # unexpected ones still count


def test_only_exceptions_no_check_of_ours_raised_are_unexpected():
    from visionstream.core.faults import BadMessage, run_each
    from visionstream.core.records import MalformedMessage, parse_image_request

    def decode(item):
        if item == "bug":
            raise KeyError("x")
        raise MalformedMessage("refused on purpose")

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as executor:
        bug, refusal = asyncio.run(run_each(executor, decode, ["bug", "refusal"], 1))
    assert isinstance(bug, BadMessage) and bug.unexpected and bug.reason == "KeyError: 'x'"
    assert isinstance(refusal, BadMessage) and not refusal.unexpected
    try:  # JSON nested past the recursion limit is a malformed message, not an unexpected exception
        parse_image_request(b"k", b"[" * 100_000)
    except MalformedMessage as exc:
        assert not exc.unexpected
    else:
        raise AssertionError("parsed")


def test_dead_letters_spread_over_more_than_the_window_do_not_trip_it():
    clock = Clock(1_000.0)
    breaker = DeadLetterBreaker(3, 60, clock)
    for _ in range(10):
        assert breaker.check([failed("decode", "UnidentifiedImageError: bad")] * 2) is None
        clock.now += 61


def test_a_storm_already_recorded_trips_it_at_the_first_new_dead_letter_of_that_class():
    """An orchestrator restarting the worker must not drain the topic one bound at a time."""
    clock = Clock(1_000.0)
    breaker = DeadLetterBreaker(3, 60, clock)
    storm = [("plugin", "KeyError: 'x'", 10.0 + i) for i in range(4)]  # long ago, within 60 s of each other
    spread = [("decode", "OSError: truncated", 100.0 * i) for i in range(10)]
    breaker.seed(storm + spread)
    assert breaker.check([failed("decode", "OSError: truncated")]) is None
    assert breaker.check([failed("plugin", "ValueError: other")]) is None
    tripped = breaker.check([failed("plugin", "KeyError: 'y'")])
    assert tripped is not None and (tripped.stage, tripped.error) == ("plugin", "KeyError")


class Pipeline:
    """Every message of a batch fails at stage "plugin" with the same error, or only offsets in ``poison``."""

    def __init__(self, poison: set[int] | None = None) -> None:
        self.poison = poison
        self.batches = 0

    async def run(self, messages):
        self.batches += 1
        return SimpleNamespace(failed=[failed("plugin", "RuntimeError: bug", m.ref.offset) for m in messages
                                       if self.poison is None or m.ref.offset in self.poison], results=[])


class Sink:
    def __init__(self) -> None:
        self.written: list[int] = []

    async def write(self, outcome) -> None:
        self.written.append(len(outcome.failed))


def test_a_tripped_agent_writes_and_acks_nothing_more_and_lets_go_when_the_worker_stops():
    async def scenario():
        stream, sink, trips, abandoned = Stream([[0, 1], [2, 3], [4, 5], [6, 7]]), Sink(), [], []
        pipeline = Pipeline()
        handler = BatchHandler(pipeline, [sink], DeadLetterBreaker(3, 60))
        life = AgentLifecycle(abandon=lambda events: abandoned.extend(e.message.offset for e in events),
                              on_trip=trips.append)
        task = asyncio.ensure_future(process_batches(stream, handler, batch_size=2, within=0.1, in_flight=1,
                                                     lifecycle=life))
        for _ in range(50):
            await asyncio.sleep(0.01)
        held = (list(stream.acked), list(sink.written), [t.stage for t in trips], pipeline.batches)
        # Abandoned while held, before the worker stops: Faust's rebalance waits for every unacked event.
        assert sorted(abandoned) == [2, 3]
        life.stopping.set()  # the worker stops: the held batch is abandoned at once, not after the grace
        stream.more.set()
        await asyncio.wait_for(task, 1)
        return held, sorted(abandoned)

    (acked, written, trips, batches), abandoned = asyncio.run(scenario())
    assert acked == [0, 1]  # the first batch's two dead letters are under the bound
    assert written == [2, 2]  # the tripping batch (4 dead letters in all) is written: the storm on record
    assert trips == ["plugin"] and batches == 2  # no work taken after it
    assert abandoned == [2, 3, 4, 5, 6, 7]  # held or never started, unacked: redelivered after the fix


def test_after_a_recorded_storm_a_restarted_agent_writes_nothing_of_that_class():
    async def scenario():
        stream, sink, trips = Stream([[0, 1], [2, 3]]), Sink(), []

        async def recorded(topic: str):
            assert topic == "images"
            return [("plugin", "RuntimeError: bug", 50.0 + i) for i in range(4)]

        handler = BatchHandler(Pipeline(), [sink], DeadLetterBreaker(3, 60), recorded)
        life = AgentLifecycle(on_trip=trips.append)
        task = asyncio.ensure_future(process_batches(stream, handler, batch_size=2, within=0.1, in_flight=1,
                                                     lifecycle=life))
        for _ in range(50):
            await asyncio.sleep(0.01)
        life.stopping.set()
        stream.more.set()
        await asyncio.wait_for(task, 1)
        return stream.acked, sink.written, [(t.stage, t.recorded) for t in trips]

    assert asyncio.run(scenario()) == ([], [], [("plugin", True)])


def test_one_poison_message_among_good_ones_is_a_single_dead_letter():
    async def scenario():
        stream, sink = Stream([[0, 1], [2, 3], [4, 5]]), Sink()
        stream.more.set()
        handler = BatchHandler(Pipeline(poison={3}), [sink], DeadLetterBreaker(3, 60))
        await asyncio.wait_for(process_batches(stream, handler, batch_size=2, within=0.1, in_flight=1), 5)
        return stream.acked, sink.written

    acked, written = asyncio.run(scenario())
    assert acked == [0, 1, 2, 3, 4, 5] and written == [0, 1, 0]
