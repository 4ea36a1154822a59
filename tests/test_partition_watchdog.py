"""The hole detector behind the partition watchdog: pure logic, driven by a fake clock."""

from __future__ import annotations

from faust.types import TP

from visionstream.partition_watchdog import HoleDetector, PartitionProgress, partition_progress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


HOLE = PartitionProgress(committed=375, first_acked=381, in_flight=0)


def test_a_hole_is_reported_once_it_has_lasted_the_stall_time():
    clock = Clock()
    detector = HoleDetector(stall_seconds=10, clock=clock)
    assert detector.stalled({"p1": HOLE}) == []
    clock.now += 9.9
    assert detector.stalled({"p1": HOLE}) == []
    clock.now += 0.1
    assert detector.stalled({"p1": HOLE, "p2": HOLE}) == ["p1"]  # p2's hole is new


def test_records_in_flight_or_contiguous_acks_are_not_a_hole():
    clock = Clock()
    detector = HoleDetector(stall_seconds=1, clock=clock)
    waiting = {
        "in flight": PartitionProgress(375, 381, in_flight=6),  # an earlier batch still running
        "contiguous": PartitionProgress(375, 375, 0),  # committable at the next commit
        "nothing acked": PartitionProgress(375, None, 0),
        "nothing committed yet": PartitionProgress(None, 3, 0),
    }
    for _ in range(3):
        assert detector.stalled(waiting) == []
        clock.now += 5


def test_progress_restarts_the_wait():
    clock = Clock()
    detector = HoleDetector(stall_seconds=10, clock=clock)
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

    def __init__(self, committed: dict, acked: dict, unacked: list[Message]) -> None:
        self._committed_offset = committed
        self._acked = acked
        self._unacked_messages = set(unacked)

    def assignment(self) -> set:
        return set(self._committed_offset)


def test_acked_messages_left_in_fausts_unacked_set_are_not_in_flight():
    # Seen in a stalled SIGKILL run: a stale record below the committed offset, acked, still in the set,
    # hid the hole from the watchdog.
    p0, p1 = TP("images", 0), TP("images", 1)
    consumer = Consumer({p0: 262, p1: 509}, {p0: [268, 269], p1: []},
                        [Message(p0, 100, acked=True), Message(p1, 510, acked=False)])
    progress = partition_progress(consumer, lambda topic: True)
    assert progress[p0] == PartitionProgress(committed=262, first_acked=268, in_flight=0)
    assert progress[p0].has_hole
    assert progress[p1] == PartitionProgress(committed=509, first_acked=None, in_flight=1)
