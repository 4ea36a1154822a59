"""The hole detector behind the partition watchdog: pure logic, driven by a fake clock."""

from __future__ import annotations

from visionstream.partition_watchdog import HoleDetector, PartitionProgress


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
