"""The stuck-partition detector behind the partition watchdog: pure logic, driven by a fake clock."""

from __future__ import annotations

from faust.types import TP

from visionstream.faust_ext.consumer_view import PartitionProgress, partition_progress
from visionstream.faust_ext.partition_watchdog import StuckPartitionDetector

from ..clock import Clock


HOLE = PartitionProgress(committed=375, first_acked=381, in_flight=0)


def test_a_hole_is_reported_once_it_has_lasted_the_stall_time():
    clock = Clock(100.0)
    detector = StuckPartitionDetector(stall_seconds=10, clock=clock)
    assert detector.stalled({"p1": HOLE}) == []
    clock.now += 9.9
    assert detector.stalled({"p1": HOLE}) == []
    clock.now += 0.1
    assert detector.stalled({"p1": HOLE, "p2": HOLE}) == ["p1"]  # p2's hole is new


def test_unread_records_and_nothing_in_flight_are_stuck_too():
    # Seen in a SIGKILL run: committed 285, high watermark 522, nothing fetched for three minutes.
    clock = Clock(100.0)
    detector = StuckPartitionDetector(stall_seconds=10, clock=clock)
    unread = PartitionProgress(committed=285, first_acked=None, in_flight=0, highwater=522)
    detector.stalled({"p0": unread})
    clock.now += 10
    assert detector.stalled({"p0": unread}) == ["p0"]


def test_records_in_flight_contiguous_acks_or_the_end_of_the_partition_are_not_stuck():
    clock = Clock(100.0)
    detector = StuckPartitionDetector(stall_seconds=1, clock=clock)
    waiting = {
        "in flight": PartitionProgress(375, 381, in_flight=6),  # an earlier batch still running
        "contiguous": PartitionProgress(375, 375, 0),  # committable at the next commit
        "nothing acked": PartitionProgress(375, None, 0),
        "nothing committed yet": PartitionProgress(None, 3, 0),
        "unread, in flight": PartitionProgress(375, None, in_flight=32, highwater=900),  # a batch running
        "at the end": PartitionProgress(375, None, 0, highwater=375),
        "a closing marker after the end": PartitionProgress(375, None, 0, highwater=376),
    }
    for _ in range(3):
        assert detector.stalled(waiting) == []
        clock.now += 5


def test_progress_restarts_the_wait():
    clock = Clock(100.0)
    detector = StuckPartitionDetector(stall_seconds=10, clock=clock)
    detector.stalled({"p1": HOLE})
    clock.now += 6
    detector.stalled({"p1": PartitionProgress(381, 400, 0)})  # committed moved: a new hole, a new wait
    clock.now += 6
    assert detector.stalled({"p1": PartitionProgress(381, 400, 0)}) == []
    detector.stalled({"p1": PartitionProgress(381, None, 0)})  # hole closed
    clock.now += 20
    assert detector.stalled({"p1": PartitionProgress(381, 400, 0)}) == []


class Message:
    def __init__(self, tp: TP, offset: int, acked: bool) -> None:
        self.tp, self.offset, self.acked = tp, offset, acked


class Consumer:
    """The bookkeeping partition_progress reads from faust's Consumer."""

    def __init__(self, committed: dict, acked: dict, unacked: list[Message], highwater: dict) -> None:
        self._committed_offset = committed
        self._acked = acked
        self._unacked_messages = set(unacked)
        self._highwater = highwater

    def assignment(self) -> set:
        return set(self._committed_offset)

    def highwater(self, tp: TP) -> int | None:
        return self._highwater.get(tp)


def test_acked_messages_left_in_fausts_unacked_set_are_not_in_flight():
    # Seen in a stalled SIGKILL run: a stale record below the committed offset, acked, still in the set,
    # hid the hole from the watchdog.
    p0, p1 = TP("images", 0), TP("images", 1)
    consumer = Consumer({p0: 262, p1: 509}, {p0: [268, 269], p1: []},
                        [Message(p0, 100, acked=True), Message(p1, 510, acked=False)], {p0: 477, p1: 600})
    progress = partition_progress(consumer, lambda topic: True)
    assert progress[p0] == PartitionProgress(committed=262, first_acked=268, in_flight=0, highwater=477)
    assert progress[p0].is_stuck
    assert progress[p1] == PartitionProgress(committed=509, first_acked=None, in_flight=1, highwater=600)
    assert not progress[p1].is_stuck
